//! The export: the gateway sections of every type, expanded over the instances that are not in
//! maintenance and the public addresses of their location's IP labels, written through
//! `portcullis-export` (whose writer validates first, so a gateway never sees a file it would
//! reject).

use crate::catalog::Catalog;
use crate::inventory::{Instance, State};
use crate::meta::To;
use portcullis_export::{ExportRow, InstanceId, PortRange, ServiceType, WriteError};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Rows in a stable order: type, gateway entry, inventory order, address, port.
pub fn rows(catalog: &Catalog) -> Vec<ExportRow> {
    let mut out = Vec::new();
    // One pass over the inventory, not one per type.
    let mut by_type: HashMap<&str, Vec<&Instance>> = HashMap::new();
    for i in &catalog.inventory.instances {
        if i.state != State::Maintenance {
            by_type.entry(i.type_name.as_str()).or_default().push(i);
        }
    }
    for meta in catalog.metas.values() {
        if meta.gateway.is_empty() {
            continue;
        }
        let service: ServiceType = meta.type_name.clone();
        let instances: Vec<_> = by_type
            .get(meta.type_name.as_str())
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let server = catalog.inventory.servers.get(&i.server)?;
                let location = catalog.inventory.locations.get(&server.location)?;
                let id = InstanceId::parse(&i.id).ok()?;
                Some((i, server, location, id))
            })
            .collect();
        for entry in &meta.gateway {
            for (inst, server, location, id) in &instances {
                let weight = if inst.state == State::Drained {
                    0
                } else {
                    entry.weight
                };
                for vip in location.ip_labels.get(&entry.ip).into_iter().flatten() {
                    for &vport in &entry.ports {
                        out.push(ExportRow {
                            service: service.clone(),
                            instance: id.clone(),
                            proto: entry.proto,
                            vip: *vip,
                            vport,
                            fwmark: entry.fwm,
                            rip: server.address,
                            rport: rport(&entry.to, vport),
                            weight,
                            scheduler: entry.scheduler,
                            method: entry.method,
                            persistence: entry.persistence,
                            check: entry.check.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

fn rport(to: &To, vport: PortRange) -> Option<u16> {
    match to {
        To::Same => None,
        To::One(p) => Some(*p),
        To::Map(m) => m
            .iter()
            .find(|(ext, _)| *ext == vport.first)
            .map(|(_, int)| *int),
    }
}

/// The rows of location `name` (`?location=`): those whose VIP is one of its IP-label
/// addresses. `None` for an unknown location.
pub fn location_rows(catalog: &Catalog, rows: &[ExportRow], name: &str) -> Option<Vec<ExportRow>> {
    let location = catalog.inventory.locations.get(name)?;
    let vips: BTreeSet<_> = location.ip_labels.values().flatten().collect();
    Some(
        rows.iter()
            .filter(|r| vips.contains(&r.vip))
            .cloned()
            .collect(),
    )
}

/// Firewall marks whose rows belong to more than one location, each with those locations.
/// A fwmark service sends every frontend to every real server, so such a mark is valid in
/// each location's export (its own VIPs and real servers) but not in one cloud-wide export:
/// no single gateway pair may program both locations' halves as one service.
pub fn spanning_fwmarks(catalog: &Catalog, rows: &[ExportRow]) -> BTreeMap<u32, Vec<String>> {
    let mut vip_location = HashMap::new();
    for (name, location) in &catalog.inventory.locations {
        for vip in location.ip_labels.values().flatten() {
            vip_location.entry(*vip).or_insert(name.as_str());
        }
    }
    let mut marks: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    for r in rows {
        if let (Some(mark), Some(loc)) = (r.fwmark, vip_location.get(&r.vip)) {
            marks.entry(mark).or_default().insert(loc);
        }
    }
    marks
        .into_iter()
        .filter(|(_, locs)| locs.len() > 1)
        .map(|(mark, locs)| (mark, locs.into_iter().map(str::to_owned).collect()))
        .collect()
}

/// Why the cloud-wide export is not served when fwmarks span locations (see
/// [`spanning_fwmarks`]), naming the marks, their types and `?location=`.
pub fn cloud_wide_refusal(catalog: &Catalog, rows: &[ExportRow]) -> Option<String> {
    let spanning = spanning_fwmarks(catalog, rows);
    if spanning.is_empty() {
        return None;
    }
    let marks: Vec<String> = spanning
        .iter()
        .map(|(mark, locs)| {
            let service = rows
                .iter()
                .find(|r| r.fwmark == Some(*mark))
                .map_or_else(String::new, |r| format!(" ({})", r.service));
            format!("fwmark {mark}{service} in {}", locs.join(" and "))
        })
        .collect();
    let names: Vec<&str> = catalog
        .inventory
        .locations
        .keys()
        .map(String::as_str)
        .collect();
    Some(format!(
        "no cloud-wide export: {} groups frontends of several locations, which no single gateway pair may program as one service; fetch each location's export instead (?location=NAME, or export --location NAME; one of {})",
        marks.join(", "),
        names.join(", ")
    ))
}

/// Why an export cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no location {0:?}")]
    UnknownLocation(String),
    #[error("{0}")]
    SpansLocations(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The export CSV text: the whole cloud's (refused when fwmarks span locations), or with
/// `location` that location's rows only.
pub fn csv_of(catalog: &Catalog, location: Option<&str>) -> Result<String, ExportError> {
    let all = rows(catalog);
    let chosen = match location {
        Some(name) => location_rows(catalog, &all, name)
            .ok_or_else(|| ExportError::UnknownLocation(name.to_owned()))?,
        None => match cloud_wide_refusal(catalog, &all) {
            Some(why) => return Err(ExportError::SpansLocations(why)),
            None => all,
        },
    };
    Ok(portcullis_export::to_string(&chosen)?)
}

/// The cloud-wide export CSV text.
pub fn csv(catalog: &Catalog) -> Result<String, WriteError> {
    portcullis_export::to_string(&rows(catalog))
}
