//! Real-server health checks end to end, nft backend: the real daemon (`portcullis run`) in a
//! gateway namespace, three backends whose health endpoint and listener the test controls,
//! and a client whose connections through the VIP show where new connections go.
//!
//! With `interval = 1s, fall = 2, rise = 2`: a killed backend gets no new connection once
//! `interval × fall + 1 s` has passed; restarted, it gets traffic again after `rise`; a
//! `500` from its health URL takes it out; with every backend failing, the service fails
//! open and still forwards.

mod common;

use common::gateway::get;
#[path = "health_support/daemon.rs"]
#[allow(dead_code)] // each suite uses part of it
mod health_daemon;
use common::lab::{in_netns, Lab, VIP1};
use common::{require_nft, wait_until};
use health_daemon::Daemon;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The port the controllable servers listen on in each backend.
const PORT: u16 = 9000;
const INTERVAL_S: u64 = 1;
const FALL: u64 = 2;

/// A backend server the test can kill (its listener closes: connections are refused) and
/// restart, and whose `GET /health` answers a settable status. Other requests get its name.
struct Backend {
    name: String,
    ns: String,
    status: Arc<AtomicU16>,
    running: Option<Arc<AtomicBool>>,
}

impl Backend {
    fn start(ns: &str, name: &str) -> Backend {
        let mut b = Backend {
            name: name.to_owned(),
            ns: ns.to_owned(),
            status: Arc::new(AtomicU16::new(200)),
            running: None,
        };
        b.restart();
        b
    }

    fn restart(&mut self) {
        let listener = in_netns(&self.ns, || {
            let l = TcpListener::bind(("0.0.0.0", PORT)).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            l
        });
        let running = Arc::new(AtomicBool::new(true));
        let (flag, name, status) = (running.clone(), self.name.clone(), self.status.clone());
        std::thread::spawn(move || {
            while flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (name, status) = (name.clone(), status.clone());
                        std::thread::spawn(move || serve(conn, &name, &status));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // Dropping the listener here closes the port: new connections are refused.
        });
        self.running = Some(running);
    }

    fn kill(&mut self) {
        if let Some(flag) = self.running.take() {
            flag.store(false, Ordering::Relaxed);
        }
        // The accept loop notices within a few milliseconds.
        std::thread::sleep(Duration::from_millis(50));
    }

    fn set_health(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(conn: TcpStream, name: &str, status: &AtomicU16) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if line.starts_with("GET ") {
            let code = status.load(Ordering::Relaxed);
            let _ = write!(out, "HTTP/1.0 {code} X\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        if out.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// `n` new connections through the VIP: who answered, `None` for a refused one.
fn spread(lab: &Lab, n: usize) -> BTreeMap<Option<String>, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(lab.tcp_ask(VIP1, 80)).or_default() += 1;
    }
    seen
}

#[test]
fn failed_checks_take_backends_out_and_passing_ones_bring_them_back() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("hc", 3);
    let mut backends: Vec<Backend> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| Backend::start(&ns.name, &format!("b{}", i + 1)))
        .collect();
    let daemon = Daemon::start(&lab, 3, PORT, "http:/health:200", INTERVAL_S, FALL, "500ms");
    let ctx = |what: &str| format!("{what}\n--- daemon log:\n{}", daemon.log());

    // Up: every backend answers.
    let all_up = wait_until(20, || {
        let seen = spread(&lab, 30);
        (seen.len() == 3 && !seen.contains_key(&None)).then_some(seen)
    });
    assert!(all_up.is_some(), "{}", ctx("all three backends serve"));

    // 1. Kill b1: once interval × fall + 1 s has passed, no new connection goes to it (a
    // connection sent to it would be refused).
    backends[0].kill();
    let killed = Instant::now();
    let window = Duration::from_secs(INTERVAL_S * FALL + 1);
    let mut last_refused = None;
    while killed.elapsed() < window {
        if lab.tcp_ask(VIP1, 80).is_none() {
            last_refused = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "b1 killed: last connection sent to it {last_refused:?} after the kill (bound {window:?})"
    );
    let after = spread(&lab, 40);
    assert_eq!(
        after.get(&None),
        None,
        "{}",
        ctx(&format!(
            "no new connection reaches the dead b1 after {window:?}: {after:?}"
        ))
    );
    assert!(after.contains_key(&Some("b2".into())) && after.contains_key(&Some("b3".into())));
    let status = daemon.status();
    assert_eq!(
        status["health"]["down"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert!(
        daemon.journal().contains("\"result\":\"health\""),
        "{}",
        ctx("the transition is journaled")
    );
    // Visible: `status` lists it, /metrics has it down, /health has the JSON view.
    let b1 = format!("{}:{PORT}", Lab::backend_ip(1));
    let text = daemon.status_text();
    assert!(
        text.contains(&format!("down:        tcp {VIP1}:80 {b1} (web.b1)")),
        "{text}"
    );
    let metrics = daemon.get("/metrics");
    let series = format!("endpoint=\"{b1}\",probe=\"http:/health:200\"");
    assert!(
        metrics.contains(&format!("portcullis_real_server_up{{{series}}} 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "portcullis_real_server_transitions_total{{{series}}} 1"
        )),
        "{metrics}"
    );
    let view: serde_json::Value =
        serde_json::from_str(&daemon.get("/health")).expect("/health is JSON");
    assert_eq!(view["targets"].as_array().map(Vec::len), Some(3), "{view}");
    assert_eq!(
        view["held_down"][0]["real"]["addr"],
        Lab::backend_ip(1),
        "{view}"
    );

    // 2. Restart b1: after `rise` passed probes it gets new connections again.
    backends[0].restart();
    let back = wait_until(15, || {
        spread(&lab, 20)
            .contains_key(&Some("b1".into()))
            .then_some(())
    });
    assert!(back.is_some(), "{}", ctx("b1 serves again after rise"));

    // 3. b2's health URL answers 500: it is taken out though it still accepts connections.
    backends[1].set_health(500);
    let out = wait_until(15, || {
        let seen = spread(&lab, 30);
        (!seen.contains_key(&Some("b2".into())) && !seen.contains_key(&None)).then_some(seen)
    });
    assert!(out.is_some(), "{}", ctx("a 500 takes b2 out"));
    assert!(
        daemon.journal().contains("HTTP status 500, expected 200"),
        "{}",
        ctx("the journal says why")
    );

    // 4. Every backend fails its check: the service fails open and still forwards to all.
    for b in &backends {
        b.set_health(500);
    }
    let open = wait_until(15, || {
        let s = daemon.status();
        (s["health"]["fail_open"].as_array().map(Vec::len) == Some(1)).then_some(())
    });
    assert!(open.is_some(), "{}", ctx("the service fails open"));
    let seen = spread(&lab, 40);
    assert_eq!(
        seen.get(&None),
        None,
        "{}",
        ctx(&format!("fail open still forwards: {seen:?}"))
    );
    assert_eq!(
        seen.len(),
        3,
        "{}",
        ctx(&format!("to every backend: {seen:?}"))
    );
    assert!(
        daemon.log().contains("failing open"),
        "{}",
        ctx("fail open is logged loudly")
    );
    drop(daemon);
}

/// Percentage of packets lost on the way from the gateway to every backend.
const LOSS_PERCENT: u32 = 20;
const LOSS_FALL: u64 = 3;

/// Drops `LOSS_PERCENT` % of the packets the gateway sends towards the backends, at random
/// and independently, and says how. `tc netem` on the gateway's backend-facing links when
/// the kernel has sch_netem; otherwise the same per-packet random loss from an nftables
/// `numgen random` rule where those packets arrive, in each backend's namespace (a drop in
/// the gateway's own output hook would not be loss: the sender would see EPERM). Both are
/// in namespaces this test built.
fn inject_loss(lab: &Lab) -> &'static str {
    let netem = (1..=lab.backends.len()).all(|n| {
        lab.gw
            .command("tc")
            .args(["qdisc", "add", "dev", &format!("e{n}"), "root", "netem"])
            .args(["loss", &format!("{LOSS_PERCENT}%")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if netem {
        return "tc netem";
    }
    for (n, b) in lab.backends.iter().enumerate() {
        // Undo a partial netem setup so the loss is applied exactly once per link.
        let _ = lab
            .gw
            .command("tc")
            .args(["qdisc", "del", "dev", &format!("e{}", n + 1), "root"])
            .output();
        let rules = format!(
            "add table inet pc_test_loss; add chain inet pc_test_loss arriving \
             {{ type filter hook prerouting priority -300; }}; add rule inet pc_test_loss \
             arriving iifname \"eth0\" numgen random mod 100 lt {LOSS_PERCENT} counter drop"
        );
        b.exec(&["nft", &rules]);
    }
    "nftables numgen random (this kernel has no sch_netem)"
}

/// Packets the loss injection dropped so far, from the qdisc or the nftables counters: the
/// proof that the path was lossy while no probe sequence failed `fall` times.
fn dropped_packets(lab: &Lab) -> u64 {
    let number_after = |text: &str, word: &str| -> u64 {
        text.split(word)
            .skip(1)
            .filter_map(|rest| {
                rest.split_whitespace()
                    .next()?
                    .trim_matches(',')
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let mut dropped = 0;
    for (n, b) in lab.backends.iter().enumerate() {
        let qdisc = lab
            .gw
            .exec(&["tc", "-s", "qdisc", "show", "dev", &format!("e{}", n + 1)]);
        if qdisc.contains("netem") {
            dropped += number_after(&qdisc, "dropped ");
        } else {
            let rules = b.exec(&["nft", "list", "table", "inet", "pc_test_loss"]);
            dropped += number_after(&rules, "packets ");
        }
    }
    dropped
}

/// How long the lossy path is watched: the 2 minutes by hand,
/// `PORTCULLIS_HEALTH_LOSS_SECS` (default 60) in CI.
fn loss_window() -> Duration {
    let secs = std::env::var("PORTCULLIS_HEALTH_LOSS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

#[test]
fn twenty_percent_packet_loss_with_fall_three_removes_no_backend() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("hl", 3);
    let _backends: Vec<Backend> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| Backend::start(&ns.name, &format!("b{}", i + 1)))
        .collect();
    // The operations guide's timeout (1 s, at most the interval).
    let daemon = Daemon::start(
        &lab,
        3,
        PORT,
        "http:/health:200",
        INTERVAL_S,
        LOSS_FALL,
        "1s",
    );
    let ctx = |what: &str| format!("{what}\n--- daemon log:\n{}", daemon.log());
    let probed = wait_until(20, || {
        let (_, body) = get(&daemon.ns, daemon.metrics_port, "/health")?;
        let view: serde_json::Value = serde_json::from_str(&body).ok()?;
        let targets = view["targets"].as_array()?;
        (targets.len() == 3 && targets.iter().all(|t| t["probes"].as_u64() >= Some(1)))
            .then_some(())
    });
    assert!(probed.is_some(), "{}", ctx("every backend is probed"));

    let how = inject_loss(&lab);
    let window = loss_window();
    eprintln!("{LOSS_PERCENT} % loss towards the backends by {how}, watched for {window:?}");
    let started = Instant::now();
    let mut down_seen = Vec::new();
    while started.elapsed() < window {
        let status = daemon.status();
        // Each new set of down backends once, with when it was first seen.
        let down = status["health"]["down"].clone();
        let is_new = down_seen.last().is_none_or(|(_, last)| *last != down);
        if down.as_array().is_some_and(|d| !d.is_empty()) && is_new {
            down_seen.push((started.elapsed(), down));
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    let view: serde_json::Value =
        serde_json::from_str(&daemon.get("/health")).expect("/health is JSON");
    let targets = view["targets"].as_array().cloned().unwrap_or_default();
    let sum = |key: &str| targets.iter().filter_map(|t| t[key].as_u64()).sum::<u64>();
    let (probes, failures, transitions) = (sum("probes"), sum("failures"), sum("transitions"));
    eprintln!(
        "over {window:?}: {probes} probes, {failures} failed ({:.1} %), {transitions} transitions",
        100.0 * failures as f64 / probes.max(1) as f64
    );
    for t in &targets {
        eprintln!(
            "  {}: {} probes, {} failed, {} transitions, last error {}",
            t["target"]["endpoint"], t["probes"], t["failures"], t["transitions"], t["last_error"]
        );
    }
    // The loss is real (else this test could not fail).
    let dropped = dropped_packets(&lab);
    eprintln!("packets dropped on the way to the backends: {dropped}");
    assert!(
        dropped > 0,
        "{}",
        ctx("the path to the backends loses packets")
    );
    assert!(
        down_seen.is_empty() && transitions == 0,
        "{}",
        ctx(&format!(
            "no backend is taken out by {LOSS_PERCENT} % loss with fall {LOSS_FALL}: \
             {transitions} transitions, down at {down_seen:?}"
        ))
    );
}
