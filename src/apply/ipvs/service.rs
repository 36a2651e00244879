//! An IPVS virtual service on the wire: its identity (protocol + address + port, or firewall
//! mark + family) and its settings (scheduler, flags, persistence timeout and netmask), as
//! the nested `IPVS_CMD_ATTR_SERVICE` attribute set.

use super::attr::{self, Attr};
use super::constants::*;
use netlink_packet_core::DecodeError;
use portcullis_export::Proto;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the kernel identifies a virtual service by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ServiceId {
    Addr {
        proto: Proto,
        addr: IpAddr,
        port: u16,
    },
    Fwmark {
        mark: u32,
        ipv6: bool,
    },
}

/// A virtual service with its settings (what `ipvsadm -A/-E` sets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: ServiceId,
    pub scheduler: String,
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with `IP_VS_SVC_F_PERSISTENT`).
    pub timeout: u32,
    /// Persistence netmask: an IPv4 mask, or a prefix length for IPv6.
    pub netmask: u32,
}

impl ServiceId {
    pub fn is_ipv6(&self) -> bool {
        match self {
            ServiceId::Addr { addr, .. } => addr.is_ipv6(),
            ServiceId::Fwmark { ipv6, .. } => *ipv6,
        }
    }

    fn family(&self) -> u16 {
        if self.is_ipv6() {
            AF_INET6
        } else {
            AF_INET
        }
    }

    /// The attributes naming this service (all a delete or a destination command needs).
    pub fn identity_attrs(&self) -> Vec<Attr> {
        let mut out = vec![Attr::U16(IPVS_SVC_ATTR_AF, self.family())];
        match self {
            ServiceId::Addr { proto, addr, port } => {
                out.push(Attr::U16(IPVS_SVC_ATTR_PROTOCOL, proto_number(*proto)));
                out.push(Attr::Bytes(IPVS_SVC_ATTR_ADDR, addr_bytes(*addr)));
                out.push(Attr::Be16(IPVS_SVC_ATTR_PORT, *port));
            }
            ServiceId::Fwmark { mark, .. } => out.push(Attr::U32(IPVS_SVC_ATTR_FWMARK, *mark)),
        }
        out
    }

    pub fn to_attr(self) -> Attr {
        Attr::Nested(IPVS_CMD_ATTR_SERVICE, self.identity_attrs())
    }
}

impl Service {
    /// The full attribute set, as new/set service need it (the kernel requires scheduler,
    /// flags, timeout and netmask on both).
    pub fn to_attr(&self) -> Attr {
        let mut attrs = self.id.identity_attrs();
        attrs.push(Attr::Str(IPVS_SVC_ATTR_SCHED_NAME, self.scheduler.clone()));
        // struct ip_vs_flags { flags, mask }: a full mask sets every flag to our value.
        let mut flags = self.flags.to_ne_bytes().to_vec();
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        attrs.push(Attr::Bytes(IPVS_SVC_ATTR_FLAGS, flags));
        attrs.push(Attr::U32(IPVS_SVC_ATTR_TIMEOUT, self.timeout));
        // An IPv4 mask travels in network order; an IPv6 prefix length as a plain u32.
        attrs.push(if self.id.is_ipv6() {
            Attr::U32(IPVS_SVC_ATTR_NETMASK, self.netmask)
        } else {
            Attr::Be32(IPVS_SVC_ATTR_NETMASK, self.netmask)
        });
        Attr::Nested(IPVS_CMD_ATTR_SERVICE, attrs)
    }

    /// Decodes the inside of an `IPVS_CMD_ATTR_SERVICE` attribute (as the kernel dumps it).
    pub fn parse(buf: &[u8]) -> Result<Service, DecodeError> {
        let attrs = attr::parse_level(buf)?;
        let need = |kind: u16, what: &str| {
            attr::get(&attrs, kind)
                .ok_or_else(|| DecodeError::from(format!("service without {what}")))
        };
        let af = attr::u16_of(need(IPVS_SVC_ATTR_AF, "address family")?)?;
        let ipv6 = match af {
            AF_INET => false,
            AF_INET6 => true,
            other => return Err(format!("service of unknown address family {other}").into()),
        };
        let id = match attr::get(&attrs, IPVS_SVC_ATTR_FWMARK) {
            Some(mark) if attr::u32_of(mark)? != 0 => ServiceId::Fwmark {
                mark: attr::u32_of(mark)?,
                ipv6,
            },
            _ => ServiceId::Addr {
                proto: match attr::u16_of(need(IPVS_SVC_ATTR_PROTOCOL, "protocol")?)? {
                    IPPROTO_TCP => Proto::Tcp,
                    IPPROTO_UDP => Proto::Udp,
                    other => return Err(format!("service of unsupported protocol {other}").into()),
                },
                addr: parse_addr(need(IPVS_SVC_ATTR_ADDR, "address")?, ipv6)?,
                port: attr::be16_of(need(IPVS_SVC_ATTR_PORT, "port")?)?,
            },
        };
        let flags = match attr::get(&attrs, IPVS_SVC_ATTR_FLAGS) {
            Some(v) => attr::u32_of(v)?,
            None => 0,
        };
        Ok(Service {
            id,
            scheduler: attr::str_of(need(IPVS_SVC_ATTR_SCHED_NAME, "scheduler")?)?,
            flags,
            timeout: attr::get(&attrs, IPVS_SVC_ATTR_TIMEOUT)
                .map(attr::u32_of)
                .transpose()?
                .unwrap_or(0),
            netmask: attr::get(&attrs, IPVS_SVC_ATTR_NETMASK)
                .map(if ipv6 { attr::u32_of } else { attr::be32_of })
                .transpose()?
                .unwrap_or(0),
        })
    }

    /// Equal as far as `ipvsadm -E` is concerned. The kernel reports flags of its own
    /// (e.g. "hashed"), so only the flags we set are compared.
    pub fn same_settings(&self, other: &Service) -> bool {
        const OURS: u32 = IP_VS_SVC_F_PERSISTENT;
        self.scheduler == other.scheduler
            && self.flags & OURS == other.flags & OURS
            && (self.flags & IP_VS_SVC_F_PERSISTENT == 0
                || (self.timeout == other.timeout && self.netmask == other.netmask))
    }
}

pub fn proto_number(p: Proto) -> u16 {
    match p {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    }
}

/// The kernel reads a `union nf_inet_addr` (16 bytes) and zero-fills a shorter value, so an
/// IPv4 address is sent as its 4 bytes (as pyroute2 and Docker's libnetwork do); dumps
/// always carry 16.
pub fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

pub fn parse_addr(v: &[u8], ipv6: bool) -> Result<IpAddr, DecodeError> {
    if ipv6 {
        let b: [u8; 16] = v
            .get(..16)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| DecodeError::from("IPv6 address shorter than 16 bytes"))?;
        Ok(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        let b: [u8; 4] = v
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| DecodeError::from("IPv4 address shorter than 4 bytes"))?;
        Ok(IpAddr::V4(Ipv4Addr::from(b)))
    }
}

impl fmt::Display for ServiceId {
    /// The way ipvsadm names a service: `tcp 192.0.2.10:80`, `fwmark 7`, `fwmark 7 ipv6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceId::Addr { proto, addr, port } => write!(
                f,
                "{proto} {}",
                portcullis_export::SocketText(*addr, Some(*port))
            ),
            ServiceId::Fwmark { mark, ipv6: false } => write!(f, "fwmark {mark}"),
            ServiceId::Fwmark { mark, ipv6: true } => write!(f, "fwmark {mark} ipv6"),
        }
    }
}
