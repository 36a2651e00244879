//! Keeping the IPVS services portcullis owns in step with the desired state, in an order that
//! never leaves traffic without a destination:
//!
//! 1. [`IpvsSync::before_swap`]: add new services and destinations, edit changed ones
//!    (weights restored from a drain included) — before nftables starts marking for them;
//! 2. the caller swaps the nft marks/filter (one transaction);
//! 3. [`IpvsSync::after_swap`]: drain what is gone (weight 0: no new connections, existing
//!    ones continue), then [`IpvsSync::reap`] deletes a drained destination or service once
//!    its connections reach zero or the grace period has passed. `reap` runs on every sync,
//!    so the daemon finishes drains on its next polls.
//!
//! The kernel is dumped once (start-up, audit, or after the kernel refused a change); after
//! that an in-memory view of the owned services is updated from each acknowledged change,
//! so a sync costs O(changes) requests, never a listing.

use super::netlink::IpvsError;
use super::ownership::Ownership;
use super::service::{Service, ServiceId};
use super::{constants::IP_VS_SVC_F_PERSISTENT, Balancer, Dest, DestId, Op};
use crate::model::{DesiredState, ServiceKey};
use portcullis_export::Proto;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A table of virtual services with their destinations, by identity.
pub type Table = BTreeMap<ServiceId, Entry>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub service: Service,
    pub dests: BTreeMap<DestId, Dest>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpvsSyncError {
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
    #[error("IPVS service(s) {0} exist but were not created by portcullis; nothing was changed. Delete them (ipvsadm -D) or enable adoption")]
    Foreign(String),
    #[error("IPVS ownership state file: {0}")]
    State(#[from] std::io::Error),
}

/// What one IPVS step did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpvsSyncReport {
    /// Adds and edits sent before the nft swap.
    pub changed: usize,
    /// Destinations set to weight 0 after it.
    pub drained: usize,
    /// Destinations and services deleted (idle or past the grace period).
    pub deleted: usize,
    /// Drains still waiting for connections to end.
    pub draining: usize,
}

/// A drain in progress: a whole service (`None`) or one destination of it.
type Drain = (ServiceId, Option<DestId>);

/// What [`IpvsSync::before_swap`] found gone; [`IpvsSync::after_swap`] drains it.
#[derive(Debug, Default)]
pub struct Plan {
    drains: Vec<Drain>,
    changed: usize,
}

impl Plan {
    /// Adds and edits that were sent.
    pub fn changed(&self) -> usize {
        self.changed
    }
}

pub struct IpvsSync {
    balancer: Box<dyn Balancer>,
    ownership: Ownership,
    /// The owned services as the kernel has them; `None` until the first dump.
    view: Option<Table>,
    /// Services in the kernel that are not ours.
    foreign: BTreeSet<ServiceId>,
    draining: BTreeMap<Drain, Instant>,
    /// How long a drained destination may keep connections before it is deleted anyway.
    pub grace: Duration,
    /// Take over a foreign service whose identity the export claims, instead of refusing.
    pub adopt: bool,
    last: IpvsSyncReport,
    /// The operations acknowledged since the last `before_swap`, for logs and `apply --once`.
    journal: Vec<String>,
}

/// How long a drained destination may keep connections before the daemon deletes it anyway.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(300);

/// Name of the ownership state file inside the state directory.
pub const OWNERSHIP_FILE: &str = "ipvs-owned.json";

impl IpvsSync {
    pub fn new(balancer: Box<dyn Balancer>, ownership: Ownership, grace: Duration) -> IpvsSync {
        IpvsSync {
            balancer,
            ownership,
            view: None,
            foreign: BTreeSet::new(),
            draining: BTreeMap::new(),
            grace,
            adopt: false,
            last: IpvsSyncReport::default(),
            journal: Vec::new(),
        }
    }

    /// The kernel's IPVS, with ownership recorded in `state_dir`.
    pub fn open(state_dir: &std::path::Path, grace: Duration) -> Result<IpvsSync, IpvsSyncError> {
        let netlink = super::IpvsNetlink::open()?;
        let ownership = Ownership::load(&state_dir.join(OWNERSHIP_FILE))?;
        Ok(IpvsSync::new(Box::new(netlink), ownership, grace))
    }

    /// What the last sync changed, one line per acknowledged operation.
    pub fn journal(&self) -> &[String] {
        &self.journal
    }

    /// Forgets the in-memory view: the next step dumps the kernel (audits, refusals).
    pub fn invalidate(&mut self) {
        self.view = None;
    }

    /// True after a refused operation: the view no longer says what the kernel has.
    pub fn needs_reload(&self) -> bool {
        self.view.is_none()
    }

    pub fn last_report(&self) -> IpvsSyncReport {
        self.last
    }

    pub fn owned(&self) -> &BTreeSet<ServiceId> {
        &self.ownership.owned
    }

    fn load(&mut self) -> Result<(), IpvsSyncError> {
        let table = self.balancer.table()?;
        // Owned identities no longer in the kernel were deleted by hand (or never made it).
        self.ownership.retain(|id| table.contains_key(id))?;
        let (owned, foreign): (Table, Table) = table
            .into_iter()
            .partition(|(id, _)| self.ownership.contains(id));
        self.foreign = foreign.into_keys().collect();
        self.view = Some(owned);
        Ok(())
    }

    /// Step 1: adds and edits, before the nft swap. Refuses (changing nothing) when the
    /// desired state claims a foreign service and adoption is off.
    pub fn before_swap(&mut self, state: &DesiredState) -> Result<Plan, IpvsSyncError> {
        self.before_swap_scoped(state, None)
    }

    /// [`IpvsSync::before_swap`] looking only at the services `keys` name (those a diff
    /// says changed): O(changes) instead of O(services). Falls back to the whole state when
    /// the kernel has to be read first.
    pub fn before_swap_keys(
        &mut self,
        state: &DesiredState,
        keys: &[ServiceKey],
    ) -> Result<Plan, IpvsSyncError> {
        self.before_swap_scoped(state, Some(keys))
    }

    fn before_swap_scoped(
        &mut self,
        state: &DesiredState,
        keys: Option<&[ServiceKey]>,
    ) -> Result<Plan, IpvsSyncError> {
        self.journal.clear();
        let keys = match keys {
            Some(k) if self.view.is_some() => Some(k),
            _ => {
                if self.view.is_none() {
                    self.load()?;
                }
                None
            }
        };
        let (desired, scope) = match keys {
            None => (desired_table(state), None),
            Some(keys) => (
                keys.iter()
                    .filter_map(|k| state.services.get_key_value(k))
                    .map(|(k, svc)| entry(k, svc))
                    .collect(),
                Some(keys.iter().flat_map(candidates).collect::<BTreeSet<_>>()),
            ),
        };
        let claimed: Vec<ServiceId> = desired
            .keys()
            .filter(|id| self.foreign.contains(id))
            .copied()
            .collect();
        if !claimed.is_empty() {
            if !self.adopt {
                let names: Vec<String> = claimed.iter().map(ToString::to_string).collect();
                return Err(IpvsSyncError::Foreign(names.join(", ")));
            }
            let table = self.balancer.table()?;
            self.ownership.extend(claimed.iter().copied())?;
            for id in &claimed {
                tracing::warn!(service = %id, "adopting a foreign IPVS service the export claims");
                self.foreign.remove(id);
                if let (Some(view), Some(entry)) = (self.view.as_mut(), table.get(id)) {
                    view.insert(*id, entry.clone());
                }
            }
        }
        let (ops, drains) = self.plan(&desired, scope.as_ref());
        let added: Vec<ServiceId> = ops
            .iter()
            .filter_map(|op| match op {
                Op::AddService(s) => Some(s.id),
                _ => None,
            })
            .collect();
        // Intent first: a crash after the add must not leave a service we cannot recognise.
        self.ownership.extend(added)?;
        if let Err(e) = self.send(&ops) {
            tracing::warn!(error = %e, "IPVS refused a change; re-reading the kernel's table and retrying once");
            self.load()?;
            let desired = desired_table(state);
            let (ops, _) = self.plan(&desired, None);
            let added: Vec<ServiceId> = ops
                .iter()
                .filter_map(|op| match op {
                    Op::AddService(s) => Some(s.id),
                    _ => None,
                })
                .collect();
            self.ownership.extend(added)?;
            self.send(&ops)?;
        }
        // What is desired again is no longer draining (its weight was just restored).
        self.draining
            .retain(|(svc, dest), _| match desired.get(svc) {
                None => true,
                Some(entry) => dest.is_some_and(|d| !entry.dests.contains_key(&d)),
            });
        Ok(Plan {
            drains,
            changed: ops.len(),
        })
    }

    /// Step 3: drains what is gone, then deletes what is idle or past its grace.
    pub fn after_swap(&mut self, plan: Plan) -> Result<IpvsSyncReport, IpvsSyncError> {
        let now = Instant::now();
        let mut ops = Vec::new();
        let view = self.view.get_or_insert_with(Table::new);
        for (svc, dest) in &plan.drains {
            let Some(entry) = view.get(svc) else { continue };
            for d in entry.dests.values() {
                if (dest.is_none() || *dest == Some(d.id)) && d.weight != 0 {
                    let mut zero = d.clone();
                    zero.weight = 0;
                    ops.push(Op::EditDest(*svc, zero));
                }
            }
            self.draining.entry((*svc, *dest)).or_insert(now);
        }
        let drained = ops.len();
        self.send(&ops)?;
        let (deleted, draining) = self.reap_at(now)?;
        self.last = IpvsSyncReport {
            changed: plan.changed,
            drained,
            deleted,
            draining,
        };
        Ok(self.last)
    }

    /// Deletes drained destinations and services whose connections ended or whose grace
    /// period passed. One destination dump per draining service; nothing when none drains.
    pub fn reap(&mut self) -> Result<(usize, usize), IpvsSyncError> {
        self.reap_at(Instant::now())
    }

    /// [`IpvsSync::reap`] as if the time were `now` (tests move the clock).
    pub fn reap_at(&mut self, now: Instant) -> Result<(usize, usize), IpvsSyncError> {
        if self.draining.is_empty() {
            return Ok((0, 0));
        }
        let services: BTreeSet<ServiceId> = self.draining.keys().map(|(s, _)| *s).collect();
        let mut ops = Vec::new();
        let mut done = Vec::new();
        for svc in services {
            let live = self.balancer.dests(svc)?;
            let idle = |d: &Dest| match svc {
                ServiceId::Addr {
                    proto: Proto::Udp, ..
                } => d.active_conns == 0 && d.inact_conns == 0,
                _ => d.active_conns == 0,
            };
            for ((s, dest), since) in self.draining.range((svc, None)..) {
                if *s != svc {
                    break;
                }
                let expired = now.saturating_duration_since(*since) >= self.grace;
                let ready = match dest {
                    None => live.iter().all(idle),
                    Some(id) => live.iter().filter(|d| d.id == *id).all(idle),
                };
                if ready || expired {
                    if expired && !ready {
                        tracing::info!(service = %svc, grace = ?self.grace, "drain grace period over; deleting with connections left");
                    }
                    ops.push(match dest {
                        None => Op::DelService(svc),
                        Some(id) => Op::DelDest(svc, *id),
                    });
                    done.push((*s, *dest));
                }
            }
        }
        // A whole-service delete covers its destinations.
        let whole: BTreeSet<ServiceId> = done
            .iter()
            .filter(|(_, d)| d.is_none())
            .map(|(s, _)| *s)
            .collect();
        ops.retain(|op| !matches!(op, Op::DelDest(s, _) if whole.contains(s)));
        let deleted = ops.len();
        self.send_tolerating_gone(&ops)?;
        for key in &done {
            self.draining.remove(key);
        }
        self.ownership.retain(|id| !whole.contains(id))?;
        Ok((deleted, self.draining.len()))
    }

    /// The changes that bring the owned view to `desired`, and what to drain. With a
    /// `scope`, only those services of the view are considered.
    fn plan(&self, desired: &Table, scope: Option<&BTreeSet<ServiceId>>) -> (Vec<Op>, Vec<Drain>) {
        let empty = Table::new();
        let view = self.view.as_ref().unwrap_or(&empty);
        let mut ops = Vec::new();
        let mut drains = Vec::new();
        for (id, want) in desired {
            match view.get(id) {
                None => {
                    ops.push(Op::AddService(want.service.clone()));
                    ops.extend(want.dests.values().map(|d| Op::AddDest(*id, d.clone())));
                }
                Some(have) => {
                    if !want.service.same_settings(&have.service) {
                        ops.push(Op::EditService(want.service.clone()));
                    }
                    for d in want.dests.values() {
                        match have.dests.get(&d.id) {
                            None => ops.push(Op::AddDest(*id, d.clone())),
                            Some(h) if !d.same_settings(h) => {
                                ops.push(Op::EditDest(*id, d.clone()))
                            }
                            Some(_) => {}
                        }
                    }
                    drains.extend(
                        have.dests
                            .keys()
                            .filter(|d| !want.dests.contains_key(d))
                            .map(|d| (*id, Some(*d))),
                    );
                }
            }
        }
        let gone = |id: &&ServiceId| view.contains_key(id) && !desired.contains_key(id);
        match scope {
            None => drains.extend(view.keys().filter(gone).map(|id| (*id, None))),
            Some(ids) => drains.extend(ids.iter().filter(gone).map(|id| (*id, None))),
        }
        (ops, drains)
    }

    /// Sends `ops`; on success mirrors them into the view. Any refusal is an error (after
    /// the ones that succeeded were mirrored) and invalidates the view.
    fn send(&mut self, ops: &[Op]) -> Result<(), IpvsSyncError> {
        if ops.is_empty() {
            return Ok(());
        }
        let results = self.balancer.apply(ops)?;
        let mut first_error = None;
        for (op, result) in ops.iter().zip(results) {
            match result {
                Ok(()) => {
                    self.journal.push(op.to_string());
                    self.mirror(op)
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => {
                self.view = None;
                Err(e.into())
            }
        }
    }

    /// Deletes where "already gone" (ESRCH/ENOENT: someone deleted it by hand) is success.
    fn send_tolerating_gone(&mut self, ops: &[Op]) -> Result<(), IpvsSyncError> {
        if ops.is_empty() {
            return Ok(());
        }
        let results = self.balancer.apply(ops)?;
        for (op, result) in ops.iter().zip(results) {
            match result {
                Ok(()) => {
                    self.journal.push(op.to_string());
                    self.mirror(op)
                }
                Err(e) if matches!(e.errno(), Some(2) | Some(3)) => self.mirror(op),
                Err(e) => {
                    self.view = None;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    fn mirror(&mut self, op: &Op) {
        let Some(view) = self.view.as_mut() else {
            return;
        };
        match op {
            Op::AddService(s) | Op::EditService(s) => {
                let entry = view.entry(s.id).or_insert_with(|| Entry {
                    service: s.clone(),
                    dests: BTreeMap::new(),
                });
                entry.service = s.clone();
            }
            Op::DelService(id) => {
                view.remove(id);
            }
            Op::AddDest(svc, d) | Op::EditDest(svc, d) => {
                if let Some(e) = view.get_mut(svc) {
                    e.dests.insert(d.id, d.clone());
                }
            }
            Op::DelDest(svc, id) => {
                if let Some(e) = view.get_mut(svc) {
                    e.dests.remove(id);
                }
            }
        }
    }
}

/// The IPVS table a desired state asks for: one service per model service; destinations
/// with the service's forwarding method; ipvsadm's defaults for what the export does not set
/// (persistence netmask /32 or /128, no thresholds).
pub fn desired_table(state: &DesiredState) -> Table {
    state
        .services
        .iter()
        .map(|(k, svc)| entry(k, svc))
        .collect()
}

/// The IPVS identities a model key can stand for (an fwmark service exists per family).
fn candidates(key: &ServiceKey) -> Vec<ServiceId> {
    match key {
        ServiceKey::Addr { proto, vip, port } => vec![ServiceId::Addr {
            proto: *proto,
            addr: *vip,
            port: *port,
        }],
        ServiceKey::Fwmark { mark } => vec![
            ServiceId::Fwmark {
                mark: *mark,
                ipv6: false,
            },
            ServiceId::Fwmark {
                mark: *mark,
                ipv6: true,
            },
        ],
    }
}

fn entry(key: &ServiceKey, svc: &crate::model::VirtualService) -> (ServiceId, Entry) {
    let ipv6 = svc.is_ipv6();
    let id = match key {
        ServiceKey::Addr { proto, vip, port } => ServiceId::Addr {
            proto: *proto,
            addr: *vip,
            port: *port,
        },
        ServiceKey::Fwmark { mark } => ServiceId::Fwmark { mark: *mark, ipv6 },
    };
    let service = Service {
        id,
        scheduler: svc.params.scheduler.to_string(),
        flags: if svc.params.persistence.is_some() {
            IP_VS_SVC_F_PERSISTENT
        } else {
            0
        },
        timeout: svc.params.persistence.unwrap_or(0),
        netmask: if ipv6 { 128 } else { u32::MAX },
    };
    let dests = svc
        .reals
        .iter()
        .map(|(rk, rs)| {
            let did = DestId {
                addr: rk.addr,
                port: rk.port.unwrap_or(0),
            };
            (did, Dest::new(did, svc.params.method, u32::from(rs.weight)))
        })
        .collect();
    (id, Entry { service, dests })
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
