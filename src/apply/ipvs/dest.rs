//! An IPVS destination (real server) on the wire: address, port, forwarding method, weight,
//! connection thresholds, and the connection counters the kernel reports in dumps, as the
//! nested `IPVS_CMD_ATTR_DEST` attribute set.

use super::attr::{self, Attr};
use super::constants::*;
use super::service::{addr_bytes, parse_addr};
use netlink_packet_core::DecodeError;
use portcullis_export::Method;
use std::net::IpAddr;

/// A destination's identity within its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestId {
    pub addr: IpAddr,
    /// 0 for "the client's destination port" (fwmark services).
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    pub id: DestId,
    pub method: Method,
    pub weight: u32,
    /// Upper and lower connection thresholds; 0 is "no limit".
    pub u_thresh: u32,
    pub l_thresh: u32,
    /// Counters, filled by dumps only (ignored when sent).
    pub active_conns: u32,
    pub inact_conns: u32,
}

impl Dest {
    pub fn new(id: DestId, method: Method, weight: u32) -> Dest {
        Dest {
            id,
            method,
            weight,
            u_thresh: 0,
            l_thresh: 0,
            active_conns: 0,
            inact_conns: 0,
        }
    }

    /// The full attribute set new/set destination need.
    pub fn to_attr(&self) -> Attr {
        let mut attrs = vec![
            Attr::Bytes(IPVS_DEST_ATTR_ADDR, addr_bytes(self.id.addr)),
            Attr::Be16(IPVS_DEST_ATTR_PORT, self.id.port),
            Attr::U32(IPVS_DEST_ATTR_FWD_METHOD, method_number(self.method)),
            Attr::U32(IPVS_DEST_ATTR_WEIGHT, self.weight),
            Attr::U32(IPVS_DEST_ATTR_U_THRESH, self.u_thresh),
            Attr::U32(IPVS_DEST_ATTR_L_THRESH, self.l_thresh),
            Attr::U16(
                IPVS_DEST_ATTR_ADDR_FAMILY,
                if self.id.addr.is_ipv6() {
                    AF_INET6
                } else {
                    AF_INET
                },
            ),
        ];
        if self.method == Method::Tun {
            attrs.push(Attr::U8(
                IPVS_DEST_ATTR_TUN_TYPE,
                IP_VS_CONN_F_TUNNEL_TYPE_IPIP,
            ));
        }
        Attr::Nested(IPVS_CMD_ATTR_DEST, attrs)
    }

    /// Only the identity: what a delete needs.
    pub fn id_attr(id: DestId) -> Attr {
        Attr::Nested(
            IPVS_CMD_ATTR_DEST,
            vec![
                Attr::Bytes(IPVS_DEST_ATTR_ADDR, addr_bytes(id.addr)),
                Attr::Be16(IPVS_DEST_ATTR_PORT, id.port),
            ],
        )
    }

    /// Decodes the inside of an `IPVS_CMD_ATTR_DEST` attribute. Kernels before 4.19 do not
    /// report the address family: it is then the service's (`service_ipv6`).
    pub fn parse(buf: &[u8], service_ipv6: bool) -> Result<Dest, DecodeError> {
        let attrs = attr::parse_level(buf)?;
        let need = |kind: u16, what: &str| {
            attr::get(&attrs, kind)
                .ok_or_else(|| DecodeError::from(format!("destination without {what}")))
        };
        let u32_or_0 = |kind| -> Result<u32, DecodeError> {
            attr::get(&attrs, kind)
                .map(attr::u32_of)
                .transpose()
                .map(|v| v.unwrap_or(0))
        };
        let ipv6 = match attr::get(&attrs, IPVS_DEST_ATTR_ADDR_FAMILY) {
            Some(v) => attr::u16_of(v)? == AF_INET6,
            None => service_ipv6,
        };
        let fwd = attr::u32_of(need(IPVS_DEST_ATTR_FWD_METHOD, "forwarding method")?)? & 0x7;
        Ok(Dest {
            id: DestId {
                addr: parse_addr(need(IPVS_DEST_ATTR_ADDR, "address")?, ipv6)?,
                port: attr::be16_of(need(IPVS_DEST_ATTR_PORT, "port")?)?,
            },
            method: match fwd {
                IP_VS_CONN_F_MASQ => Method::Nat,
                IP_VS_CONN_F_TUNNEL => Method::Tun,
                IP_VS_CONN_F_DROUTE => Method::Dr,
                other => return Err(format!("unsupported forwarding method {other}").into()),
            },
            weight: u32_or_0(IPVS_DEST_ATTR_WEIGHT)?,
            u_thresh: u32_or_0(IPVS_DEST_ATTR_U_THRESH)?,
            l_thresh: u32_or_0(IPVS_DEST_ATTR_L_THRESH)?,
            active_conns: u32_or_0(IPVS_DEST_ATTR_ACTIVE_CONNS)?,
            inact_conns: u32_or_0(IPVS_DEST_ATTR_INACT_CONNS)?,
        })
    }

    /// Equal as far as `ipvsadm -e` is concerned (counters aside).
    pub fn same_settings(&self, other: &Dest) -> bool {
        self.method == other.method
            && self.weight == other.weight
            && self.u_thresh == other.u_thresh
            && self.l_thresh == other.l_thresh
    }
}

pub fn method_number(m: Method) -> u32 {
    match m {
        Method::Nat => IP_VS_CONN_F_MASQ,
        Method::Dr => IP_VS_CONN_F_DROUTE,
        Method::Tun => IP_VS_CONN_F_TUNNEL,
    }
}
