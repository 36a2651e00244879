//! The pure-nftables load balancer (`backend = "nft"`): the same virtual services as IPVS,
//! done with DNAT from exact-match maps, in static chains.
//!
//! Each virtual service has a prime number of **buckets** (a size class chosen from its server
//! count, see [`SIZE_CLASSES`]) and [`super::maglev`] decides which real server owns each,
//! from the servers' order and weights alone. The bucket of a flow is `jhash` of its source
//! address (persistent services, sh, dh, mh: a client keeps its server) or of its source
//! address and port (every other scheduler: nftables cannot count connections, so rr, wrr, lc,
//! wlc, sed, nq, lblc and lblcr all become a weighted spread of flows), `mod` the bucket count,
//! with a fixed seed. Which server owns each bucket depends only on the service's **pattern**
//! (selector, bucket count, weight of each server in key order), and services of the same
//! pattern share one bucket table ([`super::patterns`]: three static rule steps, about one
//! element per export row). A service of one address and port finds its pattern by frontend;
//! an fwmark service is marked first (interval map `fwmarks_*`, as for IPVS) and finds it by
//! mark, so its port ranges and addresses share one set of buckets. The maps have no
//! `flags interval` except the fwmark frontends' real-server maps: deleting is cheap, and a
//! drain or weight change rewrites one element per frontend (one per fwmark service).
//!
//! Why maps and not a chain per service: measured on nft 1.0.6 (Debian 12), a table with one
//! chain per service and per real server took 14.7 s to load at 10k services, and *adding one
//! service* to it took 2.7 s, because nft reads every chain of the table before changing any.
//! With maps, every sync is element additions and deletions, whose cost does not grow with the
//! table — which is the knftables rule: static chains, dynamic sets and maps.
//!
//! One bucket map per (hash, size class), shared by all patterns of that group.
//! A weight-0 server owns no bucket: no new connections, while established flows keep their
//! conntrack entry (DNAT is decided on a connection's first packet only). With every server
//! drained the service has no pattern: packets are not translated, its frontends join the
//! input accept set and the gateway itself refuses the connection.

use super::patterns::{self, Pattern, PatternIds};
use super::transaction::Element;
use crate::model::{RealKey, ServiceKey, VirtualService};
use portcullis_export::Scheduler;

/// The fixed seed of every bucket hash. Fixed, so the bucket of a flow is a function of the
/// packet alone: a regenerated table, a restarted gateway and the other gateway of the pair
/// agree (nft's default is a seed drawn when the rule is loaded).
pub const HASH_SEED: u32 = 0x706f_7274;

/// Bucket counts by the service's number of real servers (weight-0 ones included, so a drain
/// or a weight change never changes it): (most servers, buckets). Primes, as Maglev needs.
/// Each is at least 53 past two servers, so a server's share is within 2 percentage points
/// of its weight share (within one bucket; half a bucket with two servers, hence 29). The
/// count costs elements once per shared pattern, not per service ([`patterns`]).
pub const SIZE_CLASSES: [(usize, u32); 5] =
    [(2, 29), (12, 61), (48, 193), (192, 769), (usize::MAX, 3079)];

/// The number of buckets of a service with `servers` real servers.
pub fn bucket_count(servers: usize) -> u32 {
    SIZE_CLASSES
        .iter()
        .find(|(most, _)| servers <= *most)
        .map_or(SIZE_CLASSES[SIZE_CLASSES.len() - 1].1, |c| c.1)
}

/// What the bucket hash covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// `jhash saddr`: a client keeps its server (persistent services, sh, dh, mh).
    Source = 0,
    /// `jhash saddr . sport`: each connection on its own. The destination address, protocol
    /// and port are the same for every flow of one frontend (nft 1.0.6 also runs out of
    /// registers hashing an IPv6 5-tuple).
    Flow = 1,
}

impl Selector {
    fn fields(self, family: Family) -> String {
        let ip = family.ip();
        match self {
            Selector::Source => format!("{ip} saddr"),
            Selector::Flow => format!("{ip} saddr . th sport"),
        }
    }
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
    fn ip(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
    fn of(svc: &VirtualService) -> Family {
        if svc.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        }
    }
    fn frontend(self) -> String {
        format!("{} daddr . meta l4proto . th dport", self.ip())
    }
}

/// A map of the table: its name and its `typeof` declaration. `typeof` with `numgen` is the
/// one way nft 1.0.6 accepts a 32-bit integer in a concatenation; the jhash rules look up the
/// same key type. (Declaring a map with `typeof … jhash` makes `nft list` crash on 1.0.6, so
/// it is never done.) The `mod` there is only part of the type: every bucket key is a 32-bit
/// integer. None has `flags interval`: the kernel's hash backend, where deleting is cheap.
pub struct MapDecl {
    pub name: String,
    pub typeof_decl: String,
    /// What the map holds, for whoever reads `nft list`.
    pub comment: &'static str,
}

const BUCKET_TYPE: &str = "numgen random mod 65536";

/// `lb_pattern_{v4|v6}`: frontend of a service of one port → its pattern (step 1 of
/// [`patterns`]).
pub fn pattern_map_name(family: Family) -> String {
    format!("lb_pattern_{}", family.suffix())
}

/// `lb_fwpattern`: fwmark → its service's pattern, in `meta priority` (step 1 for fwmark
/// services, whose frontends are marked in `prerouting_mark` as for IPVS).
pub const FWMARK_PATTERN_MAP: &str = "lb_fwpattern";

/// `lb_real_{v4|v6}`: frontend and slot → real server (step 3, services of one port).
pub fn real_map_name(family: Family) -> String {
    format!("lb_real_{}", family.suffix())
}

/// `lb_fwreal_{port|addr}_{v4|v6}`: fwmark and slot → real server (step 3, fwmark
/// services). `addr` keeps the client's port (servers without `rport`).
pub fn fwreal_map_name(target: Target, family: Family) -> String {
    let t = match target {
        Target::AddrPort => "port",
        Target::Addr => "addr",
    };
    format!("lb_fwreal_{t}_{}", family.suffix())
}

fn dnat_value(target: Target, family: Family) -> String {
    match target {
        Target::AddrPort => format!("{} daddr . th dport", family.ip()),
        Target::Addr => format!("{} daddr", family.ip()),
    }
}

/// Every balancing map of the table.
pub fn maps() -> Vec<MapDecl> {
    let map = |name: String, typeof_decl: String, comment| MapDecl {
        name,
        typeof_decl,
        comment,
    };
    let mut out = vec![map(
        FWMARK_PATTERN_MAP.to_owned(),
        "meta mark : meta priority".to_owned(),
        "fwmark: its bucket pattern, a scratch priority",
    )];
    for family in [Family::V4, Family::V6] {
        out.push(map(
            pattern_map_name(family),
            format!("{} : meta mark", family.frontend()),
            "frontend: its bucket pattern, a scratch mark",
        ));
        out.push(map(
            real_map_name(family),
            format!(
                "{} . meta mark : {}",
                family.frontend(),
                dnat_value(Target::AddrPort, family)
            ),
            "frontend and slot: the real server to DNAT to",
        ));
        for target in [Target::AddrPort, Target::Addr] {
            out.push(map(
                fwreal_map_name(target, family),
                format!("meta mark . meta priority : {}", dnat_value(target, family)),
                "fwmark and slot: the real server to DNAT to",
            ));
        }
    }
    for (fwmark, register, comment) in [
        (
            false,
            "meta mark",
            "pattern and bucket: the slot, a scratch mark",
        ),
        (
            true,
            "meta priority",
            "pattern and bucket of fwmark services: the slot, a scratch priority",
        ),
    ] {
        for selector in [Selector::Source, Selector::Flow] {
            for &(_, buckets) in &SIZE_CLASSES {
                out.push(map(
                    patterns::slot_map_name(fwmark, selector, buckets),
                    format!("{register} . {BUCKET_TYPE} : {register}"),
                    comment,
                ));
            }
        }
    }
    out
}

/// The static rules of `prerouting_dnat`, in order: the three steps of [`patterns`]. A lookup
/// that misses ends its rule and the next one is tried; a DNAT ends the chain.
pub fn rules() -> Vec<String> {
    let tcp_udp = "meta l4proto { tcp, udp }";
    // 1. The pattern: of an fwmark service into the priority (the mark keeps the fwmark),
    //    of a frontend into the mark.
    let mut out = vec![format!(
        "meta priority set meta mark map @{FWMARK_PATTERN_MAP}"
    )];
    for family in [Family::V4, Family::V6] {
        out.push(format!(
            "{tcp_udp} meta mark set {} map @{}",
            family.frontend(),
            pattern_map_name(family)
        ));
    }
    // 2. The slot: the group bits pick the one rule whose lookup can hit.
    for (fwmark, register) in [(false, "meta mark"), (true, "meta priority")] {
        for family in [Family::V4, Family::V6] {
            for selector in [Selector::Source, Selector::Flow] {
                for &(_, buckets) in &SIZE_CLASSES {
                    let group = patterns::pattern_mark(patterns::group(selector, buckets), 0);
                    out.push(format!(
                        "{register} & {:#010x} == {group:#010x} {tcp_udp} {register} set {register} . jhash {} mod {buckets} seed {HASH_SEED:#x} map @{}",
                        patterns::GROUP_MASK,
                        selector.fields(family),
                        patterns::slot_map_name(fwmark, selector, buckets),
                    ));
                }
            }
        }
    }
    // 3. The real server of the slot. Ports in the key or the value need nft to know the
    //    packet has them.
    let slot = |register: &str| {
        format!(
            "{register} & {:#010x} == {:#010x} {tcp_udp}",
            patterns::SLOT_MASK,
            patterns::SLOT_TAG
        )
    };
    for family in [Family::V4, Family::V6] {
        let ip = family.ip();
        out.push(format!(
            "{} dnat {ip} to {} . meta mark map @{}",
            slot("meta mark"),
            family.frontend(),
            real_map_name(family)
        ));
        for target in [Target::AddrPort, Target::Addr] {
            out.push(format!(
                "{} dnat {ip} to meta mark . meta priority map @{}",
                slot("meta priority"),
                fwreal_map_name(target, family)
            ));
        }
    }
    out
}

/// The rules of `prerouting_unmark`, right after the DNAT: the scratch values of
/// [`patterns`] never reach routing or queueing. The priority only of a connection's first
/// packet: later ones never carry ours, and may carry someone else's.
pub fn unmark_rules() -> Vec<String> {
    let (mask, tag) = (patterns::RESERVED.1, patterns::RESERVED.0);
    vec![
        format!("meta mark & {mask:#010x} == {tag:#010x} meta mark set 0"),
        format!("ct state new meta priority & {mask:#010x} == {tag:#010x} meta priority set 0"),
    ]
}

pub fn selector(svc: &VirtualService) -> Selector {
    let by_source = svc.params.persistence.is_some()
        || matches!(
            svc.params.scheduler,
            Scheduler::Sh | Scheduler::Dh | Scheduler::Mh
        );
    if by_source {
        Selector::Source
    } else {
        Selector::Flow
    }
}

/// A service's buckets: their number, and each one's real server (`None` when the service has
/// no server with weight): its pattern's table, slots being its servers in key order.
/// Servers of the other address family than the frontends (method `tun`, which IPVS
/// tunnels) count as drained: DNAT cannot change the family.
pub fn bucket_owners<'a>(
    key: &ServiceKey,
    svc: &'a VirtualService,
) -> (u32, Vec<Option<&'a RealKey>>) {
    let reals: Vec<&RealKey> = svc.reals.keys().collect();
    match Pattern::of(key, svc) {
        Some(p) => (
            p.buckets,
            p.owners()
                .into_iter()
                .map(|o| o.map(|i| reals[i]))
                .collect(),
        ),
        None => {
            let buckets = bucket_count(reals.len());
            (buckets, vec![None; buckets as usize])
        }
    }
}

/// Every load-balancing element of a service and the real server of each slot — drained
/// servers included, so a drain only changes the pattern. A service of one address and port:
/// per frontend, its pattern's mark (from `ids`, the whole state's patterns; none when no
/// server has weight) and each slot's server. An fwmark service (its frontends marked by
/// `fwmarks_*`): its pattern by fwmark (none with no server of weight) and each slot's
/// server by fwmark.
pub fn elements(key: &ServiceKey, svc: &VirtualService, ids: &PatternIds) -> Vec<Element> {
    let family = Family::of(svc);
    let pattern_mark = Pattern::of(key, svc).and_then(|p| ids.get(&p).copied());
    let value = |r: &RealKey, frontend_port: Option<u16>| match r.port.or(frontend_port) {
        Some(p) => format!("{} . {p}", r.addr),
        None => r.addr.to_string(),
    };
    let usable: Vec<(usize, &RealKey)> = svc
        .reals
        .keys()
        .enumerate()
        .filter(|(_, r)| r.addr.is_ipv6() == svc.is_ipv6())
        .collect();
    let mut out = Vec::new();
    match key {
        ServiceKey::Fwmark { mark } => {
            if let Some(pattern) = pattern_mark {
                out.push(Element {
                    set: FWMARK_PATTERN_MAP.to_owned(),
                    key: mark.to_string(),
                    value: Some(patterns::classid(pattern)),
                });
            }
            for &(slot, r) in &usable {
                let target = if r.port.is_some() {
                    Target::AddrPort
                } else {
                    Target::Addr
                };
                out.push(Element {
                    set: fwreal_map_name(target, family),
                    key: format!("{mark} . {}", patterns::classid(patterns::slot_mark(slot))),
                    value: Some(value(r, None)),
                });
            }
        }
        ServiceKey::Addr { .. } => {
            let (pattern_map, real_map) = (pattern_map_name(family), real_map_name(family));
            for f in &svc.frontends {
                let frontend = format!("{} . {} . {}", f.vip, svc.proto, f.ports);
                if let Some(mark) = pattern_mark {
                    out.push(Element {
                        set: pattern_map.clone(),
                        key: frontend.clone(),
                        value: Some(mark.to_string()),
                    });
                }
                for &(slot, r) in &usable {
                    out.push(Element {
                        set: real_map.clone(),
                        key: format!("{frontend} . {}", patterns::slot_mark(slot)),
                        // A service of one port knows the port even when the server keeps it.
                        value: Some(value(r, Some(f.ports.first))),
                    });
                }
            }
        }
    }
    out
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

    fn addr_key() -> ServiceKey {
        ServiceKey::Addr {
            proto: Proto::Tcp,
            vip: "192.0.2.10".parse().expect("ip"),
            port: 80,
        }
    }

    #[test]
    fn the_size_class_follows_the_server_count_drained_included() {
        assert_eq!(bucket_count(1), 29);
        assert_eq!(bucket_count(2), 29);
        assert_eq!(bucket_count(3), 61);
        assert_eq!(bucket_count(40), 193);
        assert_eq!(bucket_count(100_000), 3079);
        let (drained, _) = bucket_owners(&addr_key(), &svc(&[1, 0, 1]));
        let (all, _) = bucket_owners(&addr_key(), &svc(&[1, 1, 1]));
        assert_eq!(drained, all);
    }

    fn ids_of(key: ServiceKey, s: &VirtualService) -> PatternIds {
        let mut state = crate::model::DesiredState::default();
        state.services.insert(key, s.clone());
        patterns::PatternIndex::of(&state).ids()
    }

    #[test]
    fn a_service_of_one_port_names_its_pattern_and_each_server_once() {
        let s = svc(&[1, 3, 0]);
        let ids = ids_of(addr_key(), &s);
        let e = elements(&addr_key(), &s, &ids);
        assert_eq!(e.len(), 4, "{e:?}");
        let mark = ids[&Pattern::of(&addr_key(), &s).expect("has weight")];
        assert_eq!(e[0].set, "lb_pattern_v4");
        assert_eq!(e[0].key, "192.0.2.10 . tcp . 80");
        assert_eq!(e[0].value, Some(mark.to_string()));
        // The drained server keeps its slot, so undraining it only changes the pattern.
        let slots: Vec<(&str, &str)> = e[1..]
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            slots,
            vec![
                ("192.0.2.10 . tcp . 80 . 2013265920", "10.0.0.1 . 80"),
                ("192.0.2.10 . tcp . 80 . 2013265921", "10.0.0.2 . 80"),
                ("192.0.2.10 . tcp . 80 . 2013265922", "10.0.0.3 . 80"),
            ]
        );
        let drained = svc(&[0, 0]);
        let e = elements(&addr_key(), &drained, &ids_of(addr_key(), &drained));
        assert!(e.iter().all(|e| e.set == "lb_real_v4"), "no pattern: {e:?}");
    }

    #[test]
    fn the_pattern_shares_buckets_by_weight() {
        let s = svc(&[1, 3, 0]);
        let (buckets, owners) = bucket_owners(&addr_key(), &s);
        assert_eq!(buckets, 61);
        let to = |ip: &str| {
            owners
                .iter()
                .filter(|o| o.is_some_and(|r| r.addr.to_string() == ip))
                .count()
        };
        // 61 buckets at 1:3: 15.25 and 45.75, by largest remainder 15 and 46.
        assert_eq!(
            (to("10.0.0.1"), to("10.0.0.2"), to("10.0.0.3")),
            (15, 46, 0)
        );
    }

    #[test]
    fn fwmark_services_name_their_pattern_by_mark_and_keep_the_port_without_rport() {
        let mut s = svc(&[1, 1]);
        s.params.persistence = Some(300);
        s.frontends = [Frontend {
            vip: "192.0.2.10".parse().expect("ip"),
            ports: PortRange {
                first: 2000,
                last: 2999,
            },
        }]
        .into_iter()
        .collect();
        let key = ServiceKey::Fwmark { mark: 7 };
        let ids = ids_of(key, &s);
        let e = elements(&key, &s, &ids);
        let mark = ids[&Pattern::of(&key, &s).expect("has weight")];
        // The pattern, and one element per server whatever the frontends (port ranges).
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(
            (e[0].set.as_str(), e[0].key.as_str()),
            ("lb_fwpattern", "7")
        );
        assert_eq!(e[0].value, Some(patterns::classid(mark)));
        assert_eq!(e[1].set, "lb_fwreal_addr_v4");
        assert_eq!(e[1].key, "7 . 7800:0");
        assert_eq!(e[1].value.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn lookup_rules_hash_with_the_fixed_seed() {
        let rules = rules();
        assert_eq!(rules.len(), 1 + 2 + 40 + 6);
        assert_eq!(rules[0], "meta priority set meta mark map @lb_fwpattern");
        assert_eq!(
            rules[1],
            "meta l4proto { tcp, udp } meta mark set ip daddr . meta l4proto . th dport map @lb_pattern_v4"
        );
        assert_eq!(
            rules[3],
            "meta mark & 0xff800000 == 0x70000000 meta l4proto { tcp, udp } meta mark set meta mark . \
             jhash ip saddr mod 29 seed 0x706f7274 map @lb_slot_src_29"
        );
        assert_eq!(
            rules[23],
            "meta priority & 0xff800000 == 0x70000000 meta l4proto { tcp, udp } meta priority set \
             meta priority . jhash ip saddr mod 29 seed 0x706f7274 map @lb_fwslot_src_29"
        );
        assert_eq!(
            rules[43],
            "meta mark & 0xf8000000 == 0x78000000 meta l4proto { tcp, udp } dnat ip to ip daddr . \
             meta l4proto . th dport . meta mark map @lb_real_v4"
        );
        assert_eq!(
            rules[44],
            "meta priority & 0xf8000000 == 0x78000000 meta l4proto { tcp, udp } dnat ip to meta mark \
             . meta priority map @lb_fwreal_port_v4"
        );
        assert!(rules.iter().all(|r| !r.contains("numgen")));
        assert_eq!(maps().len(), 1 + 2 * 4 + 20);
    }
}
