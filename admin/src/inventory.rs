//! `inventory.yaml`: locations (with their public IP labels), servers and instances — the part
//! of the catalog that changes at run time (drain, maintenance). Reading it, writing it back in
//! a canonical form, and changing one instance's state in place.

use crate::error::ErrorKind;
use crate::read::{find, index, is_name, join, Reader};
use crate::value::quote_if_needed;
use crate::yaml::{Kind, Node, Pos};
use indexmap::IndexMap;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::IpAddr;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Inventory {
    pub locations: IndexMap<String, Location>,
    pub servers: IndexMap<String, Server>,
    pub instances: Vec<Instance>,
    /// Servers that are defined but had errors (already reported): references to them are
    /// not reported again as unknown.
    #[serde(skip)]
    pub broken_servers: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Location {
    pub ip_labels: IndexMap<String, Vec<IpAddr>>,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    App,
    Db,
    Archive,
}

#[derive(Clone, Debug, Serialize)]
pub struct Server {
    pub name: String,
    pub kind: ServerKind,
    pub location: String,
    pub address: IpAddr,
    /// Data drives (db servers), targets of `db` install links.
    pub drives: Vec<String>,
    /// The archive mount, target of `archive` install links (archive servers: `/mnt/archive`).
    pub archive: Option<String>,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Production,
    /// Exported with weight 0: no new connections, existing ones continue.
    Drained,
    /// Not exported at all.
    Maintenance,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Production => "production",
            State::Drained => "drained",
            State::Maintenance => "maintenance",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "production" => Some(State::Production),
            "drained" => Some(State::Drained),
            "maintenance" => Some(State::Maintenance),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Instance {
    /// `<type>.<server>.<index>`.
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub server: String,
    pub index: u32,
    /// Whether `index` was written (types with `require-index` must write it).
    #[serde(skip)]
    pub index_given: bool,
    pub state: State,
    pub version: Option<String>,
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub index_pos: Pos,
}

pub(crate) fn read_inventory(r: &mut Reader, doc: &Node) -> Inventory {
    let mut inv = Inventory::default();
    let Some(top) = r.map(doc, "", &["locations", "servers", "instances"]) else {
        return inv;
    };
    if let Some(locs) = find(&top, "locations") {
        for (k, v) in r.map(locs, "locations", &[]).unwrap_or_default() {
            let path = join("locations", &k.name);
            if !is_name(&k.name) {
                r.error(
                    k.pos,
                    &path,
                    ErrorKind::BadValue,
                    "a location name: 1-32 of A-Z a-z 0-9 - _",
                );
                continue;
            }
            let mut loc = Location {
                ip_labels: IndexMap::new(),
                pos: k.pos,
            };
            let e = r.map(v, &path, &["ip-labels"]).unwrap_or_default();
            if let Some(labels) = find(&e, "ip-labels") {
                let lpath = join(&path, "ip-labels");
                for (lk, lv) in r.map(labels, &lpath, &[]).unwrap_or_default() {
                    let kpath = join(&lpath, &lk.name);
                    let mut addrs = Vec::new();
                    for (s, pos) in r.strings(lv, &kpath) {
                        match s.parse::<IpAddr>() {
                            Ok(a) => addrs.push(a),
                            Err(_) => r.error(
                                pos,
                                &kpath,
                                ErrorKind::BadValue,
                                format!("expected an IPv4 or IPv6 address, found {s:?}"),
                            ),
                        }
                    }
                    loc.ip_labels.insert(lk.name.clone(), addrs);
                }
            }
            inv.locations.insert(k.name.clone(), loc);
        }
    }
    if let Some(servers) = find(&top, "servers") {
        for (k, v) in r.map(servers, "servers", &[]).unwrap_or_default() {
            let path = join("servers", &k.name);
            if !is_name(&k.name) {
                r.error(
                    k.pos,
                    &path,
                    ErrorKind::BadValue,
                    "a server name: 1-32 of A-Z a-z 0-9 - _ (no dots: it is part of instance ids)",
                );
                continue;
            }
            match read_server(r, &k.name, v, &path) {
                Some(s) => {
                    inv.servers.insert(k.name.clone(), s);
                }
                None => inv.broken_servers.push(k.name.clone()),
            }
        }
    }
    if let Some(list) = find(&top, "instances").and_then(|n| r.list(n, "instances")) {
        for (i, n) in list.iter().enumerate() {
            if let Some(inst) = read_instance(r, n, &index("instances", i)) {
                inv.instances.push(inst);
            }
        }
    }
    inv
}

fn read_server(r: &mut Reader, name: &str, node: &Node, path: &str) -> Option<Server> {
    let e = r.map(
        node,
        path,
        &["kind", "location", "address", "drives", "archive"],
    )?;
    let kind_n = r.require(node, &e, path, "kind");
    let loc_n = r.require(node, &e, path, "location");
    let addr_n = r.require(node, &e, path, "address");
    let kind = kind_n.and_then(|n| match n.kind {
        Kind::Str(ref s) if s == "app" => Some(ServerKind::App),
        Kind::Str(ref s) if s == "db" => Some(ServerKind::Db),
        Kind::Str(ref s) if s == "archive" => Some(ServerKind::Archive),
        _ => {
            r.bad(n, &join(path, "kind"), "app, db or archive");
            None
        }
    });
    let location = loc_n.and_then(|n| r.string(n, &join(path, "location")));
    let address = addr_n.and_then(|n| {
        let s = r.string(n, &join(path, "address"))?;
        s.parse::<IpAddr>()
            .map_err(|_| r.bad(n, &join(path, "address"), "an IPv4 or IPv6 address"))
            .ok()
    });
    let drives = find(&e, "drives")
        .map(|n| {
            r.strings(n, &join(path, "drives"))
                .into_iter()
                .filter(|(d, pos)| {
                    let ok = d.starts_with('/');
                    if !ok {
                        r.error(
                            *pos,
                            &join(path, "drives"),
                            ErrorKind::BadValue,
                            format!("expected an absolute path, found {d:?}"),
                        );
                    }
                    ok
                })
                .map(|d| d.0)
                .collect()
        })
        .unwrap_or_default();
    let archive = find(&e, "archive").and_then(|n| r.string(n, &join(path, "archive")));
    let kind = kind?;
    let archive =
        archive.or_else(|| (kind == ServerKind::Archive).then(|| "/mnt/archive".to_owned()));
    Some(Server {
        name: name.to_owned(),
        kind,
        location: location?,
        address: address?,
        drives,
        archive,
        pos: node.pos,
    })
}

fn read_instance(r: &mut Reader, node: &Node, path: &str) -> Option<Instance> {
    let e = r.map(node, path, &["type", "server", "index", "state", "version"])?;
    let type_n = r.require(node, &e, path, "type");
    let server_n = r.require(node, &e, path, "server");
    let type_name = type_n.and_then(|n| r.string(n, &join(path, "type")));
    let server = server_n.and_then(|n| r.string(n, &join(path, "server")));
    let index_n = find(&e, "index");
    let index = match index_n {
        Some(n) => Some(r.int(n, &join(path, "index"), 1, 9999)? as u32),
        None => None,
    };
    let state = match find(&e, "state") {
        None => State::Production,
        Some(n) => match &n.kind {
            Kind::Str(s) => match State::parse(s) {
                Some(st) => st,
                None => {
                    r.bad(
                        n,
                        &join(path, "state"),
                        "production, drained or maintenance",
                    );
                    return None;
                }
            },
            _ => {
                r.bad(
                    n,
                    &join(path, "state"),
                    "production, drained or maintenance",
                );
                return None;
            }
        },
    };
    let version = match find(&e, "version") {
        Some(n) => Some(r.string(n, &join(path, "version"))?),
        None => None,
    };
    let (type_name, server) = (type_name?, server?);
    let idx = index.unwrap_or(1);
    Some(Instance {
        id: format!("{type_name}.{server}.{idx}"),
        type_name,
        server,
        index: idx,
        index_given: index.is_some(),
        state,
        version,
        pos: node.pos,
        index_pos: index_n.map_or(node.pos, |n| n.pos),
    })
}

/// The inventory in canonical form: one flow mapping per server and instance, as in
/// docs/catalog.md. Used when an in-place edit is impossible; comments are not kept.
pub fn to_yaml(inv: &Inventory) -> String {
    let mut out = String::from("# inventory.yaml — written by portcullis-admin\nlocations:\n");
    let q = |s: &str| quote_if_needed(s);
    for (name, loc) in &inv.locations {
        let _ = writeln!(out, "  {}:", q(name));
        let _ = write!(out, "    ip-labels: {{");
        for (i, (label, addrs)) in loc.ip_labels.iter().enumerate() {
            let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            let _ = write!(
                out,
                "{}{}: [{}]",
                if i == 0 { " " } else { ", " },
                q(label),
                list.join(", ")
            );
        }
        let _ = writeln!(out, " }}");
    }
    // Empty collections as `{}`/`[]`: a bare `servers:` would read back as null.
    out.push_str(if inv.servers.is_empty() {
        "servers: {}\n"
    } else {
        "servers:\n"
    });
    for (name, s) in &inv.servers {
        let _ = writeln!(out, "  {}: {}", q(name), server_flow(s));
    }
    out.push_str(if inv.instances.is_empty() {
        "instances: []\n"
    } else {
        "instances:\n"
    });
    for i in &inv.instances {
        let _ = writeln!(out, "  - {}", instance_flow(i));
    }
    out
}

/// One server as the flow mapping `to_yaml` writes (and in-place inserts reuse).
pub(crate) fn server_flow(s: &Server) -> String {
    let q = |s: &str| quote_if_needed(s);
    let kind = match s.kind {
        ServerKind::App => "app",
        ServerKind::Db => "db",
        ServerKind::Archive => "archive",
    };
    let mut out = format!(
        "{{ kind: {kind}, location: {}, address: {}",
        q(&s.location),
        s.address
    );
    if !s.drives.is_empty() {
        let d: Vec<String> = s.drives.iter().map(|d| q(d)).collect();
        let _ = write!(out, ", drives: [{}]", d.join(", "));
    }
    if let Some(a) = &s.archive {
        if !(s.kind == ServerKind::Archive && a == "/mnt/archive") {
            let _ = write!(out, ", archive: {}", q(a));
        }
    }
    out.push_str(" }");
    out
}

/// One instance as the flow mapping `to_yaml` writes (and in-place inserts reuse).
pub(crate) fn instance_flow(i: &Instance) -> String {
    let q = |s: &str| quote_if_needed(s);
    let mut out = format!("{{ type: {}, server: {}", q(&i.type_name), q(&i.server));
    if i.index_given {
        let _ = write!(out, ", index: {}", i.index);
    }
    let _ = write!(out, ", state: {}", i.state.as_str());
    if let Some(v) = &i.version {
        let _ = write!(out, ", version: {}", q(v));
    }
    out.push_str(" }");
    out
}

/// Returns `text` with instance `id`'s state set to `state`: the state's own text is replaced
/// in place when present (comments and layout survive, git shows a one-word diff); otherwise
/// the whole inventory is rewritten canonically. `None` when `id` is not in the inventory.
pub fn with_state(text: &str, inv: &Inventory, id: &str, state: State) -> Option<String> {
    let pos = inv.instances.iter().position(|i| i.id == id)?;
    let in_place = (|| {
        let (doc, _) = crate::yaml::parse(text).ok()?;
        let Kind::Seq(items) = &doc.get("instances")?.kind else {
            return None;
        };
        // Inventory instances skip unreadable entries, so find ours by its own keys.
        let node = items.iter().find(|n| {
            let s = |k: &str| match n.get(k).map(|v| &v.kind) {
                Some(Kind::Str(s)) => Some(s.clone()),
                _ => None,
            };
            let idx = match n.get("index").map(|v| &v.kind) {
                Some(Kind::Int(i)) => *i as u32,
                _ => 1,
            };
            s("type")
                .zip(s("server"))
                .is_some_and(|(t, sv)| format!("{t}.{sv}.{idx}") == id)
        })?;
        let st = node.get("state")?;
        let mut out = String::with_capacity(text.len() + 16);
        out.push_str(&text[..st.span.0]);
        out.push_str(state.as_str());
        out.push_str(&text[st.span.1..]);
        Some(out)
    })();
    if let Some(out) = in_place {
        return Some(out);
    }
    let mut inv = inv.clone();
    inv.instances[pos].state = state;
    Some(to_yaml(&inv))
}
