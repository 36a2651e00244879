//! What a database needs, from the patch files and the rows of its applied-patch table: the
//! status (applied, pending, drifted, missing, gaps) and the next step of a run. Pure: the
//! runner re-plans inside every patch transaction, so a concurrent runner's work is seen.

use super::patches::{PatchFile, PatchSet};
use serde::Serialize;
use std::collections::BTreeMap;

/// One row of the applied-patch table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Applied {
    pub number: u32,
    pub name: String,
    pub sha256: String,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub applied_at: String,
    pub duration_ms: i64,
    /// `patch` (the file ran) or `baseline` (contained in `schema.sql`, which ran).
    pub via: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PatchRef {
    pub number: u32,
    pub name: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Drift {
    pub number: u32,
    pub name: String,
    pub recorded_sha256: String,
    pub file_sha256: String,
}

/// What the database holds, as read (inside the run's transaction when patching).
#[derive(Clone, Debug, Default)]
pub struct DbState {
    /// Whether the applied-patch table exists.
    pub table: bool,
    /// Whether the database has no tables at all (a baseline may then be used).
    pub empty: bool,
    pub applied: Vec<Applied>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DbStatus {
    pub applied: Vec<Applied>,
    pub pending: Vec<PatchRef>,
    /// Applied patches whose file changed since.
    pub drifted: Vec<Drift>,
    /// Applied patches whose file is gone.
    pub missing: Vec<Applied>,
    /// Files numbered below the newest applied patch that were never applied.
    pub gaps: Vec<PatchRef>,
    /// `Some(n)`: the next run installs `schema.sql` (patches 1..=n) before the rest.
    pub baseline: Option<u32>,
}

impl DbStatus {
    pub fn is_clean(&self) -> bool {
        self.drifted.is_empty() && self.missing.is_empty() && self.gaps.is_empty()
    }
}

/// Which refusals an operator overrode (`--allow drift,missing,gap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    pub drift: bool,
    pub missing: bool,
    pub gap: bool,
}

#[derive(Clone, Debug)]
pub enum PatchStep<'a> {
    /// Run `schema.sql` and record patches 1..=upto as applied by it.
    Baseline {
        upto: u32,
    },
    Patch(&'a PatchFile),
}

fn pref(p: &PatchFile) -> PatchRef {
    PatchRef {
        number: p.number,
        name: p.name.clone(),
        sha256: p.sha256.clone(),
    }
}

pub fn status(set: &PatchSet, db: &DbState) -> DbStatus {
    let recorded: BTreeMap<u32, &Applied> = db.applied.iter().map(|a| (a.number, a)).collect();
    let newest = recorded.keys().next_back().copied().unwrap_or(0);
    let mut s = DbStatus {
        applied: db.applied.clone(),
        ..DbStatus::default()
    };
    for a in &db.applied {
        match set.get(a.number) {
            None => s.missing.push(a.clone()),
            Some(f) if f.sha256 != a.sha256 => s.drifted.push(Drift {
                number: a.number,
                name: f.name.clone(),
                recorded_sha256: a.sha256.clone(),
                file_sha256: f.sha256.clone(),
            }),
            Some(_) => {}
        }
    }
    for f in &set.patches {
        if recorded.contains_key(&f.number) {
            continue;
        }
        if f.number < newest {
            s.gaps.push(pref(f));
        } else {
            s.pending.push(pref(f));
        }
    }
    if !db.table && db.empty {
        if let Some(b) = &set.baseline {
            s.baseline = Some(b.upto);
        }
    }
    s
}

/// Why a run refuses to start; `None` when it may go on.
pub fn refusal(s: &DbStatus, allow: Allow) -> Option<String> {
    let mut why = Vec::new();
    if !s.drifted.is_empty() && !allow.drift {
        for d in &s.drifted {
            why.push(format!(
                "patch {} ({}) changed after it was applied: recorded sha256 {}, file has {}",
                d.number, d.name, d.recorded_sha256, d.file_sha256
            ));
        }
    }
    if !s.missing.is_empty() && !allow.missing {
        for m in &s.missing {
            why.push(format!(
                "patch {} ({}) was applied but its file is gone",
                m.number, m.name
            ));
        }
    }
    if !s.gaps.is_empty() && !allow.gap {
        for g in &s.gaps {
            why.push(format!(
                "patch {} ({}) was never applied but a later patch was (a gap)",
                g.number, g.name
            ));
        }
    }
    if why.is_empty() {
        None
    } else {
        Some(why.join("\n"))
    }
}

/// The next step of a run, given a status that `refusal` accepted.
pub fn next_step<'a>(set: &'a PatchSet, s: &DbStatus, allow: Allow) -> Option<PatchStep<'a>> {
    if let Some(upto) = s.baseline {
        return Some(PatchStep::Baseline { upto });
    }
    let gap = s.gaps.first().filter(|_| allow.gap);
    gap.or(s.pending.first())
        .and_then(|p| set.get(p.number))
        .map(PatchStep::Patch)
}

#[cfg(test)]
mod tests {
    use super::super::patches::Baseline;
    use super::*;

    fn set(numbers: &[u32], baseline: Option<u32>) -> PatchSet {
        PatchSet {
            dir: "patches/t".into(),
            patches: numbers
                .iter()
                .map(|n| PatchFile {
                    number: *n,
                    name: format!("{n:04}_p.sql"),
                    sql: format!("-- {n}"),
                    sha256: format!("sha{n}"),
                })
                .collect(),
            baseline: baseline.map(|upto| Baseline {
                upto,
                sql: String::new(),
                sha256: String::new(),
            }),
        }
    }

    fn applied(n: u32, sha: &str) -> Applied {
        Applied {
            number: n,
            name: format!("{n:04}_p.sql"),
            sha256: sha.into(),
            applied_at: String::new(),
            duration_ms: 0,
            via: "patch".into(),
        }
    }

    #[test]
    fn classifies_every_kind() {
        let set = set(&[1, 2, 3, 5, 6], None);
        let db = DbState {
            table: true,
            empty: false,
            applied: vec![
                applied(1, "sha1"),
                applied(3, "changed"),
                applied(4, "sha4"),
                applied(5, "sha5"),
            ],
        };
        let s = status(&set, &db);
        assert_eq!(s.gaps.iter().map(|p| p.number).collect::<Vec<_>>(), [2]);
        assert_eq!(s.pending.iter().map(|p| p.number).collect::<Vec<_>>(), [6]);
        assert_eq!(s.drifted.iter().map(|p| p.number).collect::<Vec<_>>(), [3]);
        assert_eq!(s.missing.iter().map(|p| p.number).collect::<Vec<_>>(), [4]);
        let why = refusal(&s, Allow::default()).unwrap();
        assert!(why.contains("patch 3") && why.contains("patch 4") && why.contains("patch 2"));
        let all = Allow {
            drift: true,
            missing: true,
            gap: true,
        };
        assert!(refusal(&s, all).is_none());
        assert!(matches!(next_step(&set, &s, all), Some(PatchStep::Patch(p)) if p.number == 2));
        let no_gap = Allow { gap: false, ..all };
        assert!(refusal(&s, no_gap).is_some());
    }

    #[test]
    fn baseline_only_for_an_empty_database_without_the_table() {
        let set = set(&[1, 2, 3], Some(2));
        let empty = DbState {
            table: false,
            empty: true,
            applied: vec![],
        };
        let s = status(&set, &empty);
        assert_eq!(s.baseline, Some(2));
        assert!(matches!(
            next_step(&set, &s, Allow::default()),
            Some(PatchStep::Baseline { upto: 2 })
        ));
        let used = DbState {
            empty: false,
            ..empty
        };
        let s = status(&set, &used);
        assert_eq!(s.baseline, None);
        assert!(
            matches!(next_step(&set, &s, Allow::default()), Some(PatchStep::Patch(p)) if p.number == 1)
        );
    }
}
