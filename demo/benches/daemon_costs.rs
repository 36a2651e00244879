//! What the running daemon costs and how fast it is, measured on the real binary in a network
//! namespace (needs root):
//!
//! 1. propagation: an operator drains an instance through the real ADMIN's HTTP API
//!    (`portcullis-admin`'s server, in-process, on the example catalog and on a generated
//!    10k-instance one) → the change applied in the kernel (the daemon's journal line is
//!    written right after `nft` returns), p50/p99 over N drains and undrains, with plain
//!    polling at 1 s and with long-polling, in the same run;
//! 2. steady state at 100k rows: CPU time per unchanged poll (a 304) beside the same poll
//!    without a conditional GET (the whole export re-fetched, parsed and diffed each time),
//!    and the daemon's resident memory. This part uses the stand-in ADMIN of the tests,
//!    which can be told to ignore ETags (the baseline).
//!
//! `cargo build --release -p portcullis && cargo bench -p portcullis-demo --bench daemon_costs`
//! prints tables (`benches/run` does both); `-- --quick` does 20 changes and a 10k steady
//! state; `-- --steady-only` only the 100k-row steady state. It lives in the demo crate, not
//! in the gateway's benches, because it embeds ADMIN as a library: a dev-dependency would put
//! ADMIN back into the gateway's build graph. The gateway binary it runs is therefore found
//! beside it, not handed over by cargo: see [`gateway_binary`].

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../benches/summary.rs"]
mod summary;

use common::lab::in_netns;
use common::stub_admin::{self, Mode, Stub};
use common::Netns;
use portcullis_admin::serve::{self, AdminState, Options, RunningServer};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn body(rows: &[portcullis_export::ExportRow]) -> Vec<u8> {
    portcullis_export::to_string(rows)
        .expect("valid")
        .into_bytes()
}

const TOKEN: &str = "bench-token";

/// The catalog ADMIN serves, and the instance the bench drains in it.
#[derive(Clone, Copy)]
enum Catalog {
    /// `admin/example-catalog`: a handful of small services (the demo's).
    Example,
    /// `portcullis_admin::synth` with this many instances: 40 servers per service type, most
    /// of them persistent — the nft backend's worst case for a drain.
    Generated(usize),
}

impl Catalog {
    fn label(self) -> String {
        match self {
            Catalog::Example => "the example catalog".into(),
            Catalog::Generated(n) => format!("a generated {n}-instance catalog"),
        }
    }

    fn write(self, dir: &Path) {
        match self {
            Catalog::Example => portcullis_admin::catalog::copy_files(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("../admin/example-catalog"),
                dir,
            )
            .expect("copy the example catalog"),
            Catalog::Generated(n) => write_catalog(dir, &portcullis_admin::synth::sources(n, 7)),
        }
    }

    /// An instance in production whose drain changes a real server's weight.
    fn instance(self, catalog: &portcullis_admin::Catalog) -> String {
        let type_name = match self {
            Catalog::Example => "pgw",
            Catalog::Generated(_) => "t00",
        };
        catalog
            .inventory
            .instances
            .iter()
            .find(|i| i.type_name == type_name && i.state == portcullis_admin::State::Production)
            .map(|i| i.id.clone())
            .expect("a production instance to drain")
    }
}

/// The real ADMIN server on a generated catalog, listening inside the gateway's namespace
/// (the socket is bound there; the server's tasks run on this process's runtime).
struct Admin {
    runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    state: AdminState,
    dir: PathBuf,
}

impl Admin {
    fn start(ns: &str, catalog: Catalog) -> (String, Admin) {
        let dir = common::tmp_dir("costs-admin");
        catalog.write(&dir);
        let listener = in_netns(ns, || std::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind in the namespace");
        listener.set_nonblocking(true).expect("nonblocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let options = Options {
            token: Some(TOKEN.into()),
            ..Options::default()
        };
        let state = AdminState::open(&dir, options).expect("the generated catalog is valid");
        let server = runtime
            .block_on(async {
                serve::spawn(state.clone(), tokio::net::TcpListener::from_std(listener)?)
            })
            .expect("serve");
        let url = format!("{}/v1/export.csv", server.url());
        let admin = Admin {
            runtime,
            server: Some(server),
            state,
            dir,
        };
        (url, admin)
    }

    fn export_rows(&self) -> usize {
        let snap = self.state.snapshot();
        snap.csv
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
            .count()
            .saturating_sub(1)
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.stop());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_catalog(dir: &Path, sources: &portcullis_admin::catalog::Sources) {
    std::fs::create_dir_all(dir.join("meta")).expect("catalog dir");
    std::fs::write(dir.join("inventory.yaml"), &sources.inventory).expect("inventory");
    for (stem, text) in &sources.metas {
        std::fs::write(dir.join("meta").join(format!("{stem}.yaml")), text).expect("meta");
    }
}

/// The gateway binary to measure. Cargo hands a package's tests and benches only that
/// package's own binaries (`CARGO_BIN_EXE_*`), and the gateway is another package: so
/// `PORTCULLIS_BIN` if set, else `portcullis` in this bench's profile directory
/// (`target/release/deps/daemon_costs-…` → `target/release/portcullis`), where
/// `cargo build --release -p portcullis` puts it. Build it first: this bench does not, and a
/// stale binary measures old code.
fn gateway_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTCULLIS_BIN") {
        return PathBuf::from(path);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("portcullis")));
    match beside {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "no gateway binary beside this bench ({beside:?}): run `cargo build --release -p portcullis` first, or set PORTCULLIS_BIN"
        ),
    }
}

/// What the daemon polls: the real ADMIN, or the tests' stand-in.
enum Server {
    Admin(Admin),
    Stub(Arc<Stub>),
}

/// A gateway namespace with an ADMIN inside it and the daemon polling it.
struct Rig {
    // Dropped in this order: the daemon first, then its server, then the namespace.
    daemon: Child,
    server: Server,
    state: PathBuf,
    _ns: Netns,
}

impl Rig {
    fn start(tag: &str, server: impl FnOnce(&str) -> (String, Server), flags: &[&str]) -> Rig {
        let ns = Netns::new(tag);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        let (url, server) = server(&ns.name);
        let state = common::tmp_dir(&format!("costs-{tag}"));
        let daemon = ns
            .command(&gateway_binary().to_string_lossy())
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
            daemon,
            server,
            state,
            _ns: ns,
        };
        let started = common::wait_until(120, || (rig.journal_lines() >= 1).then_some(()));
        assert!(started.is_some(), "the daemon applied the first export");
        rig
    }

    fn stub(&self) -> &Stub {
        match &self.server {
            Server::Stub(s) => s,
            Server::Admin(_) => panic!("this rig runs the real ADMIN"),
        }
    }

    /// The daemon's own time for its last apply (parse, diff, nft), from its journal.
    fn last_apply(&self) -> Duration {
        std::fs::read_to_string(self.state.join("journal.jsonl"))
            .ok()
            .and_then(|t| {
                let last = t.lines().last()?.to_owned();
                serde_json::from_str::<serde_json::Value>(&last).ok()
            })
            .and_then(|v| v["duration_ms"].as_f64())
            .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms / 1000.0))
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

/// Sorted times of one propagation run.
struct Propagation {
    /// POST sent → the daemon's journal shows the change applied.
    end_to_end: Vec<Duration>,
    /// POST sent → ADMIN answered.
    admin: Vec<Duration>,
    /// The daemon's own time per apply (parse, diff, nft).
    apply: Vec<Duration>,
    rows: usize,
}

/// Drains and undrains one instance through ADMIN's HTTP API `changes` times and times each
/// from the request until the daemon's journal shows the change applied. Returns the sorted
/// end-to-end times with ADMIN's share (answering the POST: rewrite inventory.yaml, re-derive
/// and publish the export) and the daemon's apply time.
fn propagation(catalog: Catalog, changes: usize, flags: &[&str]) -> Propagation {
    let rig = Rig::start(
        "prop",
        |ns| {
            let (url, admin) = Admin::start(ns, catalog);
            (url, Server::Admin(admin))
        },
        flags,
    );
    let Server::Admin(admin) = &rig.server else {
        unreachable!("started with the real ADMIN")
    };
    let url = base_url(admin);
    let id = catalog.instance(&admin.state.snapshot().catalog);
    // A socket belongs to the namespace of the thread that creates it: the blocking client
    // connects from its own thread, spawned here inside the gateway's namespace.
    let client = in_netns(&rig._ns.name, reqwest::blocking::Client::new);
    let mut times = Vec::with_capacity(changes);
    let mut admin_times = Vec::with_capacity(changes);
    let mut apply_times = Vec::with_capacity(changes);
    for i in 1..=changes {
        std::thread::sleep(jitter(Duration::from_millis(1000), i));
        let action = if i % 2 == 1 { "drain" } else { "undrain" };
        let before = rig.journal_lines();
        let t0 = Instant::now();
        let answer = client
            .post(format!("{url}/v1/instances/{id}/{action}"))
            .bearer_auth(TOKEN)
            .send()
            .expect("ADMIN answers");
        admin_times.push(t0.elapsed());
        assert!(
            answer.status().is_success(),
            "{action} {id}: {}",
            answer.status()
        );
        // Probed every millisecond (a stat and a read of a small file): the wait_until of the
        // tests polls every 50 ms, too coarse to time this.
        while rig.journal_lines() <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{action} {i} was applied"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(t0.elapsed());
        apply_times.push(rig.last_apply());
    }
    times.sort();
    admin_times.sort();
    apply_times.sort();
    Propagation {
        end_to_end: times,
        admin: admin_times,
        apply: apply_times,
        rows: admin.export_rows(),
    }
}

fn base_url(admin: &Admin) -> String {
    admin
        .server
        .as_ref()
        .map(|s| s.url())
        .expect("the server runs")
}

fn steady_state(rows: &[portcullis_export::ExportRow], window: Duration) {
    println!(
        "\n## Steady state at {} rows (polling every 100 ms, {window:?} window)\n",
        rows.len()
    );
    println!("| poll | polls | CPU per poll | RSS after |");
    println!("|---|---:|---:|---:|");
    let mut per_poll = Vec::new();
    let mut rss = (0.0, 0.0);
    for (label, mode) in [
        ("conditional GET (304)", Mode::Normal),
        (
            "baseline: unconditional (200, parse, diff)",
            Mode::Unconditional,
        ),
    ] {
        let export = body(rows);
        let rig = Rig::start(
            "steady",
            |ns| {
                let (url, stub) = in_netns(ns, move || stub_admin::start(&export));
                (url, Server::Stub(stub))
            },
            &["--interval", "100ms", "--long-poll", "0s"],
        );
        rig.stub().lock().expect("lock").mode = mode;
        std::thread::sleep(Duration::from_millis(500));
        let (cpu0, polls0) = (rig.cpu(), rig.counter("polls"));
        std::thread::sleep(window);
        let (cpu1, polls1) = (rig.cpu(), rig.counter("polls"));
        let polls = polls1.saturating_sub(polls0).max(1);
        let each = (cpu1 - cpu0) / polls as u32;
        per_poll.push(each);
        let (now, peak) = (
            rig.memory_kib("VmRSS:") as f64 / 1024.0,
            rig.memory_kib("VmHWM:") as f64 / 1024.0,
        );
        if mode == Mode::Normal {
            rss = (now, peak);
        }
        println!(
            "| {label} | {polls} | {:.3} ms | {now:.1} MiB (peak {peak:.1} MiB) |",
            each.as_secs_f64() * 1000.0,
        );
    }
    println!(
        "\nA 304 costs {:.1}x less CPU than re-fetching and re-parsing the export.",
        per_poll[1].as_secs_f64() / per_poll[0].as_secs_f64().max(1e-9)
    );
    summary::record(
        "daemon",
        &format!("CPU per unchanged poll, {} rows", rows.len()),
        &format!("{} (304)", summary::ms(per_poll[0])),
        Some(("unconditional GET, parse, diff", &summary::ms(per_poll[1]))),
        summary::factor(
            per_poll[0].as_secs_f64(),
            per_poll[1].as_secs_f64(),
            summary::Better::Lower,
        ),
    );
    summary::record(
        "daemon",
        &format!("resident memory between changes, {} rows", rows.len()),
        &format!("{:.1} MiB (peak {:.1} MiB)", rss.0, rss.1),
        None,
        None,
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !common::require_nft() {
        eprintln!("daemon_costs: needs root and nft; nothing measured");
        return;
    }
    let changes = if quick { 20 } else { 100 };
    println!("# portcullis daemon: propagation latency and steady-state cost");
    println!(
        "machine: {} cores; release build; ADMIN in the gateway's namespace, on loopback",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if std::env::args().any(|a| a == "--steady-only") {
        steady_state(&portcullis::synth::rows(100_000), Duration::from_secs(10));
        return;
    }
    println!(
        "\n## Propagation: `POST /v1/instances/ID/drain` (or undrain) on ADMIN → applied in the kernel\n"
    );
    println!("{changes} changes per line, alternately drain and undrain of one instance, at random moments. ADMIN's share is the POST's round trip: it rewrites inventory.yaml, re-derives the export and wakes the held polls before answering. The daemon's apply is its journal's duration: parse, validate, diff and the nft transaction.\n");
    println!("| catalog | export rows | mode | p50 | p99 | max | of which ADMIN answering the POST, p50 | of which the daemon's apply, p50 |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for catalog in [Catalog::Example, Catalog::Generated(10_000)] {
        // (p50, p99) of plain polling, then of long-poll.
        let mut cells = Vec::new();
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
            let p = propagation(catalog, changes, &flags);
            let t = &p.end_to_end;
            println!(
                "| {} | {} | {label} | {} | {} | {} | {} | {} |",
                catalog.label(),
                p.rows,
                ms(percentile(t, 0.5)),
                ms(percentile(t, 0.99)),
                ms(t[t.len() - 1]),
                ms(percentile(&p.admin, 0.5)),
                ms(percentile(&p.apply, 0.5)),
            );
            cells.push((percentile(t, 0.5), percentile(t, 0.99)));
        }
        for (what, plain, long) in [
            ("p50", cells[0].0, cells[1].0),
            ("p99", cells[0].1, cells[1].1),
        ] {
            summary::record(
                "daemon",
                &format!(
                    "ADMIN drain → applied in the kernel, {what}, {}",
                    catalog.label()
                ),
                &format!("{} (long-poll)", summary::ms(long)),
                Some(("plain polling every 1 s", &summary::ms(plain))),
                summary::factor(
                    long.as_secs_f64(),
                    plain.as_secs_f64(),
                    summary::Better::Lower,
                ),
            );
        }
    }
    steady_state(
        &portcullis::synth::rows(if quick { 10_000 } else { 100_000 }),
        Duration::from_secs(if quick { 5 } else { 20 }),
    );
}
