//! Human-readable forms of the status and patch reports (the CLI without `--json`).

use super::{PatchReport, StatusReport};
use std::fmt::Write as _;

pub fn status(r: &StatusReport) -> String {
    let mut o = String::new();
    let who = r.instance.as_deref().unwrap_or(&r.type_name);
    let _ = writeln!(o, "{who}: {} ({})", r.url, r.engine);
    let s = &r.status;
    for a in &s.applied {
        let _ = writeln!(
            o,
            "  applied  {:>4} {}  {} {}ms{}",
            a.number,
            a.name,
            a.applied_at,
            a.duration_ms,
            if a.via == "baseline" {
                " (baseline)"
            } else {
                ""
            }
        );
    }
    if let Some(upto) = s.baseline {
        let _ = writeln!(o, "  baseline schema.sql installs patches 1-{upto}");
    }
    for p in &s.pending {
        let _ = writeln!(o, "  pending  {:>4} {}", p.number, p.name);
    }
    for d in &s.drifted {
        let _ = writeln!(
            o,
            "  DRIFTED  {:>4} {}  recorded {} file {}",
            d.number, d.name, d.recorded_sha256, d.file_sha256
        );
    }
    for m in &s.missing {
        let _ = writeln!(
            o,
            "  MISSING  {:>4} {}  (applied, file gone)",
            m.number, m.name
        );
    }
    for g in &s.gaps {
        let _ = writeln!(
            o,
            "  GAP      {:>4} {}  (never applied, later ones were)",
            g.number, g.name
        );
    }
    let _ = writeln!(
        o,
        "{} applied, {} pending{}",
        s.applied.len(),
        s.pending.len(),
        if r.clean {
            ""
        } else {
            "; a patch run would be refused"
        }
    );
    o
}

pub fn patch(r: &PatchReport) -> String {
    let mut o = String::new();
    for a in &r.applied {
        let _ = writeln!(
            o,
            "applied {:>4} {} ({} ms)",
            a.number, a.name, a.duration_ms
        );
    }
    if let Some(f) = &r.failed {
        let _ = writeln!(
            o,
            "FAILED  {:>4} {}: {}\n  rolled back: the database is at the last patch before it",
            f.number, f.name, f.error
        );
    }
    if r.outcome == "nothing" {
        let _ = writeln!(
            o,
            "nothing to do: {} patches applied",
            r.after.status.applied.len()
        );
    }
    o
}
