//! Keeping the IPVS services portcullis owns in step with the desired state, in an order that
//! never leaves traffic without a destination. One step is planned, then executed:
//!
//! 1. [`IpvsSync::plan`]: read the kernel if the view is unknown, refuse (changing nothing)
//!    when the state claims a service portcullis does not own, and work out an [`IpvsPlan`];
//! 2. [`IpvsSync::execute_before_swap`]: add new services and destinations, edit changed ones
//!    (weights restored from a drain included) — before nftables starts marking for them;
//! 3. the caller swaps the nft marks/filter (one transaction);
//! 4. [`IpvsSync::execute_after_swap`]: drain what is gone (weight 0: no new connections,
//!    existing ones continue), then [`IpvsSync::reap`] deletes a drained destination or
//!    service once its connections reach zero or the grace period has passed. Every step
//!    reaps, so the daemon finishes drains on its next polls.
//!
//! The kernel is dumped once (start-up, audit, or after the kernel refused a change); after
//! that an in-memory view of the owned services is updated from each acknowledged change,
//! so a step costs O(changes) requests, never a listing.

use super::desired::{candidates, desired_subset, desired_table};
use super::netlink::IpvsError;
use super::ownership::Ownership;
use super::plan::{self, Drain, IpvsPlan, Scope};
use super::service::ServiceId;
use super::{Balancer, Dest, IpvsOp, Table};
use crate::model::DesiredState;
use portcullis_export::Proto;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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

pub struct IpvsSync {
    balancer: Box<dyn Balancer>,
    ownership: Ownership,
    /// The owned services as the kernel has them; `None` until the first dump, and again
    /// after the kernel refused something.
    view: Option<Table>,
    /// Services in the kernel that are not ours, as last read.
    foreign: Table,
    draining: BTreeMap<Drain, Instant>,
    /// How long a drained destination may keep connections before it is deleted anyway.
    pub grace: Duration,
    /// Take over a foreign service whose identity the export claims, instead of refusing.
    pub adopt: bool,
    last: IpvsSyncReport,
    /// The operations acknowledged in the last step, for logs and `apply --once`.
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
            foreign: Table::new(),
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

    /// What the last step changed, one line per acknowledged operation.
    pub fn journal(&self) -> &[String] {
        &self.journal
    }

    /// Forgets the in-memory view: the next plan dumps the kernel (audits).
    pub fn invalidate(&mut self) {
        self.view = None;
    }

    pub fn last_report(&self) -> IpvsSyncReport {
        self.last
    }

    pub fn owned(&self) -> &BTreeSet<ServiceId> {
        &self.ownership.owned
    }

    /// Works out the step to `state`. Reads the kernel first when the view is unknown (then
    /// the whole state is planned, whatever the scope). Refuses, changing nothing, when the
    /// state claims a foreign service and adoption is off.
    pub fn plan(&mut self, state: &DesiredState, scope: Scope) -> Result<IpvsPlan, IpvsSyncError> {
        let scope = match self.view {
            Some(_) => scope,
            None => {
                self.load()?;
                Scope::Everything
            }
        };
        let view = self.view.get_or_insert_with(Table::new);
        let (desired, ids) = match scope {
            Scope::Services(keys) => (
                desired_subset(state, keys),
                Some(keys.iter().flat_map(candidates).collect::<BTreeSet<_>>()),
            ),
            Scope::Everything => (desired_table(state), None),
        };
        let claimed: Table = desired
            .keys()
            .filter_map(|id| self.foreign.get_key_value(id))
            .map(|(id, entry)| (*id, entry.clone()))
            .collect();
        if !claimed.is_empty() && !self.adopt {
            let names: Vec<String> = claimed.keys().map(ToString::to_string).collect();
            return Err(IpvsSyncError::Foreign(names.join(", ")));
        }
        Ok(plan::plan(
            view,
            claimed,
            &desired,
            ids.as_ref(),
            &self.draining,
        ))
    }

    /// Before the nft swap: takes over what the plan adopts, records the services it adds as
    /// owned, sends the adds and edits. When the kernel refuses one, re-reads the kernel and
    /// replaces `plan` by a fresh plan of the whole state, sent once more.
    pub fn execute_before_swap(
        &mut self,
        plan: &mut IpvsPlan,
        state: &DesiredState,
    ) -> Result<(), IpvsSyncError> {
        self.journal.clear();
        if let Err(e) = self.send_before_swap(plan) {
            tracing::warn!(error = %e, "IPVS refused a change; re-reading the kernel's table and retrying once");
            self.invalidate();
            *plan = self.plan(state, Scope::Everything)?;
            self.send_before_swap(plan)?;
        }
        for drain in &plan.drains_ended {
            self.draining.remove(drain);
        }
        Ok(())
    }

    fn send_before_swap(&mut self, plan: &IpvsPlan) -> Result<(), IpvsSyncError> {
        if !plan.adopt.is_empty() {
            self.ownership.extend(plan.adopt.keys().copied())?;
            let view = self.view.get_or_insert_with(Table::new);
            for (id, entry) in &plan.adopt {
                tracing::warn!(service = %id, "adopting a foreign IPVS service the export claims");
                self.foreign.remove(id);
                view.insert(*id, entry.clone());
            }
        }
        // Intent first: a crash after the add must not leave a service we cannot recognise.
        self.ownership.extend(plan.added_services())?;
        self.send(&plan.before_swap)
    }

    /// After the nft swap: drains what is gone, then deletes what is idle or past its grace.
    pub fn execute_after_swap(&mut self, plan: IpvsPlan) -> Result<IpvsSyncReport, IpvsSyncError> {
        let now = Instant::now();
        for drain in &plan.drains {
            self.draining.entry(*drain).or_insert(now);
        }
        self.send(&plan.after_swap)?;
        let (deleted, draining) = self.reap_at(now)?;
        self.last = IpvsSyncReport {
            changed: plan.before_swap.len(),
            drained: plan.after_swap.len(),
            deleted,
            draining,
        };
        Ok(self.last)
    }

    /// Plans and executes a step with no nft swap in between (IPVS alone: tests, benches).
    pub fn step(
        &mut self,
        state: &DesiredState,
        scope: Scope,
    ) -> Result<IpvsSyncReport, IpvsSyncError> {
        let mut plan = self.plan(state, scope)?;
        self.execute_before_swap(&mut plan, state)?;
        self.execute_after_swap(plan)
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
                        None => IpvsOp::DelService(svc),
                        Some(id) => IpvsOp::DelDest(svc, *id),
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
        ops.retain(|op| !matches!(op, IpvsOp::DelDest(s, _) if whole.contains(s)));
        let deleted = ops.len();
        self.send_tolerating_gone(&ops)?;
        for key in &done {
            self.draining.remove(key);
        }
        self.ownership.retain(|id| !whole.contains(id))?;
        Ok((deleted, self.draining.len()))
    }

    /// Dumps the kernel: our services become the view, the others are foreign. Owned
    /// identities no longer in the kernel were deleted by hand (or never made it): forgotten.
    fn load(&mut self) -> Result<(), IpvsSyncError> {
        let table = self.balancer.table()?;
        self.ownership.retain(|id| table.contains_key(id))?;
        let (owned, foreign): (Table, Table) = table
            .into_iter()
            .partition(|(id, _)| self.ownership.contains(id));
        self.foreign = foreign;
        self.view = Some(owned);
        Ok(())
    }

    /// Sends `ops`; on success mirrors them into the view. Any refusal is an error (after
    /// the ones that succeeded were mirrored) and invalidates the view.
    fn send(&mut self, ops: &[IpvsOp]) -> Result<(), IpvsSyncError> {
        if ops.is_empty() {
            return Ok(());
        }
        let results = self.balancer.apply(ops)?;
        let mut first_error = None;
        for (op, result) in ops.iter().zip(results) {
            match result {
                Ok(()) => self.acknowledged(op),
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

    /// Deletes, where "already gone" (someone deleted it by hand) counts as done.
    fn send_tolerating_gone(&mut self, ops: &[IpvsOp]) -> Result<(), IpvsSyncError> {
        if ops.is_empty() {
            return Ok(());
        }
        let results = self.balancer.apply(ops)?;
        for (op, result) in ops.iter().zip(results) {
            match result {
                Ok(()) => self.acknowledged(op),
                Err(e) if e.is_already_gone() => {
                    if let Some(view) = self.view.as_mut() {
                        plan::mirror(view, op);
                    }
                }
                Err(e) => {
                    self.view = None;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    fn acknowledged(&mut self, op: &IpvsOp) {
        self.journal.push(op.to_string());
        if let Some(view) = self.view.as_mut() {
            plan::mirror(view, op);
        }
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
