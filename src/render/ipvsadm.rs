//! IPVS state as `ipvsadm-save -n` text, so netops can compare what portcullis wants with what
//! the kernel has (`diff <(ipvsadm-save -n) <(portcullis render --format ipvsadm …)`).
//!
//! Matches ipvsadm 1.31's save format and sort order: address services first (by family,
//! protocol, address, port), then fwmark services by mark; destinations by address and port.

use crate::model::{DesiredState, RealKey, ServiceKey, VirtualService};
use portcullis_export::{Method, Proto, SocketText};
use std::fmt::Write;
use std::net::IpAddr;

pub fn ipvsadm_save(state: &DesiredState) -> String {
    let mut services: Vec<(&ServiceKey, &VirtualService)> = state.services.iter().collect();
    services.sort_by_key(|(key, svc)| sort_key(key, svc));
    let mut out = String::new();
    for (key, svc) in services {
        let name = service_name(key, svc);
        let _ = write!(out, "-A {name} -s {}", svc.params.scheduler);
        if let Some(p) = svc.params.persistence {
            let _ = write!(out, " -p {p}");
        }
        out.push('\n');
        let mut reals: Vec<_> = svc.reals.iter().collect();
        reals.sort_by_key(|(k, _)| (addr_order(k.addr), k.port));
        for (real, rs) in reals {
            let _ = write!(
                out,
                "-a {name} -r {} {} -w {}",
                dest(real),
                forwarding(svc.params.method),
                rs.weight
            );
            if svc.params.method == Method::Tun {
                out.push_str(" --tun-type ipip");
            }
            out.push('\n');
        }
    }
    out
}

/// ipvsadm compares fwmark, then family, then protocol, then address, then port; address
/// services have fwmark 0 and so come first.
fn sort_key(key: &ServiceKey, svc: &VirtualService) -> (u32, bool, u8, u128, u16) {
    match key {
        ServiceKey::Fwmark { mark } => (*mark, svc.is_ipv6(), 0, 0, 0),
        ServiceKey::Addr { proto, vip, port } => (
            0,
            vip.is_ipv6(),
            proto_number(*proto),
            addr_order(*vip),
            *port,
        ),
    }
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

fn addr_order(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn service_name(key: &ServiceKey, svc: &VirtualService) -> String {
    match key {
        ServiceKey::Fwmark { mark } if svc.is_ipv6() => format!("-f {mark} -6"),
        ServiceKey::Fwmark { mark } => format!("-f {mark}"),
        ServiceKey::Addr { proto, vip, port } => {
            let flag = match proto {
                Proto::Tcp => "-t",
                Proto::Udp => "-u",
            };
            format!("{flag} {}", SocketText(*vip, Some(*port)))
        }
    }
}

/// Destinations always print a port; "keep the client's port" is port 0.
fn dest(real: &RealKey) -> String {
    SocketText(real.addr, Some(real.port.unwrap_or(0))).to_string()
}

fn forwarding(m: Method) -> &'static str {
    match m {
        Method::Nat => "-m",
        Method::Dr => "-g",
        Method::Tun => "-i",
    }
}
