//! One IPVS generic netlink message: a command and its attributes. Requests are built from
//! typed values ([`Request`]); replies keep their raw attribute bytes and are decoded on
//! demand, since a dump reply is read once and mostly for one attribute.

use super::attr::{self, Attr};
use super::constants::*;
use super::dest::{Dest, DestId};
use super::service::{Service, ServiceId};
use netlink_packet_core::{DecodeError, Emitable, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: u8,
    /// Attributes to send (requests).
    pub attrs: Vec<Attr>,
    /// Attribute bytes received (replies).
    pub raw: Vec<u8>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMessage {
            cmd: header.cmd,
            attrs: Vec::new(),
            raw: buf.to_vec(),
        })
    }
}

/// Global connection timeouts in seconds (`ipvsadm --set`); 0 leaves a value unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

/// The connection synchronisation daemon (`ipvsadm --start-daemon`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncDaemon {
    pub backup: bool,
    pub interface: String,
    pub sync_id: u32,
}

/// Builders for every request the client sends.
pub struct Request;

impl Request {
    fn msg(cmd: u8, attrs: Vec<Attr>) -> IpvsMessage {
        IpvsMessage {
            cmd,
            attrs,
            raw: Vec::new(),
        }
    }
    pub fn new_service(s: &Service) -> IpvsMessage {
        Self::msg(IPVS_CMD_NEW_SERVICE, vec![s.to_attr()])
    }
    pub fn set_service(s: &Service) -> IpvsMessage {
        Self::msg(IPVS_CMD_SET_SERVICE, vec![s.to_attr()])
    }
    pub fn del_service(id: ServiceId) -> IpvsMessage {
        Self::msg(IPVS_CMD_DEL_SERVICE, vec![id.to_attr()])
    }
    pub fn get_services() -> IpvsMessage {
        Self::msg(IPVS_CMD_GET_SERVICE, Vec::new())
    }
    pub fn new_dest(svc: ServiceId, d: &Dest) -> IpvsMessage {
        Self::msg(IPVS_CMD_NEW_DEST, vec![svc.to_attr(), d.to_attr()])
    }
    pub fn set_dest(svc: ServiceId, d: &Dest) -> IpvsMessage {
        Self::msg(IPVS_CMD_SET_DEST, vec![svc.to_attr(), d.to_attr()])
    }
    pub fn del_dest(svc: ServiceId, d: DestId) -> IpvsMessage {
        Self::msg(IPVS_CMD_DEL_DEST, vec![svc.to_attr(), Dest::id_attr(d)])
    }
    pub fn get_dests(svc: ServiceId) -> IpvsMessage {
        Self::msg(IPVS_CMD_GET_DEST, vec![svc.to_attr()])
    }
    pub fn set_timeouts(t: Timeouts) -> IpvsMessage {
        Self::msg(
            IPVS_CMD_SET_CONFIG,
            vec![
                Attr::U32(IPVS_CMD_ATTR_TIMEOUT_TCP, t.tcp),
                Attr::U32(IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, t.tcp_fin),
                Attr::U32(IPVS_CMD_ATTR_TIMEOUT_UDP, t.udp),
            ],
        )
    }
    pub fn get_config() -> IpvsMessage {
        Self::msg(IPVS_CMD_GET_CONFIG, Vec::new())
    }
    pub fn new_daemon(d: &SyncDaemon) -> IpvsMessage {
        Self::msg(
            IPVS_CMD_NEW_DAEMON,
            vec![Attr::Nested(
                IPVS_CMD_ATTR_DAEMON,
                vec![
                    Attr::U32(IPVS_DAEMON_ATTR_STATE, daemon_state(d.backup)),
                    Attr::Str(IPVS_DAEMON_ATTR_MCAST_IFN, d.interface.clone()),
                    Attr::U32(IPVS_DAEMON_ATTR_SYNC_ID, d.sync_id),
                ],
            )],
        )
    }
    pub fn del_daemon(backup: bool) -> IpvsMessage {
        Self::msg(
            IPVS_CMD_DEL_DAEMON,
            vec![Attr::Nested(
                IPVS_CMD_ATTR_DAEMON,
                vec![Attr::U32(IPVS_DAEMON_ATTR_STATE, daemon_state(backup))],
            )],
        )
    }
    pub fn get_daemons() -> IpvsMessage {
        Self::msg(IPVS_CMD_GET_DAEMON, Vec::new())
    }
    pub fn flush() -> IpvsMessage {
        Self::msg(IPVS_CMD_FLUSH, Vec::new())
    }
}

fn daemon_state(backup: bool) -> u32 {
    if backup {
        IP_VS_STATE_BACKUP
    } else {
        IP_VS_STATE_MASTER
    }
}

impl IpvsMessage {
    fn nested(&self, kind: u16) -> Result<Option<&[u8]>, DecodeError> {
        Ok(attr::get(&attr::parse_level(&self.raw)?, kind))
    }

    /// The service of a `GET_SERVICE` dump reply.
    pub fn service(&self) -> Result<Service, DecodeError> {
        let inner = self
            .nested(IPVS_CMD_ATTR_SERVICE)?
            .ok_or_else(|| DecodeError::from("reply without a service attribute"))?;
        Service::parse(inner)
    }

    /// The destination of a `GET_DEST` dump reply.
    pub fn dest(&self, service_ipv6: bool) -> Result<Dest, DecodeError> {
        let inner = self
            .nested(IPVS_CMD_ATTR_DEST)?
            .ok_or_else(|| DecodeError::from("reply without a destination attribute"))?;
        Dest::parse(inner, service_ipv6)
    }

    pub fn timeouts(&self) -> Result<Timeouts, DecodeError> {
        let attrs = attr::parse_level(&self.raw)?;
        let get = |k| {
            attr::get(&attrs, k)
                .map(attr::u32_of)
                .transpose()
                .map(|v| v.unwrap_or(0))
        };
        Ok(Timeouts {
            tcp: get(IPVS_CMD_ATTR_TIMEOUT_TCP)?,
            tcp_fin: get(IPVS_CMD_ATTR_TIMEOUT_TCP_FIN)?,
            udp: get(IPVS_CMD_ATTR_TIMEOUT_UDP)?,
        })
    }

    pub fn daemon(&self) -> Result<SyncDaemon, DecodeError> {
        let inner = self
            .nested(IPVS_CMD_ATTR_DAEMON)?
            .ok_or_else(|| DecodeError::from("reply without a daemon attribute"))?;
        let attrs = attr::parse_level(inner)?;
        let state = attr::get(&attrs, IPVS_DAEMON_ATTR_STATE)
            .map(attr::u32_of)
            .transpose()?
            .unwrap_or(0);
        Ok(SyncDaemon {
            backup: state == IP_VS_STATE_BACKUP,
            interface: attr::get(&attrs, IPVS_DAEMON_ATTR_MCAST_IFN)
                .map(attr::str_of)
                .transpose()?
                .unwrap_or_default(),
            sync_id: attr::get(&attrs, IPVS_DAEMON_ATTR_SYNC_ID)
                .map(attr::u32_of)
                .transpose()?
                .unwrap_or(0),
        })
    }
}
