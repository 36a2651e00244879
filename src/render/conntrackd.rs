//! The conntrackd configuration of a gateway, rendered from the `[sync]` section of its
//! portcullis TOML, so an operator describes the sync link once (`portcullis sync-config`).
//!
//! conntrackd runs in FTFW mode (reliable: lost sync messages are resent) over a dedicated link
//! between the pair. Transport: UDP unicast to the peer by default — a pair has exactly one
//! peer, and unicast needs neither IGMP snooping nor a multicast-capable switch on the sync
//! link; multicast (IPv4) is there for sites that already run it.
//!
//! Only TCP and UDP flows are synchronised (the protocols the data plane forwards). Flows from
//! or to the gateway itself are filtered out: conntrackd matches an ignored address against the
//! original source and the reply source, so listing the node's own addresses drops its own
//! connections (corosync, ADMIN polls, the sync link) and listing a VIP drops connections that
//! end on the gateway, while DNAT'd client flows (reply source = a real server) are kept.
//!
//! The layout matters beyond conntrackd: Pacemaker's `ocf:heartbeat:conntrackd` finds the
//! control socket with awk, looking for a `UNIX {` line, then a `Path` line, then `}`.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `[sync]` section: the link between the pair that carries connection state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncLink {
    /// The dedicated interface of the sync link.
    pub interface: String,
    /// This node's address on the sync link (the one section that differs between the nodes:
    /// the peer swaps `local_address` and `peer_address`).
    pub local_address: IpAddr,
    /// The other node's address on the sync link; required for `transport = "udp"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<IpAddr>,
    #[serde(default)]
    pub transport: Transport,
    /// UDP port, or the multicast group's port.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_group")]
    pub multicast_group: Ipv4Addr,
    /// Addresses whose own connections are not synchronised besides loopback and the two sync
    /// addresses (always ignored): the node's other addresses and the VIPs.
    #[serde(default)]
    pub ignore_addresses: Vec<IpAddr>,
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_lock_file")]
    pub lock_file: PathBuf,
    /// conntrackd's own log; none: syslog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// `backend = "ipvs"`: the sync id of the IPVS connection sync threads on `interface`
    /// (0-255; a backup takes only its own pair's messages when two pairs share a link).
    #[serde(default)]
    pub ipvs_sync_id: u8,
    /// `backend = "nft"`: after a promotion, make the synchronised connections' endpoints
    /// retransmit at once (`[sync.kick]`, on by default; docs/failover.md).
    #[serde(default)]
    pub kick: SyncKick,
}

/// `[sync.kick]`: the failover kick (`apply::kick`). After the promotion, once every VIP of
/// the export is on this node (or `vip_wait` passed), both endpoints of each established
/// connection through a VIP are probed and those with data in flight get ICMP host
/// unreachable messages that end their retransmission backoff (RFC 6069).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncKick {
    pub enabled: bool,
    /// ICMP messages per endpoint with data in flight; each undoes one backoff step (8
    /// cover outages up to ~50 s).
    pub icmp_copies: u8,
    /// The rate of everything the kick sends: 2 probes per connection (4 for one with an
    /// endpoint silent at first), `icmp_copies` per endpoint with data in flight.
    pub packets_per_second: u32,
    /// How long the endpoints' answers are awaited after the last probe (twice, when some are
    /// probed again).
    #[serde(with = "crate::daemon::config::duration")]
    pub answer_wait: Duration,
    /// How long after the promotion the kick waits for the VIPs to be added here.
    #[serde(with = "crate::daemon::config::duration")]
    pub vip_wait: Duration,
    /// Addresses besides the export's frontends the kick waits for: the cluster's other VIPs
    /// the endpoints' answers need, such as the real servers' default gateway (`vip-internal`
    /// of cluster.crm, added in parallel with the public VIP).
    pub wait_for: Vec<IpAddr>,
}

impl Default for SyncKick {
    fn default() -> Self {
        SyncKick {
            enabled: true,
            icmp_copies: 8,
            packets_per_second: 50_000,
            answer_wait: Duration::from_millis(500),
            vip_wait: Duration::from_secs(10),
            wait_for: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Udp,
    Multicast,
}

fn default_port() -> u16 {
    3780
}
fn default_group() -> Ipv4Addr {
    Ipv4Addr::new(225, 0, 0, 50)
}
// Debian's defaults (conntrackd 1.4.7), so the packaged tools find the daemon.
fn default_socket() -> PathBuf {
    PathBuf::from("/var/run/conntrackd.sock")
}
fn default_lock_file() -> PathBuf {
    PathBuf::from("/var/lock/conntrackd.lock")
}

/// A `[sync]` section conntrackd could not run with; `key` names the setting.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: expected {expected}")]
pub struct SyncLinkError {
    pub key: &'static str,
    pub expected: &'static str,
}

impl SyncLink {
    /// Checks what the types cannot; the interface name is checked with the other interfaces.
    pub fn validate(&self) -> Result<(), SyncLinkError> {
        let bad = |key, expected| Err(SyncLinkError { key, expected });
        match (self.transport, self.peer_address) {
            (Transport::Udp, None) => return bad("sync.peer_address", "the peer's address (udp)"),
            (_, Some(peer)) if peer == self.local_address => {
                return bad(
                    "sync.peer_address",
                    "the other node's address, not local_address",
                )
            }
            (_, Some(peer)) if peer.is_ipv4() != self.local_address.is_ipv4() => {
                return bad(
                    "sync.peer_address",
                    "the same address family as local_address",
                )
            }
            _ => {}
        }
        if self.transport == Transport::Multicast {
            if !self.local_address.is_ipv4() {
                return bad(
                    "sync.local_address",
                    "an IPv4 address (multicast sync is IPv4)",
                );
            }
            if !self.multicast_group.is_multicast() {
                return bad("sync.multicast_group", "an IPv4 multicast address");
            }
        }
        if self.port == 0 {
            return bad("sync.port", "a port in 1-65535");
        }
        if self.kick.packets_per_second == 0 {
            return bad("sync.kick.packets_per_second", "a rate above 0");
        }
        for (key, path) in [
            ("sync.socket", &self.socket),
            ("sync.lock_file", &self.lock_file),
        ]
        .into_iter()
        .chain(self.log_file.iter().map(|p| ("sync.log_file", p)))
        {
            if !plain_absolute(path) {
                return bad(
                    key,
                    "an absolute path without spaces, quotes, braces or '#'",
                );
            }
        }
        Ok(())
    }
}

/// conntrackd's parser splits on whitespace and knows no quoting.
fn plain_absolute(path: &Path) -> bool {
    let Some(text) = path.to_str() else {
        return false;
    };
    path.is_absolute()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'{}#".contains(c))
}

/// The conntrackd.conf text for `link`, which must have passed [`SyncLink::validate`].
/// `origin` names the file it came from, in the header.
pub fn conntrackd_conf(link: &SyncLink, origin: &str) -> String {
    let mut out = String::new();
    let w = &mut out;
    // Writing to a String cannot fail.
    let _ = writeln!(
        w,
        "# conntrackd configuration generated by `portcullis sync-config`"
    );
    let _ = writeln!(w, "# from {origin}: edit that file and render again.");
    let _ = writeln!(w, "Sync {{");
    // FTFW: acknowledged, resent when lost. Defaults otherwise (resend queue, purge timer).
    let _ = writeln!(w, "\tMode FTFW {{\n\t}}");
    match link.transport {
        Transport::Udp => {
            let peer = link.peer_address.unwrap_or(link.local_address);
            let family = family(link.local_address);
            let _ = writeln!(w, "\tUDP {{");
            let _ = writeln!(w, "\t\t{family}_address {}", link.local_address);
            let _ = writeln!(w, "\t\t{family}_Destination_Address {peer}");
            let _ = writeln!(w, "\t\tPort {}", link.port);
        }
        Transport::Multicast => {
            let _ = writeln!(w, "\tMulticast {{");
            let _ = writeln!(w, "\t\tIPv4_address {}", link.multicast_group);
            let _ = writeln!(w, "\t\tGroup {}", link.port);
            let _ = writeln!(w, "\t\tIPv4_interface {}", link.local_address);
        }
    }
    let _ = writeln!(w, "\t\tInterface {}", link.interface);
    // The sizes of the conntrack-tools example: a burst of state changes during a failover
    // must not overflow the socket.
    let _ = writeln!(w, "\t\tSndSocketBuffer 1249280");
    let _ = writeln!(w, "\t\tRcvSocketBuffer 1249280");
    let _ = writeln!(w, "\t\tChecksum on");
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "}}");
    let _ = writeln!(w, "General {{");
    let _ = writeln!(w, "\tHashSize 32768");
    let _ = writeln!(w, "\tHashLimit 131072");
    match &link.log_file {
        Some(path) => {
            let _ = writeln!(w, "\tLogFile {}", path.display());
            let _ = writeln!(w, "\tSyslog off");
        }
        None => {
            let _ = writeln!(w, "\tLogFile off");
            let _ = writeln!(w, "\tSyslog on");
        }
    }
    let _ = writeln!(w, "\tLockFile {}", link.lock_file.display());
    let _ = writeln!(w, "\tUNIX {{");
    let _ = writeln!(w, "\t\tPath {}", link.socket.display());
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "\tNetlinkBufferSize 2097152");
    let _ = writeln!(w, "\tNetlinkBufferSizeMaxGrowth 8388608");
    let _ = writeln!(w, "\tFilter From Userspace {{");
    let _ = writeln!(w, "\t\tProtocol Accept {{\n\t\t\tTCP\n\t\t\tUDP\n\t\t}}");
    let _ = writeln!(w, "\t\tAddress Ignore {{");
    for addr in ignored(link) {
        let _ = writeln!(w, "\t\t\t{}_address {addr}", family(addr));
    }
    let _ = writeln!(w, "\t\t}}");
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "}}");
    out
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Loopback, both ends of the sync link and the configured ones, each once, in that order.
fn ignored(link: &SyncLink) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let fixed = [
        IpAddr::from(Ipv4Addr::LOCALHOST),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        link.local_address,
    ];
    for addr in fixed
        .into_iter()
        .chain(link.peer_address)
        .chain(link.ignore_addresses.iter().copied())
    {
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
#[path = "conntrackd_tests.rs"]
mod tests;
