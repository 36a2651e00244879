//! Export "shapes" the nft benches load: the same row count costs the data plane very
//! differently depending on how rows group into services (issue 15). Each generator writes CSV
//! text and parses it with the export crate, so every shape is an export ADMIN could write.
//!
//! - [`two_server_rows`]: many small services, two real servers each (the common case);
//! - [`persistent_rows`]: persistent services of 40 real servers (a sticky web tier);
//! - [`fwmark_range_rows`]: fwmark services on a 1000-port range, 2 VIPs × 4 real servers.
//!
//! Addresses come from benchmarking and documentation ranges and 10.0.0.0/8, never anything
//! real. The one-change variants come from [`first_server_at`].

#![allow(dead_code)] // each bench uses part of it

use portcullis_export::ExportRow;
use std::net::Ipv4Addr;

const HEADER: &str =
    "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence\n";

const VIPS: u32 = 0xC612_0000; // 198.18.0.0
const FWM_VIPS: u32 = 0xC613_0000; // 198.19.0.0
const RIPS: u32 = 0x0A00_0000; // 10.0.0.0

/// The `i`-th address after `base` (offsets stay far below the end of each range).
fn addr(base: u32, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(base + u32::try_from(i).expect("offset fits an address"))
}

fn parse(text: &str, what: &str) -> Vec<ExportRow> {
    portcullis_export::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("{what}: the generator wrote an invalid export:\n{e}"))
        .rows()
}

/// `n` rows (`n` even) of `n / 2` plain TCP services of two real servers each: one vip:port
/// per service, eight ports per VIP (198.18.x.y:8000-8007), every real server its own address.
pub fn two_server_rows(n: usize) -> Vec<ExportRow> {
    assert!(
        n.is_multiple_of(2),
        "two servers per service: an even row count"
    );
    let mut text = String::from(HEADER);
    for row in 0..n {
        let (svc, real) = (row / 2, row % 2);
        text.push_str(&format!(
            "web,web.s{svc}.{real},tcp,{},{},,{},8080,100,wlc,nat,\n",
            addr(VIPS, svc / 8),
            8000 + svc % 8,
            addr(RIPS, row + 1),
        ));
    }
    parse(&text, "two-server rows")
}

/// `n` rows of persistent services with 40 real servers each (the shape of a web tier with
/// sticky sessions); real server `drained` of the first service at weight 0.
pub fn persistent_rows(n: usize, drained: Option<usize>) -> Vec<ExportRow> {
    let mut text = String::from(HEADER);
    for row in 0..n {
        let (svc, real) = (row / 40, row % 40);
        let weight = if svc == 0 && drained == Some(real) {
            0
        } else {
            100
        };
        text.push_str(&format!(
            "p{svc},p{svc}.s{real}.1,tcp,198.51.{}.{},443,,10.{}.{}.{},8443,{weight},wlc,nat,300\n",
            100 + svc / 250,
            svc % 250 + 1,
            svc / 256,
            svc % 256,
            real + 1,
        ));
    }
    parse(&text, "persistent rows")
}

/// `n` rows (`n` a multiple of 8) of `n / 8` fwmark services, as `portcullis::synth` writes
/// them but smaller: each the range 20000-20999 on two VIPs of its own (a port belongs to one
/// service) with four real servers, every (VIP, real server) pair a row — the export lists
/// each real server once per frontend. Fwmarks from 1000, scheduler sh, no rport.
pub fn fwmark_range_rows(n: usize) -> Vec<ExportRow> {
    assert!(n.is_multiple_of(8), "8 rows per fwmark service");
    let mut text = String::from(HEADER);
    for row in 0..n {
        let (svc, vip, real) = (row / 8, row % 8 / 4, row % 4);
        text.push_str(&format!(
            "tg,tg.f{svc}.{real},tcp,{},20000-20999,{},{},,10,sh,nat,\n",
            addr(FWM_VIPS, 2 * svc + vip),
            1000 + svc,
            addr(RIPS, 4 * svc + real + 1),
        ));
    }
    parse(&text, "fwmark rows")
}

/// A copy of `rows` with the real server of the first row at `weight` (0: drained). Every row
/// naming that server changes: an fwmark service lists it once per frontend, and the export
/// requires those rows to agree.
pub fn first_server_at(rows: &[ExportRow], weight: u16) -> Vec<ExportRow> {
    let mut out = rows.to_vec();
    let Some(first) = rows.first() else {
        return out;
    };
    let (key, instance) = (first.service_key(), first.instance.clone());
    for r in &mut out {
        if r.instance == instance && r.service_key() == key {
            r.weight = weight;
        }
    }
    out
}
