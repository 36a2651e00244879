//! Issue 16, "loops in the suite": `kill -9` during an apply, many times over. In a network
//! namespace, the real `portcullis apply --once` regenerates a large table (alternating
//! between two exports that differ, so old and new are told apart) and is killed with SIGKILL
//! after a random delay. After every kill the live table must be entirely the old export's or
//! entirely the new one's — never a mix, never gone — and the next apply must converge.
//!
//! Half the kills hit only the portcullis process (its `nft` child, if running, finishes on
//! its own: the whole script is already on its in-memory stdin); the other half hit the whole
//! process group, `nft` included, as systemd's stop timeout does with the unit's cgroup.
//!
//! `PORTCULLIS_CRASH_SEED=N` replays a run's delays; `PORTCULLIS_CRASH_ITERATIONS` and
//! `PORTCULLIS_CRASH_ROWS` change its size (defaults: 50 iterations of 2,000 rows). With the
//! bucket layout 5,000 rows were ~75k map elements and the loop took 10–15 minutes of CI
//! (each iteration lists and compares the whole table twice in a debug build); 2,000 rows
//! still take hundreds of milliseconds to apply, the window the kills are drawn from.

mod common;

use common::Netns;
use portcullis::apply::{
    drift, Firewall, NftCli, RecordingConntrack, Syncer, TableState, TwinFirewall,
};
use portcullis::model::DesiredState;
use portcullis::render::nft::Backend;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic delays from a printed seed, without a crate for it.
struct Delays(u64);

impl Delays {
    fn next_below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }
}

struct Export {
    path: PathBuf,
    expected: Option<TableState>,
}

/// Writes `rows` as an export and renders the table `apply --once --external-iface lo`
/// builds from it, with the same options, through the twin firewall (no kernel).
fn export(dir: &Path, name: &str, rows: &[portcullis_export::ExportRow]) -> Export {
    let text = portcullis_export::to_string(rows).expect("valid export");
    let path = dir.join(name);
    std::fs::write(&path, &text).expect("write export");
    let parsed = portcullis_export::parse(text.as_bytes()).expect("parses");
    let syncer = Syncer::new(
        TwinFirewall::default(),
        RecordingConntrack::default(),
        common::render_options(Backend::Nft, &["lo"]),
    );
    let expected = syncer
        .expected_table(&DesiredState::from_export(&parsed))
        .expect("renders");
    assert!(expected.is_some(), "{name}: a table is expected");
    Export { path, expected }
}

fn spawn_apply(ns: &Netns, export: &Path, state: &Path) -> Child {
    ns.command(env!("CARGO_BIN_EXE_portcullis"))
        .args(["apply", "--once", "--force", "--external-iface", "lo"])
        .arg("--source")
        .arg(export)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a kill can take nft with it.
        .process_group(0)
        .spawn()
        .expect("spawn portcullis apply")
}

fn apply_to_completion(ns: &Netns, export: &Path, state: &Path) -> Duration {
    let started = Instant::now();
    let out = spawn_apply(ns, export, state)
        .wait_with_output()
        .expect("wait for apply");
    assert!(
        out.status.success(),
        "apply --once {}: {}",
        export.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) with a pid (or negated process group) this test spawned; no memory is
    // involved. ESRCH (already gone) is fine.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Whether `nft -f /dev/stdin` runs in process group `group`: the apply's transaction on its
/// way to the kernel (not the read-back listing, nor the `nft -c` check).
fn nft_running(group: &str) -> bool {
    Command::new("pgrep")
        .args(["-g", group, "-x", "-f", "nft -f /dev/stdin"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[derive(Default)]
struct Tally {
    old: usize,
    new: usize,
    finished_before_kill: usize,
    /// Kills that found `nft` running (a transaction on its way to the kernel).
    during_nft: usize,
    group_kills: usize,
}

#[test]
fn kill_9_during_apply_leaves_the_old_or_the_new_table_never_a_mix() {
    if !common::require_nft() {
        return;
    }
    let iterations = env_or("PORTCULLIS_CRASH_ITERATIONS", 50) as usize;
    let rows = env_or("PORTCULLIS_CRASH_ROWS", 2_000) as usize;
    let seed = env_or(
        "PORTCULLIS_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    )
    .max(1);
    eprintln!("kill -9 loop: {iterations} iterations, {rows} rows, PORTCULLIS_CRASH_SEED={seed}");

    let dir = common::tmp_dir("crash");
    let state = dir.join("state");
    // Old and new differ in services (one tenth more) and in a weight: a mix of the two
    // would show as drift from both.
    let small = portcullis::synth::rows(rows);
    let large = portcullis::synth::with_one_change(&portcullis::synth::rows(rows + rows / 10));
    let exports = [export(&dir, "a.csv", &small), export(&dir, "b.csv", &large)];
    let ns = Netns::new("crash");
    let live = || {
        NftCli::in_netns(&ns.name)
            .read_table()
            .expect("read the live table")
    };

    // The first apply converges and measures how long one takes: the kill delays spread
    // over that time, so most kills land inside the apply (many inside nft itself).
    let full = apply_to_completion(&ns, &exports[0].path, &state);
    assert!(drift(&exports[0].expected, &live()).is_empty());
    let mut window_ms = (full.as_millis() as u64).max(20) * 11 / 10;
    eprintln!("one full apply takes {full:?}; kill delays are drawn from 0..{window_ms} ms");

    let mut delays = Delays(seed);
    let mut tally = Tally::default();
    let mut current = 0;
    let started = Instant::now();
    for i in 0..iterations {
        let target = 1 - current;
        // Every other pair of iterations waits for nft to start and kills within its first
        // 60 ms, so the transaction's own window is hit often, not only by chance.
        let aim_at_nft = i % 4 >= 2;
        let delay = Duration::from_millis(if aim_at_nft {
            delays.next_below(60)
        } else {
            delays.next_below(window_ms)
        });
        let whole_group = i % 2 == 1;
        let mut child = spawn_apply(&ns, &exports[target].path, &state);
        if aim_at_nft {
            let group = child.id().to_string();
            common::wait_until(10, || {
                let running = nft_running(&group);
                (running || matches!(child.try_wait(), Ok(Some(_)))).then_some(())
            });
        }
        std::thread::sleep(delay);
        if matches!(child.try_wait(), Ok(Some(_))) {
            tally.finished_before_kill += 1;
        }
        let pid = child.id() as i32;
        if nft_running(&pid.to_string()) {
            tally.during_nft += 1;
        }
        sigkill(if whole_group { -pid } else { pid });
        let _ = child.wait();
        if whole_group {
            tally.group_kills += 1;
        }
        // Wait until nothing of the group is left, whichever was killed, so the check below
        // sees the kernel's final word (old or new either way). A surviving nft child
        // finishes its transaction on its own; a killed one too, if the kill found it inside
        // the kernel: SIGKILL takes effect only when the batch's sendmsg returns, and an
        // incremental batch that deletes from an interval set (pipapo) spends up to seconds
        // committing. Listed during that commit, the table is a transient mix: hash sets
        // and maps already show the new generation, the interval set still its old view
        // with the deleted elements filtered out and the added ones not yet in (seen: the new
        // table minus the one element added to `frontends_v4`).
        common::wait_until(30, || {
            let alive = Command::new("pgrep")
                .args(["-g", &pid.to_string()])
                .output()
                .is_ok_and(|o| o.status.success());
            (!alive).then_some(())
        })
        .unwrap_or_else(|| {
            panic!("iteration {i}: the apply's process group outlived the kill by 30 s")
        });
        let table = live();
        let is_old = drift(&exports[current].expected, &table).is_empty();
        let is_new = drift(&exports[target].expected, &table).is_empty();
        assert!(
            is_old || is_new,
            "iteration {i} (seed {seed}, killed after {delay:?}, group {whole_group}): the table \
             is neither the old nor the new export's; differences from the new one:\n{}",
            drift(&exports[target].expected, &table)
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        if is_new {
            tally.new += 1;
        } else {
            tally.old += 1;
        }
        // Whatever the kill left, the next apply converges. It also times an apply over the
        // other export's table, the window the next kill delay is drawn from.
        let took = apply_to_completion(&ns, &exports[target].path, &state);
        window_ms = (took.as_millis() as u64).max(20) * 11 / 10;
        assert!(
            drift(&exports[target].expected, &live()).is_empty(),
            "iteration {i}: the apply after the kill converged"
        );
        current = target;
    }
    eprintln!(
        "kill -9 loop: {iterations} kills in {:?}: {} left the old table, {} the new one, never \
         a mix; {} found nft running, {} landed after the apply had finished; {} killed the \
         whole process group",
        started.elapsed(),
        tally.old,
        tally.new,
        tally.during_nft,
        tally.finished_before_kill,
        tally.group_kills
    );
    assert!(
        tally.old > 0,
        "some kills must land before the commit, or the loop tests nothing (seed {seed})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
