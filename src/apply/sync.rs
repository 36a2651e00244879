//! Keeping the kernel in step with the desired state: a full regeneration when the live table
//! is not what we expect (start-up, drift, a failed incremental), an incremental transaction
//! otherwise. The hot path ([`Syncer::sync`]) never lists the table: it costs O(changes).
//!
//! With the IPVS backend the Syncer also drives an [`IpvsSync`], ordered around the nft
//! swap so traffic never meets a hole: IPVS adds and edits first, then the nft transaction,
//! then drains (weight 0) and deletes of idle drained destinations.

use super::conntrack::{Conntrack, ConntrackFlush};
use super::error::NftError;
use super::guard::Guard;
use super::ipvs::{IpvsSync, IpvsSyncError};
use super::table::{drift, TableState};
use super::Firewall;
use crate::diff::{DiffSummary, ServiceChange, StateDiff};
use crate::model::{DesiredState, RealKey, VirtualService};
use crate::render::nft::{full_ruleset, incremental, Backend, RenderOptions};
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The desired state is what is applied; nothing sent.
    Unchanged,
    /// The live table already matched the desired state (e.g. after a restart); adopted as is.
    Adopted,
    /// The table was regenerated whole; `drift` says why (empty on a fresh host).
    Full { drift: Vec<String> },
    /// Only the changes were sent.
    Incremental {
        summary: DiffSummary,
        operations: usize,
        conntrack_flushed: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Nft(#[from] NftError),
    /// The export would withdraw too much at once; nothing was changed.
    #[error(transparent)]
    Guard(#[from] super::guard::GuardRefusal),
    /// IPVS refused (or the export claims a service portcullis does not own).
    #[error(transparent)]
    Ipvs(#[from] IpvsSyncError),
    /// A rendered full table did not even apply to an empty model: a bug, never the input's
    /// fault (the input was validated).
    #[error("internal error: rendered table is inconsistent at `{0}`: {1}")]
    Render(String, String),
}

pub struct Syncer<F, C> {
    pub firewall: F,
    pub conntrack: C,
    opts: RenderOptions,
    applied: Option<DesiredState>,
    guard: Option<Guard>,
    ipvs: Option<IpvsSync>,
}

impl<F: Firewall, C: Conntrack> Syncer<F, C> {
    pub fn new(firewall: F, conntrack: C, opts: RenderOptions) -> Self {
        Syncer {
            firewall,
            conntrack,
            opts,
            applied: None,
            guard: None,
            ipvs: None,
        }
    }

    /// Balance with IPVS (the `ipvs` backend): every sync then keeps the owned IPVS
    /// services in step, ordered around the nft transaction.
    pub fn set_ipvs(&mut self, ipvs: IpvsSync) {
        self.ipvs = Some(ipvs);
    }

    pub fn ipvs(&self) -> Option<&IpvsSync> {
        self.ipvs.as_ref()
    }

    /// Refuse syncs that withdraw more than `guard` allows (`None`: no limit, i.e. `--force`).
    pub fn set_guard(&mut self, guard: Option<Guard>) {
        self.guard = guard;
    }

    /// Renders with `opts` from now on (a reloaded configuration); the caller reconciles.
    pub fn set_options(&mut self, opts: RenderOptions) {
        self.opts = opts;
    }

    pub fn options(&self) -> &RenderOptions {
        &self.opts
    }

    /// The state last applied (or adopted), if any.
    pub fn applied(&self) -> Option<&DesiredState> {
        self.applied.as_ref()
    }

    /// What the table should contain for `state`.
    pub fn expected_table(&self, state: &DesiredState) -> Result<Option<TableState>, SyncError> {
        TableState::from_transaction(&full_ruleset(state, &self.opts))
            .map_err(|(op, why)| SyncError::Render(op, why))
    }

    /// Reads the live table and compares it with `state`'s: adopts it when equal, regenerates
    /// it whole otherwise. For start-up and the slow periodic audit, not the hot path.
    /// Takes the state (it becomes the applied one) rather than copying it.
    /// With IPVS, the kernel's IPVS table is dumped again and repaired the same way.
    pub fn reconcile(&mut self, state: DesiredState) -> Result<SyncOutcome, SyncError> {
        let expected = self.expected_table(&state)?;
        let live = self.firewall.read_table()?;
        let differences = drift(&expected, &live);
        let plan = match self.ipvs.as_mut() {
            Some(ipvs) => {
                ipvs.invalidate();
                Some(ipvs.before_swap(&state)?)
            }
            None => None,
        };
        let mut ipvs_changes = Vec::new();
        if let Some(p) = &plan {
            if p.changed() > 0 {
                ipvs_changes.push(format!(
                    "IPVS: {} services/destinations added or repaired",
                    p.changed()
                ));
            }
        }
        let outcome = if differences.is_empty() {
            self.applied = Some(state);
            SyncOutcome::Adopted
        } else {
            if live.is_some() {
                tracing::warn!(differences = differences.len(), first = %differences[0], "live table differs from the expected one; regenerating it whole");
            }
            self.full(state)?;
            SyncOutcome::Full { drift: differences }
        };
        self.ipvs_after(plan)?;
        Ok(match outcome {
            SyncOutcome::Adopted if !ipvs_changes.is_empty() => SyncOutcome::Full {
                drift: ipvs_changes,
            },
            other => other,
        })
    }

    fn ipvs_after(&mut self, plan: Option<super::ipvs::reconcile::Plan>) -> Result<(), SyncError> {
        if let (Some(ipvs), Some(plan)) = (self.ipvs.as_mut(), plan) {
            let report = ipvs.after_swap(plan)?;
            if report != Default::default() {
                tracing::info!(?report, "IPVS synced");
            }
        }
        Ok(())
    }

    fn full(&mut self, state: DesiredState) -> Result<(), SyncError> {
        let flush = self
            .applied
            .as_ref()
            .map(|old| removed_reals(&StateDiff::between(old, &state), old));
        self.firewall.apply(&full_ruleset(&state, &self.opts))?;
        self.applied = Some(state);
        if let Some(entries) = flush {
            self.flush_conntrack(&entries);
        }
        Ok(())
    }

    /// Brings the kernel from the applied state to `state` with one incremental transaction.
    /// Without an applied state this is a [`Syncer::reconcile`]. If the kernel refuses the
    /// increment (someone edited our table), falls back to a full regeneration.
    pub fn sync(&mut self, state: DesiredState) -> Result<SyncOutcome, SyncError> {
        let Some(old) = &self.applied else {
            return self.reconcile(state);
        };
        if let Some(guard) = &self.guard {
            guard.check(old, &state)?;
        }
        let diff = StateDiff::between(old, &state);
        if diff.is_empty() {
            if let Some(ipvs) = self.ipvs.as_mut() {
                if ipvs.needs_reload() {
                    // The last IPVS step was refused half-way (after the nft swap): finish
                    // it from a fresh dump rather than wait for the next export change.
                    let plan = ipvs.before_swap(&state)?;
                    ipvs.after_swap(plan)?;
                } else {
                    // Finish drains whose connections ended since the last sync.
                    ipvs.reap()?;
                }
            }
            return Ok(SyncOutcome::Unchanged);
        }
        let tx = incremental(&diff, old, &state, self.opts.backend);
        let entries = removed_reals(&diff, old);
        let plan = match self.ipvs.as_mut() {
            Some(ipvs) => {
                let keys: Vec<_> = diff.changes.iter().map(|c| *c.key()).collect();
                Some(ipvs.before_swap_keys(&state, &keys)?)
            }
            None => None,
        };
        if let Err(e) = self.firewall.apply(&tx) {
            tracing::warn!(error = %e, "incremental transaction refused; regenerating the table whole");
            self.full(state)?;
            self.ipvs_after(plan)?;
            return Ok(SyncOutcome::Full {
                drift: vec![format!("incremental transaction refused: {e}")],
            });
        }
        self.applied = Some(state);
        self.ipvs_after(plan)?;
        let conntrack_flushed = self.flush_conntrack(&entries);
        Ok(SyncOutcome::Incremental {
            summary: diff.summary(),
            operations: tx.len(),
            conntrack_flushed,
        })
    }

    fn flush_conntrack(&mut self, entries: &[ConntrackFlush]) -> usize {
        if self.opts.backend != Backend::Nft || entries.is_empty() {
            return 0;
        }
        match self.conntrack.flush(entries) {
            Ok(n) => n,
            Err(e) => {
                // The rules are right; stale flows age out. Worth a warning, not a failure.
                tracing::warn!(error = %e, "could not delete conntrack entries of removed real servers");
                0
            }
        }
    }
}

/// Connections that must not outlive their real server: every removed real server, through
/// every frontend address its service had in `old`.
pub fn removed_reals(diff: &StateDiff, old: &DesiredState) -> Vec<ConntrackFlush> {
    let mut out = BTreeSet::new();
    let mut add = |svc: &VirtualService, reals: &mut dyn Iterator<Item = &RealKey>| {
        let vips: BTreeSet<_> = svc.frontends.iter().map(|f| f.vip).collect();
        for real in reals {
            for vip in &vips {
                out.insert(ConntrackFlush {
                    proto: svc.proto,
                    vip: *vip,
                    real: *real,
                });
            }
        }
    };
    for change in &diff.changes {
        match change {
            ServiceChange::Removed { service, .. }
            | ServiceChange::Replaced { old: service, .. } => {
                add(service, &mut service.reals.keys())
            }
            ServiceChange::Modified(u) => {
                if let Some(svc) = old.services.get(&u.key) {
                    add(svc, &mut u.reals_removed.iter().map(|r| &r.key));
                }
            }
            ServiceChange::Added { .. } => {}
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ipvs::{
        Balancer, Dest, IpvsError, Op, Ownership, ServiceId, Table, TwinBalancer,
    };
    use crate::apply::{RecordingConntrack, TwinFirewall};
    use crate::render::nft::{BasePolicy, DEFAULT_POLICY};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn syncer() -> Syncer<TwinFirewall, RecordingConntrack> {
        let opts = RenderOptions {
            backend: Backend::Nft,
            external_interfaces: Vec::new(),
            internal_interfaces: Vec::new(),
            policy: BasePolicy::parse(DEFAULT_POLICY).expect("policy"),
        };
        Syncer::new(TwinFirewall::default(), RecordingConntrack::default(), opts)
    }

    fn state(n: usize) -> DesiredState {
        DesiredState::from_rows(&crate::synth::rows_with_services(n))
    }

    #[test]
    fn first_sync_is_full_then_incremental_then_unchanged() {
        let mut s = syncer();
        assert!(matches!(
            s.sync(state(10)).expect("sync"),
            SyncOutcome::Full { .. }
        ));
        let outcome = s.sync(state(9)).expect("sync");
        let SyncOutcome::Incremental {
            summary,
            conntrack_flushed,
            ..
        } = outcome
        else {
            panic!("expected incremental, got {outcome:?}");
        };
        assert_eq!(summary.services_removed, 1);
        assert_eq!(conntrack_flushed, 2, "both servers of the removed service");
        assert_eq!(s.sync(state(9)).expect("sync"), SyncOutcome::Unchanged);
        // The twin holds exactly what a full render of the new state describes.
        assert_eq!(
            s.firewall.table,
            s.expected_table(&state(9)).expect("render")
        );
        assert_eq!(
            s.firewall.applied.len(),
            2,
            "one full, one incremental; none for unchanged"
        );
    }

    #[test]
    fn a_matching_table_is_adopted_untouched() {
        let mut first = syncer();
        first.sync(state(5)).expect("sync");
        let mut restarted = syncer();
        restarted.firewall.table = first.firewall.table.clone();
        assert_eq!(
            restarted.sync(state(5)).expect("sync"),
            SyncOutcome::Adopted
        );
        assert!(restarted.firewall.applied.is_empty());
    }

    #[test]
    fn a_refused_increment_falls_back_to_a_full_regeneration() {
        let mut s = syncer();
        s.sync(state(5)).expect("sync");
        s.firewall.fail_next = Some("someone edited the table".into());
        assert!(matches!(
            s.sync(state(6)).expect("sync"),
            SyncOutcome::Full { .. }
        ));
        assert_eq!(
            s.firewall.table,
            s.expected_table(&state(6)).expect("render")
        );
    }

    /// Records the order in which the two kernels were changed.
    struct Logged<T> {
        inner: T,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Firewall for Logged<TwinFirewall> {
        fn apply(&mut self, tx: &crate::render::nft::Transaction) -> Result<(), NftError> {
            self.log.lock().expect("lock").push("nft".into());
            self.inner.apply(tx)
        }
        fn check(&mut self, tx: &crate::render::nft::Transaction) -> Result<(), NftError> {
            self.inner.check(tx)
        }
        fn read_table(&mut self) -> Result<Option<TableState>, NftError> {
            self.inner.read_table()
        }
    }

    impl Balancer for Logged<TwinBalancer> {
        fn table(&mut self) -> Result<Table, IpvsError> {
            self.inner.table()
        }
        fn dests(&mut self, svc: ServiceId) -> Result<Vec<Dest>, IpvsError> {
            self.inner.dests(svc)
        }
        fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
            let mut log = self.log.lock().expect("lock");
            for op in ops {
                log.push(match op {
                    Op::AddService(_) | Op::AddDest(..) => "ipvs add".into(),
                    Op::EditDest(_, d) if d.weight == 0 => "ipvs drain".into(),
                    Op::EditService(_) | Op::EditDest(..) => "ipvs edit".into(),
                    Op::DelService(_) | Op::DelDest(..) => "ipvs delete".into(),
                });
            }
            drop(log);
            self.inner.apply(ops)
        }
    }

    #[test]
    fn ipvs_adds_before_the_nft_swap_and_drains_and_deletes_after_it() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let opts = RenderOptions {
            backend: Backend::Ipvs,
            external_interfaces: Vec::new(),
            internal_interfaces: Vec::new(),
            policy: BasePolicy::parse(DEFAULT_POLICY).expect("policy"),
        };
        let firewall = Logged {
            inner: TwinFirewall::default(),
            log: log.clone(),
        };
        let mut s = Syncer::new(firewall, RecordingConntrack::default(), opts);
        let balancer = Logged {
            inner: TwinBalancer::default(),
            log: log.clone(),
        };
        s.set_ipvs(IpvsSync::new(
            Box::new(balancer),
            Ownership::in_memory(),
            Duration::from_secs(60),
        ));
        s.sync(state(10)).expect("first sync");
        let mut seen = log.lock().expect("lock").clone();
        seen.dedup();
        assert_eq!(
            seen,
            ["ipvs add", "nft"],
            "services exist before nft marks for them"
        );

        log.lock().expect("lock").clear();
        // One service goes, others come: the new ones first, the old one after the swap.
        let mut next = state(12);
        let gone = *next.services.keys().next().expect("a service");
        next.services.remove(&gone);
        s.sync(next).expect("second sync");
        let mut seen = log.lock().expect("lock").clone();
        seen.dedup();
        assert_eq!(seen, ["ipvs add", "nft", "ipvs drain", "ipvs delete"]);
    }

    #[test]
    fn an_export_claiming_a_foreign_ipvs_service_changes_neither_table() {
        let opts = RenderOptions {
            backend: Backend::Ipvs,
            external_interfaces: Vec::new(),
            internal_interfaces: Vec::new(),
            policy: BasePolicy::parse(DEFAULT_POLICY).expect("policy"),
        };
        let mut s = Syncer::new(TwinFirewall::default(), RecordingConntrack::default(), opts);
        s.sync(state(5)).expect("first sync");
        let nft_before = s.firewall.table.clone();
        // Someone adds by hand the very service the next export brings.
        let next = state(6);
        let mut claimed = crate::apply::ipvs::desired_table(&next);
        let first = crate::apply::ipvs::desired_table(&state(5));
        claimed.retain(|id, _| !first.contains_key(id));
        let shared = Arc::new(Mutex::new(TwinBalancer {
            table: first.into_iter().chain(claimed).collect(),
            ..Default::default()
        }));
        let mut own = Ownership::in_memory();
        own.extend(crate::apply::ipvs::desired_table(&state(5)).into_keys())
            .expect("in memory");
        s.set_ipvs(IpvsSync::new(
            Box::new(shared.clone()),
            own,
            Duration::from_secs(60),
        ));
        let ipvs_before = shared.lock().expect("lock").table.clone();
        assert!(matches!(
            s.sync(next),
            Err(SyncError::Ipvs(IpvsSyncError::Foreign(_)))
        ));
        assert_eq!(s.firewall.table, nft_before, "nft untouched");
        assert_eq!(
            shared.lock().expect("lock").table,
            ipvs_before,
            "IPVS untouched"
        );
    }

    #[test]
    fn an_ipvs_drain_refused_after_the_swap_is_finished_by_the_next_sync() {
        let opts = RenderOptions {
            backend: Backend::Ipvs,
            external_interfaces: Vec::new(),
            internal_interfaces: Vec::new(),
            policy: BasePolicy::parse(DEFAULT_POLICY).expect("policy"),
        };
        let mut s = Syncer::new(TwinFirewall::default(), RecordingConntrack::default(), opts);
        let twin = Arc::new(Mutex::new(TwinBalancer::default()));
        s.set_ipvs(IpvsSync::new(
            Box::new(twin.clone()),
            Ownership::in_memory(),
            Duration::from_secs(60),
        ));
        s.sync(state(10)).expect("first sync");
        // The drain of the removed service is refused (e.g. ENOMEM): nft has swapped.
        let mut next = state(10);
        let gone = *next.services.keys().next().expect("a service");
        next.services.remove(&gone);
        twin.lock().expect("lock").fail_next = Some(12);
        assert!(matches!(s.sync(next.clone()), Err(SyncError::Ipvs(_))));
        assert_ne!(
            twin.lock().expect("lock").table,
            crate::apply::ipvs::desired_table(&next)
        );
        // Same export again: no nft change, but IPVS is finished from a fresh dump.
        assert_eq!(s.sync(next.clone()).expect("sync"), SyncOutcome::Unchanged);
        assert_eq!(
            twin.lock().expect("lock").table,
            crate::apply::ipvs::desired_table(&next)
        );
    }

    #[test]
    fn the_guard_refuses_and_changes_nothing() {
        let mut s = syncer();
        s.set_guard(Some(Guard::default()));
        s.sync(state(10)).expect("sync");
        let before = s.firewall.table.clone();
        assert!(matches!(s.sync(state(3)), Err(SyncError::Guard(_))));
        assert_eq!(s.firewall.table, before);
        assert_eq!(s.applied(), Some(&state(10)));
        s.set_guard(None);
        assert!(matches!(
            s.sync(state(3)).expect("forced"),
            SyncOutcome::Incremental { .. }
        ));
    }
}
