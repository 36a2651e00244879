//! Propagation through two ADMIN replicas sharing one PostgreSQL: an operator drains (or
//! undrains) an instance on replica A, the gateway daemon long-polls replica B, and the time
//! runs from the POST until the change is applied in the kernel (the daemon's journal line is
//! written right after `nft` returns). Beside it, in the same run: the same daemon, catalog and
//! changes with one ADMIN on a directory catalog, so the result is a ratio. Every component is
//! a real process in a network namespace (PostgreSQL outside it, reached over its socket):
//! needs root, nft and PostgreSQL's server binaries.
//!
//! `cargo build --release -p portcullis -p portcullis-admin && cargo bench -p portcullis-demo
//! --bench replica_costs` prints the table (`benches/run` does both); `-- --quick` does 20
//! changes instead of 100. The binaries are found beside the bench (tests/support/replicas.rs):
//! build them first, a stale one measures old code.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../admin/tests/support/pg.rs"]
#[allow(dead_code)] // ADMIN's tests use the rest
mod pg;
#[path = "../tests/support/replicas.rs"]
mod replicas;
#[path = "../../benches/summary.rs"]
mod summary;

use replicas::{Admin, Gateway, INSTANCE};
use std::time::{Duration, Instant};

/// Sorted times of one run.
struct Run {
    /// POST sent → the daemon's journal shows the change applied.
    end_to_end: Vec<Duration>,
    /// POST sent → ADMIN answered (for a replica: validated, committed, NOTIFY sent).
    admin: Vec<Duration>,
    /// The daemon's own time per apply (parse, diff, nft).
    apply: Vec<Duration>,
}

/// A pause of 0..max that does not line up with any timer.
fn jitter(max: Duration, i: usize) -> Duration {
    let nanos = Instant::now().elapsed().subsec_nanos() as u64
        ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Duration::from_nanos(nanos % max.as_nanos() as u64)
}

/// `changes` drains and undrains of [`INSTANCE`] posted to `on`, each timed until `gw` has
/// applied it.
fn measure(gw: &Gateway, on: &Admin, http: &reqwest::blocking::Client, changes: usize) -> Run {
    let mut run = Run {
        end_to_end: Vec::with_capacity(changes),
        admin: Vec::with_capacity(changes),
        apply: Vec::with_capacity(changes),
    };
    for i in 1..=changes {
        std::thread::sleep(jitter(Duration::from_millis(200), i));
        let action = if i % 2 == 1 { "drain" } else { "undrain" };
        let before = gw.journal_lines();
        let t0 = Instant::now();
        on.post(http, INSTANCE, action);
        run.admin.push(t0.elapsed());
        run.end_to_end.push(gw.applied_after(before, t0));
        run.apply.push(gw.last_apply());
    }
    run.end_to_end.sort();
    run.admin.sort();
    run.apply.sort();
    run
}

/// One ADMIN on a directory copy of the example catalog; the daemon long-polls it.
fn single(changes: usize) -> Run {
    let ns = replicas::namespace("rc-dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = dir.path().join("catalog");
    portcullis_admin::catalog::copy_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../admin/example-catalog"),
        &catalog,
    )
    .expect("copy the example catalog");
    let admin = Admin::directory(&ns, &catalog, 8001, dir.path());
    let http = replicas::client(&ns.name);
    admin.ready(&http);
    let gw = Gateway::start(&ns, &[&admin.export_url()], "5s");
    measure(&gw, &admin, &http, changes)
}

/// Replicas A and B on one PostgreSQL; the daemon's `source` lists B then A (it stays on B);
/// the changes are posted to A.
fn two_replicas(pg: &pg::Cluster, changes: usize) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let host_url = runtime.block_on(pg.create_db("bench"));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../admin/example-catalog");
    replicas::admin_cli(&["catalog", "import", example, "--state", &host_url]);
    let ns = replicas::namespace("rc-pg");
    let logs = tempfile::tempdir().expect("temp dir");
    let state = pg.socket_url("bench");
    let a = Admin::replica(&ns, &state, 8001, logs.path());
    let b = Admin::replica(&ns, &state, 8002, logs.path());
    let http = replicas::client(&ns.name);
    a.ready(&http);
    b.ready(&http);
    let gw = Gateway::start(&ns, &[&b.export_url(), &a.export_url()], "5s");
    let run = measure(&gw, &a, &http, changes);
    assert_eq!(gw.source(), Some(b.export_url()), "the daemon stayed on B");
    run
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    if !common::require_nft() {
        eprintln!("replica_costs: needs root and nft; nothing measured");
        return;
    }
    let Some(pg) = pg::Cluster::start() else {
        eprintln!("replica_costs: needs PostgreSQL's server binaries; nothing measured");
        return;
    };
    let changes = if std::env::args().any(|a| a == "--quick") {
        20
    } else {
        100
    };
    println!("# portcullis: ADMIN replicas on PostgreSQL, propagation to the kernel");
    println!(
        "machine: {} cores; {} build",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    println!("\n## Two ADMIN replicas on one PostgreSQL: a change posted to replica A → applied in the kernel by a daemon long-polling replica B\n");
    println!("{changes} changes per line, alternately drain and undrain of {INSTANCE} on the example catalog, 0-200 ms apart. Every component is a process: `portcullis-admin serve`, the daemon (`portcullis run`, nft backend, long-poll 30 s) in a network namespace; PostgreSQL is a throwaway local cluster (fsync off) reached over its socket. ADMIN's share is the POST's round trip (for a replica: the serializable transaction, commit and NOTIFY); the daemon's apply is its journal's duration. Load average before: {}.\n", load());
    println!("| ADMIN | p50 | p99 | max | of which ADMIN answering the POST, p50 | of which the daemon's apply, p50 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let runs = [
        ("one ADMIN, directory catalog (baseline)", single(changes)),
        (
            "replicas A and B on one PostgreSQL: POST on A, daemon on B",
            two_replicas(&pg, changes),
        ),
    ];
    for (label, run) in &runs {
        let t = &run.end_to_end;
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            ms(percentile(t, 0.5)),
            ms(percentile(t, 0.99)),
            ms(t[t.len() - 1]),
            ms(percentile(&run.admin, 0.5)),
            ms(percentile(&run.apply, 0.5)),
        );
    }
    let (one, two) = (&runs[0].1.end_to_end, &runs[1].1.end_to_end);
    let p99 = percentile(two, 0.99);
    println!(
        "\nThrough two replicas: p50 {:.2}x, p99 {:.2}x the single ADMIN's. Goal p99 ≤ 250 ms: {}. Load average after: {}",
        percentile(two, 0.5).as_secs_f64() / percentile(one, 0.5).as_secs_f64(),
        p99.as_secs_f64() / percentile(one, 0.99).as_secs_f64(),
        if p99 <= Duration::from_millis(250) {
            "met"
        } else {
            "NOT met"
        },
        load()
    );
    for (what, p) in [("p50", 0.5), ("p99", 0.99)] {
        summary::times(
            "daemon",
            &format!("drain on ADMIN replica A → applied in the kernel via replica B, {what}"),
            percentile(two, p),
            "one ADMIN, directory catalog",
            percentile(one, p),
        );
    }
}
