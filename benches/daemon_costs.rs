//! What the running daemon costs and how fast it is, measured on the real binary in a network
//! namespace (needs root), against a stand-in ADMIN that long-polls:
//!
//! 1. propagation: an export change on the server → the change applied in the kernel (the
//!    daemon's journal line is written right after `nft` returns), p50/p99 over N changes,
//!    with plain polling at 1 s and with long-polling, in the same run;
//! 2. steady state at 100k rows: CPU time per unchanged poll (a 304) beside the same poll
//!    without a conditional GET (the whole export re-fetched, parsed and diffed each time),
//!    and the daemon's resident memory.
//!
//! `cargo bench --bench daemon_costs` prints tables; `-- --quick` does 20 changes, 10k rows.

#[path = "../tests/common/mod.rs"]
mod common;

use common::lab::in_netns;
use common::stub_admin::{self, Mode, Stub};
use common::Netns;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn body(rows: &[portcullis_export::ExportRow]) -> Vec<u8> {
    portcullis_export::to_string(rows)
        .expect("valid")
        .into_bytes()
}

/// A gateway namespace with the stub ADMIN inside it and the daemon polling it.
struct Rig {
    _ns: Netns,
    stub: Arc<Stub>,
    daemon: Child,
    state: PathBuf,
}

impl Rig {
    fn start(tag: &str, export: Vec<u8>, flags: &[&str]) -> Rig {
        let ns = Netns::new(tag);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        let (url, stub) = in_netns(&ns.name, move || stub_admin::start(&export));
        let state = std::env::temp_dir().join(format!("pc-costs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let daemon = ns
            .command(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "run",
                "--source",
                &url,
                "--external-iface",
                "lo",
                "--state-dir",
            ])
            .arg(&state)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("portcullis run");
        let rig = Rig {
            _ns: ns,
            stub,
            daemon,
            state,
        };
        let started = common::wait_until(120, || (rig.journal_lines() >= 1).then_some(()));
        assert!(started.is_some(), "the daemon applied the first export");
        rig
    }

    fn journal_lines(&self) -> usize {
        std::fs::read_to_string(self.state.join("journal.jsonl")).map_or(0, |t| t.lines().count())
    }

    fn counter(&self, name: &str) -> u64 {
        std::fs::read_to_string(self.state.join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v[name].as_u64())
            .unwrap_or(0)
    }

    fn proc_file(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.daemon.id())).unwrap_or_default()
    }

    /// CPU time the daemon has used (schedstat: nanoseconds on a CPU).
    fn cpu(&self) -> Duration {
        let ns = self
            .proc_file("schedstat")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Duration::from_nanos(ns)
    }

    fn memory_kib(&self, field: &str) -> u64 {
        self.proc_file("status")
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        common::terminate(&mut self.daemon);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A pause of 0..max that does not line up with the poll timer.
fn jitter(max: Duration, i: usize) -> Duration {
    let nanos = Instant::now().elapsed().subsec_nanos() as u64
        ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Duration::from_nanos(nanos % max.as_nanos() as u64)
}

/// Publishes `changes` exports (one weight flipped each time) and times each until the
/// daemon's journal shows it applied.
fn propagation(
    rows: &[portcullis_export::ExportRow],
    changes: usize,
    flags: &[&str],
) -> Vec<Duration> {
    let rig = Rig::start("prop", body(rows), flags);
    let mut rows = rows.to_vec();
    let mut times = Vec::with_capacity(changes);
    for i in 1..=changes {
        std::thread::sleep(jitter(Duration::from_millis(1000), i));
        rows[0].weight = if rows[0].weight == 0 { 100 } else { 0 };
        let published = body(&rows);
        let before = rig.journal_lines();
        let t0 = Instant::now();
        rig.stub.publish(published, &format!("\"c{i}\""));
        // Probed every millisecond (a stat and a read of a small file): the wait_until of the
        // tests polls every 50 ms, too coarse to time this.
        while rig.journal_lines() <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "change {i} was applied"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(t0.elapsed());
    }
    times.sort();
    times
}

fn steady_state(rows: &[portcullis_export::ExportRow], window: Duration) {
    println!(
        "\n## Steady state at {} rows (polling every 100 ms, {window:?} window)\n",
        rows.len()
    );
    println!("| poll | polls | CPU per poll | RSS after |");
    println!("|---|---:|---:|---:|");
    let mut per_poll = Vec::new();
    for (label, mode) in [
        ("conditional GET (304)", Mode::Normal),
        (
            "baseline: unconditional (200, parse, diff)",
            Mode::Unconditional,
        ),
    ] {
        let rig = Rig::start(
            "steady",
            body(rows),
            &["--interval", "100ms", "--long-poll", "0s"],
        );
        rig.stub.lock().expect("lock").mode = mode;
        std::thread::sleep(Duration::from_millis(500));
        let (cpu0, polls0) = (rig.cpu(), rig.counter("polls"));
        std::thread::sleep(window);
        let (cpu1, polls1) = (rig.cpu(), rig.counter("polls"));
        let polls = polls1.saturating_sub(polls0).max(1);
        let each = (cpu1 - cpu0) / polls as u32;
        per_poll.push(each);
        println!(
            "| {label} | {polls} | {:.3} ms | {:.1} MiB (peak {:.1} MiB) |",
            each.as_secs_f64() * 1000.0,
            rig.memory_kib("VmRSS:") as f64 / 1024.0,
            rig.memory_kib("VmHWM:") as f64 / 1024.0
        );
    }
    println!(
        "\nA 304 costs {:.1}x less CPU than re-fetching and re-parsing the export.",
        per_poll[1].as_secs_f64() / per_poll[0].as_secs_f64().max(1e-9)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !common::require_nft() {
        eprintln!("daemon_costs: needs root and nft; nothing measured");
        return;
    }
    let (changes, rows) = if quick { (20, 10_000) } else { (100, 10_000) };
    println!("# portcullis daemon: propagation latency and steady-state cost");
    println!(
        "machine: {} cores; release build; stand-in ADMIN in the gateway's namespace",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let export = portcullis::synth::rows(rows);
    println!("\n## Propagation: export changed on the server → applied in the kernel ({changes} changes, {rows} rows)\n");
    println!("| mode | p50 | p99 | max |");
    println!("|---|---:|---:|---:|");
    for (label, flags) in [
        (
            "plain polling, 1 s",
            ["--interval", "1s", "--long-poll", "0s"],
        ),
        (
            "long-poll (30 s hold)",
            ["--interval", "1s", "--long-poll", "30s"],
        ),
    ] {
        let t = propagation(&export, changes, &flags);
        println!(
            "| {label} | {} | {} | {} |",
            ms(percentile(&t, 0.5)),
            ms(percentile(&t, 0.99)),
            ms(t[t.len() - 1])
        );
    }
    steady_state(
        &portcullis::synth::rows(if quick { 10_000 } else { 100_000 }),
        Duration::from_secs(if quick { 5 } else { 20 }),
    );
}
