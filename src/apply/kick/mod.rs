//! The failover kick: after a promotion, make the endpoints of the synchronised connections
//! retransmit now instead of at the end of their retransmission backoff.
//!
//! Why: while the pair fails over every segment is lost, and each endpoint with data in
//! flight doubles its retransmission timeout per loss (0.2, 0.6, 1.4, 3.0, 6.2, 12.6 s …
//! after the first). When the new active node takes over after a crash (~7.5 s of detection
//! with the shipped corosync token), nothing retransmits until ~12.6 s: the stall is 5 s
//! longer than the outage (docs/failover.md).
//!
//! How (RFC 6069, TCP-LD, as Linux implements it in `tcp_v4_err`): an ICMP host unreachable
//! quoting a segment whose sequence number is the socket's `snd_una`, received while the
//! socket backs off, undoes one backoff step and retransmits at once if the shorter timeout
//! has passed since the last retransmission. The gateway must know each endpoint's
//! `snd_una`; it asks:
//!
//! 1. for every established connection through a VIP in conntrack (after conntrackd's
//!    commit), a bare ACK with a random sequence number to each endpoint, from the peer it
//!    knows (to the client from the VIP, to the server from the client — or the SNAT
//!    address): out of the receive window, as it almost surely is, Linux answers it with a
//!    duplicate ACK (`seq` = its `snd_nxt`, `ack` = its `rcv_nxt`), at most one per 500 ms
//!    per socket (`tcp_invalid_ratelimit`). Endpoints still silent after `answer_wait` get a
//!    second probe 2^31 further on, outside any window;
//! 2. the answers pass the new active node's conntrack and NAT to the other endpoint, which
//!    by itself catches up a `snd_una` whose ACKs were lost; the capture reads them on
//!    arrival: one endpoint's `rcv_nxt` is the other's `snd_una`;
//! 3. to an endpoint with data in flight (its `snd_nxt` ahead of what its peer received),
//!    `icmp_copies` host unreachables quoting its own direction with that `snd_una` — each
//!    undoes one backoff step. An idle connection gets none.
//!
//! IPv4 only. IPv6 would work the same way: `tcp_v6_err` calls `tcp_ld_RTO_revert` for an
//! established socket on ICMPv6 destination unreachable with code 0 (no route), after the
//! same `snd_una`..`snd_nxt` window check. Not done: it needs an `AF_INET6` raw socket with
//! `IPV6_HDRINCL` for the spoofed probes and the ICMPv6 pseudo-header checksum.
//!
//! - [`packet`]: the probe, the ICMP message, reading an answer (pure, byte-tested);
//! - [`socket`]: the raw sender with its mark and pacing, the `AF_PACKET` capture;
//! - [`run`]: the kick itself, over the connections [`connections`] selects.

pub mod packet;
mod run;
pub mod socket;

pub use run::kick;
pub use socket::KICK_MARK;

use super::conntrack::message::TCP_ESTABLISHED;
use super::conntrack::{ConntrackError, ConntrackNetlink, Flow};
use netlink_packet_netfilter::NetfilterProtoFamily;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddrV4};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KickError {
    #[error("listing connections: {0}")]
    Conntrack(#[from] ConntrackError),
    #[error("raw socket (needs CAP_NET_RAW): {0}")]
    Sender(#[source] std::io::Error),
    #[error("capture socket (needs CAP_NET_RAW): {0}")]
    Capture(#[source] std::io::Error),
    #[error("reading the capture: {0}")]
    Read(#[source] std::io::Error),
    #[error("listing local addresses: {0}")]
    Addresses(#[source] nix::Error),
}

/// How hard to kick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// ICMP messages per endpoint with data in flight; each undoes one backoff step. The
    /// backoff after an outage of T seconds is about log2(T / 0.2 s): 8 covers ~50 s.
    pub icmp_copies: u8,
    /// Every packet the kick sends, spread at this rate.
    pub packets_per_second: u32,
    /// How long answers are awaited after the last probe (clients far away answer late).
    pub answer_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            icmp_copies: 8,
            packets_per_second: 50_000,
            answer_wait: Duration::from_millis(500),
        }
    }
}

/// One connection through a VIP, as each endpoint sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conn {
    pub client: SocketAddrV4,
    /// The client's peer: the VIP and port it connected to.
    pub vip: SocketAddrV4,
    pub server: SocketAddrV4,
    /// The server's peer: the client, or the gateway's address when it also SNATs.
    pub server_peer: SocketAddrV4,
}

impl Conn {
    /// An established, translated TCP/IPv4 entry whose original destination is one of
    /// `vips`; `None` for anything else (the gateway's own connections, other states).
    pub fn of(flow: &Flow, vips: &HashSet<IpAddr>) -> Option<Conn> {
        if flow.proto != 6 || flow.tcp_state != Some(TCP_ESTABLISHED) {
            return None;
        }
        let v4 = |a: IpAddr, port: Option<u16>| match a {
            IpAddr::V4(a) => port.map(|p| SocketAddrV4::new(a, p)),
            IpAddr::V6(_) => None,
        };
        let (o, r) = (&flow.orig, &flow.reply);
        let conn = Conn {
            client: v4(o.src, o.src_port)?,
            vip: v4(o.dst, o.dst_port)?,
            server: v4(r.src, r.src_port)?,
            server_peer: v4(r.dst, r.dst_port)?,
        };
        // Untranslated: the connection ends on this node, which kicks nothing of its own.
        let translated = conn.server != conn.vip;
        (vips.contains(&o.dst) && translated).then_some(conn)
    }
}

/// The connections to kick: established TCP through `vips`, from one conntrack dump.
pub fn connections(
    ct: &mut ConntrackNetlink,
    vips: &HashSet<IpAddr>,
) -> Result<Vec<Conn>, KickError> {
    let mut conns = Vec::new();
    ct.flows(NetfilterProtoFamily::IPv4, |f| {
        if let Some(c) = Conn::of(f, vips) {
            conns.push(c);
        }
        false
    })?;
    Ok(conns)
}

/// Which of `addrs` are not (yet) addresses of this host: the kick waits for the VIPs,
/// which the cluster adds after the promotion, so the endpoints' answers find this node.
pub fn not_local(addrs: &HashSet<IpAddr>) -> Result<HashSet<IpAddr>, KickError> {
    let mut missing = addrs.clone();
    for ifa in nix::ifaddrs::getifaddrs().map_err(KickError::Addresses)? {
        let Some(addr) = ifa.address else { continue };
        if let Some(a) = addr.as_sockaddr_in() {
            missing.remove(&IpAddr::V4(a.ip()));
        } else if let Some(a) = addr.as_sockaddr_in6() {
            missing.remove(&IpAddr::V6(a.ip()));
        }
    }
    Ok(missing)
}

/// What a kick did, for the journal and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub connections: usize,
    pub probes_sent: u64,
    /// Connections whose client, resp. server, answered a probe.
    pub client_answers: usize,
    pub server_answers: usize,
    /// Connections with nothing in flight either way: no ICMP needed.
    pub idle: usize,
    pub icmp_to_clients: u64,
    pub icmp_to_servers: u64,
    /// Packets the kernel refused to send, and the last reason.
    pub send_errors: u64,
    pub last_send_error: Option<String>,
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::super::conntrack::Endpoints;
    use super::*;

    fn flow(orig: (&str, &str), reply: (&str, &str), state: u8) -> Flow {
        let ends = |(s, d): (&str, &str)| {
            let (s, d): (std::net::SocketAddr, std::net::SocketAddr) =
                (s.parse().expect("src"), d.parse().expect("dst"));
            Endpoints {
                src: s.ip(),
                dst: d.ip(),
                src_port: Some(s.port()),
                dst_port: Some(d.port()),
            }
        };
        Flow {
            family: 2,
            proto: 6,
            orig: ends(orig),
            reply: ends(reply),
            zone: None,
            id: None,
            tcp_state: Some(state),
        }
    }

    #[test]
    fn only_established_translated_connections_through_a_vip_are_kicked() {
        let vips: HashSet<IpAddr> = ["192.0.2.10".parse().expect("vip")].into();
        let dnat = flow(
            ("203.0.113.5:40000", "192.0.2.10:80"),
            ("10.1.0.7:8080", "203.0.113.5:40000"),
            TCP_ESTABLISHED,
        );
        assert_eq!(
            Conn::of(&dnat, &vips),
            Some(Conn {
                client: "203.0.113.5:40000".parse().expect("c"),
                vip: "192.0.2.10:80".parse().expect("v"),
                server: "10.1.0.7:8080".parse().expect("s"),
                server_peer: "203.0.113.5:40000".parse().expect("p"),
            })
        );
        let time_wait = flow(
            ("203.0.113.5:40000", "192.0.2.10:80"),
            ("10.1.0.7:8080", "203.0.113.5:40000"),
            7,
        );
        assert_eq!(Conn::of(&time_wait, &vips), None, "not established");
        let other_vip = flow(
            ("203.0.113.5:40000", "192.0.2.11:80"),
            ("10.1.0.7:8080", "203.0.113.5:40000"),
            TCP_ESTABLISHED,
        );
        assert_eq!(Conn::of(&other_vip, &vips), None, "not through a VIP");
        let local = flow(
            ("203.0.113.5:40000", "192.0.2.10:22"),
            ("192.0.2.10:22", "203.0.113.5:40000"),
            TCP_ESTABLISHED,
        );
        assert_eq!(Conn::of(&local, &vips), None, "ends on the gateway");
    }
}
