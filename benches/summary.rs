//! Headline results for the one-table summary of `benches/run`. Each bench prints its own
//! detailed tables; it also records its key comparisons here, one tab-separated line each,
//! appended to the file named by `PORTCULLIS_BENCH_SUMMARY` (set by `benches/run`, which
//! prints them together at the end). Without the variable, recording does nothing, so the
//! benches still run alone with `cargo bench`.

#![allow(dead_code)] // each bench uses part of it

use std::io::Write;
use std::time::Duration;

/// How a measurement compares with its baseline.
pub enum Better {
    /// Smaller is better (times): the factor is baseline ÷ portcullis.
    Lower,
    /// Larger is better (rates): the factor is portcullis ÷ baseline.
    Higher,
}

/// One headline: `portcullis` measured beside `baseline_value` of `baseline`, in the same run.
pub fn record(
    area: &str,
    measurement: &str,
    portcullis: &str,
    baseline: Option<(&str, &str)>,
    factor: Option<f64>,
) {
    let Some(path) = std::env::var_os("PORTCULLIS_BENCH_SUMMARY") else {
        return;
    };
    let (name, value) = baseline.unwrap_or(("—", "—"));
    let factor = factor.map_or("—".to_owned(), |f| {
        if f >= 10.0 {
            format!("{f:.0}×")
        } else {
            format!("{f:.2}×")
        }
    });
    let line = format!("{area}\t{measurement}\t{portcullis}\t{name}\t{value}\t{factor}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("summary: cannot append to {}: {e}", path.to_string_lossy());
    }
}

/// A time of portcullis beside the time of `baseline` (smaller is better).
pub fn times(area: &str, measurement: &str, ours: Duration, baseline: &str, theirs: Duration) {
    record(
        area,
        measurement,
        &ms(ours),
        Some((baseline, &ms(theirs))),
        factor(ours.as_secs_f64(), theirs.as_secs_f64(), Better::Lower),
    );
}

/// The factor by which portcullis is better than the baseline.
pub fn factor(portcullis: f64, baseline: f64, better: Better) -> Option<f64> {
    let f = match better {
        Better::Lower => baseline / portcullis,
        Better::Higher => portcullis / baseline,
    };
    f.is_finite().then_some(f)
}

/// Milliseconds with precision that suits the size.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}
