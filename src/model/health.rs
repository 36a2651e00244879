//! Health checks in the model: which real servers are probed and how (from the export's
//! `check` column and the gateway's default), and the overlay that takes the servers found
//! down out of rotation. Pure: the probing itself is the daemon's (`daemon::health`).
//!
//! Why an overlay and not a field the renderers read: a health change must reach the data
//! plane through the same diff → render → apply path as an export, with whichever backend,
//! and the export must stay the source of truth. So the daemon keeps the exported state and
//! hands the syncer `overlay(exported, down)`: a down server has weight 0 there (a drain:
//! no new connections, established ones continue), everything else is as exported. Each
//! new export is overlaid again, so a server ADMIN drained stays drained when its check
//! recovers, and one ADMIN restores comes back only if its check passes.

use super::{DesiredState, RealKey, ServiceKey, VirtualService};
use portcullis_export::{Check, Export, Proto};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

/// The explicit `check` of every real server whose rows carry one (a real server's rows
/// agree, validation enforces it); the others take the gateway's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportedChecks(BTreeMap<(ServiceKey, RealKey), Check>);

impl ExportedChecks {
    pub fn from_export(export: &Export) -> Self {
        let mut checks = BTreeMap::new();
        for record in &export.records {
            let row = &record.row;
            if let Some(check) = &row.check {
                let real = RealKey {
                    addr: row.rip,
                    port: row.effective_rport(),
                };
                checks.insert((row.service_key(), real), check.clone());
            }
        }
        ExportedChecks(checks)
    }

    pub fn get(&self, service: &ServiceKey, real: &RealKey) -> Option<&Check> {
        self.0.get(&(*service, *real))
    }
}

/// How one endpoint is probed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Probe {
    /// A TCP connection must be accepted.
    Tcp,
    /// `GET path` must answer `status`; `host` is the `Host` header when not the endpoint.
    Http {
        path: String,
        status: u16,
        host: Option<String>,
    },
}

/// One thing the checker probes. Real servers of several services that share an endpoint
/// and a probe share one target: it is probed once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Target {
    pub endpoint: SocketAddr,
    pub probe: Probe,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.probe {
            Probe::Tcp => write!(f, "tcp {}", self.endpoint),
            Probe::Http { path, status, host } => {
                write!(f, "http {}{path} (expects {status}", self.endpoint)?;
                match host {
                    Some(host) => write!(f, ", Host {host})"),
                    None => f.write_str(")"),
                }
            }
        }
    }
}

/// Which target decides each probed real server.
pub type TargetMap = BTreeMap<(ServiceKey, RealKey), Target>;

/// The probe a real server gets: its own `check`, else `default` — which applies to TCP
/// services only, since a TCP or HTTP probe says nothing about a UDP server. The port is the
/// real server's, or, for one that keeps the client's port (an fwmark port range), the first
/// port of its service's first frontend.
pub fn targets(
    state: &DesiredState,
    checks: &ExportedChecks,
    default: Option<&Check>,
) -> TargetMap {
    let mut out = BTreeMap::new();
    for (key, svc) in &state.services {
        let fallback_port = svc.frontends.first().map(|f| f.ports.first);
        for real in svc.reals.keys() {
            let check = match checks.get(key, real) {
                Some(c) => c,
                None if svc.proto == Proto::Tcp => match default {
                    Some(c) => c,
                    None => continue,
                },
                None => continue,
            };
            let probe = match check {
                Check::Disabled => continue,
                Check::Tcp => Probe::Tcp,
                Check::Http { path, status, host } => Probe::Http {
                    path: path.to_string(),
                    status: *status,
                    host: host.as_deref().map(str::to_owned),
                },
            };
            let Some(port) = real.port.or(fallback_port) else {
                continue;
            };
            let endpoint = SocketAddr::new(real.addr, port);
            out.insert((*key, *real), Target { endpoint, probe });
        }
    }
    out
}

/// The state handed to the syncer, and what the overlay did to get it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlaid {
    pub state: DesiredState,
    /// Real servers whose weight the overlay set to 0.
    pub held_down: Vec<(ServiceKey, RealKey)>,
    /// Services whose every serving real server is down: kept as exported (fail open, as
    /// Envoy's panic threshold does), since sending clients somewhere beats sending them
    /// nowhere when the checks themselves may be what is broken.
    pub fail_open: Vec<ServiceKey>,
    /// The targets found down that this overlay was computed from.
    pub down: BTreeSet<Target>,
}

/// What the overlay does to one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceOverlay {
    /// Nothing of it is down: as exported.
    Exported,
    /// These real servers are down: weight 0.
    HeldDown(Vec<RealKey>),
    /// Every serving real server is down: kept as exported.
    FailOpen,
}

/// `svc` with its serving real servers in `hit` (found down) at weight 0, unless that is
/// all of them; `None` when the service stays as exported.
pub fn overlay_service(
    svc: &VirtualService,
    hit: &[RealKey],
) -> (Option<VirtualService>, ServiceOverlay) {
    let serving: Vec<RealKey> = svc
        .reals
        .iter()
        .filter(|(_, rs)| rs.weight > 0)
        .map(|(k, _)| *k)
        .collect();
    let down_now: Vec<RealKey> = serving
        .iter()
        .copied()
        .filter(|real| hit.contains(real))
        .collect();
    if down_now.is_empty() {
        return (None, ServiceOverlay::Exported);
    }
    if down_now.len() == serving.len() {
        return (None, ServiceOverlay::FailOpen);
    }
    let mut out = svc.clone();
    for real in &down_now {
        if let Some(mut rs) = out.reals.get(real).cloned() {
            rs.weight = 0;
            out.reals.insert(*real, rs);
        }
    }
    (Some(out), ServiceOverlay::HeldDown(down_now))
}

/// `exported` with every real server whose target is in `down` at weight 0 — except in a
/// service where that would leave no real server with a weight: that one stays as exported.
/// A real server with weight 0 in the export stays at 0 whatever its check says.
pub fn overlay(exported: &DesiredState, targets: &TargetMap, down: &BTreeSet<Target>) -> Overlaid {
    let mut out = Overlaid {
        state: exported.clone(),
        down: down.clone(),
        ..Overlaid::default()
    };
    if down.is_empty() {
        return out;
    }
    // The real servers found down, per service, in one pass over the targets (not a lookup
    // per real server of a 100k-row export).
    let mut hit: BTreeMap<ServiceKey, Vec<RealKey>> = BTreeMap::new();
    for ((key, real), target) in targets {
        if down.contains(target) {
            hit.entry(*key).or_default().push(*real);
        }
    }
    for (key, hit_reals) in hit {
        let Some(svc) = out.state.services.get_mut(&key) else {
            continue;
        };
        match overlay_service(svc, &hit_reals) {
            (Some(overlaid), ServiceOverlay::HeldDown(reals)) => {
                *svc = overlaid;
                out.held_down.extend(reals.into_iter().map(|r| (key, r)));
            }
            (_, ServiceOverlay::FailOpen) => out.fail_open.push(key),
            _ => {}
        }
    }
    out
}

/// Which probed real servers each target decides: the inverse of a [`TargetMap`], so a
/// health transition finds the services it touches without a pass over all of them.
pub type ByTarget = BTreeMap<Target, Vec<(ServiceKey, RealKey)>>;

pub fn by_target(targets: &TargetMap) -> ByTarget {
    let mut out = ByTarget::new();
    for (key, target) in targets {
        out.entry(target.clone()).or_default().push(*key);
    }
    out
}

/// The services whose overlay changes when the down set goes from `before` to `down`,
/// each overlaid anew: as exported again, or with its down servers at weight 0. O(the
/// targets that changed), for the daemon's health transitions.
pub fn overlay_changes(
    exported: &DesiredState,
    by_target: &ByTarget,
    before: &BTreeSet<Target>,
    down: &BTreeSet<Target>,
) -> Vec<(ServiceKey, VirtualService, ServiceOverlay)> {
    let touched: BTreeSet<ServiceKey> = before
        .symmetric_difference(down)
        .filter_map(|t| by_target.get(t))
        .flatten()
        .map(|(key, _)| *key)
        .collect();
    // Their real servers whose target is down now.
    let mut hit: BTreeMap<ServiceKey, Vec<RealKey>> = BTreeMap::new();
    for (key, real) in down.iter().filter_map(|t| by_target.get(t)).flatten() {
        if touched.contains(key) {
            hit.entry(*key).or_default().push(*real);
        }
    }
    let mut out = Vec::new();
    for key in touched {
        let Some(svc) = exported.services.get(&key) else {
            continue;
        };
        let hit = hit.get(&key).map_or(&[][..], Vec::as_slice);
        match overlay_service(svc, hit) {
            (Some(overlaid), effect) => out.push((key, overlaid, effect)),
            (None, effect) => out.push((key, svc.clone(), effect)),
        }
    }
    out
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
