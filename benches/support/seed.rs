//! The seed's way, shared by the benches as their baseline: one iptables DNAT rule per export
//! row, the whole file loaded by `iptables-restore` every time something changes (the seed's
//! 3-second cron job regenerating it). Plus the small timing helpers every bench table uses.

#![allow(dead_code)] // each bench uses part of it

use super::common::Netns;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `program ARGS…` spawned in namespace `ns`, timed. From a thread that entered it, as
/// `NftCli` spawns nft for portcullis: `ip netns exec` would add 3–4 ms to every baseline.
pub fn run_in(
    ns: &Netns,
    program: &str,
    args: &[&std::ffi::OsStr],
) -> (Duration, std::process::Output) {
    let mut command = Command::new(program);
    command.args(args);
    super::common::lab::in_netns(&ns.name, move || {
        let t = Instant::now();
        let out = command.output();
        (t.elapsed(), out.unwrap_or_else(|e| panic!("{e}")))
    })
}

/// `nft -f FILE` in namespace `ns`, timed: the raw floor every nft bench compares with.
pub fn nft_file(ns: &Netns, file: &std::path::Path) -> Duration {
    let (took, out) = run_in(ns, "nft", &["-f".as_ref(), file.as_os_str()]);
    assert!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `rows` with the first real server drained on even rounds, restored on odd ones.
pub fn flipped(
    rows: &[portcullis_export::ExportRow],
    round: usize,
) -> Vec<portcullis_export::ExportRow> {
    let mut rows = rows.to_vec();
    rows[0].weight = if round.is_multiple_of(2) { 0 } else { 100 };
    rows
}

/// The seed's way, the baseline: one iptables DNAT rule per export row, the whole file loaded
/// by `iptables-restore` every time something changes (a 3-second cron job regenerating it).
/// A cost baseline, not an equivalent: rows after the first of a service never match.
pub fn iptables_file(rows: &[portcullis_export::ExportRow]) -> String {
    let mut out = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n");
    for r in rows {
        let ports = if r.vport.first == r.vport.last {
            r.vport.first.to_string()
        } else {
            format!("{}:{}", r.vport.first, r.vport.last)
        };
        let to = match r.rport {
            Some(p) => format!("{}:{p}", r.rip),
            None => r.rip.to_string(),
        };
        out.push_str(&format!(
            "-A PREROUTING -d {}/32 -p {} --dport {ports} -j DNAT --to-destination {to}\n",
            r.vip, r.proto
        ));
    }
    out.push_str("COMMIT\n");
    out
}

/// `iptables-restore FILE` in namespace `ns`; its time.
pub fn iptables_restore(ns: &Netns, file: &std::path::Path) -> Duration {
    let (took, out) = run_in(ns, "iptables-restore", &[file.as_os_str()]);
    assert!(
        out.status.success(),
        "iptables-restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Times of the baseline at `n` services: a cold load, and the reload of the whole file with
/// one row changed that the cron job does for every change.
pub fn baseline(
    reps: usize,
    rows: &[portcullis_export::ExportRow],
    tag: usize,
) -> (Duration, Duration) {
    let file = std::env::temp_dir().join(format!("pc-bench-{}-{tag}.ipt", std::process::id()));
    std::fs::write(&file, iptables_file(rows)).expect("write");
    let mut cold = Vec::new();
    for rep in 0..reps {
        let ns = Netns::new(&format!("ipt{rep}"));
        cold.push(iptables_restore(&ns, &file));
    }
    let ns = Netns::new("iptreload");
    iptables_restore(&ns, &file);
    let mut reload = Vec::new();
    for round in 0..reps {
        std::fs::write(&file, iptables_file(&flipped(rows, round))).expect("write");
        reload.push(iptables_restore(&ns, &file));
    }
    let _ = std::fs::remove_file(&file);
    (median(cold), median(reload))
}

/// Turns on expedited RCU grace periods as the daemon does by default (`expedite_rcu`): each
/// nft run that deletes something would otherwise wait out a grace period as it exits
/// (`portcullis::apply::rcu`). Host-wide, so every program these benches time — nft,
/// iptables-restore, portcullis — runs on the host the daemon leaves. The report's line.
pub fn tuned_as_the_daemon() -> String {
    use portcullis::apply::rcu::{expedite, RCU_EXPEDITED};
    match expedite(std::path::Path::new(RCU_EXPEDITED)) {
        Ok(_) => "rcu_expedited: on (as the daemon sets it; `expedite_rcu`)".to_owned(),
        Err(e) => format!(
            "rcu_expedited: could not be turned on ({e}): every nft change waits a grace period"
        ),
    }
}

/// `machine: N cores, kernel R`: the line a bench's report opens with.
pub fn machine() -> String {
    let kernel = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .expect("uname");
    format!(
        "machine: {} cores, kernel {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        String::from_utf8_lossy(&kernel.stdout).trim()
    )
}
