//! The export: the gateway sections of every type, expanded over the instances that are not in
//! maintenance and the public addresses of their location's IP labels, written through
//! `portcullis-export` (whose writer validates first, so a gateway never sees a file it would
//! reject).

use crate::catalog::Catalog;
use crate::inventory::{Instance, State};
use crate::meta::To;
use portcullis_export::{ExportRow, InstanceId, PortRange, ServiceType, WriteError};
use std::collections::HashMap;

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

/// The export CSV text.
pub fn csv(catalog: &Catalog) -> Result<String, WriteError> {
    portcullis_export::to_string(&rows(catalog))
}
