//! The desired state of the data plane: virtual services with their frontends and real
//! servers, built deterministically from a validated export. Pure data, no I/O.
//!
//! Everything is kept in ordered maps so that two equal exports always give byte-identical
//! renders, whatever the row order in the CSV.

mod build;
pub mod health;
mod sorted;

pub use sorted::{SortedMap, SortedSet};

use portcullis_export::{InstanceId, Method, PortRange, Proto, Scheduler, ServiceType, SocketText};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

pub use portcullis_export::ServiceKey;

/// All virtual services the gateway should have, by identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    #[serde(serialize_with = "services_as_list")]
    pub services: BTreeMap<ServiceKey, VirtualService>,
}

/// One IPVS virtual service (or one load-balancing chain of the nft backend).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VirtualService {
    /// Service type that exported it (for humans and logs).
    pub service: ServiceType,
    pub proto: Proto,
    pub params: ServiceParams,
    /// Where clients connect. Exactly one for address services; one or more for fwmark ones.
    pub frontends: SortedSet<Frontend>,
    pub reals: SortedMap<RealKey, RealServer>,
}

/// Settings that apply to a whole virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceParams {
    pub scheduler: Scheduler,
    pub method: Method,
    /// Persistence timeout in seconds.
    pub persistence: Option<u32>,
}

/// An external (vip, port range) of a virtual service; the protocol is the service's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    pub vip: IpAddr,
    pub ports: PortRange,
}

/// Identity of a real server within its virtual service, as IPVS sees a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RealKey {
    pub addr: IpAddr,
    /// `None`: the client's destination port is kept (fwmark services without `rport`).
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealServer {
    pub weight: u16,
    pub instance: InstanceId,
}

/// JSON objects need string keys: services are written as a list, each with its key's fields.
fn services_as_list<S: serde::Serializer>(
    map: &BTreeMap<ServiceKey, VirtualService>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        #[serde(flatten)]
        key: &'a ServiceKey,
        #[serde(flatten)]
        service: &'a VirtualService,
    }
    s.collect_seq(map.iter().map(|(key, service)| Entry { key, service }))
}

impl VirtualService {
    pub fn is_ipv6(&self) -> bool {
        self.frontends
            .iter()
            .next()
            .is_some_and(|f| f.vip.is_ipv6())
    }
}

impl DesiredState {
    pub fn real_server_count(&self) -> usize {
        self.services.values().map(|s| s.reals.len()).sum()
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vip {
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.ports),
            IpAddr::V4(a) => write!(f, "{a}:{}", self.ports),
        }
    }
}

impl fmt::Display for RealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A bare address means "same port as the client used".
        SocketText(self.addr, self.port).fmt(f)
    }
}

impl fmt::Display for ServiceParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.scheduler, self.method)?;
        if let Some(p) = self.persistence {
            write!(f, " persistent {p}s")?;
        }
        Ok(())
    }
}
