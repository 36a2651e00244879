//! The nft backend with real packets: a client, the gateway and three backends in network
//! namespaces, TCP and UDP through the gateway, and the kernel's table read back.

mod common;

use common::lab::{ask_line, udp_ask, Lab, VIP1, VIP2};
use common::{render_options, require_nft};
use portcullis::apply::{ConntrackNetlink, Firewall, NftCli, NoConntrack, SyncOutcome, Syncer};
use portcullis::model::DesiredState;
use portcullis::render::nft::Backend;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

const HEADER: &str =
    "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence\n";

fn state(rows: &[String]) -> DesiredState {
    let text = format!("{HEADER}{}\n", rows.join("\n"));
    let export =
        portcullis_export::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    DesiredState::from_export(&export)
}

/// A plain row: `proto vip:port` → backend `n` port 8080 with `weight`.
fn row(proto: &str, vip: &str, port: u16, n: usize, weight: u16) -> String {
    format!(
        "web,web.b{n},{proto},{vip},{port},,{},8080,{weight},rr,nat,",
        Lab::backend_ip(n)
    )
}

fn syncer(lab: &Lab) -> Syncer<NftCli, ConntrackNetlink> {
    Syncer::new(
        NftCli::in_netns(&lab.gw.name),
        ConntrackNetlink::in_netns(&lab.gw.name).expect("conntrack socket in the gateway"),
        render_options(Backend::Nft, &["g0"]),
    )
}

fn nft_list(lab: &Lab, table: &str) -> String {
    lab.gw.exec(&["nft", "list", "table", "inet", table])
}

#[test]
fn tcp_udp_and_fwmark_ranges_reach_the_right_backends() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("reach", 3);
    let mut s = syncer(&lab);
    let fwm = |vip: &str, n: usize| {
        format!(
            "tg,tg.b{n},tcp,{vip},20000-20010,7,{},,1,sh,nat,",
            Lab::backend_ip(n)
        )
    };
    let st = state(&[
        row("tcp", VIP1, 80, 1, 1),
        row("udp", VIP1, 53, 2, 1),
        fwm(VIP1, 3),
        fwm(VIP2, 3),
    ]);
    assert!(matches!(
        s.sync(st).expect("apply"),
        SyncOutcome::Full { .. }
    ));
    assert_eq!(lab.tcp_ask(VIP1, 80).as_deref(), Some("b1"), "plain TCP");
    let udp = lab.udp_socket();
    assert_eq!(udp_ask(&udp, VIP1, 53).as_deref(), Some("b2"), "UDP");
    for vip in [VIP1, VIP2] {
        for port in [20000, 20005, 20010] {
            assert_eq!(
                lab.tcp_ask(vip, port).as_deref(),
                Some("b3"),
                "fwmark range {vip}:{port}"
            );
        }
        // Just outside the range: not exported, dropped on the external interface.
        assert_eq!(lab.tcp_ask(vip, 20011), None, "{vip}:20011 is not exported");
    }
    // Not exported at all.
    assert_eq!(lab.tcp_ask(VIP2, 80), None);
}

#[test]
fn round_robin_follows_weights_and_weight_zero_drains() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("weights", 3);
    let mut s = syncer(&lab);
    s.sync(state(&[
        row("tcp", VIP1, 80, 1, 1),
        row("tcp", VIP1, 80, 2, 3),
        row("tcp", VIP1, 80, 3, 0),
    ]))
    .expect("apply");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let who = lab.tcp_ask(VIP1, 80).expect("answer");
        *seen.entry(who).or_default() += 1;
    }
    assert_eq!(
        seen.get("b3"),
        None,
        "weight 0 gets no connections: {seen:?}"
    );
    let b2 = seen.get("b2").copied().unwrap_or(0);
    // Expected 150 of 200 (weights 1:3); the bucket is a hash of the source port, which is
    // random per connection, so allow ±5 standard deviations.
    assert!(
        (120..=180).contains(&b2),
        "b2 answered {b2} of 200: {seen:?}"
    );

    // An open connection to b1 keeps working after b1 is drained; new ones avoid it.
    let mut open = None;
    for _ in 0..50 {
        let mut c = lab.tcp_open(VIP1, 80).expect("connect");
        if ask_line(&mut c).as_deref() == Some("b1") {
            open = Some(c);
            break;
        }
    }
    let mut open = open.expect("one of 50 connections reached b1");
    let outcome = s
        .sync(state(&[
            row("tcp", VIP1, 80, 1, 0),
            row("tcp", VIP1, 80, 2, 3),
            row("tcp", VIP1, 80, 3, 0),
        ]))
        .expect("drain b1");
    assert!(
        matches!(
            outcome,
            SyncOutcome::Incremental {
                conntrack_flushed: 0,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        ask_line(&mut open).as_deref(),
        Some("b1"),
        "the drained server keeps its open connection"
    );
    for _ in 0..30 {
        assert_eq!(lab.tcp_ask(VIP1, 80).as_deref(), Some("b2"));
    }

    // Every server drained: nothing is translated, but the frontend is still accepted on
    // input (it joins the frontends set), so the gateway refuses the connection at once
    // instead of dropping it on the external interface.
    s.sync(state(&[
        row("tcp", VIP1, 80, 1, 0),
        row("tcp", VIP1, 80, 2, 0),
        row("tcp", VIP1, 80, 3, 0),
    ]))
    .expect("drain all");
    let addr: std::net::SocketAddr = format!("{VIP1}:80").parse().expect("addr");
    let answer = common::lab::in_netns(&lab.client.name, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(700))
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(answer, Err(std::io::ErrorKind::ConnectionRefused));
}

#[test]
fn removing_a_backend_moves_new_connections_and_clears_its_udp_flows() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("remove", 2);
    let mut s = syncer(&lab);
    s.sync(state(&[
        row("udp", VIP1, 53, 1, 1),
        row("udp", VIP1, 53, 2, 1),
    ]))
    .expect("apply");
    // Find a flow (a client socket) that landed on b1.
    let mut flow = None;
    for _ in 0..40 {
        let sock = lab.udp_socket();
        if udp_ask(&sock, VIP1, 53).as_deref() == Some("b1") {
            flow = Some(sock);
            break;
        }
    }
    let flow = flow.expect("a flow to b1");
    assert_eq!(
        udp_ask(&flow, VIP1, 53).as_deref(),
        Some("b1"),
        "conntrack keeps a flow on its backend"
    );
    let conntrack = |lab: &Lab| {
        lab.gw.exec(&[
            "conntrack",
            "-L",
            "-p",
            "udp",
            "--reply-src",
            &Lab::backend_ip(1),
        ])
    };
    assert!(
        conntrack(&lab).contains("dport=53"),
        "a conntrack entry to b1 exists"
    );

    let outcome = s
        .sync(state(&[row("udp", VIP1, 53, 2, 1)]))
        .expect("remove b1");
    match outcome {
        SyncOutcome::Incremental {
            conntrack_flushed, ..
        } => assert!(conntrack_flushed >= 1, "{outcome:?}"),
        other => panic!("expected an incremental sync, got {other:?}"),
    }
    assert!(
        !conntrack(&lab).contains("dport=53"),
        "b1's entries are gone"
    );
    // The same flow (same source port) now reaches b2, and so do new ones.
    assert_eq!(udp_ask(&flow, VIP1, 53).as_deref(), Some("b2"));
    assert_eq!(lab.tcp_ask(VIP1, 53), None, "only UDP is exported");
    assert_eq!(udp_ask(&lab.udp_socket(), VIP1, 53).as_deref(), Some("b2"));
}

#[test]
fn a_rejected_export_changes_nothing_and_other_tables_are_untouched() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("reject", 1);
    // Someone else's table, before and after everything we do.
    lab.gw.exec(&["nft", "add table inet other"]);
    lab.gw.exec(&[
        "nft",
        "add chain inet other input { type filter hook input priority 10; policy accept; }",
    ]);
    lab.gw.exec(&[
        "nft",
        "add set inet other keep { type ipv4_addr; elements = { 198.51.100.7 } }",
    ]);
    lab.gw.exec(&[
        "nft",
        "add rule inet other input ip saddr @keep counter accept",
    ]);
    let other_before = nft_list(&lab, "other");

    let dir = common::tmp_dir("reject");
    let good = dir.join("good.csv");
    let bad = dir.join("bad.csv");
    let state_dir = dir.join("state");
    std::fs::write(&good, format!("{HEADER}{}\n", row("tcp", VIP1, 80, 1, 1))).expect("write");
    std::fs::write(
        &bad,
        format!(
            "{HEADER}{}\nweb,web.x,tcp,{VIP1},80-90,,10.200.1.2,,1,rr,nat,\n",
            row("tcp", VIP1, 80, 1, 1)
        ),
    )
    .expect("write");
    let portcullis = |args: &[&str]| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.gw.name,
                env!("CARGO_BIN_EXE_portcullis"),
            ])
            .args(args)
            // apply keeps its last-known-good export and journal there: not the host's.
            .args(if args[0] == "apply" {
                vec!["--state-dir", state_dir.to_str().expect("path")]
            } else {
                vec![]
            })
            .output()
            .expect("run portcullis")
    };
    let out = portcullis(&[
        "apply",
        "--once",
        "--source",
        good.to_str().expect("path"),
        "--external-iface",
        "g0",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table_before = nft_list(&lab, "portcullis");
    // What would change, against the live kernel: nothing for the applied export...
    let live = portcullis(&[
        "diff",
        "--live",
        good.to_str().expect("path"),
        "--external-iface",
        "g0",
    ]);
    assert_eq!(
        live.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    // ...and the moved element for one that sends :80 elsewhere.
    let other = dir.join("other.csv");
    std::fs::write(&other, format!("{HEADER}{}\n", row("tcp", VIP1, 80, 2, 1))).expect("write");
    let live = portcullis(&[
        "diff",
        "--live",
        other.to_str().expect("path"),
        "--external-iface",
        "g0",
    ]);
    assert_eq!(live.status.code(), Some(1));
    let text = String::from_utf8_lossy(&live.stdout);
    assert!(
        text.contains("lb_real_v4") && text.contains("10.200.2.2"),
        "{text}"
    );
    assert_eq!(lab.tcp_ask(VIP1, 80).as_deref(), Some("b1"));

    let out = portcullis(&[
        "apply",
        "--once",
        "--source",
        bad.to_str().expect("path"),
        "--external-iface",
        "g0",
    ]);
    assert_eq!(out.status.code(), Some(2), "a rejected export exits 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3, column 6 (fwmark)"));
    assert_eq!(
        nft_list(&lab, "portcullis"),
        table_before,
        "kernel state byte-identical"
    );
    assert_eq!(
        lab.tcp_ask(VIP1, 80).as_deref(),
        Some("b1"),
        "traffic unaffected"
    );

    let again = portcullis(&[
        "apply",
        "--once",
        "--source",
        good.to_str().expect("path"),
        "--external-iface",
        "g0",
    ]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
    assert_eq!(portcullis(&["flush"]).status.code(), Some(0));
    assert!(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.gw.name,
                "nft",
                "list",
                "table",
                "inet",
                "portcullis"
            ])
            .output()
            .is_ok_and(|o| !o.status.success()),
        "flush removed our table"
    );
    assert_eq!(
        nft_list(&lab, "other"),
        other_before,
        "the other table is untouched"
    );
}

#[test]
fn an_incremental_apply_changes_only_what_the_diff_says() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("incr", 3);
    let mut s = syncer(&lab);
    let first = state(&[
        row("tcp", VIP1, 80, 1, 1),
        row("tcp", VIP1, 443, 2, 1),
        row("udp", VIP2, 53, 3, 1),
    ]);
    s.sync(first.clone()).expect("apply");
    let mut reader = NftCli::in_netns(&lab.gw.name);
    let before = reader.read_table().expect("read").expect("table");
    // Drain :80's b1 for b3 and withdraw :443; udp 53 stays as it is.
    let second = state(&[
        row("tcp", VIP1, 80, 1, 0),
        row("tcp", VIP1, 80, 3, 1),
        row("udp", VIP2, 53, 3, 1),
    ]);
    let outcome = s.sync(second.clone()).expect("sync");
    assert!(
        matches!(outcome, SyncOutcome::Incremental { .. }),
        "{outcome:?}"
    );
    let after = reader.read_table().expect("read").expect("table");
    assert!(portcullis::apply::drift(
        &s.expected_table(&second).expect("expected"),
        &Some(after.clone())
    )
    .is_empty());

    // What changed in the kernel is exactly what the transaction said, and no chain changed.
    assert_eq!(
        before.chains, after.chains,
        "an incremental sync never touches chains"
    );
    let elements =
        |t: &portcullis::apply::TableState| -> BTreeSet<(String, String, Option<String>)> {
            t.sets
                .iter()
                .flat_map(|(name, set)| {
                    set.elements
                        .iter()
                        .map(move |(k, v)| (name.clone(), k.clone(), v.clone()))
                })
                .collect()
        };
    let (was, is) = (elements(&before), elements(&after));
    let removed: BTreeSet<_> = was.difference(&is).cloned().collect();
    let added: BTreeSet<_> = is.difference(&was).cloned().collect();
    let tx = portcullis::render::nft::incremental_between(&first, &second, Backend::Nft)
        .expect("no pattern collision");
    let (mut said_removed, mut said_added) = (BTreeSet::new(), BTreeSet::new());
    for op in &tx.ops {
        use portcullis::render::nft::transaction::{Object, Op};
        match op {
            Op::Delete(Object::Element(e)) => {
                let value = was
                    .iter()
                    .find(|(s, k, _)| *s == e.set && *k == e.key)
                    .and_then(|x| x.2.clone());
                said_removed.insert((e.set.clone(), e.key.clone(), value));
            }
            Op::Add(Object::Element(e)) => {
                said_added.insert((e.set.clone(), e.key.clone(), e.value.clone()));
            }
            other => panic!("unexpected operation {other}"),
        }
    }
    assert_eq!(removed, said_removed);
    assert_eq!(added, said_added);
    // :443 withdrawn (accept set and balancing map), :80 now all to b3; udp 53 untouched.
    assert!(removed
        .iter()
        .any(|(s, k, _)| s == "lb_pattern_v4" && k == &format!("{VIP1} . tcp . 443")));
    // Added: :80's elements (its new bucket pattern, its server) and that pattern's table.
    assert!(
        added
            .iter()
            .all(|(s, k, _)| s.starts_with("lb_slot_")
                || k.starts_with(&format!("{VIP1} . tcp . 80"))),
        "{added:?}"
    );
    assert!(added.iter().any(|(s, _, _)| s == "lb_pattern_v4"));
    assert!(!removed
        .iter()
        .chain(&added)
        .any(|(_, k, _)| k.contains("udp")));
    assert_eq!(lab.tcp_ask(VIP1, 80).as_deref(), Some("b3"));
    assert_eq!(lab.tcp_ask(VIP1, 443), None);
    assert_eq!(udp_ask(&lab.udp_socket(), VIP2, 53).as_deref(), Some("b3"));
}

/// kill -9 at many points of `apply --once`, alternating between two exports: the table is
/// always exactly one of the two, never a mixture or a half-built table.
#[test]
fn killing_an_apply_never_leaves_a_half_applied_table() {
    if !require_nft() {
        return;
    }
    use portcullis::apply::drift;
    let ns = common::Netns::new("kill");
    let dir = common::tmp_dir("kill");
    let rows_a = portcullis::synth::rows(4000);
    let rows_b = portcullis::synth::rows(2500);
    let files: Vec<std::path::PathBuf> = [("a", &rows_a), ("b", &rows_b)]
        .iter()
        .map(|(name, rows)| {
            let path = dir.join(format!("{name}.csv"));
            std::fs::write(&path, portcullis_export::to_string(rows).expect("valid"))
                .expect("write");
            path
        })
        .collect();
    let opts = render_options(Backend::Nft, &["lo"]);
    let syncer = Syncer::new(NftCli::in_netns(&ns.name), NoConntrack, opts);
    let expected: Vec<_> = [&rows_a, &rows_b]
        .iter()
        .map(|rows| {
            syncer
                .expected_table(&DesiredState::from_rows(rows.iter()))
                .expect("render")
        })
        .collect();
    let apply = |file: &std::path::Path| {
        ns.command(env!("CARGO_BIN_EXE_portcullis"))
            .args(["apply", "--once", "--external-iface", "lo"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--source")
            .arg(file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn apply")
    };
    assert!(apply(&files[0]).wait().expect("wait").success());
    let mut reader = NftCli::in_netns(&ns.name);
    for round in 0..12u64 {
        let mut child = apply(&files[(round % 2) as usize]);
        // Spread the kills over reading, validating, rendering and handing over to nft.
        std::thread::sleep(Duration::from_millis(15 * round));
        let _ = child.kill();
        let _ = child.wait();
        // An orphaned nft may still be committing: wait for the table to settle on one state.
        let settled = common::wait_until(5, || {
            let live = reader.read_table().expect("read back");
            expected
                .iter()
                .any(|e| drift(e, &live).is_empty())
                .then_some(())
        })
        .is_some();
        assert!(settled, "round {round}: the table matches neither export");
    }
}

/// With internal interfaces configured, translated traffic leaves only through them: a real
/// server behind another interface is unreachable through the gateway until it is listed.
#[test]
fn translated_traffic_leaves_only_through_internal_interfaces() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("internal", 2);
    let opts = |internal: &[&str]| {
        let mut o = render_options(Backend::Nft, &["g0"]);
        o.internal_interfaces = internal
            .iter()
            .map(|i| portcullis::render::nft::Ifname::parse(i).expect("ifname"))
            .collect();
        o
    };
    let st = || state(&[row("tcp", VIP1, 80, 1, 1), row("tcp", VIP1, 81, 2, 1)]);
    let mut s = Syncer::new(NftCli::in_netns(&lab.gw.name), NoConntrack, opts(&["e1"]));
    s.sync(st()).expect("apply");
    assert_eq!(
        lab.tcp_ask(VIP1, 80).as_deref(),
        Some("b1"),
        "b1 is behind e1"
    );
    assert_eq!(lab.tcp_ask(VIP1, 81), None, "b2 is behind e2, not internal");
    let mut s = Syncer::new(
        NftCli::in_netns(&lab.gw.name),
        NoConntrack,
        opts(&["e1", "e2"]),
    );
    s.reconcile(st()).expect("regenerate");
    assert_eq!(
        lab.tcp_ask(VIP1, 81).as_deref(),
        Some("b2"),
        "e2 listed now"
    );
}
