//! Synthetic exports for benchmarks and tests: a deterministic, realistic mix at any size.
//!
//! Per 20 "units": 16 plain services (one vip:port, three real servers, one in twenty drained),
//! 2 fwmark services (a 10,000-port range on three vips, four real servers behind each vip),
//! 2 IPv6 services (one vip:port, two real servers). Addresses come from the benchmarking range
//! 198.18.0.0/15, 2001:db8::/32 and 10.0.0.0/8, so they never collide with anything real.

use portcullis_export::{ExportRow, InstanceId, Method, PortRange, Proto, Scheduler, ServiceType};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Exactly `n` rows of a valid export. The same `n` always gives the same rows.
pub fn rows(n: usize) -> Vec<ExportRow> {
    let mut out = Vec::with_capacity(n + 16);
    let mut unit = 0u32;
    while out.len() < n {
        let left = n - out.len();
        match unit % 20 {
            7 | 17 if left >= 12 => fwmark_service(&mut out, unit),
            3 | 13 if left >= 2 => ipv6_service(&mut out, unit),
            _ => plain_service(&mut out, unit, left.min(3)),
        }
        unit += 1;
    }
    out
}

fn v4(base: u32, i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(base.wrapping_add(i)))
}

const VIPS: u32 = 0xC612_0000; // 198.18.0.0
const FWM_VIPS: u32 = 0xC613_0000; // 198.19.0.0
const RIPS: u32 = 0x0A00_0000; // 10.0.0.0

fn row(
    service: &str,
    instance: String,
    proto: Proto,
    vip: IpAddr,
    vport: PortRange,
    rip: IpAddr,
) -> ExportRow {
    ExportRow {
        service: ServiceType::parse(service).expect("constant service name"),
        instance: InstanceId::parse(&instance).expect("generated instance id"),
        proto,
        vip,
        vport,
        fwmark: None,
        rip,
        rport: None,
        weight: 100,
        scheduler: Scheduler::Wlc,
        method: Method::Nat,
        persistence: None,
        check: None,
    }
}

fn plain_service(out: &mut Vec<ExportRow>, unit: u32, reals: usize) {
    // Eight ports per vip: 198.18.x.y:8000-8007.
    let vip = v4(VIPS, unit / 8);
    let port = 8000 + (unit % 8) as u16;
    for j in 0..reals as u32 {
        let mut r = row(
            "pgw",
            format!("pgw.u{unit}.{j}"),
            Proto::Tcp,
            vip,
            PortRange::single(port),
            v4(RIPS, unit * 4 + j),
        );
        r.rport = Some(8080);
        r.weight = if (unit + j).is_multiple_of(20) {
            0
        } else {
            100
        };
        r.persistence = unit.is_multiple_of(5).then_some(300);
        out.push(r);
    }
}

fn fwmark_service(out: &mut Vec<ExportRow>, unit: u32) {
    for v in 0..3 {
        for j in 0..4 {
            let mut r = row(
                "tg",
                format!("tg.u{unit}.{j}"),
                Proto::Tcp,
                v4(FWM_VIPS, unit * 3 + v),
                PortRange {
                    first: 20000,
                    last: 29999,
                },
                v4(RIPS, unit * 4 + j),
            );
            r.fwmark = Some(1000 + unit);
            r.scheduler = Scheduler::Sh;
            r.weight = 10;
            out.push(r);
        }
    }
}

fn ipv6_service(out: &mut Vec<ExportRow>, unit: u32) {
    let vip = IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) + unit as u128 + 1));
    for j in 0..2u16 {
        let rip = IpAddr::V6(Ipv6Addr::from(
            (0xfd00u128 << 112) + ((unit as u128) << 16) + j as u128 + 1,
        ));
        let mut r = row(
            "logger",
            format!("logger.u{unit}.{j}"),
            Proto::Udp,
            vip,
            PortRange::single(514),
            rip,
        );
        r.rport = Some(5514);
        r.scheduler = Scheduler::Rr;
        r.weight = 1;
        out.push(r);
    }
}

/// Exactly `n` plain TCP services of two real servers each (vip:port from 198.18.0.0/15,
/// eight ports per vip): for benchmarks that count services rather than rows.
pub fn rows_with_services(n: usize) -> Vec<ExportRow> {
    let mut out = Vec::with_capacity(2 * n);
    for unit in 0..n as u32 {
        plain_service(&mut out, unit, 2);
    }
    out
}

/// A copy of `rows` with one real server's weight flipped: the smallest realistic change.
pub fn with_one_change(rows: &[ExportRow]) -> Vec<ExportRow> {
    let mut changed = rows.to_vec();
    if let Some(r) = changed.iter_mut().find(|r| r.fwmark.is_none()) {
        r.weight = if r.weight == 0 { 100 } else { 0 };
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_exports_are_valid_and_exact() {
        for n in [0, 1, 2, 13, 100, 1000, 5000] {
            let r = rows(n);
            assert_eq!(r.len(), n);
            portcullis_export::validate_rows(&r).unwrap_or_else(|e| panic!("{n} rows: {e}"));
        }
        assert_eq!(rows(500), rows(500));
        let services = rows_with_services(300);
        portcullis_export::validate_rows(&services).expect("valid");
        assert_eq!(
            crate::model::DesiredState::from_rows(&services)
                .services
                .len(),
            300
        );
    }
}
