//! A meta-configuration's `gateway:` entries: the ports a type exports through the gateway and
//! how they are balanced. Read in named steps — identity (name, ip), balancing (proto,
//! scheduler, method), numbers (fwm, persistence, weight), ports, the port mapping (`to`) and
//! the rules between them — each reporting located errors. An entry with any error after its
//! identity is left out, so the cross-entry checks (collisions, fwmarks) do not pile on.

use crate::error::ErrorKind;
use crate::read::{find, index, is_name, join, Reader};
use crate::yaml::{Key, Kind, Node, Pos};
use portcullis_export::{Check, Method, PortRange, Proto, Scheduler};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum To {
    /// Absent: the real server port is the external one.
    Same,
    One(u16),
    /// External → internal, one entry per external port.
    Map(Vec<(u16, u16)>),
}

#[derive(Clone, Debug, Serialize)]
pub struct GatewayEntry {
    pub name: String,
    pub ip: String,
    pub proto: Proto,
    pub ports: Vec<PortRange>,
    pub to: To,
    pub fwm: Option<u32>,
    pub scheduler: Scheduler,
    pub method: Method,
    pub persistence: Option<u32>,
    pub weight: u16,
    /// How gateways probe the instances' health (the export's `check` column); absent: the
    /// gateway's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub ip_pos: Pos,
    #[serde(skip)]
    pub ports_pos: Pos,
    #[serde(skip)]
    pub fwm_pos: Pos,
}

const GATEWAY_KEYS: &[&str] = &[
    "name",
    "ip",
    "proto",
    "ports",
    "to",
    "fwm",
    "scheduler",
    "method",
    "persistence",
    "weight",
    "check",
];

/// One `gateway:` item being read: its node, key path and entries, and how many errors the
/// catalog had once its identity was read (any more make the entry invalid).
struct Item<'n> {
    node: &'n Node,
    path: &'n str,
    entries: Vec<&'n (Key, Node)>,
    errors_after_identity: usize,
}

impl<'n> Item<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        find(&self.entries, key)
    }
    /// The key path of one of its keys, e.g. `gateway[0].ports`.
    fn key(&self, key: &str) -> String {
        join(self.path, key)
    }
    /// Where `key` is written, or the item itself when it is absent.
    fn pos_of(&self, key: &str) -> Pos {
        self.get(key).map_or(self.node.pos, |n| n.pos)
    }
    /// No error since its identity was read.
    fn clean(&self, r: &Reader) -> bool {
        r.errors.len() == self.errors_after_identity
    }
    /// An optional enumerated field (`proto`, `scheduler`, `method`), reported where written
    /// when its parser refuses it.
    fn parsed<T, E: std::fmt::Display>(
        &self,
        r: &mut Reader,
        key: &str,
        parse: fn(&str) -> Result<T, E>,
    ) -> Option<T> {
        let n = self.get(key)?;
        match parse(&scalar_text(n)) {
            Ok(v) => Some(v),
            Err(expected) => {
                r.bad(n, &self.key(key), &expected.to_string());
                None
            }
        }
    }
}

/// A scalar as text (`443` and `"443"` alike); other shapes read as "", which every parser
/// refuses with its own expectation.
fn scalar_text(n: &Node) -> String {
    match &n.kind {
        Kind::Str(s) => s.clone(),
        Kind::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

pub(super) fn read_gateway(r: &mut Reader, node: &Node, path: &str) -> Option<GatewayEntry> {
    let entries = r.map(node, path, GATEWAY_KEYS)?;
    let name_node = r.require(node, &entries, path, "name");
    let ip_node = r.require(node, &entries, path, "ip");
    let ports_node = r.require(node, &entries, path, "ports");
    let name = name_node.and_then(|n| read_name(r, n, &join(path, "name")));
    let ip = ip_node.and_then(|n| r.string(n, &join(path, "ip")));
    let item = Item {
        node,
        path,
        entries,
        errors_after_identity: r.errors.len(),
    };
    let proto = item.parsed(r, "proto", Proto::parse).unwrap_or(Proto::Tcp);
    let scheduler = item
        .parsed(r, "scheduler", Scheduler::parse)
        .unwrap_or(Scheduler::Wlc);
    let method = item
        .parsed(r, "method", Method::parse)
        .unwrap_or(Method::Nat);
    let check = item.parsed(r, "check", Check::parse);
    let numbers = read_numbers(r, &item)?;
    let ports = read_ports(r, &item, ports_node, numbers.fwm);
    let to = read_to(r, &item, &ports);
    check_to(r, &item, &ports, &to, method);
    if !item.clean(r) {
        return None;
    }
    Some(GatewayEntry {
        name: name?,
        ip: ip?,
        proto,
        ports,
        to,
        fwm: numbers.fwm,
        scheduler,
        method,
        persistence: numbers.persistence,
        weight: numbers.weight,
        check,
        pos: node.pos,
        ip_pos: ip_node.map_or(node.pos, |n| n.pos),
        ports_pos: ports_node.map_or(node.pos, |n| n.pos),
        fwm_pos: item.pos_of("fwm"),
    })
}

/// The entry's name; a malformed one is reported but kept, so the entry's other checks still
/// run (the catalog is rejected either way).
fn read_name(r: &mut Reader, node: &Node, key: &str) -> Option<String> {
    let name = r.string(node, key)?;
    if !is_name(&name) {
        r.bad(node, key, "a name of 1-32 letters, digits, - or _");
    }
    Some(name)
}

struct Numbers {
    fwm: Option<u32>,
    persistence: Option<u32>,
    weight: u16,
}

/// `fwm`, `persistence` and `weight`; the first out of range ends the entry.
fn read_numbers(r: &mut Reader, item: &Item) -> Option<Numbers> {
    let fwm = match item.get("fwm") {
        Some(n) => Some(r.int(n, &item.key("fwm"), 1, u32::MAX as i64)? as u32),
        None => None,
    };
    let persistence = match item.get("persistence") {
        Some(n) => Some(r.int(
            n,
            &item.key("persistence"),
            1,
            portcullis_export::MAX_PERSISTENCE as i64,
        )? as u32),
        None => None,
    };
    let weight = match item.get("weight") {
        Some(n) => r.int(n, &item.key("weight"), 0, 65535)? as u16,
        None => 1,
    };
    Some(Numbers {
        fwm,
        persistence,
        weight,
    })
}

/// `ports`: one port or range, or a list of them. A range needs an fwm: only an fwmark service
/// can balance a range. Bad items are reported one by one; the good ones are returned so the
/// mapping (`to`) can still be checked against them.
fn read_ports(
    r: &mut Reader,
    item: &Item,
    ports_node: Option<&Node>,
    fwm: Option<u32>,
) -> Vec<PortRange> {
    let Some(pn) = ports_node else {
        return Vec::new();
    };
    let key = item.key("ports");
    let items: Vec<&Node> = match &pn.kind {
        Kind::Seq(items) => items.iter().collect(),
        _ => vec![pn],
    };
    let mut ports = Vec::new();
    for (i, n) in items.into_iter().enumerate() {
        match PortRange::parse(&scalar_text(n)) {
            Ok(p) if !p.is_single() && fwm.is_none() => r.error(
                n.pos,
                &index(&key, i),
                ErrorKind::BadValue,
                format!(
                    "the port range {p} needs an fwm: only an fwmark service can balance a range"
                ),
            ),
            Ok(p) => ports.push(p),
            Err(expected) => r.bad(n, &index(&key, i), &expected),
        }
    }
    if ports.is_empty() && item.clean(r) {
        r.bad(pn, &key, "at least one port or range");
    }
    ports
}

/// `to`: absent (same port), one internal port, or a map EXTERNAL: INTERNAL.
fn read_to(r: &mut Reader, item: &Item, ports: &[PortRange]) -> To {
    let Some(n) = item.get("to") else {
        return To::Same;
    };
    let key = item.key("to");
    match &n.kind {
        Kind::Int(p) if (1..=65535).contains(p) => To::One(*p as u16),
        Kind::Map(m) => To::Map(read_port_map(r, n, m, &key, ports)),
        _ => {
            r.bad(n, &key, "an internal port or a map EXTERNAL: INTERNAL");
            To::Same
        }
    }
}

/// A `to` map: every pair names one of the entry's single ports, and every port has a pair.
fn read_port_map(
    r: &mut Reader,
    node: &Node,
    map: &[(Key, Node)],
    key: &str,
    ports: &[PortRange],
) -> Vec<(u16, u16)> {
    let mut pairs = Vec::new();
    for (k, v) in map {
        let external = k.name.parse::<u16>().ok().filter(|p| *p >= 1);
        let internal = match v.kind {
            Kind::Int(p) if (1..=65535).contains(&p) => Some(p as u16),
            _ => None,
        };
        match (external, internal) {
            (Some(ext), Some(int)) if ports.contains(&PortRange::single(ext)) => {
                pairs.push((ext, int))
            }
            (Some(ext), Some(_)) => r.error(
                k.pos,
                &join(key, &k.name),
                ErrorKind::BadValue,
                format!("port {ext} is not one of this entry's ports"),
            ),
            _ => r.bad(v, &join(key, &k.name), "EXTERNAL: INTERNAL ports 1-65535"),
        }
    }
    for p in ports {
        if !pairs
            .iter()
            .any(|(ext, _)| p.is_single() && *ext == p.first)
        {
            r.error(
                node.pos,
                key,
                ErrorKind::MissingKey,
                format!("no internal port for external port {p}"),
            );
        }
    }
    pairs
}

/// The rules between `to` and the rest: a range keeps each port, and dr/tun cannot rewrite
/// the port at all (the real server sees the packet as sent).
fn check_to(r: &mut Reader, item: &Item, ports: &[PortRange], to: &To, method: Method) {
    if *to == To::Same {
        return;
    }
    let key = item.key("to");
    if let Some(range) = ports.iter().find(|p| !p.is_single()) {
        r.error(
            item.pos_of("to"),
            &key,
            ErrorKind::BadValue,
            format!("a port range ({range}) keeps each port: remove `to`"),
        );
    }
    if matches!(method, Method::Dr | Method::Tun) {
        let changes = match to {
            To::One(p) => ports.iter().any(|r| r.first != *p),
            To::Map(m) => m.iter().any(|(a, b)| a != b),
            To::Same => false,
        };
        if changes {
            r.error(
                item.pos_of("to"),
                &key,
                ErrorKind::BadValue,
                format!("method {method} cannot change the port: remove `to` or use nat"),
            );
        }
    }
}
