//! The pure-nftables load balancer (`backend = "nft"`): the same virtual services as IPVS,
//! done with DNAT in the portcullis table.
//!
//! - map `services_v4`/`_v6`: `daddr . l4proto . dport` → `goto svc_…` (one element per
//!   frontend; ranges are one interval element), looked up from the `prerouting_dnat` chain;
//! - chain `svc_…` per virtual service: one rule picking a real server, `numgen random` over
//!   weight slots (rr, wrr and the connection-counting schedulers, which nftables cannot
//!   count), or `jhash` of the source address for `sh`/`dh`/`mh` and persistent services;
//! - chain `ep_…` per real server: `dnat` to rip:rport, or to rip keeping the port.
//!
//! A weight-0 server has no slot, so it gets no new connections, while its existing flows
//! keep their conntrack entry (DNAT is only evaluated for a connection's first packet). A
//! service whose servers all have weight 0 rejects new connections.
//!
//! Chain names are derived from what they hold (a stable hash), so the same service always
//! has the same chain, and a service that changes protocol or family gets a new one.

use super::layout::FRONTENDS_V4;
use super::transaction::{Chain, Element, Object, Rule, Transaction};
use crate::model::{Frontend, RealKey, ServiceKey, VirtualService};
use portcullis_export::{Proto, Scheduler};
use std::fmt::Write;
use std::net::IpAddr;

pub const SERVICES_V4: &str = "services_v4";
pub const SERVICES_V6: &str = "services_v6";

/// FNV-1a, 64 bit: stable across Rust releases and platforms (unlike `DefaultHasher`), which
/// matters because chain names are compared with what an earlier run left in the kernel.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn service_chain(key: &ServiceKey, svc: &VirtualService) -> String {
    let family = if svc.is_ipv6() { 6 } else { 4 };
    format!(
        "svc_{:016x}",
        stable_hash(&format!("{key} {} {family}", svc.proto))
    )
}

pub fn endpoint_chain(service_chain: &str, real: &RealKey) -> String {
    format!(
        "ep_{:016x}",
        stable_hash(&format!("{service_chain} {real}"))
    )
}

fn chain(name: String) -> Chain {
    Chain { name, hook: None }
}

/// The element steering a frontend to its service chain.
pub fn service_element(key: &ServiceKey, svc: &VirtualService, f: &Frontend) -> Element {
    let frontend = super::layout::frontend_element(svc.proto, f);
    Element {
        set: if frontend.set == FRONTENDS_V4 {
            SERVICES_V4
        } else {
            SERVICES_V6
        }
        .into(),
        is_map: true,
        key: frontend.key,
        value: Some(format!("goto {}", service_chain(key, svc))),
    }
}

/// The `dnat` rule of a real server's chain. A port mapping needs a protocol match in nft.
fn endpoint_rule(proto: Proto, real: &RealKey) -> String {
    let family = if real.addr.is_ipv4() { "ip" } else { "ip6" };
    match (real.port, real.addr) {
        (None, addr) => format!("dnat {family} to {addr}"),
        (Some(p), IpAddr::V4(a)) => format!("meta l4proto {proto} dnat ip to {a}:{p}"),
        (Some(p), IpAddr::V6(a)) => format!("meta l4proto {proto} dnat ip6 to [{a}]:{p}"),
    }
}

/// The service chain's one rule: weighted slots over the real servers with weight > 0.
pub fn service_rule(key: &ServiceKey, svc: &VirtualService) -> String {
    let name = service_chain(key, svc);
    let mut slots = String::new();
    let mut next: u64 = 0;
    for (real, server) in svc.reals.iter().filter(|(_, s)| s.weight > 0) {
        let w = server.weight as u64;
        if !slots.is_empty() {
            slots.push_str(", ");
        }
        let ep = endpoint_chain(&name, real);
        if w == 1 {
            let _ = write!(slots, "{next} : goto {ep}");
        } else {
            let _ = write!(slots, "{next}-{} : goto {ep}", next + w - 1);
        }
        next += w;
    }
    if next == 0 {
        // Every real server drained (or none): refuse new connections quickly.
        return "reject".to_owned();
    }
    let by_source = svc.params.persistence.is_some()
        || matches!(
            svc.params.scheduler,
            Scheduler::Sh | Scheduler::Dh | Scheduler::Mh
        );
    let selector = if by_source {
        let saddr = if svc.is_ipv6() {
            "ip6 saddr"
        } else {
            "ip saddr"
        };
        format!("jhash {saddr} mod {next}")
    } else {
        format!("numgen random mod {next}")
    };
    format!("{selector} vmap {{ {slots} }}")
}

/// Adds the chains of a real server (chain, then its rule).
fn add_endpoint(tx: &mut Transaction, service_chain: &str, proto: Proto, real: &RealKey) {
    let ep = endpoint_chain(service_chain, real);
    tx.add(Object::Chain(chain(ep.clone())));
    tx.add(Object::Rule(Rule {
        chain: ep,
        expr: endpoint_rule(proto, real),
    }));
}

fn remove_chain(tx: &mut Transaction, name: String) {
    // nft deletes only empty chains.
    tx.flush(Object::Chain(chain(name.clone())));
    tx.delete(Object::Chain(chain(name)));
}

/// Adds a service's endpoint chains and its service chain (not the map elements).
pub fn add_service(tx: &mut Transaction, key: &ServiceKey, svc: &VirtualService) {
    let name = service_chain(key, svc);
    for real in svc.reals.keys() {
        add_endpoint(tx, &name, svc.proto, real);
    }
    tx.add(Object::Chain(chain(name.clone())));
    tx.add(Object::Rule(Rule {
        chain: name,
        expr: service_rule(key, svc),
    }));
}

/// Removes a service's chains; its map elements must be deleted earlier in the transaction.
pub fn remove_service(tx: &mut Transaction, key: &ServiceKey, svc: &VirtualService) {
    let name = service_chain(key, svc);
    remove_chain(tx, name.clone());
    for real in svc.reals.keys() {
        remove_chain(tx, endpoint_chain(&name, real));
    }
}

/// Rewrites a service in place after its real servers or parameters changed: new endpoint
/// chains first, then the service rule, then the chains of servers that are gone.
pub fn update_service<'a>(
    tx: &mut Transaction,
    key: &ServiceKey,
    new: &VirtualService,
    added: impl IntoIterator<Item = &'a RealKey>,
    removed: impl IntoIterator<Item = &'a RealKey>,
) {
    let name = service_chain(key, new);
    for real in added {
        add_endpoint(tx, &name, new.proto, real);
    }
    tx.flush(Object::Chain(chain(name.clone())));
    tx.add(Object::Rule(Rule {
        chain: name.clone(),
        expr: service_rule(key, new),
    }));
    for real in removed {
        remove_chain(tx, endpoint_chain(&name, real));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_builds() {
        // FNV-1a test vectors: a changed hash would rename every chain on upgrade.
        assert_eq!(stable_hash(""), 0xcbf29ce484222325);
        assert_eq!(stable_hash("a"), 0xaf63dc4c8601ec8c);
    }
}
