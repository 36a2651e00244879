//! The fixed shape of the portcullis table: names of its sets, maps and base chains, and how
//! model values are spelled as set elements. Everything dynamic lives in sets and maps, so a
//! sync only ever adds and deletes elements; chains are static.

use super::balance;
use super::transaction::{Chain, Element, Hook, Object, Rule, Set, SetDecl};
use super::Backend;
use crate::model::Frontend;
use portcullis_export::Proto;
use std::net::IpAddr;

pub const FRONTENDS_V4: &str = "frontends_v4";
pub const FRONTENDS_V6: &str = "frontends_v6";
pub const FWMARKS_V4: &str = "fwmarks_v4";
pub const FWMARKS_V6: &str = "fwmarks_v6";
pub const EXTERNAL_IFACES: &str = "external_ifaces";
pub const INTERNAL_IFACES: &str = "internal_ifaces";
/// The mark of the packets the failover kick sends (`apply::kick`; "kick" in ASCII):
/// `output_notrack` keeps conntrack away from them. Outside the balancing's scratch range.
pub const KICK_MARK: u32 = 0x6b69_636b;
/// The source ports of the half-open health probes (`daemon::health::syn`, which reserves
/// them by binding), outside Linux's default ephemeral range (32768–60999). Their SYNs, the
/// answers and the gateway's resets skip conntrack: tracked, every probe created, confirmed
/// and later reaped a connection entry and a NAT binding (a sixth of the checker's CPU in
/// `perf`, and 50k entries standing in the table at 10k servers every 2 s).
pub const PROBE_PORTS: (u16, u16) = (61100, 61131);

pub const TABLE_COMMENT: &str =
    "managed by portcullis: regenerated from the ADMIN export, do not edit";

/// Named sets and maps of the table. Keys are `daddr . l4proto . dport` concatenations with
/// interval flags, so a port range is one element and lookups cost the same for 10 or 100k
/// services. `frontends_*` holds what input must accept: every frontend for IPVS (which takes
/// the packets at input); on the nft backend only the frontends of services with no server of
/// weight, which nothing translates, so the gateway refuses their connections instead of
/// dropping them (every frontend there was 50k interval elements at 100k rows of two-server
/// services, a fifth of the cold load). Input cannot look the frontend up in the balancing
/// maps instead: a lookup that ignores a map's value is refused by Debian 12's kernel (6.1).
pub fn sets(backend: Backend) -> Vec<Set> {
    let set =
        |name: &str, key: &'static str, value: Option<&'static str>, comment: &'static str| Set {
            name: name.into(),
            decl: SetDecl::Type { key, value },
            interval: true,
            comment: Some(comment),
        };
    const V4: &str = "ipv4_addr . inet_proto . inet_service";
    const V6: &str = "ipv6_addr . inet_proto . inet_service";
    let accepted = match backend {
        Backend::Ipvs => "exported frontends: accepted on input",
        Backend::Nft => {
            "frontends of services with no server of weight: accepted on input, refused"
        }
    };
    let mut sets = vec![
        set(FRONTENDS_V4, V4, None, accepted),
        set(FRONTENDS_V6, V6, None, accepted),
    ];
    // Both backends mark fwmark frontends: IPVS picks the service by mark, and the nft
    // backend looks up the service's buckets by it.
    let c = match backend {
        Backend::Ipvs => "frontends of fwmark services: packet mark for IPVS",
        Backend::Nft => "frontends of fwmark services: packet mark that selects the buckets",
    };
    sets.push(set(FWMARKS_V4, V4, Some("mark"), c));
    sets.push(set(FWMARKS_V6, V6, Some("mark"), c));
    if backend == Backend::Nft {
        for map in balance::maps() {
            sets.push(Set {
                name: map.name,
                decl: SetDecl::Typeof(map.typeof_decl),
                interval: false,
                comment: Some(map.comment),
            });
        }
    }
    let ifnames = |name: &str, comment: &'static str| Set {
        name: name.into(),
        decl: SetDecl::Type {
            key: "ifname",
            value: None,
        },
        interval: false,
        comment: Some(comment),
    };
    sets.push(ifnames(
        EXTERNAL_IFACES,
        "interfaces facing clients: new inbound traffic not accepted here is dropped",
    ));
    sets.push(ifnames(
        INTERNAL_IFACES,
        "interfaces facing real servers: the only way out for translated traffic, when set",
    ));
    sets
}

fn base(name: &str, kind: &'static str, hook: &'static str, priority: &'static str) -> Chain {
    Chain {
        name: name.into(),
        hook: Some(Hook {
            kind,
            hook,
            priority,
            policy: "accept",
        }),
    }
}

/// The static base chains and their rules. `jump_base_input` adds the hand-off to the
/// operator's policy chain when the policy file defines one; `internal_only` confines
/// translated traffic to the internal interfaces (configured ones exist).
pub fn chains(
    backend: Backend,
    jump_base_input: bool,
    internal_only: bool,
) -> Vec<(Chain, Vec<String>)> {
    let own = |rules: &[&str]| rules.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>();
    let (lo, hi) = PROBE_PORTS;
    let mut input = own(&[
        "ct state established,related accept",
        "ct state invalid drop",
    ]);
    // The answers to health probes, untracked (so neither established nor new): SYN-ACKs and
    // resets, which carry ACK; the raw socket reads them and the kernel resets the SYN-ACKs.
    input.push(format!(
        "tcp dport {lo}-{hi} tcp flags & ack == ack ct state untracked accept"
    ));
    input.push("iif \"lo\" accept".to_owned());
    if jump_base_input {
        input.push("jump base_input".to_owned());
    }
    input.extend(own(&[
        "ip daddr . meta l4proto . th dport @frontends_v4 accept",
        "ip6 daddr . meta l4proto . th dport @frontends_v6 accept",
        "iifname @external_ifaces counter drop",
    ]));
    // Forwarded traffic from clients is only what we DNAT'ed (or replies to it).
    let forward = own(&[
        "ct state established,related accept",
        "ct state invalid drop",
        if internal_only {
            "ct status dnat oifname @internal_ifaces accept"
        } else {
            "ct status dnat accept"
        },
        "iifname @external_ifaces counter drop",
    ]);
    // Before the DNAT (dstnat) and before IPVS sees the packet, so the mark selects the service.
    let mut chains = vec![(
        base("prerouting_mark", "filter", "prerouting", "mangle"),
        own(&[
            "meta mark set ip daddr . meta l4proto . th dport map @fwmarks_v4",
            "meta mark set ip6 daddr . meta l4proto . th dport map @fwmarks_v6",
        ]),
    )];
    if backend == Backend::Nft {
        chains.push((
            base("prerouting_dnat", "nat", "prerouting", "dstnat"),
            balance::rules(),
        ));
        // Right after the DNAT: the balancing's scratch marks go before routing sees them.
        chains.push((
            base("prerouting_unmark", "filter", "prerouting", "dstnat + 1"),
            balance::unmark_rules(),
        ));
    }
    // Health probes and the gateway's resets of their answers go out untracked (see
    // PROBE_PORTS); with the nft backend, so do the failover kick's probes, which carry an
    // endpoint's peer as their source: tracked, they would match no entry (or clash with the
    // real connection's reply tuple) and be dropped; untracked they are also never NAT'ed.
    // Not towards an external interface, as the answers are left tracked when they come from
    // one (below): a SYN and its answer must be both tracked or both not.
    let mut output_notrack = vec![format!(
        "tcp sport {lo}-{hi} oifname != @external_ifaces notrack"
    )];
    if backend == Backend::Nft {
        output_notrack.push(format!("meta mark {KICK_MARK:#x} notrack"));
    }
    chains.push((
        base("output_notrack", "filter", "output", "raw"),
        output_notrack,
    ));
    // Only what comes to the gateway itself, and not on an external interface: a forwarded
    // connection's replies may carry these ports too, and so may the replies to connections
    // some other table masquerades behind an external address; both stay tracked for their
    // NAT. (Real servers answer on the internal side.)
    chains.push((
        base("prerouting_notrack", "filter", "prerouting", "raw"),
        vec![format!(
            "tcp dport {lo}-{hi} iifname != @external_ifaces fib daddr type local notrack"
        )],
    ));
    chains.push((base("input", "filter", "input", "filter"), input));
    chains.push((base("forward", "filter", "forward", "filter"), forward));
    chains
}

pub fn rule(chain: &Chain, expr: String) -> Object {
    Object::Rule(Rule {
        chain: chain.name.clone(),
        expr,
    })
}

fn key(vip: IpAddr, proto: Proto, f: &Frontend) -> String {
    format!("{vip} . {proto} . {}", f.ports)
}

/// The accept-set element for a frontend of a service with protocol `proto`.
pub fn frontend_element(proto: Proto, f: &Frontend) -> Element {
    Element {
        set: if f.vip.is_ipv4() {
            FRONTENDS_V4
        } else {
            FRONTENDS_V6
        }
        .into(),
        key: key(f.vip, proto, f),
        value: None,
    }
}

/// The marking-map element steering a frontend to fwmark service `mark`.
pub fn fwmark_element(proto: Proto, f: &Frontend, mark: u32) -> Element {
    Element {
        set: if f.vip.is_ipv4() {
            FWMARKS_V4
        } else {
            FWMARKS_V6
        }
        .into(),
        key: key(f.vip, proto, f),
        value: Some(mark.to_string()),
    }
}

/// A string the kernel would not take as an interface name (or that could break out of a
/// quoted nft string).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected {}", self.expected())]
pub struct IfnameError(pub String);

impl IfnameError {
    /// What was expected, and what was found instead.
    pub fn expected(&self) -> String {
        format!(
            "an interface name of 1-15 characters A-Z a-z 0-9 . _ - @, found {:?}",
            self.0
        )
    }
}

/// A validated interface name: what the kernel accepts (IFNAMSIZ) and nothing that could
/// break out of a quoted nft string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ifname(String);

impl Ifname {
    pub fn parse(s: &str) -> Result<Ifname, IfnameError> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
        if ok {
            Ok(Ifname(s.to_owned()))
        } else {
            Err(IfnameError(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `name` as an element of `set` ([`EXTERNAL_IFACES`] or [`INTERNAL_IFACES`]).
pub fn interface_element(set: &str, name: &Ifname) -> Element {
    Element {
        set: set.into(),
        key: format!("\"{}\"", name.0),
        value: None,
    }
}
