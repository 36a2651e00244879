//! The pure-nftables load balancer (`backend = "nft"`): the same virtual services as IPVS,
//! done with DNAT from exact-match maps, in static chains.
//!
//! Each virtual service has a prime number of **buckets** (a size class chosen from its server
//! count, see [`SIZE_CLASSES`]) and [`super::maglev`] decides which real server owns each,
//! from the servers' keys and weights alone. The bucket of a flow is `jhash` of its source
//! address (persistent services, sh, dh, mh: a client keeps its server) or of its source
//! address and port (every other scheduler: nftables cannot count connections, so rr, wrr, lc,
//! wlc, sed, nq, lblc and lblcr all become a weighted spread of flows), `mod` the bucket count,
//! with a fixed seed. A service of one address and port looks its bucket up in the table of
//! its **pattern**, shared by every service of the same shape ([`super::patterns`]: three
//! static rules, about one element per export row); an fwmark service is marked first
//! (interval map `fwmarks_*`, as for IPVS) and looks up `mark . bucket` in its own table, so its
//! port ranges and addresses share one set of buckets. The maps have no `flags interval`:
//! deleting from them is cheap, and a drain or weight change rewrites one element of a
//! service of one address and port, or only the buckets whose owner changed of an fwmark one.
//!
//! Why maps and not a chain per service: measured on nft 1.0.6 (Debian 12), a table with one
//! chain per service and per real server took 14.7 s to load at 10k services, and *adding one
//! service* to it took 2.7 s, because nft reads every chain of the table before changing any.
//! With maps, every sync is element additions and deletions, whose cost does not grow with the
//! table — which is the knftables rule: static chains, dynamic sets and maps.
//!
//! One bucket map per (hash, size class) — and per target and family for fwmark services —
//! each with its one static rule.
//! A weight-0 server owns no bucket: no new connections, while established flows keep their
//! conntrack entry (DNAT is decided on a connection's first packet only). With every server
//! drained the service has no element: packets are not translated and the gateway itself
//! refuses the connection.

use super::maglev::{self, StableKey};
use super::patterns::{self, Pattern, PatternIds};
use super::transaction::Element;
use crate::model::{RealKey, ServiceKey, VirtualService};
use portcullis_export::Scheduler;
use std::net::IpAddr;

/// The fixed seed of every bucket hash. Fixed, so the bucket of a flow is a function of the
/// packet alone: a regenerated table, a restarted gateway and the other gateway of the pair
/// agree (nft's default is a seed drawn when the rule is loaded).
pub const HASH_SEED: u32 = 0x706f_7274;

/// Bucket counts by the service's number of real servers (weight-0 ones included, so a drain
/// or a weight change never changes it): (most servers, buckets). Primes, as Maglev needs.
/// Each is at least 53 past two servers, so a server's share is within 2 percentage points
/// of its weight share (within one bucket; half a bucket with two servers, hence 29), and
/// about 5 buckets per server at the top of each class keep the element count near 5–15 per
/// export row.
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
/// integer.
pub struct MapDecl {
    pub name: String,
    pub typeof_decl: String,
}

const BUCKET_TYPE: &str = "numgen random mod 65536";

/// One bucket map of fwmark services and the static rule that consults it: `mark . bucket`
/// → real server. fwmark services are few and have many frontends (port ranges, several
/// addresses), so each keeps its own bucket table, keyed by its servers' addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkMap {
    pub selector: Selector,
    pub target: Target,
    pub family: Family,
    pub buckets: u32,
}

impl MarkMap {
    /// `lb_mark_{src|flow}_{port|addr}_{v4|v6}_{buckets}`.
    pub fn name(&self) -> String {
        let selector = match self.selector {
            Selector::Source => "src",
            Selector::Flow => "flow",
        };
        let target = match self.target {
            Target::AddrPort => "port",
            Target::Addr => "addr",
        };
        format!(
            "lb_mark_{selector}_{target}_{}_{}",
            self.family.suffix(),
            self.buckets
        )
    }

    fn decl(&self) -> MapDecl {
        let ip = self.family.ip();
        let key = format!("meta mark . {BUCKET_TYPE}");
        let typeof_decl = match self.target {
            Target::AddrPort => format!("{key} : {ip} daddr . th dport"),
            Target::Addr => format!("{key} : {ip} daddr"),
        };
        MapDecl {
            name: self.name(),
            typeof_decl,
        }
    }

    /// The rule in `prerouting_dnat` that consults this map. A lookup that misses ends the
    /// rule and the next one is tried; a hit DNATs and ends the chain. Ports in the hash or
    /// the value need nft to know the packet has them.
    fn lookup_rule(&self) -> String {
        let ip = self.family.ip();
        format!(
            "meta l4proto {{ tcp, udp }} dnat {ip} to meta mark . jhash {} mod {} seed {HASH_SEED:#x} map @{}",
            self.selector.fields(self.family),
            self.buckets,
            self.name()
        )
    }

    fn all() -> Vec<MarkMap> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            for selector in [Selector::Source, Selector::Flow] {
                for target in [Target::AddrPort, Target::Addr] {
                    for &(_, buckets) in &SIZE_CLASSES {
                        out.push(MarkMap {
                            selector,
                            target,
                            family,
                            buckets,
                        });
                    }
                }
            }
        }
        out
    }
}

/// `lb_pattern_{v4|v6}`: frontend → its service's pattern (step 1 of [`patterns`]).
pub fn pattern_map_name(family: Family) -> String {
    format!("lb_pattern_{}", family.suffix())
}

/// `lb_real_{v4|v6}`: frontend and slot → real server (step 3).
pub fn real_map_name(family: Family) -> String {
    format!("lb_real_{}", family.suffix())
}

/// Every balancing map of the table.
pub fn maps() -> Vec<MapDecl> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let ip = family.ip();
        out.push(MapDecl {
            name: pattern_map_name(family),
            typeof_decl: format!("{} : meta mark", family.frontend()),
        });
        out.push(MapDecl {
            name: real_map_name(family),
            typeof_decl: format!("{} . meta mark : {ip} daddr . th dport", family.frontend()),
        });
    }
    for selector in [Selector::Source, Selector::Flow] {
        for &(_, buckets) in &SIZE_CLASSES {
            out.push(MapDecl {
                name: patterns::slot_map_name(selector, buckets),
                typeof_decl: format!("meta mark . {BUCKET_TYPE} : meta mark"),
            });
        }
    }
    out.extend(MarkMap::all().iter().map(MarkMap::decl));
    out
}

/// The static rules of `prerouting_dnat`, in order: the three steps of services of one
/// address and port (see [`patterns`]), then the fwmark services' lookups.
pub fn rules() -> Vec<String> {
    let mut out = Vec::new();
    let tcp_udp = "meta l4proto { tcp, udp }";
    for family in [Family::V4, Family::V6] {
        out.push(format!(
            "{tcp_udp} meta mark set {} map @{}",
            family.frontend(),
            pattern_map_name(family)
        ));
    }
    for family in [Family::V4, Family::V6] {
        for selector in [Selector::Source, Selector::Flow] {
            for &(_, buckets) in &SIZE_CLASSES {
                // The group bits pick the one rule whose lookup can hit; the frontend check
                // keeps a foreign mark that happens to look like ours untouched.
                let group = patterns::pattern_mark(patterns::group(selector, buckets), 0);
                out.push(format!(
                    "meta mark & {:#010x} == {group:#010x} {tcp_udp} {} @{} meta mark set meta mark . jhash {} mod {buckets} seed {HASH_SEED:#x} map @{}",
                    patterns::GROUP_MASK,
                    family.frontend(),
                    pattern_map_name(family),
                    selector.fields(family),
                    patterns::slot_map_name(selector, buckets),
                ));
            }
        }
    }
    for family in [Family::V4, Family::V6] {
        out.push(format!(
            "meta mark & {:#010x} == {:#010x} {tcp_udp} dnat {} to {} . meta mark map @{}",
            patterns::SLOT_MASK,
            patterns::SLOT_TAG,
            family.ip(),
            family.frontend(),
            real_map_name(family)
        ));
    }
    out.extend(MarkMap::all().iter().map(MarkMap::lookup_rule));
    out
}

/// The rule of `prerouting_unmark`, right after the DNAT: the scratch marks of [`patterns`]
/// never reach routing.
pub fn unmark_rule() -> String {
    format!(
        "meta mark & {:#010x} == {:#010x} meta mark set 0",
        patterns::RESERVED.1,
        patterns::RESERVED.0
    )
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

impl StableKey for RealKey {
    fn stable_bytes(&self) -> Vec<u8> {
        let mut out = match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        match self.port {
            Some(p) => out.extend_from_slice(&[1, (p >> 8) as u8, p as u8]),
            None => out.push(0),
        }
        out
    }
}

impl StableKey for &RealKey {
    fn stable_bytes(&self) -> Vec<u8> {
        (*self).stable_bytes()
    }
}

/// A service's buckets: their number, and each one's real server (`None` when the service has
/// no server with weight). Servers of the other address family than the frontends (method
/// `tun`, which IPVS tunnels) count as drained: DNAT cannot change the family. A service of
/// one address and port has its pattern's table (slots are its servers in key order); an
/// fwmark service its own, keyed by its servers' addresses.
pub fn bucket_owners<'a>(
    key: &ServiceKey,
    svc: &'a VirtualService,
) -> (u32, Vec<Option<&'a RealKey>>) {
    let reals: Vec<&RealKey> = svc.reals.keys().collect();
    let (buckets, owners) = match key {
        ServiceKey::Addr { .. } => match Pattern::of(svc) {
            Some(p) => (p.buckets, p.owners()),
            None => {
                let buckets = bucket_count(reals.len());
                (buckets, vec![None; buckets as usize])
            }
        },
        ServiceKey::Fwmark { .. } => mark_bucket_owners(svc),
    };
    (
        buckets,
        owners.into_iter().map(|o| o.map(|i| reals[i])).collect(),
    )
}

/// An fwmark service's bucket table, as indexes into its real servers.
fn mark_bucket_owners(svc: &VirtualService) -> (u32, Vec<Option<usize>>) {
    let v6 = svc.is_ipv6();
    let servers: Vec<(&RealKey, u32)> = svc
        .reals
        .iter()
        .map(|(k, s)| {
            let usable = k.addr.is_ipv6() == v6;
            (k, if usable { u32::from(s.weight) } else { 0 })
        })
        .collect();
    let buckets = bucket_count(servers.len());
    (buckets, maglev::assign(&servers, buckets))
}

/// Every load-balancing element of a service. An fwmark service: one per bucket with an
/// owner. A service of one address and port, per frontend: its pattern's mark (from `ids`,
/// the applied state's patterns; none when no server has weight) and the real server of each
/// slot — weight-0 servers included, so a drain only changes the pattern.
pub fn elements(key: &ServiceKey, svc: &VirtualService, ids: &PatternIds) -> Vec<Element> {
    let family = Family::of(svc);
    let reals: Vec<&RealKey> = svc.reals.keys().collect();
    let value = |r: &RealKey, frontend_port: Option<u16>| match r.port.or(frontend_port) {
        Some(p) => format!("{} . {p}", r.addr),
        None => r.addr.to_string(),
    };
    let mut out = Vec::new();
    match key {
        ServiceKey::Fwmark { mark } => {
            let (buckets, owners) = mark_bucket_owners(svc);
            let map = |target| {
                MarkMap {
                    selector: selector(svc),
                    target,
                    family,
                    buckets,
                }
                .name()
            };
            let names = (map(Target::AddrPort), map(Target::Addr));
            // Each server's value text once, not once per bucket.
            let values: Vec<String> = reals.iter().map(|r| value(r, None)).collect();
            for (bucket, owner) in owners.iter().enumerate() {
                let Some(i) = *owner else { continue };
                out.push(Element {
                    set: if reals[i].port.is_some() {
                        names.0.clone()
                    } else {
                        names.1.clone()
                    },
                    key: format!("{mark} . {bucket}"),
                    value: Some(values[i].clone()),
                });
            }
        }
        ServiceKey::Addr { .. } => {
            let pattern_mark = Pattern::of(svc).and_then(|p| ids.get(&p).copied());
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
                for (slot, r) in reals.iter().enumerate() {
                    if r.addr.is_ipv6() != svc.is_ipv6() {
                        continue;
                    }
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

    fn ids_of(s: &VirtualService) -> PatternIds {
        let mut state = crate::model::DesiredState::default();
        state.services.insert(addr_key(), s.clone());
        patterns::PatternIndex::of(&state).ids()
    }

    #[test]
    fn a_service_of_one_port_names_its_pattern_and_each_server_once() {
        let s = svc(&[1, 3, 0]);
        let ids = ids_of(&s);
        let e = elements(&addr_key(), &s, &ids);
        assert_eq!(e.len(), 4, "{e:?}");
        let mark = ids[&Pattern::of(&s).expect("has weight")];
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
        let e = elements(&addr_key(), &drained, &ids_of(&drained));
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
    fn fwmark_services_are_keyed_by_mark_and_keep_the_port_without_rport() {
        let mut s = svc(&[1, 1]);
        s.params.persistence = Some(300);
        let e = elements(&ServiceKey::Fwmark { mark: 7 }, &s, &PatternIds::new());
        assert_eq!(e.len(), 29);
        assert!(e.iter().all(|e| e.set == "lb_mark_src_addr_v4_29"), "{e:?}");
        assert!(e.iter().any(|e| e.key == "7 . 28"));
    }

    #[test]
    fn lookup_rules_hash_with_the_fixed_seed() {
        let rules = rules();
        assert_eq!(rules.len(), 2 + 20 + 2 + 40);
        assert_eq!(
            rules[0],
            "meta l4proto { tcp, udp } meta mark set ip daddr . meta l4proto . th dport map @lb_pattern_v4"
        );
        assert_eq!(
            rules[2],
            "meta mark & 0xff800000 == 0x70000000 meta l4proto { tcp, udp } ip daddr . meta l4proto . th dport \
             @lb_pattern_v4 meta mark set meta mark . jhash ip saddr mod 29 seed 0x706f7274 map @lb_slot_src_29"
        );
        assert_eq!(
            rules[22],
            "meta mark & 0xf8000000 == 0x78000000 meta l4proto { tcp, udp } dnat ip to ip daddr . \
             meta l4proto . th dport . meta mark map @lb_real_v4"
        );
        assert_eq!(
            rules[24],
            "meta l4proto { tcp, udp } dnat ip to meta mark . jhash ip saddr mod 29 seed 0x706f7274 \
             map @lb_mark_src_port_v4_29"
        );
        assert!(rules.iter().all(|r| !r.contains("numgen")));
        assert_eq!(maps().len(), 4 + 10 + 40);
    }
}
