//! The pure-nftables load balancer (`backend = "nft"`): the same virtual services as IPVS,
//! done with DNAT from maps, in static chains.
//!
//! Each virtual service's weights are spread over 65536 **slots** (a weight-3 server owns three
//! times the slots of a weight-1 server). One map element per (frontend, real server) says
//! "`daddr . l4proto . dport . slot` in these ranges → DNAT to this real server". The slot is
//! `numgen random mod 65536` (rr, wrr, and the connection-counting schedulers, which nftables
//! cannot count: lc, wlc, sed, nq, lblc, lblcr become weighted random) or `jhash ip saddr mod
//! 65536` (sh, dh, mh and every persistent service: a client keeps its server while the
//! service's servers and weights are unchanged).
//!
//! Why maps and not a chain per service: measured on nft 1.0.6 (Debian 12), a table with one
//! chain per service and per real server took 14.7 s to load at 10k services, and *adding one
//! service* to it took 2.7 s, because nft reads every chain of the table before changing any.
//! With maps, every sync is element additions and deletions, whose cost does not grow with the
//! table — which is the knftables rule: static chains, dynamic sets and maps.
//!
//! Four maps per address family, so each lookup has one value type and one slot source:
//! `lb_{rand,hash}_{port,addr}_v{4,6}`. `port` maps DNAT to `rip . rport`; `addr` maps to `rip`
//! alone and keep the client's port (port ranges). A weight-0 server gets no slots: no new
//! connections, while established flows keep their conntrack entry (DNAT is decided on a
//! connection's first packet only). With every server drained the frontend has no element:
//! packets are not translated and the gateway itself refuses the connection.

use super::layout::frontend_element;
use super::transaction::Element;
use crate::model::VirtualService;
use portcullis_export::Scheduler;

/// Slots per service: the `mod` of numgen and jhash.
pub const SLOTS: u32 = 65536;

/// The map names, in the order the static rules look them up.
pub const MAPS: [(&str, Selector, Target, Family); 8] = [
    (
        "lb_rand_port_v4",
        Selector::Random,
        Target::AddrPort,
        Family::V4,
    ),
    (
        "lb_rand_addr_v4",
        Selector::Random,
        Target::Addr,
        Family::V4,
    ),
    (
        "lb_hash_port_v4",
        Selector::SourceHash,
        Target::AddrPort,
        Family::V4,
    ),
    (
        "lb_hash_addr_v4",
        Selector::SourceHash,
        Target::Addr,
        Family::V4,
    ),
    (
        "lb_rand_port_v6",
        Selector::Random,
        Target::AddrPort,
        Family::V6,
    ),
    (
        "lb_rand_addr_v6",
        Selector::Random,
        Target::Addr,
        Family::V6,
    ),
    (
        "lb_hash_port_v6",
        Selector::SourceHash,
        Target::AddrPort,
        Family::V6,
    ),
    (
        "lb_hash_addr_v6",
        Selector::SourceHash,
        Target::Addr,
        Family::V6,
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selector {
    Random,
    SourceHash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// DNAT to address and port.
    AddrPort,
    /// DNAT to the address, keeping the port.
    Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => ("ip", "ipv4"),
            Family::V6 => ("ip6", "ipv6"),
        }
    }
}

fn slot_expr(selector: Selector, family: Family) -> String {
    match selector {
        Selector::Random => format!("numgen random mod {SLOTS}"),
        Selector::SourceHash => format!("jhash {} saddr mod {SLOTS}", family.names().0),
    }
}

/// The map's type. `typeof` with `numgen` is the one way nft 1.0.6 accepts a 32-bit integer
/// in a concatenation; the jhash rules look up the same key type. (Declaring the map with
/// `typeof … jhash` makes `nft list` crash on 1.0.6, so it is never done.)
pub fn map_typeof(target: Target, family: Family) -> String {
    let ip = family.names().0;
    let key = format!("{ip} daddr . meta l4proto . th dport . numgen random mod {SLOTS}");
    match target {
        Target::AddrPort => format!("{key} : {ip} daddr . th dport"),
        Target::Addr => format!("{key} : {ip} daddr"),
    }
}

/// The rule in `prerouting_dnat` that consults map `name`. A lookup that misses ends the rule,
/// and the next one is tried; a hit DNATs and ends the chain.
pub fn lookup_rule(name: &str, selector: Selector, target: Target, family: Family) -> String {
    let ip = family.names().0;
    // A port mapping needs nft to know the packet has ports.
    let guard = match target {
        Target::AddrPort => "meta l4proto { tcp, udp } ",
        Target::Addr => "",
    };
    format!(
        "{guard}dnat {ip} to {ip} daddr . meta l4proto . th dport . {} map @{name}",
        slot_expr(selector, family)
    )
}

fn uses_source_hash(svc: &VirtualService) -> bool {
    svc.params.persistence.is_some()
        || matches!(
            svc.params.scheduler,
            Scheduler::Sh | Scheduler::Dh | Scheduler::Mh
        )
}

/// Slot ranges of the servers with weight > 0, in the service's server order: each server's
/// share of `SLOTS` is proportional to its weight (rounded at boundaries, so a server whose
/// share rounds to nothing gets no slot).
///
/// DNAT cannot change the address family, so servers of the other family than the service's
/// frontends (possible with method `tun`, which IPVS tunnels) get no slots with this backend.
pub fn slots(svc: &VirtualService) -> Vec<(usize, u32, u32)> {
    let v6 = svc.is_ipv6();
    let usable = |addr: &std::net::IpAddr| addr.is_ipv6() == v6;
    let total: u64 = svc
        .reals
        .iter()
        .filter(|(k, _)| usable(&k.addr))
        .map(|(_, s)| s.weight as u64)
        .sum();
    let mut out = Vec::new();
    let mut cumulative = 0u64;
    for (i, (key, server)) in svc.reals.iter().enumerate() {
        if server.weight == 0 || !usable(&key.addr) {
            continue;
        }
        let first = (cumulative * SLOTS as u64 / total) as u32;
        cumulative += server.weight as u64;
        let end = (cumulative * SLOTS as u64 / total) as u32;
        if end > first {
            out.push((i, first, end - 1));
        }
    }
    out
}

/// Every load-balancing element of a service: one per frontend and server with slots.
pub fn elements(svc: &VirtualService) -> Vec<Element> {
    let family = if svc.is_ipv6() {
        Family::V6
    } else {
        Family::V4
    };
    let selector = if uses_source_hash(svc) {
        Selector::SourceHash
    } else {
        Selector::Random
    };
    let slots = slots(svc);
    let reals: Vec<_> = svc.reals.iter().collect();
    let mut out = Vec::with_capacity(svc.frontends.len() * slots.len());
    for f in &svc.frontends {
        let base = frontend_element(svc.proto, f).key;
        for &(i, first, last) in &slots {
            let (real, _) = reals[i];
            // A single-port frontend knows the port even when the server keeps it.
            let port = real
                .port
                .or_else(|| f.ports.is_single().then_some(f.ports.first));
            let (target, value) = match (port, real.addr) {
                (Some(p), std::net::IpAddr::V6(a)) => (Target::AddrPort, format!("{a} . {p}")),
                (Some(p), a) => (Target::AddrPort, format!("{a} . {p}")),
                (None, a) => (Target::Addr, a.to_string()),
            };
            let (name, ..) = MAPS
                .iter()
                .find(|(_, s, t, fam)| *s == selector && *t == target && *fam == family)
                .expect("every combination has a map");
            out.push(Element {
                set: (*name).to_owned(),
                key: slot_key(&base, first, last),
                value: Some(value),
            });
        }
    }
    out
}

fn slot_key(frontend_key: &str, first: u32, last: u32) -> String {
    if first == last {
        format!("{frontend_key} . {first}")
    } else {
        format!("{frontend_key} . {first}-{last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Frontend, RealKey, RealServer, ServiceParams};
    use portcullis_export::{InstanceId, Method, PortRange, Proto, ServiceType};

    fn svc(weights: &[u16]) -> VirtualService {
        VirtualService {
            service: ServiceType::parse("web").expect("valid"),
            proto: Proto::Tcp,
            params: ServiceParams {
                scheduler: Scheduler::Wrr,
                method: Method::Nat,
                persistence: None,
            },
            frontends: [Frontend {
                vip: "192.0.2.10".parse().expect("ip"),
                ports: PortRange::single(80),
            }]
            .into_iter()
            .collect(),
            reals: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    (
                        RealKey {
                            addr: format!("10.0.0.{}", i + 1).parse().expect("ip"),
                            port: None,
                        },
                        RealServer {
                            weight: w,
                            instance: InstanceId::parse(&format!("web.{i}")).expect("id"),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn slots_are_proportional_and_cover_everything() {
        let s = slots(&svc(&[1, 3, 0]));
        assert_eq!(s, vec![(0, 0, 16383), (1, 16384, 65535)]);
        let s = slots(&svc(&[1, 1, 1]));
        assert_eq!(s.first().map(|x| x.1), Some(0));
        assert_eq!(s.last().map(|x| x.2), Some(SLOTS - 1));
        assert!(
            s.windows(2).all(|w| w[0].2 + 1 == w[1].1),
            "contiguous: {s:?}"
        );
        assert!(slots(&svc(&[0, 0])).is_empty());
    }

    #[test]
    fn single_port_frontends_dnat_to_a_port_even_when_it_is_kept() {
        let e = elements(&svc(&[1]));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].set, "lb_rand_port_v4");
        assert_eq!(e[0].key, "192.0.2.10 . tcp . 80 . 0-65535");
        assert_eq!(e[0].value.as_deref(), Some("10.0.0.1 . 80"));
    }
}
