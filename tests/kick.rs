//! The failover kick against the real kernel, without Pacemaker: two long-lived TCP
//! connections from the client through the gateway's DNAT (one per VIP), each asking a line
//! every 100 ms; the gateway then drops everything for 7.5 s (a failover's outage, its
//! conntrack kept), and afterwards kicks the connections of one VIP only. The kicked one must
//! resume within a second of the outage's end; the other, left to its retransmission
//! backoff, resumes seconds later (~12.6 s after its first loss) — the difference the kick
//! makes, measured in the same run. About 16 s.

mod common;

use common::lab::{in_netns, Lab, VIP1, VIP2};
use common::{render_options, require_nft};
use portcullis::apply::kick::{self, Options};
use portcullis::apply::{ConntrackNetlink, NftCli, Syncer};
use portcullis::model::DesiredState;
use portcullis::render::nft::Backend;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OUTAGE: Duration = Duration::from_millis(7500);

fn state(vips: &[&str]) -> DesiredState {
    let mut text = String::from(
        "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence\n",
    );
    for (i, vip) in vips.iter().enumerate() {
        text.push_str(&format!(
            "hb{i},hb{i}.b1,tcp,{vip},8080,,{},8080,1,rr,nat,\n",
            Lab::backend_ip(1)
        ));
    }
    let export = portcullis_export::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    DesiredState::from_export(&export)
}

/// A connection asking a line every 100 ms; records the longest gap between two answers.
struct Heartbeat {
    longest: Arc<Mutex<(Instant, Duration)>>,
}

impl Heartbeat {
    fn start(conn: TcpStream) -> Heartbeat {
        let longest = Arc::new(Mutex::new((Instant::now(), Duration::ZERO)));
        let mut out = conn.try_clone().expect("clone");
        std::thread::spawn(move || {
            while out.write_all(b"who\n").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let seen = longest.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(conn).lines() {
                if line.is_err() {
                    return;
                }
                let mut s = seen.lock().expect("heartbeat");
                let gap = s.0.elapsed();
                *s = (Instant::now(), s.1.max(gap));
            }
        });
        Heartbeat { longest }
    }

    /// The longest gap so far, the current one included.
    fn stall(&self) -> Duration {
        let s = self.longest.lock().expect("heartbeat");
        s.1.max(s.0.elapsed())
    }
}

#[test]
fn a_kick_ends_the_stall_after_an_outage() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("kick", 1);
    let mut s = Syncer::new(
        NftCli::in_netns(&lab.gw.name),
        portcullis::apply::NoConntrack,
        render_options(Backend::Nft, &["g0"]),
    );
    s.sync(state(&[VIP1, VIP2])).expect("apply");
    // A mid-stream packet without an entry must not make one (as on the pair's gateways).
    lab.gw
        .exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
    let kicked = Heartbeat::start(lab.tcp_open(VIP1, 8080).expect("connect via VIP1"));
    let left = Heartbeat::start(lab.tcp_open(VIP2, 8080).expect("connect via VIP2"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(kicked.stall() < Duration::from_millis(400), "flowing");

    // The outage: nothing reaches the gateway's conntrack or forwarding.
    lab.gw.exec(&["nft", "add table ip outage"]);
    lab.gw.exec(&[
        "nft",
        "add chain ip outage drop_all { type filter hook prerouting priority -400; policy drop; }",
    ]);
    std::thread::sleep(OUTAGE);
    lab.gw.exec(&["nft", "delete table ip outage"]);

    let vips: HashSet<IpAddr> = [VIP1.parse().expect("vip")].into();
    let report = in_netns(&lab.gw.name, move || {
        let mut ct = ConntrackNetlink::open().expect("conntrack socket");
        let conns = kick::connections(&mut ct, &vips).expect("connections");
        kick::kick(&conns, &Options::default()).expect("kick")
    });
    assert_eq!(report.connections, 1, "{report:?}");
    assert_eq!(
        (report.client_answers, report.server_answers),
        (1, 1),
        "both endpoints answered: {report:?}"
    );
    assert_eq!(report.probes_sent, 2, "one probe per endpoint: {report:?}");
    assert!(
        report.icmp_to_clients > 0,
        "the client had data in flight: {report:?}"
    );

    std::thread::sleep(Duration::from_millis(1500));
    let stall = kicked.stall();
    assert!(
        stall < OUTAGE + Duration::from_secs(1),
        "kicked: stall {stall:?} after an outage of {OUTAGE:?}; {report:?}"
    );
    // The control: the same outage without a kick ends at the next backoff step.
    let unkicked = common::wait_until(8, || {
        (left.stall() > OUTAGE + Duration::from_secs(3)).then_some(())
    });
    assert!(
        unkicked.is_some(),
        "the connection left alone waited for its backoff: stall {:?}",
        left.stall()
    );
    let resumed = common::wait_until(10, || {
        let s = left.longest.lock().expect("heartbeat");
        (s.0.elapsed() < Duration::from_millis(300)).then_some(s.1)
    });
    eprintln!("outage {OUTAGE:?}: kicked stall {stall:?}, left alone {resumed:?}; {report:?}");
    assert!(resumed.is_some(), "the connection left alone resumed too");
}

/// What a kick of many connections costs the gateway: 100 000 made-up connections whose
/// endpoints are routed through a veth to a namespace that drops them (a next hop with a
/// static neighbour entry nobody owns: nothing answers, nothing leaves the namespaces),
/// unpaced and at the default rate; prints packets per second and CPU time. Root, ~15 s:
/// `cargo test --release --test kick -- --ignored --nocapture`.
#[test]
#[ignore]
fn kick_cost_100k() {
    if !require_nft() {
        return;
    }
    let ns = common::Netns::new("kickcost");
    let sink = common::Netns::new("kicksink");
    ns.exec(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &sink.name,
    ]);
    ns.exec(&["ip", "link", "set", "v0", "up"]);
    sink.exec(&["ip", "link", "set", "v1", "up"]);
    ns.exec(&["ip", "addr", "add", "10.98.0.1/24", "dev", "v0"]);
    ns.exec(&[
        "ip",
        "neigh",
        "add",
        "10.98.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    ns.exec(&["ip", "route", "add", "10.99.0.0/16", "via", "10.98.0.2"]);
    let conns: Vec<kick::Conn> = (0..100_000u32)
        .map(|i| {
            let host =
                |base: u8| std::net::Ipv4Addr::new(10, 99, base + (i >> 16) as u8, (i >> 8) as u8);
            let client = std::net::SocketAddrV4::new(host(0), 1024 + (i & 0xff) as u16);
            kick::Conn {
                client,
                vip: std::net::SocketAddrV4::new(host(100), 443),
                server: std::net::SocketAddrV4::new(host(200), 8443),
                server_peer: client,
            }
        })
        .collect();
    for rate in [u32::MAX, Options::default().packets_per_second] {
        let conns = conns.clone();
        let (report, cpu) = in_netns(&ns.name, move || {
            let before = cpu_time();
            let opts = Options {
                packets_per_second: rate,
                answer_wait: Duration::ZERO,
                ..Options::default()
            };
            let report = kick::kick(&conns, &opts).expect("kick");
            (report, cpu_time() - before)
        });
        let secs = report.elapsed.as_secs_f64();
        eprintln!(
            "rate {rate}: {} probes in {secs:.2} s ({:.0}/s), CPU {:.2} s ({:.0} % of a core), {} refused",
            report.probes_sent,
            report.probes_sent as f64 / secs,
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / secs,
            report.send_errors
        );
    }
}

/// This process's CPU time, user and system.
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = ticks.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    let (utime, stime) = (
        f.get(11).copied().unwrap_or(0),
        f.get(12).copied().unwrap_or(0),
    );
    // USER_HZ is 100 on every Linux architecture the gateway runs on.
    Duration::from_millis((utime + stime) * 10)
}
