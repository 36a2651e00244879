//! Half-open TCP checks (`src/daemon/health/{syn,sweep}.rs`) against real kernels in
//! namespaces: the sweep's SYNs, sent and read in batches, are answered — SYN-ACK by a
//! listening backend, RST by a closed port, nothing by an absent host — and the half-open
//! connection is gone from the backend at once (the gateway's kernel resets it). Then the
//! daemon with `tcp` checks, which go through the sweep by default: a backend whose port starts refusing, or goes silent, is taken out and
//! comes back.

mod common;

use common::gateway::get;
#[path = "health_support/daemon.rs"]
#[allow(dead_code)] // each suite uses part of it
mod health_daemon;
use common::lab::{in_netns, Lab, VIP1};
use common::{require_nft, wait_until};
use health_daemon::Daemon;
use portcullis::daemon::health::board::{Board, TargetState};
use portcullis::daemon::health::sweep::SweepHandle;
use portcullis::daemon::health::syn::SynSocket;
use portcullis::daemon::health::HealthConfig;
use portcullis::model::health::{Probe, Target};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const PORT: u16 = 8080; // served by every lab backend

/// Runs the half-open sweep in namespace `ns` over `targets`, a probe every `interval`, until
/// each was probed `probes` times (or 20 s passed); their records then.
fn sweep(ns: &str, targets: Vec<SocketAddr>, interval: Duration, probes: u64) -> Vec<TargetState> {
    in_netns(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let targets: Vec<Target> = targets
                .into_iter()
                .map(|endpoint| Target {
                    endpoint,
                    probe: Probe::Tcp,
                })
                .collect();
            let set = targets.iter().cloned().collect();
            let settings = HealthConfig {
                interval,
                timeout: interval.min(Duration::from_millis(600)),
                ..HealthConfig::default()
            };
            let board = Arc::new(Board::default());
            board.retain(&set);
            let socket = SynSocket::open(None).expect("a raw socket (root has CAP_NET_RAW)");
            let mut handle = SweepHandle::start(
                socket,
                Arc::new(settings),
                board.clone(),
                Arc::new(Notify::new()),
            );
            handle.set_targets(&set);
            let states = || {
                let view = board.view();
                targets
                    .iter()
                    .map(|t| {
                        view.targets
                            .iter()
                            .find(|e| e.target == *t)
                            .map(|e| e.state.clone())
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while states().iter().any(|s| s.probes < probes) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            states()
        })
    })
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("address")
}

#[test]
fn syn_probes_tell_listening_refused_and_silent_apart_and_leave_nothing_half_open() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("sy", 1);
    let backend = Lab::backend_ip(1);
    let absent = "10.200.1.77"; // on the backend's link, but no host answers for it
    let states = sweep(
        &lab.gw.name,
        vec![addr(&backend, PORT), addr(&backend, 7), addr(absent, PORT)],
        Duration::from_millis(700),
        1,
    );
    let errors: Vec<Option<String>> = states.iter().map(|s| s.last_error.clone()).collect();
    assert!(
        states.iter().all(|s| s.probes >= 1),
        "every target probed: {states:?}"
    );
    assert_eq!(errors[0], None, "listening: {states:?}");
    assert!(
        errors[1].as_deref().is_some_and(|e| e.contains("refused")),
        "closed port: {states:?}"
    );
    assert!(
        errors[2]
            .as_deref()
            .is_some_and(|e| e.contains("no answer")),
        "absent host: {states:?}"
    );

    // Many probes of one endpoint: every one is answered and matched (source ports rotate and
    // sequence numbers differ, and must not confuse answers).
    let states = sweep(
        &lab.gw.name,
        vec![addr(&backend, PORT)],
        Duration::from_millis(50),
        100,
    );
    assert!(
        states[0].probes >= 100 && states[0].failures == 0,
        "{states:?}"
    );
    // The latency is the kernel's receive time of the answer less the SYN's, not when the
    // sweep read it: read times fall on its 20 ms grid, a tick after the SYN went out on one.
    let latency = states[0].last_latency_ms.unwrap_or(f64::MAX);
    assert!(
        latency < 10.0,
        "a veth round trip took {latency} ms: the answers' receive times were not used"
    );

    // The backend keeps no half-open connection: the gateway's kernel reset each SYN-ACK (a
    // SYN_RECV socket would otherwise linger through the server's SYN-ACK retries, ~1 min).
    let half_open = wait_until(5, || {
        let listed = lab.backends[0].exec(&["ss", "-Htn", "state", "syn-recv"]);
        listed.trim().is_empty().then_some(())
    });
    assert!(
        half_open.is_some(),
        "half-open connections left on the backend:\n{}",
        lab.backends[0].exec(&["ss", "-Htn", "state", "syn-recv"])
    );
}

/// The set of backends the daemon holds down, from its status file.
fn down(daemon: &Daemon) -> BTreeSet<String> {
    daemon.status()["health"]["down"]
        .as_array()
        .map(|d| d.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn the_daemon_takes_out_a_refusing_or_silent_backend_with_half_open_checks() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("sd", 2);
    let daemon = Daemon::start(&lab, 2, PORT, "tcp", 1, 2, "500ms");
    let ctx = |what: &str| format!("{what}\n--- daemon log:\n{}", daemon.log());
    let probed = wait_until(20, || {
        let (_, body) = get(&daemon.ns, daemon.metrics_port, "/health")?;
        let view: serde_json::Value = serde_json::from_str(&body).ok()?;
        let targets = view["targets"].as_array()?;
        (targets.len() == 2
            && targets
                .iter()
                .all(|t| t["up"] == true && t["probes"].as_u64() >= Some(2)))
        .then_some(())
    });
    assert!(probed.is_some(), "{}", ctx("both backends probed and up"));
    assert!(
        !daemon.log().contains("connecting instead"),
        "{}",
        ctx("the daemon probes half-open")
    );
    // With the daemon's table in place the probes, their answers and the gateway's resets
    // skip conntrack: no entry has a probe port (`PROBE_PORTS`) as its source.
    let tracked = lab.gw.exec(&["conntrack", "-L", "-p", "tcp"]);
    let (lo, hi) = portcullis::render::nft::PROBE_PORTS;
    let probe_entries: Vec<&str> = tracked
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("sport="))
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| (lo..=hi).contains(&p))
        })
        .collect();
    assert!(
        probe_entries.is_empty(),
        "{}",
        ctx(&format!("probes tracked:\n{}", probe_entries.join("\n")))
    );

    let b1 = &lab.backends[0];
    let rule = |verdict: &str| {
        b1.exec(&["nft", "add table inet hc; delete table inet hc"]);
        if !verdict.is_empty() {
            b1.exec(&[
                "nft",
                &format!(
                    "add table inet hc; add chain inet hc in {{ type filter hook input priority 0; }}; \
                     add rule inet hc in tcp dport {PORT} {verdict}"
                ),
            ]);
        }
    };
    for (verdict, error) in [("reject with tcp reset", "refused"), ("drop", "no answer")] {
        rule(verdict);
        let taken_out = wait_until(10, || (down(&daemon).len() == 1).then_some(()));
        assert!(
            taken_out.is_some(),
            "{}",
            ctx(&format!("{verdict}: b1 goes down"))
        );
        let view = daemon.get("/health");
        assert!(
            view.contains(error),
            "{}",
            ctx(&format!("{verdict}: {view}"))
        );
        // New connections through the VIP reach b2 only.
        for _ in 0..10 {
            assert_eq!(
                lab.tcp_ask(VIP1, 80).as_deref(),
                Some("b2"),
                "{}",
                ctx(verdict)
            );
        }
        rule("");
        let back = wait_until(10, || down(&daemon).is_empty().then_some(()));
        assert!(
            back.is_some(),
            "{}",
            ctx(&format!("{verdict} lifted: b1 comes back"))
        );
    }
}
