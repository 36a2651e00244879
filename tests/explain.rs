//! `portcullis explain` against real traffic: for clients of a source-hashed service (by
//! address) and of a per-connection one (by address and source port), the real server it
//! predicts is the one the kernel's nft table sends the flow to. Also the command itself on
//! the shipped example.

mod common;

use common::lab::{in_netns, udp_ask, Lab, VIP1};
use common::{render_options, require_nft};
use portcullis::apply::{NftCli, NoConntrack, Syncer};
use portcullis::model::DesiredState;
use portcullis::render::nft::explain::{explain, Query};
use portcullis::render::nft::Backend;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

const SERVERS: usize = 6;
const CLIENTS: u8 = 60;
const SOURCE_HASHED: u16 = 53;
const PER_FLOW: u16 = 54;
/// A port in the range of the fwmark service (source-hashed), whose steps carry pattern and
/// slot in `meta priority` rather than the mark.
const FWMARK_RANGE: &str = "20000-20011";
const IN_FWMARK_RANGE: u16 = 20005;

/// Three UDP services on VIP1 over the same six backends (port 8080, uneven weights): port 53
/// persistent (bucket from the source address), port 54 round robin (address and port), and
/// ports 20000-20011 an fwmark service, persistent (the backends serve 20005).
fn export() -> DesiredState {
    let mut text =
        "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence\n"
            .to_owned();
    for n in 1..=SERVERS {
        let ip = Lab::backend_ip(n);
        text += &format!("dns,dns.b{n},udp,{VIP1},{SOURCE_HASHED},,{ip},8080,{n},sh,nat,300\n");
        text += &format!("log,log.b{n},udp,{VIP1},{PER_FLOW},,{ip},8080,{n},wrr,nat,\n");
        text += &format!("tg,tg.b{n},udp,{VIP1},{FWMARK_RANGE},77,{ip},,{n},sh,nat,300\n");
    }
    let export = portcullis_export::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    DesiredState::from_export(&export)
}

fn client_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + i)
}

/// What explain says client `addr` (from `port`, if given) reaches: the backend's name.
fn predicted(state: &DesiredState, vport: u16, addr: Ipv4Addr, port: Option<u16>) -> String {
    let q = Query {
        vip: VIP1.parse().expect("vip"),
        port: vport,
        proto: None,
        client: Some(IpAddr::V4(addr)),
        source_port: port,
    };
    let e = explain(state, &q).pop().expect("a service answers");
    let server = e
        .client
        .and_then(|c| c.server)
        .expect("a server owns the bucket");
    // "10.200.N.2:8080" → "bN", the name the backend answers with.
    let n = server
        .strip_prefix("10.200.")
        .and_then(|rest| rest.split('.').next())
        .expect("a lab address");
    format!("b{n}")
}

#[test]
fn explain_predicts_the_real_server_of_every_client() {
    if !require_nft() {
        return;
    }
    let lab = Lab::new("explain", SERVERS);
    for i in 0..CLIENTS {
        let addr = format!("{}/24", client_addr(i));
        lab.client.exec(&["ip", "addr", "add", &addr, "dev", "c0"]);
    }
    let state = export();
    let mut syncer = Syncer::new(
        NftCli::in_netns(&lab.gw.name),
        NoConntrack,
        render_options(Backend::Nft, &["g0"]),
    );
    syncer.sync(state.clone()).expect("apply");

    // Each client from a fixed source port per service, so both hashes are known.
    let answers = in_netns(&lab.client.name, || {
        (0..CLIENTS)
            .map(|i| {
                let ask = |vport: u16, sport: u16| {
                    let sock = UdpSocket::bind((client_addr(i), sport)).expect("bind");
                    sock.set_read_timeout(Some(Duration::from_millis(700)))
                        .expect("timeout");
                    udp_ask(&sock, VIP1, vport)
                };
                let sport = 40000 + u16::from(i) * 7;
                (
                    ask(SOURCE_HASHED, sport),
                    ask(PER_FLOW, sport),
                    ask(IN_FWMARK_RANGE, sport),
                    sport,
                )
            })
            .collect::<Vec<_>>()
    });
    let mut reached = std::collections::BTreeSet::new();
    for (i, (by_source, by_flow, by_fwmark, sport)) in answers.into_iter().enumerate() {
        let addr = client_addr(i as u8);
        let by_source = by_source.unwrap_or_else(|| panic!("{addr}: no answer on :53"));
        let by_flow = by_flow.unwrap_or_else(|| panic!("{addr}: no answer on :54"));
        let by_fwmark = by_fwmark.unwrap_or_else(|| panic!("{addr}: no answer on :20005"));
        assert_eq!(
            by_fwmark,
            predicted(&state, IN_FWMARK_RANGE, addr, None),
            "{addr} on the fwmark service"
        );
        assert_eq!(
            by_source,
            predicted(&state, SOURCE_HASHED, addr, None),
            "{addr} on the source-hashed service"
        );
        assert_eq!(
            by_flow,
            predicted(&state, PER_FLOW, addr, Some(sport)),
            "{addr}:{sport} on the per-connection service"
        );
        reached.insert(by_source);
        reached.insert(by_flow);
    }
    // Predictions that all named one server would prove little.
    assert!(reached.len() >= 4, "clients reached {reached:?}");
}

#[test]
fn explain_prints_the_example_services() {
    let export = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/examples/export.csv");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("explain")
            .args(args)
            .args(["--source", export])
            .output()
            .expect("run portcullis");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run(&[
        "192.0.2.10:80",
        "--from",
        "198.51.100.7",
        "--from-port",
        "40000",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("pgw.app1.1") && text.contains("pgw.app2.1"),
        "{text}"
    );
    assert!(
        text.contains("client 198.51.100.7:40000: bucket "),
        "{text}"
    );
    let (code, json) = run(&["192.0.2.10:80", "--json"]);
    assert_eq!(code, Some(0));
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(parsed[0]["buckets"], 29, "{json}");
    let (code, _) = run(&["192.0.2.99:1"]);
    assert_eq!(code, Some(1), "nothing answers there");
}
