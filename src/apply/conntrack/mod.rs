//! Forgetting connections to real servers that were removed. DNAT decisions live in conntrack
//! entries, so without this a UDP flow (which never ends by itself) would keep going to a
//! dead backend. Drained servers (weight 0) keep their entries: that is what draining means.
//!
//! - [`message`]: the few ctnetlink messages we send (dump, delete) and the entry fields we
//!   read from a dump, on top of `netlink-packet-netfilter`;
//! - [`netlink`]: the socket ([`ConntrackNetlink`]): one dump per address family per flush,
//!   the filter in Rust, batched deletions;
//! - [`Conntrack`]: the narrow trait the sync logic uses, with the twins [`NoConntrack`] and
//!   [`RecordingConntrack`].

pub mod message;
pub mod netlink;

#[cfg(test)]
mod fixtures;

pub use message::{Endpoints, Flow};
pub use netlink::ConntrackNetlink;

use crate::model::RealKey;
use portcullis_export::Proto;
use std::collections::HashSet;
use std::io;
use std::net::IpAddr;

/// Connections of one removed real server through one frontend address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConntrackFlush {
    pub proto: Proto,
    pub vip: IpAddr,
    pub real: RealKey,
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("cannot enter network namespace {ns}: {error}")]
    Netns { ns: String, error: io::Error },
    #[error("kernel refused {op}: {error}")]
    Kernel { op: String, error: io::Error },
    #[error("cannot decode the kernel's conntrack reply: {0}")]
    Decode(String),
}

pub trait Conntrack {
    /// Deletes every entry that matches one of `entries`; returns how many were deleted.
    fn flush(&mut self, entries: &[ConntrackFlush]) -> Result<usize, ConntrackError>;
}

/// IANA protocol number, as conntrack tuples carry it.
pub fn ip_proto(proto: Proto) -> u8 {
    match proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

/// Which dumped flows a flush deletes: protocol, ORIGINAL destination address (the VIP),
/// REPLY source address (the real server) and, when the real server has a port, REPLY source
/// port. The same selection as `conntrack -D -p P --orig-dst VIP --reply-src REAL
/// [--reply-port-src PORT]`, for many (VIP, real server) pairs at once.
#[derive(Debug, Default)]
pub struct Selection {
    // (proto, vip, real address, real port or None for "any port")
    keys: HashSet<(u8, IpAddr, IpAddr, Option<u16>)>,
}

impl Selection {
    pub fn new(entries: &[ConntrackFlush]) -> Selection {
        Selection {
            keys: entries
                .iter()
                .map(|e| (ip_proto(e.proto), e.vip, e.real.addr, e.real.port))
                .collect(),
        }
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        let key = |port| (flow.proto, flow.orig.dst, flow.reply.src, port);
        self.keys.contains(&key(None))
            || (flow.reply.src_port.is_some() && self.keys.contains(&key(flow.reply.src_port)))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Does nothing (the IPVS backend keeps its own connection table).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoConntrack;

impl Conntrack for NoConntrack {
    fn flush(&mut self, _: &[ConntrackFlush]) -> Result<usize, ConntrackError> {
        Ok(0)
    }
}

/// Records what would be flushed (unit tests).
#[derive(Clone, Debug, Default)]
pub struct RecordingConntrack {
    pub flushed: Vec<ConntrackFlush>,
}

impl Conntrack for RecordingConntrack {
    fn flush(&mut self, entries: &[ConntrackFlush]) -> Result<usize, ConntrackError> {
        self.flushed.extend_from_slice(entries);
        Ok(entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(proto: u8, vip: &str, real: &str, real_port: u16) -> Flow {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        Flow {
            family: 2,
            proto,
            orig: Endpoints {
                src: ip("203.0.113.2"),
                dst: ip(vip),
                src_port: Some(40000),
                dst_port: Some(53),
            },
            reply: Endpoints {
                src: ip(real),
                dst: ip("203.0.113.2"),
                src_port: Some(real_port),
                dst_port: Some(40000),
            },
            zone: None,
            id: None,
            tcp_state: None,
        }
    }

    fn flush(proto: Proto, vip: &str, real: &str, port: Option<u16>) -> ConntrackFlush {
        ConntrackFlush {
            proto,
            vip: vip.parse().expect("ip"),
            real: RealKey {
                addr: real.parse().expect("ip"),
                port,
            },
        }
    }

    #[test]
    fn selection_is_proto_orig_dst_reply_src_and_reply_port() {
        let sel = Selection::new(&[
            flush(Proto::Udp, "192.0.2.10", "10.200.1.2", Some(8080)),
            flush(Proto::Tcp, "192.0.2.11", "10.200.2.2", None),
        ]);
        assert!(sel.matches(&flow(17, "192.0.2.10", "10.200.1.2", 8080)));
        assert!(
            !sel.matches(&flow(6, "192.0.2.10", "10.200.1.2", 8080)),
            "protocol"
        );
        assert!(
            !sel.matches(&flow(17, "192.0.2.11", "10.200.1.2", 8080)),
            "VIP"
        );
        assert!(
            !sel.matches(&flow(17, "192.0.2.10", "10.200.2.2", 8080)),
            "real"
        );
        assert!(
            !sel.matches(&flow(17, "192.0.2.10", "10.200.1.2", 8081)),
            "port"
        );
        // Without a port, every reply source port of that real server matches.
        assert!(sel.matches(&flow(6, "192.0.2.11", "10.200.2.2", 20005)));
        assert!(sel.matches(&flow(6, "192.0.2.11", "10.200.2.2", 1)));
        assert!(!sel.matches(&flow(17, "192.0.2.11", "10.200.2.2", 1)));
    }

    #[test]
    fn a_flow_without_ports_matches_only_a_portless_selection() {
        let mut icmp = flow(17, "192.0.2.10", "10.200.1.2", 0);
        icmp.reply.src_port = None;
        let with_port = Selection::new(&[flush(Proto::Udp, "192.0.2.10", "10.200.1.2", Some(0))]);
        assert!(!with_port.matches(&icmp));
        let any_port = Selection::new(&[flush(Proto::Udp, "192.0.2.10", "10.200.1.2", None)]);
        assert!(any_port.matches(&icmp));
    }
}
