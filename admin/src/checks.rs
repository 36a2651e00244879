//! The catalog's cross-file rules about gateway sections (IP labels, fwmarks, frontends, real
//! servers) and dependencies (missing types, cycles, topological order). Each error is
//! reported in the file and at the key the operator has to change.

use crate::catalog::{Catalog, INVENTORY_FILE};
use crate::error::{CatalogError, ErrorKind};
use crate::meta::Meta;
use crate::yaml::Pos;
use std::collections::{BTreeMap, HashMap};

impl Catalog {
    pub(crate) fn check_gateway(&self, errors: &mut Vec<CatalogError>) {
        let meta_err =
            |errors: &mut Vec<CatalogError>, m: &Meta, pos: Pos, key: String, kind, msg: String| {
                errors.push(CatalogError {
                    file: m.file.clone(),
                    line: pos.line,
                    column: pos.col,
                    key,
                    kind,
                    message: msg,
                })
            };
        // Frontends per (proto, vip): (range, type, entry index) — collisions across everything.
        let mut frontends: BTreeMap<Frontend, Vec<Claim>> = BTreeMap::new();
        let mut marks: HashMap<u32, (&Meta, usize)> = HashMap::new();
        for m in self.metas.values() {
            let locations_used: Vec<&str> = self
                .instances_of(m.type_name.as_str())
                .filter_map(|i| self.inventory.servers.get(&i.server))
                .map(|s| s.location.as_str())
                .collect();
            for (ei, e) in m.gateway.iter().enumerate() {
                let key = format!("gateway[{ei}]");
                let defined_anywhere = self
                    .inventory
                    .locations
                    .values()
                    .any(|l| l.ip_labels.contains_key(&e.ip));
                let missing: Vec<&str> = {
                    let mut v: Vec<&str> = locations_used
                        .iter()
                        .copied()
                        .filter(|l| {
                            self.inventory
                                .locations
                                .get(*l)
                                .is_some_and(|loc| !loc.ip_labels.contains_key(&e.ip))
                        })
                        .collect();
                    v.dedup();
                    v
                };
                if !defined_anywhere || !missing.is_empty() {
                    let where_ = if defined_anywhere {
                        format!(" in location {}", missing.join(", "))
                    } else {
                        " in any location".into()
                    };
                    meta_err(errors, m, e.ip_pos, format!("{key}.ip"), ErrorKind::UnknownIpLabel, format!("IP label {:?} is not defined{where_} (inventory.yaml locations.*.ip-labels)", e.ip));
                }
                if let Some(mark) = e.fwm {
                    if let Some((other, oi)) = marks.get(&mark) {
                        let o = &other.gateway[*oi];
                        meta_err(
                            errors,
                            m,
                            e.fwm_pos,
                            format!("{key}.fwm"),
                            ErrorKind::FwmarkReused,
                            format!(
                                "fwmark {mark} is already used by {} gateway {:?} ({}:{})",
                                other.type_name, o.name, other.file, o.fwm_pos.line
                            ),
                        );
                    } else {
                        marks.insert(mark, (m, ei));
                    }
                }
                for loc in self.inventory.locations.values() {
                    for vip in loc.ip_labels.get(&e.ip).into_iter().flatten() {
                        for p in &e.ports {
                            frontends
                                .entry((e.proto, *vip))
                                .or_default()
                                .push((*p, m, ei));
                        }
                    }
                }
            }
        }
        let mut reported = std::collections::HashSet::new();
        for ((proto, vip), mut list) in frontends {
            list.sort_by_key(|(p, m, ei)| (p.first, m.type_name.to_string(), *ei));
            for i in 1..list.len() {
                // Compare with every earlier range still open at this one's start.
                for j in 0..i {
                    let (a, am, aei) = list[j];
                    let (b, bm, bei) = list[i];
                    if a.overlaps(b)
                        && reported.insert((
                            bm.type_name.to_string(),
                            bei,
                            am.type_name.to_string(),
                            aei,
                        ))
                    {
                        let ae = &am.gateway[aei];
                        let be = &bm.gateway[bei];
                        meta_err(errors, bm, be.ports_pos, format!("gateway[{bei}].ports"), ErrorKind::PortCollision, format!("{proto} {vip} port {b} collides with {} gateway {:?} port {a} ({}:{})", am.type_name, ae.name, am.file, ae.ports_pos.line));
                    }
                }
            }
        }
        // Two instances of an exported type on one server would be one real server twice.
        for m in self.metas.values().filter(|m| !m.gateway.is_empty()) {
            let mut on_server: HashMap<&str, &crate::inventory::Instance> = HashMap::new();
            for &i in self.by_type.get(m.type_name.as_str()).into_iter().flatten() {
                let inst = &self.inventory.instances[i];
                if let Some(first) = on_server.get(inst.server.as_str()) {
                    if first.id != inst.id {
                        errors.push(CatalogError { file: INVENTORY_FILE.into(), line: inst.pos.line, column: inst.pos.col, key: format!("instances[{i}]"), kind: ErrorKind::RealServerCollision, message: format!("{} and {} (line {}) are on the same server, but {} exports gateway ports ({}): both would be the same real server address and port", inst.id, first.id, first.pos.line, m.type_name, m.file) });
                    }
                } else {
                    on_server.insert(&inst.server, inst);
                }
            }
        }
    }

    pub(crate) fn check_depends(&mut self, errors: &mut Vec<CatalogError>) {
        for m in self.metas.values() {
            let has_instances = self.instance_count(m.type_name.as_str()) > 0;
            for (di, d) in m.depends.iter().enumerate() {
                let key = format!("depends[{di}]");
                let push = |errors: &mut Vec<CatalogError>, kind, msg: String| {
                    errors.push(CatalogError {
                        file: m.file.clone(),
                        line: d.pos.line,
                        column: d.pos.col,
                        key: key.clone(),
                        kind,
                        message: msg,
                    })
                };
                match self.metas.get(&d.type_name) {
                    None => push(
                        errors,
                        ErrorKind::UnknownReference,
                        format!(
                            "unknown type {:?} (no meta/{}.yaml)",
                            d.type_name, d.type_name
                        ),
                    ),
                    Some(dm) => {
                        if has_instances && self.instance_count(&d.type_name) == 0 && !dm.fake {
                            push(
                                errors,
                                ErrorKind::DependencyMissing,
                                format!(
                                    "{} depends on {}, which has no instance",
                                    m.type_name, d.type_name
                                ),
                            );
                        }
                    }
                }
            }
        }
        // Topological order (Kahn); whatever is left is on or behind a cycle.
        let names: Vec<&str> = self.metas.keys().map(String::as_str).collect();
        let mut indegree: BTreeMap<&str, usize> = names.iter().map(|n| (*n, 0)).collect();
        for m in self.metas.values() {
            for d in &m.depends {
                if self.metas.contains_key(&d.type_name) {
                    *indegree.entry(m.type_name.as_str()).or_default() += 1;
                }
            }
        }
        let mut ready: Vec<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut order = Vec::new();
        while let Some(n) = ready.pop() {
            order.push(n.to_owned());
            for m in self.metas.values() {
                for d in &m.depends {
                    if d.type_name == n {
                        let e = indegree.entry(m.type_name.as_str()).or_default();
                        *e -= 1;
                        if *e == 0 {
                            ready.push(m.type_name.as_str());
                        }
                    }
                }
            }
            ready.sort_by(|a, b| b.cmp(a));
        }
        if order.len() < names.len() {
            for m in self
                .metas
                .values()
                .filter(|m| !order.contains(&m.type_name.to_string()))
            {
                if let Some(cycle) = find_cycle(&self.metas, m.type_name.as_str()) {
                    let d = m
                        .depends
                        .iter()
                        .enumerate()
                        .find(|(_, d)| d.type_name == cycle[1]);
                    if let Some((di, d)) = d {
                        errors.push(CatalogError {
                            file: m.file.clone(),
                            line: d.pos.line,
                            column: d.pos.col,
                            key: format!("depends[{di}]"),
                            kind: ErrorKind::DependencyCycle,
                            message: format!("dependency cycle: {}", cycle.join(" → ")),
                        });
                    }
                }
            }
        }
        self.dependency_order = order;
    }
}

/// (proto, public address) of gateway frontends.
type Frontend = (portcullis_export::Proto, std::net::IpAddr);
/// A port range claimed by gateway entry number `.2` of a type.
type Claim<'m> = (portcullis_export::PortRange, &'m Meta, usize);

/// A path `start → … → start` through `depends`, when `start` is on a cycle.
fn find_cycle(metas: &BTreeMap<String, Meta>, start: &str) -> Option<Vec<String>> {
    fn dfs(
        metas: &BTreeMap<String, Meta>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut Vec<String>,
    ) -> bool {
        for d in metas.get(at).map(|m| m.depends.as_slice()).unwrap_or(&[]) {
            if d.type_name == start {
                path.push(start.to_owned());
                return true;
            }
            if seen.contains(&d.type_name) || !metas.contains_key(&d.type_name) {
                continue;
            }
            seen.push(d.type_name.clone());
            path.push(d.type_name.clone());
            if dfs(metas, start, &d.type_name, path, seen) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![start.to_owned()];
    dfs(metas, start, start, &mut path, &mut Vec::new()).then_some(path)
}
