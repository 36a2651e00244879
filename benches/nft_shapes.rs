//! The nft data plane on three export shapes (issue 15), in network namespaces (needs root).
//! Row count alone does not say what a table costs: two-server services, persistent services
//! of 40 real servers and fwmark port ranges render to very different element counts. For
//! each shape at 10k and 100k rows (`-- --quick`: 10k only), beside baselines of the same run:
//!
//! - elements in the full render, per export row;
//! - cold load: portcullis' first sync against `nft -f` of the very same script (the raw
//!   floor) and the seed's `iptables-restore` of one rule per row;
//! - kernel memory of the loaded table (the machine's unreclaimable slab, so approximate);
//! - one change through the daemon's path (`Syncer::sync` against the loaded table) and
//!   through `portcullis apply --once` (a process, the stamped table, the state directory),
//!   against the seed's reload of its whole file.
//!
//! Prints one Markdown section; headline results also go to the run's summary.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/seed.rs"]
mod seed;
#[path = "support/shapes.rs"]
mod shapes;
#[path = "summary.rs"]
mod summary;

use common::Netns;
use portcullis::apply::{ConntrackNetlink, NftCli, Syncer};
use portcullis::model::DesiredState;
use portcullis::render::nft::transaction::{Object, Op};
use portcullis::render::nft::{full_ruleset, Backend, RenderOptions};
use portcullis_export::ExportRow;
use seed::{baseline, median, ms, nft_file};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Rounds of each one-change pair against the loaded table (the daemon's path).
const DAEMON_ROUNDS: usize = 9;
/// Idle time before each timed one-change sync. A sync hands the state it replaced to a
/// thread that frees it (10–20 ms for 100k rows); the daemon's changes come seconds apart
/// (a poll, a long-poll wake-up, a health transition), so that thread has finished before the
/// next one. Back to back, the bench would time the two fighting over the allocator and the
/// machine's two cores instead.
const SETTLE: Duration = Duration::from_millis(100);
/// Rounds of drain/undrain through `apply --once` (a process start each).
const APPLY_ROUNDS: usize = 3;
/// Above this per cold load, one repetition has to do (100k rows of a costly shape).
const SLOW_REP: Duration = Duration::from_secs(60);

type Shape = (&'static str, fn(usize) -> Vec<ExportRow>);

fn persistent(n: usize) -> Vec<ExportRow> {
    shapes::persistent_rows(n, None)
}

const SHAPES: [Shape; 3] = [
    ("two servers", shapes::two_server_rows),
    ("persistent 40", persistent),
    ("fwmark ranges", shapes::fwmark_range_rows),
];

fn syncer(ns: &Netns, opts: &RenderOptions) -> Syncer<NftCli, ConntrackNetlink> {
    Syncer::new(
        NftCli::in_netns(&ns.name),
        ConntrackNetlink::in_netns(&ns.name).expect("conntrack socket"),
        opts.clone(),
    )
}

/// Elements the full render adds, in total and per set (what the kernel has to hold).
fn elements(state: &DesiredState, opts: &RenderOptions) -> (usize, BTreeMap<String, usize>) {
    let tx = full_ruleset(state, opts);
    let mut by_set = BTreeMap::new();
    for op in &tx.ops {
        if let Op::Add(Object::Element(e)) = op {
            *by_set.entry(e.set.clone()).or_insert(0) += 1;
        }
    }
    (by_set.values().sum(), by_set)
}

/// `SUnreclaim` of /proc/meminfo in KiB: the slab the kernel cannot give back, where nf_tables
/// objects (and iptables-nft's) live. Machine-wide, so anything else running moves it too.
fn sunreclaim_kib() -> i64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix("SUnreclaim:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("SUnreclaim in /proc/meminfo")
}

/// [`sunreclaim_kib`] once it stops moving: a namespace deleted just before is freed by a
/// kernel worker after RCU grace periods, and a commit frees its transaction the same way.
/// At most 3 s; then whatever it reads.
fn settled_sunreclaim_kib() -> i64 {
    let mut last = sunreclaim_kib();
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        let now = sunreclaim_kib();
        if (now - last).abs() < 256 {
            return now;
        }
        last = now;
    }
    last
}

fn median_kib(mut v: Vec<i64>) -> i64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn mib(kib: i64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `a / b` as a factor.
fn factor(a: Duration, b: Duration) -> String {
    let f = a.as_secs_f64() / b.as_secs_f64();
    if f >= 10.0 {
        format!("{f:.0}×")
    } else {
        format!("{f:.2}×")
    }
}

/// One `portcullis apply --once` of `export` in `ns`, timed as a whole process run.
fn apply_once(ns: &Netns, bin: &Path, export: &Path, state_dir: &Path) -> (Duration, String) {
    let args = [
        "apply".as_ref(),
        "--once".as_ref(),
        "--external-iface".as_ref(),
        "eth0".as_ref(),
        "--source".as_ref(),
        export.as_os_str(),
        "--state-dir".as_ref(),
        state_dir.as_os_str(),
    ];
    let (took, out) = seed::run_in(ns, &bin.to_string_lossy(), &args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("{text}");
        panic!("portcullis apply --once {} failed", export.display());
    }
    (took, text)
}

/// Drain and undrain (original again) through `apply --once`, after a first apply that loads
/// and stamps the table: medians. Both must take the stamped path, or this would time a read
/// back of the whole table instead.
fn apply_once_path(
    bin: &Path,
    rows: &[ExportRow],
    drained: &[ExportRow],
    tag: &str,
) -> (Duration, Duration) {
    let dir = common::tmp_dir(&format!("shapes-{tag}"));
    let (original, changed) = (dir.join("export.csv"), dir.join("export-drained.csv"));
    for (path, rows) in [(&original, rows), (&changed, drained)] {
        let text = portcullis_export::to_string(rows).expect("generated rows are a valid export");
        std::fs::write(path, text).expect("write the export");
    }
    let state_dir = dir.join("state");
    let ns = Netns::new(&format!("once{tag}"));
    apply_once(&ns, bin, &original, &state_dir);
    let (mut drain, mut undrain) = (Vec::new(), Vec::new());
    for _ in 0..APPLY_ROUNDS {
        for (export, times) in [(&changed, &mut drain), (&original, &mut undrain)] {
            let (took, text) = apply_once(&ns, bin, export, &state_dir);
            assert!(
                text.contains("only the difference"),
                "apply --once {} did not take the stamped path:\n{text}",
                export.display()
            );
            times.push(took);
        }
    }
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
    (median(drain), median(undrain))
}

/// `change` then `back` against the table `s` has loaded, [`DAEMON_ROUNDS`] times: the
/// medians of each. Only the sync is timed; the state it takes is cloned beforehand.
fn round_trips(
    s: &mut Syncer<NftCli, ConntrackNetlink>,
    change: &DesiredState,
    back: &DesiredState,
) -> (Duration, Duration) {
    let (mut there, mut returned) = (Vec::new(), Vec::new());
    for _ in 0..DAEMON_ROUNDS {
        for (next, times) in [(change, &mut there), (back, &mut returned)] {
            let next = next.clone();
            std::thread::sleep(SETTLE);
            let t = Instant::now();
            s.sync(next).expect("one-change sync");
            times.push(t.elapsed());
        }
    }
    (median(there), median(returned))
}

/// Everything measured for one shape at one size.
struct Measured {
    elements: usize,
    by_set: BTreeMap<String, usize>,
    floor: Duration,
    cold: Duration,
    seed_cold: Duration,
    seed_reload: Duration,
    memory_kib: i64,
    seed_memory_kib: i64,
    namespace_kib: i64,
    drain: Duration,
    undrain: Duration,
    doubled: Duration,
    doubled_back: Duration,
    once: Option<(Duration, Duration)>,
}

fn measure(
    shape: &str,
    rows: &[ExportRow],
    opts: &RenderOptions,
    bin: Option<&Path>,
    tag: &str,
) -> Measured {
    let n = rows.len();
    let drained_rows = shapes::first_server_at(rows, 0);
    let doubled_rows = shapes::first_server_at(rows, rows[0].weight.saturating_mul(2));
    let state = DesiredState::from_rows(rows);
    let drained = DesiredState::from_rows(&drained_rows);
    let doubled = DesiredState::from_rows(&doubled_rows);
    let (elements, by_set) = elements(&state, opts);

    // Cold loads: the raw floor and portcullis, each in a namespace of its own; the kernel
    // memory of the table around portcullis' load (the namespace still alive), and of an empty
    // namespace alone, which the figure includes.
    let script = full_ruleset(&state, opts).to_nft();
    let file = std::env::temp_dir().join(format!("pc-shapes-{}-{tag}.nft", std::process::id()));
    std::fs::write(&file, &script).expect("write script");
    let (mut floor, mut cold, mut memory, mut namespace) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // 10k-row loads take 0.1–0.3 s and vary most between runs: five of them.
    let mut reps = if n <= 10_000 { 5 } else { 3 };
    let mut rep = 0;
    while rep < reps {
        let ns = Netns::new(&format!("floor{tag}{rep}"));
        let took = nft_file(&ns, &file);
        floor.push(took);
        drop(ns);
        if took > SLOW_REP {
            reps = 1;
        }

        let before = settled_sunreclaim_kib();
        let ns = Netns::new(&format!("cold{tag}{rep}"));
        namespace.push(settled_sunreclaim_kib() - before);
        let mut s = syncer(&ns, opts);
        let st = state.clone();
        let t = Instant::now();
        s.sync(st).expect("cold apply");
        cold.push(t.elapsed());
        memory.push(settled_sunreclaim_kib() - before);
        drop(s);
        drop(ns);
        rep += 1;
    }
    let _ = std::fs::remove_file(&file);
    eprintln!("  {shape}, {n} rows: cold loads done ({reps} reps)");

    let (seed_cold, seed_reload) = baseline(reps, rows, n);
    // The seed's rules in the kernel, measured as portcullis' table was.
    let ipt = std::env::temp_dir().join(format!("pc-shapes-{}-{tag}.ipt", std::process::id()));
    std::fs::write(&ipt, seed::iptables_file(rows)).expect("write iptables file");
    let mut seed_memory = Vec::new();
    for rep in 0..reps {
        let before = settled_sunreclaim_kib();
        let ns = Netns::new(&format!("iptmem{tag}{rep}"));
        seed::iptables_restore(&ns, &ipt);
        seed_memory.push(settled_sunreclaim_kib() - before);
    }
    let _ = std::fs::remove_file(&ipt);
    eprintln!("  {shape}, {n} rows: seed done");

    // The daemon's path: full desired states against the loaded table, built before timing.
    let ns = Netns::new(&format!("incr{tag}"));
    let mut s = syncer(&ns, opts);
    s.sync(state.clone()).expect("load");
    let (drain, undrain) = round_trips(&mut s, &drained, &state);
    let (doubled, doubled_back) = round_trips(&mut s, &doubled, &state);
    drop(s);
    drop(ns);
    eprintln!("  {shape}, {n} rows: daemon path done");

    let once = bin.map(|bin| apply_once_path(bin, rows, &drained_rows, tag));
    eprintln!("  {shape}, {n} rows: apply --once done");

    Measured {
        elements,
        by_set,
        floor: median(floor),
        cold: median(cold),
        seed_cold,
        seed_reload,
        memory_kib: median_kib(memory),
        seed_memory_kib: median_kib(seed_memory),
        namespace_kib: median_kib(namespace),
        drain,
        undrain,
        doubled,
        doubled_back,
        once,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !common::require_nft() {
        eprintln!("nft_shapes: needs root and nft; nothing measured");
        return;
    }
    println!("# portcullis nft backend: export shapes benchmark");
    println!("{}", seed::machine());
    println!("{}", seed::tuned_as_the_daemon());
    let sizes: &[usize] = if quick { &[10_000] } else { &[10_000, 100_000] };
    // PORTCULLIS_SHAPES=persistent,fwmark (substrings of the shape names) and
    // PORTCULLIS_SHAPE_ROWS=100000 narrow a run to what is being worked on.
    let only = std::env::var("PORTCULLIS_SHAPES").ok();
    let wanted = |shape: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|w| shape.contains(w.trim())))
    };
    let rows_env: Option<usize> = std::env::var("PORTCULLIS_SHAPE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok());
    let sizes: Vec<usize> = sizes
        .iter()
        .copied()
        .filter(|n| rows_env.is_none_or(|r| r == *n))
        .collect();
    // Cargo builds the package's binary for its benches, in the same profile.
    let bin = Path::new(env!("CARGO_BIN_EXE_portcullis"));
    let bin = bin.exists().then_some(bin);
    if bin.is_none() {
        eprintln!(
            "nft_shapes: no portcullis binary at {}; the apply --once column is skipped",
            env!("CARGO_BIN_EXE_portcullis")
        );
    }
    let opts = common::render_options(Backend::Nft, &["eth0"]);

    println!("\n## Shapes (issue 15): cold load, one change, elements — nft backend, medians\n");
    println!("Every program (nft, iptables-restore, portcullis) is spawned from a thread inside the namespace, as the daemon runs. Cold loads: median of 5 at 10k rows and 3 at 100k, each in a fresh namespace (1 when a load takes over a minute). One change: the first real server of the first service drained (weight 0) or its weight doubled, and back; the daemon's `Syncer::sync` with the whole desired state, median of {DAEMON_ROUNDS}, each after {} ms idle (the thread freeing the replaced state done, as between the daemon's changes); `portcullis apply --once` against its stamped table, a process per apply, median of {APPLY_ROUNDS}. The seed: one iptables DNAT rule per row, its whole file reloaded by `iptables-restore` for any change.\n", SETTLE.as_millis());
    println!("| shape | rows | elements (per row) | cold: raw nft -f | cold: portcullis (÷ raw) | cold: seed iptables-restore | portcullis ÷ seed | kernel memory: portcullis / seed | drain / undrain (daemon) | weight ×2 / back (daemon) | drain / undrain (apply --once) | seed reload | seed ÷ daemon drain | seed ÷ apply --once drain |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for &n in &sizes {
        for (i, (shape, generate)) in SHAPES.iter().enumerate() {
            if !wanted(shape) {
                continue;
            }
            let rows = generate(n);
            let tag = format!("{i}x{}k", n / 1000);
            let m = measure(shape, &rows, &opts, bin, &tag);
            let (once, once_factor) = match m.once {
                Some((drain, undrain)) => (
                    format!("{} / {}", ms(drain), ms(undrain)),
                    factor(m.seed_reload, drain),
                ),
                None => ("—".to_owned(), "—".to_owned()),
            };
            println!(
                "| {shape} | {n} | {} ({:.2}) | {} | {} ({}) | {} | {} | {} / {} | {} / {} | {} / {} | {once} | {} | {} | {once_factor} |",
                m.elements,
                m.elements as f64 / n as f64,
                ms(m.floor),
                ms(m.cold),
                factor(m.cold, m.floor),
                ms(m.seed_cold),
                factor(m.cold, m.seed_cold),
                mib(m.memory_kib),
                mib(m.seed_memory_kib),
                ms(m.drain),
                ms(m.undrain),
                ms(m.doubled),
                ms(m.doubled_back),
                ms(m.seed_reload),
                factor(m.seed_reload, m.drain),
            );
            let sets: Vec<String> = m.by_set.iter().map(|(s, c)| format!("{s} {c}")).collect();
            let lb: usize = m
                .by_set
                .iter()
                .filter(|(s, _)| s.starts_with("lb_"))
                .map(|(_, c)| c)
                .sum();
            notes.push(format!(
                "- {shape}, {n} rows: {} elements, {lb} in `lb_*` sets ({}); an empty namespace alone: {} KiB of the memory figure",
                m.elements,
                sets.join(", "),
                m.namespace_kib
            ));
            let area = "nft shapes";
            for (what, ours, baseline, theirs) in [
                (
                    "cold load",
                    m.cold,
                    "raw `nft -f` of the same script",
                    m.floor,
                ),
                (
                    "cold load",
                    m.cold,
                    "seed: iptables-restore, one rule per row",
                    m.seed_cold,
                ),
                (
                    "drain 1 server (daemon sync)",
                    m.drain,
                    "seed: reload everything with iptables-restore",
                    m.seed_reload,
                ),
            ] {
                summary::times(
                    area,
                    &format!("{what}, {shape}, {n} rows"),
                    ours,
                    baseline,
                    theirs,
                );
            }
            if let Some((drain, _)) = m.once {
                summary::times(
                    area,
                    &format!("drain 1 server (apply --once), {shape}, {n} rows"),
                    drain,
                    "seed: reload everything with iptables-restore",
                    m.seed_reload,
                );
            }
        }
    }
    println!();
    println!("Kernel memory: the growth of `SUnreclaim` (/proc/meminfo) from before the namespace was created to after the load, median — a machine-wide slab counter, so approximate (anything else running moves it).\n");
    for note in notes {
        println!("{note}");
    }
}
