//! The pure-nftables load balancer (`backend = "nft"`): the same virtual services as IPVS,
//! done with DNAT from exact-match maps, in static chains.
//!
//! Each virtual service has a prime number of **buckets** (a size class chosen from its server
//! count, see [`SIZE_CLASSES`]) and [`super::maglev`] decides which real server owns each,
//! from the servers' keys and weights alone. The bucket of a flow is `jhash` of its source
//! address (persistent services, sh, dh, mh: a client keeps its server) or of its source
//! address and port (every other scheduler: nftables cannot count connections, so rr, wrr, lc,
//! wlc, sed, nq, lblc and lblcr all become a weighted spread of flows), `mod` the bucket count,
//! with a fixed seed. A service of one address and port looks up `daddr . l4proto . dport .
//! bucket`; an fwmark service is marked first (interval map `fwmarks_*`, as for IPVS) and
//! looks up `mark . bucket`, so its port ranges and addresses share one set of buckets. The
//! maps have no `flags interval`: deleting from them is cheap, and a drain or weight change
//! rewrites only the buckets whose owner changed.
//!
//! Why maps and not a chain per service: measured on nft 1.0.6 (Debian 12), a table with one
//! chain per service and per real server took 14.7 s to load at 10k services, and *adding one
//! service* to it took 2.7 s, because nft reads every chain of the table before changing any.
//! With maps, every sync is element additions and deletions, whose cost does not grow with the
//! table — which is the knftables rule: static chains, dynamic sets and maps.
//!
//! One map per (keying, hash, target, family, size class), each with its one static rule.
//! A weight-0 server owns no bucket: no new connections, while established flows keep their
//! conntrack entry (DNAT is decided on a connection's first packet only). With every server
//! drained the service has no element: packets are not translated and the gateway itself
//! refuses the connection.

use super::maglev::{self, StableKey};
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

/// What the lookup is keyed on besides the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keying {
    /// `daddr . l4proto . dport`: services of one address and port.
    Frontend,
    /// The packet mark `prerouting_mark` set from the interval map `fwmarks_*`: fwmark services
    /// (port ranges, several addresses), whose buckets are then shared by all their frontends.
    Mark,
}

/// What the bucket hash covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `jhash saddr`: a client keeps its server (persistent services, sh, dh, mh).
    Source,
    /// `jhash saddr . sport`: each connection on its own. The destination address, protocol
    /// and port are the same for every flow of one frontend (nft 1.0.6 also runs out of
    /// registers hashing an IPv6 5-tuple).
    Flow,
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
}

/// One balancing map of the table and the static rule that consults it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbMap {
    pub keying: Keying,
    pub selector: Selector,
    pub target: Target,
    pub family: Family,
    pub buckets: u32,
}

impl LbMap {
    /// `lb_{svc|mark}_{src|flow}_{port|addr}_{v4|v6}_{buckets}`.
    pub fn name(&self) -> String {
        let keying = match self.keying {
            Keying::Frontend => "svc",
            Keying::Mark => "mark",
        };
        let selector = match self.selector {
            Selector::Source => "src",
            Selector::Flow => "flow",
        };
        let target = match self.target {
            Target::AddrPort => "port",
            Target::Addr => "addr",
        };
        format!(
            "lb_{keying}_{selector}_{target}_{}_{}",
            self.family.suffix(),
            self.buckets
        )
    }

    fn key_prefix(&self) -> String {
        match self.keying {
            Keying::Frontend => format!("{} daddr . meta l4proto . th dport", self.family.ip()),
            Keying::Mark => "meta mark".to_owned(),
        }
    }

    /// The map's type. `typeof` with `numgen` is the one way nft 1.0.6 accepts a 32-bit
    /// integer in a concatenation; the jhash rules look up the same key type. (Declaring the
    /// map with `typeof … jhash` makes `nft list` crash on 1.0.6, so it is never done.) The
    /// `mod` here is only part of the type: every map's keys are 32-bit integers.
    pub fn typeof_decl(&self) -> String {
        let ip = self.family.ip();
        let key = format!("{} . numgen random mod 65536", self.key_prefix());
        match self.target {
            Target::AddrPort => format!("{key} : {ip} daddr . th dport"),
            Target::Addr => format!("{key} : {ip} daddr"),
        }
    }

    /// The rule in `prerouting_dnat` that consults this map. A lookup that misses ends the
    /// rule and the next one is tried; a hit DNATs and ends the chain.
    pub fn lookup_rule(&self) -> String {
        let ip = self.family.ip();
        let fields = match self.selector {
            Selector::Source => format!("{ip} saddr"),
            Selector::Flow => format!("{ip} saddr . th sport"),
        };
        // Ports in the key, the hash or the value need nft to know the packet has them.
        format!(
            "meta l4proto {{ tcp, udp }} dnat {ip} to {} . jhash {fields} mod {} seed {HASH_SEED:#x} map @{}",
            self.key_prefix(),
            self.buckets,
            self.name()
        )
    }
}

/// Every balancing map, in the order the static rules look them up. Services of one address
/// and port always know the port to DNAT to; only fwmark services may keep the client's.
pub fn maps() -> Vec<LbMap> {
    let mut out = Vec::new();
    for (keying, targets) in [
        (Keying::Frontend, &[Target::AddrPort][..]),
        (Keying::Mark, &[Target::AddrPort, Target::Addr][..]),
    ] {
        for family in [Family::V4, Family::V6] {
            for selector in [Selector::Source, Selector::Flow] {
                for &target in targets {
                    for &(_, buckets) in &SIZE_CLASSES {
                        out.push(LbMap {
                            keying,
                            selector,
                            target,
                            family,
                            buckets,
                        });
                    }
                }
            }
        }
    }
    out
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

/// A service's buckets: their number, and each one's real server (`None` when the service has
/// no server with weight). Servers of the other address family than the frontends (method
/// `tun`, which IPVS tunnels) count as drained: DNAT cannot change the family.
pub fn bucket_owners(svc: &VirtualService) -> (u32, Vec<Option<&RealKey>>) {
    let (buckets, owners) = bucket_owner_indexes(svc);
    let reals: Vec<&RealKey> = svc.reals.iter().map(|(k, _)| k).collect();
    (
        buckets,
        owners.into_iter().map(|o| o.map(|i| reals[i])).collect(),
    )
}

/// [`bucket_owners`] as indexes into the service's real servers, in their order.
fn bucket_owner_indexes(svc: &VirtualService) -> (u32, Vec<Option<usize>>) {
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

impl StableKey for &RealKey {
    fn stable_bytes(&self) -> Vec<u8> {
        (*self).stable_bytes()
    }
}

/// Every load-balancing element of a service: one per bucket (and per frontend for services
/// keyed by frontend), the bucket's real server as value.
pub fn elements(key: &ServiceKey, svc: &VirtualService) -> Vec<Element> {
    let family = if svc.is_ipv6() {
        Family::V6
    } else {
        Family::V4
    };
    let (buckets, owners) = bucket_owner_indexes(svc);
    let map = |keying, target| {
        LbMap {
            keying,
            selector: selector(svc),
            target,
            family,
            buckets,
        }
        .name()
    };
    let reals: Vec<&RealKey> = svc.reals.iter().map(|(k, _)| k).collect();
    // Each server's value text once, not once per bucket: 100k rows make 1.5M elements.
    let values = |frontend_port: Option<u16>| -> Vec<String> {
        reals
            .iter()
            .map(|r| match r.port.or(frontend_port) {
                Some(p) => format!("{} . {p}", r.addr),
                None => r.addr.to_string(),
            })
            .collect()
    };
    let mut out = Vec::with_capacity(owners.len() * svc.frontends.len());
    match key {
        ServiceKey::Fwmark { mark } => {
            let names = (
                map(Keying::Mark, Target::AddrPort),
                map(Keying::Mark, Target::Addr),
            );
            let values = values(None);
            for (bucket, owner) in owners.iter().enumerate() {
                let Some(i) = *owner else { continue };
                let set = if reals[i].port.is_some() {
                    &names.0
                } else {
                    &names.1
                };
                out.push(Element {
                    set: set.clone(),
                    key: format!("{mark} . {bucket}"),
                    value: Some(values[i].clone()),
                });
            }
        }
        ServiceKey::Addr { .. } => {
            let set = map(Keying::Frontend, Target::AddrPort);
            for f in &svc.frontends {
                let base = format!("{} . {} . {}", f.vip, svc.proto, f.ports);
                // A service of one port knows the port even when the server keeps it.
                let values = values(Some(f.ports.first));
                for (bucket, owner) in owners.iter().enumerate() {
                    let Some(i) = *owner else { continue };
                    out.push(Element {
                        set: set.clone(),
                        key: format!("{base} . {bucket}"),
                        value: Some(values[i].clone()),
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
        let (drained, _) = bucket_owners(&svc(&[1, 0, 1]));
        let (all, _) = bucket_owners(&svc(&[1, 1, 1]));
        assert_eq!(drained, all);
    }

    #[test]
    fn every_bucket_is_one_element_and_weight_zero_owns_none() {
        let e = elements(&addr_key(), &svc(&[1, 3, 0]));
        assert_eq!(e.len(), 61);
        assert!(e.iter().all(|e| e.set == "lb_svc_flow_port_v4_61"));
        assert_eq!(e[0].key, "192.0.2.10 . tcp . 80 . 0");
        let to = |ip: &str| e.iter().filter(|e| e.value.as_deref() == Some(ip)).count();
        // 61 buckets at 1:3: 15.25 and 45.75, by largest remainder 15 and 46.
        assert_eq!(
            (
                to("10.0.0.1 . 80"),
                to("10.0.0.2 . 80"),
                to("10.0.0.3 . 80")
            ),
            (15, 46, 0)
        );
        assert!(elements(&addr_key(), &svc(&[0, 0])).is_empty());
    }

    #[test]
    fn fwmark_services_are_keyed_by_mark_and_keep_the_port_without_rport() {
        let mut s = svc(&[1, 1]);
        s.params.persistence = Some(300);
        let e = elements(&ServiceKey::Fwmark { mark: 7 }, &s);
        assert_eq!(e.len(), 29);
        assert!(e.iter().all(|e| e.set == "lb_mark_src_addr_v4_29"), "{e:?}");
        assert!(e.iter().any(|e| e.key == "7 . 28"));
    }

    #[test]
    fn lookup_rules_hash_with_the_fixed_seed() {
        let rules: Vec<String> = maps().iter().map(LbMap::lookup_rule).collect();
        assert_eq!(rules.len(), 60);
        assert_eq!(
            rules[0],
            "meta l4proto { tcp, udp } dnat ip to ip daddr . meta l4proto . th dport . \
             jhash ip saddr mod 29 seed 0x706f7274 map @lb_svc_src_port_v4_29"
        );
        assert!(rules.iter().all(|r| !r.contains("numgen")));
    }
}
