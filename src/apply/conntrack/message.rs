//! The ctnetlink messages a flush needs, built and read with `netlink-packet-netfilter`
//! (which models NFNL_SUBSYS_CTNETLINK's GET/DELETE/NEW and the tuple attributes): a dump
//! request per address family, the fields of a dumped entry ([`Flow`]), and the deletion of
//! one entry by its original tuple.

use netlink_packet_core::{
    DecodeError, DefaultNla, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use std::net::IpAddr;

/// `CTA_ZONE` and `CTA_ID` (linux/netfilter/nfnetlink_conntrack.h): not modelled by the
/// crate, carried as raw big-endian attributes.
const CTA_ZONE: u16 = 18;
const CTA_ID: u16 = 12;

/// One direction of a conntrack entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `None` for protocols without ports (ICMP).
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

/// What a flush needs of one dumped conntrack entry: the tuples to select it, and what
/// identifies it for deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// `AF_INET` or `AF_INET6`, from the reply's nfgenmsg header.
    pub family: u8,
    pub proto: u8,
    pub orig: Endpoints,
    pub reply: Endpoints,
    /// The conntrack zone, when not the default: a deletion looks the tuple up in one zone.
    pub zone: Option<u16>,
    /// The kernel's id of the entry: a deletion carrying it removes this entry only, never a
    /// new connection that reused the tuple since the dump (it would go to a live server).
    pub id: Option<u32>,
    /// TCP entries: conntrack's state (`TCP_CONNTRACK_*`, [`TCP_ESTABLISHED`] = 3). The
    /// failover kick ([`crate::apply::kick`]) probes established connections only.
    pub tcp_state: Option<u8>,
}

/// `TCP_CONNTRACK_ESTABLISHED` (linux/netfilter/nf_conntrack_tcp.h).
pub const TCP_ESTABLISHED: u8 = 3;

pub fn family_of(addr: IpAddr) -> NetfilterProtoFamily {
    match addr {
        IpAddr::V4(_) => NetfilterProtoFamily::IPv4,
        IpAddr::V6(_) => NetfilterProtoFamily::IPv6,
    }
}

fn message(
    family: NetfilterProtoFamily,
    body: ConntrackMessage,
    flags: u16,
    seq: u32,
) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            body,
        )),
    );
    msg.finalize();
    msg
}

/// Every entry of one address family (`conntrack -L -f`).
pub fn dump_request(family: NetfilterProtoFamily, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    message(
        family,
        ConntrackMessage::Get(Vec::new()),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// Deletes `flow` by its original tuple (plus zone and id).
///
/// The tuple is never optional here: a ctnetlink DELETE without a tuple is a flush of the
/// whole table.
pub fn delete_request(flow: &Flow, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple(
        flow.proto, &flow.orig,
    ))];
    if let Some(zone) = flow.zone {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            zone.to_be_bytes().to_vec(),
        )));
    }
    if let Some(id) = flow.id {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ID,
            id.to_be_bytes().to_vec(),
        )));
    }
    message(
        NetfilterProtoFamily::from(flow.family),
        ConntrackMessage::Delete(attrs),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

fn tuple(proto: u8, e: &Endpoints) -> Vec<Tuple> {
    let mut ports = vec![ProtoTuple::Protocol(proto.into())];
    ports.extend(e.src_port.map(ProtoTuple::SourcePort));
    ports.extend(e.dst_port.map(ProtoTuple::DestinationPort));
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(e.src),
            IPTuple::DestinationAddress(e.dst),
        ]),
        Tuple::Proto(ports),
    ]
}

/// `NFNL_SUBSYS_CTNETLINK`, the high byte of every ctnetlink message type; types under
/// `NLMSG_MIN_TYPE` are netlink's own (error, done, ...).
const SUBSYS_CTNETLINK: u16 = 1;
const NLMSG_MIN_TYPE: u16 = 0x10;

/// One message read from a conntrack socket. Messages of other netfilter subsystems are
/// refused before `netlink-packet-netfilter` parses them: it would read an nftables message
/// too, and panics (length underflow) on an attribute shorter than its own header there —
/// found by the conntrack_decode fuzz target.
pub fn parse_reply(bytes: &[u8]) -> Result<NetlinkMessage<NetfilterMessage>, DecodeError> {
    let kind = NetlinkBuffer::new_checked(bytes)?.message_type();
    if kind >= NLMSG_MIN_TYPE && kind >> 8 != SUBSYS_CTNETLINK {
        return Err(DecodeError::from(format!(
            "netlink message type {kind:#06x} on a conntrack socket is not ctnetlink"
        )));
    }
    NetlinkMessage::<NetfilterMessage>::deserialize(bytes)
}

/// One dump reply's bytes through the decode path `ConntrackNetlink::flows` runs on each
/// message: netlink header, netfilter message, then [`flow_of`]. Only for the fuzz targets
/// (fuzz/), which cannot reach this private module otherwise; not an API.
#[doc(hidden)]
pub fn decode_reply(bytes: &[u8]) -> Result<Option<Flow>, DecodeError> {
    match parse_reply(bytes)?.payload {
        NetlinkPayload::InnerMessage(inner) => flow_of(&inner),
        _ => Ok(None),
    }
}

/// The flow of one dump reply; `None` for messages that are not conntrack entries.
pub fn flow_of(msg: &NetfilterMessage) -> Result<Option<Flow>, DecodeError> {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = &msg.inner else {
        return Ok(None);
    };
    let (mut orig, mut reply, mut zone, mut id, mut tcp_state) = (None, None, None, None, None);
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(endpoints(t)?),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(endpoints(t)?),
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for info in infos {
                    if let ProtoInfo::TCP(fields) = info {
                        for field in fields {
                            if let ProtoInfoTCP::State(s) = field {
                                tcp_state = Some(*s);
                            }
                        }
                    }
                }
            }
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE => {
                zone = Some(u16::from_be_bytes(fixed(nla)?));
            }
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ID => {
                id = Some(u32::from_be_bytes(fixed(nla)?));
            }
            _ => {}
        }
    }
    let ((proto, orig), (_, reply)) = orig
        .zip(reply)
        .ok_or_else(|| DecodeError::from("conntrack entry without both tuples"))?;
    Ok(Some(Flow {
        family: msg.header.family.into(),
        proto,
        orig,
        reply,
        zone,
        id,
        tcp_state,
    }))
}

fn fixed<const N: usize>(nla: &DefaultNla) -> Result<[u8; N], DecodeError> {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    value.as_slice().try_into().map_err(|_| {
        DecodeError::from(format!(
            "conntrack attribute {} of {} bytes, expected {N}",
            nla.kind(),
            value.len()
        ))
    })
}

fn endpoints(tuple: &[Tuple]) -> Result<(u8, Endpoints), DecodeError> {
    let (mut src, mut dst, mut proto, mut src_port, mut dst_port) = (None, None, None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(fields) => {
                for field in fields {
                    match field {
                        ProtoTuple::Protocol(p) => proto = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => src_port = Some(*p),
                        ProtoTuple::DestinationPort(p) => dst_port = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (proto, src, dst) {
        (Some(proto), Some(src), Some(dst)) => Ok((
            proto,
            Endpoints {
                src,
                dst,
                src_port,
                dst_port,
            },
        )),
        _ => Err(DecodeError::from(
            "conntrack tuple without addresses or protocol",
        )),
    }
}
