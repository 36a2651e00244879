//! `portcullis explain`: which virtual service answers at an address and port, how its
//! buckets are shared among its real servers, and — given a client address — which bucket,
//! real server and ADMIN instance that client reaches on the nft backend. Computed by the code
//! that builds the maps ([`super::balance::bucket_owners`]) and the kernel's hash
//! ([`super::jhash`]), so it cannot drift from what is loaded. Pure: no I/O.

use super::balance::{bucket_owners, selector, Selector, HASH_SEED};
use super::jhash;
use super::patterns::{slot_map_name, Pattern, PatternIndex};
use crate::model::{DesiredState, RealKey, VirtualService};
use portcullis_export::Proto;
use serde::Serialize;
use std::net::IpAddr;

/// What one service does with traffic for the address and port asked about.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// The service type (the export's `service` column).
    pub service: String,
    /// The virtual service: `tcp 192.0.2.10:80` or `fwmark 5`.
    pub key: String,
    /// The frontend (address and port range) the address and port fall in.
    pub frontend: String,
    /// Scheduler, method and persistence as exported.
    pub params: String,
    /// What the bucket hash covers: `saddr` (a client keeps its server) or `saddr . sport`.
    pub hash: &'static str,
    pub buckets: u32,
    /// The bucket table the service shares with every service of the same shape, as the
    /// kernel's maps name it (`None`: no server has weight, the service has no table).
    pub pattern: Option<PatternUse>,
    pub servers: Vec<ServerShare>,
    /// The client asked about, when one was.
    pub client: Option<ClientChoice>,
}

/// Which shared bucket table a service uses.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PatternUse {
    /// The pattern's mark, as `lb_pattern_*`/`lb_fwpattern` map to it (hex).
    pub mark: String,
    /// The map its buckets are in (`lb_slot_{src|flow}_{buckets}`).
    pub map: String,
    /// How many services of the export share it.
    pub services: usize,
}

/// One real server's part of a service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServerShare {
    pub server: String,
    pub instance: String,
    pub weight: u16,
    /// Percent of the service's weight.
    pub weight_percent: f64,
    pub buckets: u32,
    /// Percent of the service's buckets: the share of new flows it gets.
    pub bucket_percent: f64,
}

/// Where one client lands.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientChoice {
    pub client: IpAddr,
    pub source_port: Option<u16>,
    /// `None` when the bucket depends on the source port and none was given.
    pub bucket: Option<u32>,
    pub server: Option<String>,
    pub instance: Option<String>,
}

/// Who is asking: the address and port a client connects to, and optionally from where.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub vip: IpAddr,
    pub port: u16,
    /// Only services of this protocol (both when `None`).
    pub proto: Option<Proto>,
    pub client: Option<IpAddr>,
    pub source_port: Option<u16>,
}

/// Every service that answers at the query's address and port (a TCP and a UDP one may).
pub fn explain(state: &DesiredState, q: &Query) -> Vec<Explanation> {
    let mut out = Vec::new();
    let index = PatternIndex::of(state);
    let ids = index.ids();
    for (key, svc) in &state.services {
        if q.proto.is_some_and(|p| p != svc.proto) {
            continue;
        }
        let Some(frontend) = svc
            .frontends
            .iter()
            .find(|f| f.vip == q.vip && (f.ports.first..=f.ports.last).contains(&q.port))
        else {
            continue;
        };
        let (buckets, owners) = bucket_owners(key, svc);
        let by_source = selector(svc) == Selector::Source;
        let client = q.client.map(|client| {
            let bucket = hash_key(client, by_source, q.source_port)
                .map(|bytes| jhash::bucket(&bytes, HASH_SEED, buckets));
            let owner = bucket.and_then(|b| owners.get(b as usize).copied().flatten());
            ClientChoice {
                client,
                source_port: q.source_port,
                bucket,
                server: owner.map(|r| r.to_string()),
                instance: owner
                    .and_then(|r| svc.reals.get(r))
                    .map(|s| s.instance.to_string()),
            }
        });
        out.push(Explanation {
            service: svc.service.to_string(),
            key: key.to_string(),
            frontend: frontend.to_string(),
            params: svc.params.to_string(),
            hash: if by_source { "saddr" } else { "saddr . sport" },
            buckets,
            pattern: Pattern::of(key, svc).and_then(|p| {
                Some(PatternUse {
                    mark: format!("{:#010x}", ids.get(&p)?),
                    map: slot_map_name(p.fwmark, p.selector, p.buckets),
                    services: index.users(&p),
                })
            }),
            servers: shares(svc, &owners, buckets),
            client,
        });
    }
    out
}

/// The bytes the rule hashes, laid out as nft puts them in its registers: the address, then
/// (per connection) the source port in network order padded to a 4-byte register.
fn hash_key(client: IpAddr, by_source: bool, source_port: Option<u16>) -> Option<Vec<u8>> {
    let mut bytes = match client {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    if !by_source {
        let [hi, lo] = source_port?.to_be_bytes();
        bytes.extend([hi, lo, 0, 0]);
    }
    Some(bytes)
}

fn shares(svc: &VirtualService, owners: &[Option<&RealKey>], buckets: u32) -> Vec<ServerShare> {
    let total_weight: u32 = svc.reals.iter().map(|(_, s)| u32::from(s.weight)).sum();
    let percent = |part: u32, whole: u32| {
        if whole == 0 {
            0.0
        } else {
            f64::from(part) * 100.0 / f64::from(whole)
        }
    };
    svc.reals
        .iter()
        .map(|(key, server)| {
            let owned = owners.iter().filter(|o| **o == Some(key)).count() as u32;
            ServerShare {
                server: key.to_string(),
                instance: server.instance.to_string(),
                weight: server.weight,
                weight_percent: percent(u32::from(server.weight), total_weight),
                buckets: owned,
                bucket_percent: percent(owned, buckets),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> DesiredState {
        let csv = include_bytes!("../../../rules/examples/export.csv");
        let export = portcullis_export::parse(csv).expect("example export");
        DesiredState::from_export(&export)
    }

    fn query(vip: &str, port: u16, client: Option<&str>) -> Query {
        Query {
            vip: vip.parse().expect("vip"),
            port,
            proto: None,
            client: client.map(|c| c.parse().expect("client")),
            source_port: None,
        }
    }

    #[test]
    fn shares_add_up_and_follow_the_weights() {
        let state = example();
        let (key, _) = state.services.iter().next().expect("a service");
        let portcullis_export::ServiceKey::Addr { vip, port, .. } = *key else {
            return;
        };
        let all = explain(&state, &query(&vip.to_string(), port, None));
        assert!(!all.is_empty());
        for e in all {
            let sum: u32 = e.servers.iter().map(|s| s.buckets).sum();
            let weighted = e.servers.iter().any(|s| s.weight > 0);
            assert_eq!(sum, if weighted { e.buckets } else { 0 }, "{e:?}");
            for s in &e.servers {
                assert!((s.bucket_percent - s.weight_percent).abs() <= 2.0, "{s:?}");
            }
        }
    }

    #[test]
    fn a_persistent_client_gets_one_bucket_and_its_owner() {
        let state = example();
        for (key, svc) in &state.services {
            let portcullis_export::ServiceKey::Addr { vip, port, proto } = *key else {
                continue;
            };
            let mut q = query(&vip.to_string(), port, Some("198.51.100.7"));
            q.proto = Some(proto);
            let e = explain(&state, &q).pop().expect("the service answers");
            let c = e.client.expect("client");
            match selector(svc) {
                Selector::Source => {
                    let b = c.bucket.expect("a bucket from the address alone");
                    assert!(b < e.buckets);
                    assert_eq!(c.server.is_some(), c.instance.is_some());
                }
                Selector::Flow => assert_eq!(c.bucket, None, "needs the source port"),
            }
        }
    }

    #[test]
    fn services_of_one_shape_name_the_same_shared_table() {
        let state = example();
        let all: Vec<Explanation> = state
            .services
            .keys()
            .filter_map(|key| match *key {
                portcullis_export::ServiceKey::Addr { vip, port, proto } => {
                    let mut q = query(&vip.to_string(), port, None);
                    q.proto = Some(proto);
                    explain(&state, &q).pop()
                }
                portcullis_export::ServiceKey::Fwmark { .. } => None,
            })
            .collect();
        let index = PatternIndex::of(&state);
        for e in &all {
            let Some(p) = &e.pattern else { continue };
            let same = all
                .iter()
                .filter(|o| o.pattern.as_ref().map(|q| &q.mark) == Some(&p.mark))
                .count();
            assert!(p.services >= same, "{p:?}");
            assert!(p.services <= state.services.len());
            assert!(p.map.starts_with("lb_slot_"));
        }
        assert!(!index.is_empty());
    }

    #[test]
    fn nothing_answers_elsewhere() {
        assert!(explain(&example(), &query("203.0.113.250", 1, None)).is_empty());
    }
}
