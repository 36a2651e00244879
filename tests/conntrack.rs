//! Conntrack cleanup against the real kernel: entries made by real TCP and UDP through the
//! gateway's DNAT (and a few inserted with the `conntrack` tool, for IPv6 and zones), flushed
//! with `ConntrackNetlink`, observed with the independent `conntrack -L`.
//!
//! The ignored `flush_cost_netlink_vs_conntrack_tool` measures one flush of 1/10/100
//! (VIP, real server) pairs against 1k/10k/100k entries, netlink against one `conntrack -D`
//! per pair (what `ConntrackCli` did), and prints a table (about 5 minutes, root):
//! `cargo test --release --test conntrack -- --ignored --nocapture`.

mod common;

use common::lab::{in_netns, udp_ask, Lab, VIP1, VIP2};
use common::{render_options, require_nft, require_tool, Netns};
use portcullis::apply::{Conntrack, ConntrackFlush, ConntrackNetlink, NftCli, Syncer};
use portcullis::model::{DesiredState, RealKey};
use portcullis::render::nft::Backend;
use portcullis_export::Proto;
use std::net::IpAddr;

const HEADER: &str =
    "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence\n";

fn row(proto: &str, vip: &str, port: u16, n: usize) -> String {
    let v = vip.rsplit('.').next().unwrap_or("0");
    format!(
        "web,web.{proto}{port}v{v}b{n},{proto},{vip},{port},,{},8080,1,rr,nat,",
        Lab::backend_ip(n)
    )
}

fn state(rows: &[String]) -> DesiredState {
    let text = format!("{HEADER}{}\n", rows.join("\n"));
    let export =
        portcullis_export::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    DesiredState::from_export(&export)
}

fn flush(proto: Proto, vip: &str, real: &str, port: Option<u16>) -> ConntrackFlush {
    ConntrackFlush {
        proto,
        vip: vip.parse().expect("vip"),
        real: RealKey {
            addr: real.parse().expect("real"),
            port,
        },
    }
}

/// One `conntrack -L` line reduced to what a flush selects on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    proto: String,
    orig_dst: String,
    reply_src: String,
    reply_sport: String,
    zone: String,
}

/// Every entry of the gateway, both families, as the `conntrack` tool lists them.
fn listed(ns: &Netns) -> Vec<Seen> {
    let mut out = Vec::new();
    for family in ["ipv4", "ipv6"] {
        for line in ns.exec(&["conntrack", "-L", "-f", family]).lines() {
            let values = |key: &str| -> Vec<String> {
                line.split_whitespace()
                    .filter_map(|w| w.strip_prefix(key))
                    .map(String::from)
                    .collect()
            };
            let (dst, src, sport) = (values("dst="), values("src="), values("sport="));
            out.push(Seen {
                proto: line.split_whitespace().next().unwrap_or("").to_string(),
                // The second src=/sport= are the reply direction's.
                orig_dst: dst.first().cloned().unwrap_or_default(),
                reply_src: src.get(1).cloned().unwrap_or_default(),
                reply_sport: sport.get(1).cloned().unwrap_or_default(),
                zone: values("zone=").first().cloned().unwrap_or_default(),
            });
        }
    }
    out.sort();
    out
}

fn seen(proto: &str, orig_dst: &str, reply_src: &str, reply_sport: &str, zone: &str) -> Seen {
    Seen {
        proto: proto.into(),
        orig_dst: orig_dst.into(),
        reply_src: reply_src.into(),
        reply_sport: reply_sport.into(),
        zone: zone.into(),
    }
}

#[test]
fn a_flush_deletes_exactly_the_selected_entries() {
    if !require_nft() || !require_tool("conntrack", "conntrack") {
        return;
    }
    let lab = Lab::new("ctflush", 2);
    let (b1, b2) = (Lab::backend_ip(1), Lab::backend_ip(2));
    let mut s = Syncer::new(
        NftCli::in_netns(&lab.gw.name),
        portcullis::apply::NoConntrack,
        render_options(Backend::Nft, &["g0"]),
    );
    s.sync(state(&[
        row("udp", VIP1, 53, 1),
        row("udp", VIP2, 53, 1),
        row("tcp", VIP1, 80, 1),
        row("udp", VIP1, 54, 2),
    ]))
    .expect("apply");
    // Real flows through the DNAT: each leaves an entry (the TCP one in TIME_WAIT).
    for (vip, port, backend) in [(VIP1, 53, "b1"), (VIP2, 53, "b1"), (VIP1, 54, "b2")] {
        assert_eq!(
            udp_ask(&lab.udp_socket(), vip, port).as_deref(),
            Some(backend),
            "udp {vip}:{port}"
        );
    }
    assert_eq!(lab.tcp_ask(VIP1, 80).as_deref(), Some("b1"), "tcp");
    // And entries the traffic cannot make: IPv6, and a non-default zone.
    lab.gw.exec(&[
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        "2001:db8::2",
        "-d",
        "2001:db8:1::10",
        "--sport",
        "40000",
        "--dport",
        "53",
        "-r",
        "fd00:10::61",
        "-q",
        "2001:db8::2",
        "--reply-port-src",
        "8080",
        "--reply-port-dst",
        "40000",
        "-t",
        "300",
    ]);
    lab.gw.exec(&[
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        "203.0.113.2",
        "-d",
        VIP1,
        "--sport",
        "40001",
        "--dport",
        "53",
        "-r",
        &b1,
        "-q",
        "203.0.113.2",
        "--reply-port-src",
        "8080",
        "--reply-port-dst",
        "40001",
        "-t",
        "300",
        "-w",
        "5",
    ]);
    let before = listed(&lab.gw);
    let udp1 = seen("udp", VIP1, &b1, "8080", "");
    let udp1_zone5 = seen("udp", VIP1, &b1, "8080", "5");
    let udp6 = seen("udp", "2001:db8:1::10", "fd00:10::61", "8080", "");
    for e in [&udp1, &udp1_zone5, &udp6] {
        assert!(before.contains(e), "{e:?} in {before:#?}");
    }

    let mut ct = ConntrackNetlink::in_netns(&lab.gw.name).expect("conntrack socket");
    // A real server port that none of the entries has: nothing matches.
    let deleted = ct
        .flush(&[flush(Proto::Udp, VIP1, &b1, Some(20000))])
        .expect("flush");
    assert_eq!(deleted, 0);
    assert_eq!(
        listed(&lab.gw),
        before,
        "a non-matching flush changes nothing"
    );

    let deleted = ct
        .flush(&[
            flush(Proto::Udp, VIP1, &b1, Some(8080)),
            flush(Proto::Udp, "2001:db8:1::10", "fd00:10::61", None),
        ])
        .expect("flush");
    assert_eq!(
        deleted, 3,
        "udp VIP1 -> b1 in zones 0 and 5, and the IPv6 one"
    );
    let mut expected = before.clone();
    expected.retain(|e| ![&udp1, &udp1_zone5, &udp6].contains(&e));
    let after = listed(&lab.gw);
    assert_eq!(after, expected);
    // What stays: the same real server through the other VIP and over TCP, and b2.
    for e in [
        seen("udp", VIP2, &b1, "8080", ""),
        seen("tcp", VIP1, &b1, "8080", ""),
        seen("udp", VIP1, &b2, "8080", ""),
    ] {
        assert!(after.contains(&e), "{e:?} kept in {after:#?}");
    }
    // Flushing again finds nothing: the count is what the kernel deleted.
    assert_eq!(
        ct.flush(&[flush(Proto::Udp, VIP1, &b1, Some(8080))])
            .expect("flush"),
        0
    );
}

#[test]
fn a_socket_for_a_missing_namespace_is_an_error() {
    let err = ConntrackNetlink::in_netns("portcullis-no-such-netns").expect_err("no netns");
    assert!(
        err.to_string().contains("portcullis-no-such-netns"),
        "{err}"
    );
}

/// Inserts conntrack entries over ctnetlink (IPCTNL_MSG_CT_NEW), from a thread inside the
/// namespace: thousands per second, where `conntrack -I` costs a process each.
mod insert {
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
    };
    use netlink_packet_netfilter::conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
    };
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
    use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
    use std::net::IpAddr;

    /// client:sport -> vip:53, answered by real:8080.
    pub struct Udp {
        pub client: IpAddr,
        pub sport: u16,
        pub vip: IpAddr,
        pub real: IpAddr,
    }

    fn tuple(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src),
                IPTuple::DestinationAddress(dst),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Udp),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    pub fn udp(entries: &[Udp]) {
        let mut socket = Socket::new(NETLINK_NETFILTER).expect("socket");
        socket.bind_auto().expect("bind");
        socket.connect(&SocketAddr::new(0, 0)).expect("connect");
        let mut buf = vec![0; 1 << 16];
        for (chunk_no, chunk) in entries.chunks(200).enumerate() {
            let mut out = Vec::new();
            for (i, e) in chunk.iter().enumerate() {
                let mut header = NetlinkHeader::default();
                header.flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
                header.sequence_number = (chunk_no * 200 + i) as u32;
                let mut msg = NetlinkMessage::new(
                    header,
                    NetlinkPayload::from(NetfilterMessage::new(
                        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                        ConntrackMessage::New(vec![
                            ConntrackAttribute::CtaTupleOrig(tuple(e.client, e.vip, e.sport, 53)),
                            ConntrackAttribute::CtaTupleReply(tuple(
                                e.real, e.client, 8080, e.sport,
                            )),
                            ConntrackAttribute::CtaTimeout(600),
                        ]),
                    )),
                );
                msg.finalize();
                let start = out.len();
                out.resize(start + msg.buffer_len(), 0);
                msg.serialize(&mut out[start..]);
            }
            socket.send(&out, 0).expect("send");
            let mut acks = 0;
            while acks < chunk.len() {
                let n = socket.recv(&mut &mut buf[..], 0).expect("recv");
                let mut off = 0;
                while off < n {
                    let reply =
                        NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..n]).expect("ack");
                    off += (reply.header.length as usize + 3) & !3;
                    if let NetlinkPayload::Error(e) = reply.payload {
                        assert!(e.code.is_none(), "insert refused: {e:?}");
                        acks += 1;
                    }
                }
            }
        }
    }
}

/// The entries of one measurement: `pairs` (VIP, real server) pairs with `per_pair` entries
/// each, among `total` entries; the others share the VIPs but answer from other servers.
fn table(total: usize, pairs: usize, per_pair: usize) -> (Vec<insert::Udp>, Vec<ConntrackFlush>) {
    let vip = |k: usize| IpAddr::from([192, 0, 2, (k % 250) as u8 + 1]);
    let real = |k: usize| IpAddr::from([10, 200, (k / 250) as u8, (k % 250) as u8 + 1]);
    let other = |k: usize| IpAddr::from([10, 201, (k / 250 % 250) as u8, (k % 250) as u8 + 1]);
    let flushes = (0..pairs)
        .map(|k| ConntrackFlush {
            proto: Proto::Udp,
            vip: vip(k),
            real: RealKey {
                addr: real(k),
                port: Some(8080),
            },
        })
        .collect();
    let entries = (0..total)
        .map(|i| {
            let matching = i < pairs * per_pair;
            insert::Udp {
                client: IpAddr::from([198, 18, (i / 60000) as u8, (i / 240 % 250) as u8 + 1]),
                sport: 1024 + (i % 60000) as u16,
                vip: vip(if matching { i % pairs } else { i }),
                real: if matching { real(i % pairs) } else { other(i) },
            }
        })
        .collect();
    (entries, flushes)
}

fn count(ns: &Netns) -> usize {
    ns.exec(&["conntrack", "-C"]).trim().parse().expect("count")
}

/// The old way, as `ConntrackCli` did it: one `conntrack -D` process per pair.
fn flush_with_tool(flushes: &[ConntrackFlush]) {
    for f in flushes {
        let out = std::process::Command::new("conntrack")
            .args(["-D", "-p", "udp", "--orig-dst", &f.vip.to_string()])
            .args(["--reply-src", &f.real.addr.to_string()])
            .args(["--reply-port-src", "8080"])
            .output()
            .expect("run conntrack");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || text.contains("0 flow entries"),
            "{text}"
        );
    }
}

#[test]
#[ignore = "a measurement (about 5 minutes): cargo test --release --test conntrack -- --ignored --nocapture"]
fn flush_cost_netlink_vs_conntrack_tool() {
    if !require_nft() || !require_tool("conntrack", "conntrack") {
        return;
    }
    const PER_PAIR: usize = 10;
    const REPS: usize = 3;
    println!("| entries | pairs | deleted | netlink (one dump) | conntrack -D per pair | tool ÷ netlink |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for total in [1_000, 10_000, 100_000] {
        for pairs in [1, 10, 100] {
            let mut netlink = Vec::new();
            let mut tool = Vec::new();
            for _ in 0..REPS {
                for use_tool in [false, true] {
                    let ns = Netns::new("ctcost");
                    let (entries, flushes) = table(total, pairs, PER_PAIR);
                    let name = ns.name.clone();
                    // Children spawned from the thread inherit its namespace, so the tool runs
                    // exactly as the daemon ran it: a plain `conntrack` process, no `ip netns exec`.
                    let elapsed = in_netns(&name, move || {
                        insert::udp(&entries);
                        let t = std::time::Instant::now();
                        if use_tool {
                            flush_with_tool(&flushes);
                        } else {
                            let mut ct = ConntrackNetlink::open().expect("socket");
                            let n = ct.flush(&flushes).expect("flush");
                            assert_eq!(n, pairs * PER_PAIR);
                        }
                        t.elapsed()
                    });
                    assert_eq!(
                        count(&ns),
                        total - pairs * PER_PAIR,
                        "the same entries went"
                    );
                    if use_tool { &mut tool } else { &mut netlink }.push(elapsed);
                }
            }
            let median = |v: &mut Vec<std::time::Duration>| {
                v.sort();
                v[v.len() / 2]
            };
            let (n, t) = (median(&mut netlink), median(&mut tool));
            println!(
                "| {total} | {pairs} | {} | {:.1} ms | {:.1} ms | {:.1}× |",
                pairs * PER_PAIR,
                n.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e3,
                t.as_secs_f64() / n.as_secs_f64()
            );
        }
    }
}
