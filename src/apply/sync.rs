//! Keeping the kernel in step with the desired state. Every sync is planned first, then
//! executed; the plan ([`SyncPlan`]) reads top to bottom as what happens:
//!
//! 1. IPVS adds and edits (IPVS backend), so services exist before nftables marks for them;
//! 2. the nft transaction: nothing, the whole table, or only the changes (falling back to the
//!    whole table if the kernel refuses them);
//! 3. IPVS drains (weight 0) and deletes of idle drained destinations;
//! 4. conntrack entries of removed real servers (nft backend).
//!
//! Planning only reads (the guard, the diff, the live table on a reconcile, the IPVS table
//! when its view is unknown), so a refusal there — the guard, a foreign IPVS service —
//! changes neither table. The hot path ([`Syncer::sync`]) never lists the nft table: it costs
//! O(changes). A full regeneration ([`Syncer::reconcile`]) is for start-up, drift and audits.

use super::conntrack::{Conntrack, ConntrackFlush};
use super::error::NftError;
use super::guard::Guard;
use super::ipvs::{IpvsPlan, IpvsSync, IpvsSyncError, Scope};
use super::stamp::Stamp;
use super::table::{drift, TableState, TransactionRefused};
use super::Firewall;
use crate::diff::{DiffSummary, ServiceChange, StateDiff};
use crate::model::{DesiredState, RealKey, VirtualService};
use crate::render::nft::transaction::{Chain, Object};
use crate::render::nft::{
    full_ruleset, incremental, Backend, PatternIndex, RenderOptions, Transaction,
};
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
    #[error("internal error: rendered table is inconsistent at {0}")]
    Render(#[source] TransactionRefused),
}

/// One sync, decided before anything changes.
struct SyncPlan {
    /// The state the kernel holds once the plan is executed.
    state: DesiredState,
    /// IPVS backend: adds and edits before the nft step, drains and deletes after it.
    ipvs: Option<IpvsPlan>,
    nft: NftStep,
    /// The bucket patterns of `state` when the plan knows them (an incremental step);
    /// otherwise they are counted from `state` once it is applied.
    patterns: Option<PatternIndex>,
    /// Connections to forget once the rules no longer lead to their real server.
    conntrack: Vec<ConntrackFlush>,
}

enum NftStep {
    /// Nothing to send: the table already holds the state (`Unchanged` or `Adopted`).
    Keep(SyncOutcome),
    /// Regenerate the table whole; `drift` says why.
    Full { tx: Transaction, drift: Vec<String> },
    /// Send only the changes. If the kernel refuses them (someone edited our table), the
    /// table is regenerated whole instead.
    Incremental {
        tx: Transaction,
        summary: DiffSummary,
    },
}

pub struct Syncer<F, C> {
    pub firewall: F,
    pub conntrack: C,
    opts: RenderOptions,
    applied: Option<DesiredState>,
    /// The bucket patterns of `applied` (nft backend), so that a sync knows which pattern
    /// tables it loads or drops without reading every service.
    patterns: PatternIndex,
    guard: Option<Guard>,
    ipvs: Option<IpvsSync>,
    /// The stamp chains the table carries, as far as this syncer knows.
    stamps: Vec<Stamp>,
    /// The stamp the next applied state gets (`apply --once`); `None`: the table is left
    /// without one, as the daemon's changes carry no export digest.
    next_stamp: Option<Stamp>,
}

impl<F: Firewall, C: Conntrack> Syncer<F, C> {
    pub fn new(firewall: F, conntrack: C, opts: RenderOptions) -> Self {
        Syncer {
            firewall,
            conntrack,
            opts,
            applied: None,
            patterns: PatternIndex::default(),
            guard: None,
            ipvs: None,
            stamps: Vec::new(),
            next_stamp: None,
        }
    }

    /// Stamps the table with `stamp` when the next sync or reconcile applies its state.
    pub fn set_next_stamp(&mut self, stamp: Stamp) {
        self.next_stamp = Some(stamp);
    }

    /// Takes `state` as applied without reading the table, when the table carries `stamp`,
    /// the stamp of the export `state` came from: the next [`Syncer::sync`] sends only the
    /// difference. `false` (nothing assumed) when the stamp is not there.
    pub fn assume_stamped(&mut self, state: DesiredState, stamp: Stamp) -> Result<bool, NftError> {
        if !self.firewall.has_chain(stamp.chain())? {
            return Ok(false);
        }
        self.patterns = self.patterns_of(&state);
        self.applied = Some(state);
        self.stamps = vec![stamp];
        Ok(true)
    }

    /// Takes `state` as applied, rendered into a table stamped with `stamp`, without looking:
    /// the next [`Syncer::sync`] sends only the difference, and that transaction deletes the
    /// stamp chain — so the kernel itself refuses it, atomically, when the stamp is not there,
    /// and the sync falls back to a whole regeneration. Saves listing the chains first. Only
    /// when the next state differs from `state`: with no difference nothing is sent, so
    /// nothing would check the stamp — use [`Syncer::assume_stamped`] then.
    pub fn assume_stamped_unchecked(&mut self, state: DesiredState, stamp: Stamp) {
        self.patterns = self.patterns_of(&state);
        self.applied = Some(state);
        self.stamps = vec![stamp];
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
        TableState::from_transaction(&full_ruleset(state, &self.opts)).map_err(SyncError::Render)
    }

    /// Reads the live table and compares it with `state`'s: adopts it when equal, regenerates
    /// it whole otherwise. For start-up and the slow periodic audit, not the hot path.
    /// Takes the state (it becomes the applied one) rather than copying it.
    /// With IPVS, the kernel's IPVS table is dumped again and repaired the same way.
    pub fn reconcile(&mut self, state: DesiredState) -> Result<SyncOutcome, SyncError> {
        let plan = self.plan_reconcile(state)?;
        self.execute(plan)
    }

    /// Brings the kernel from the applied state to `state` with one incremental transaction.
    /// Without an applied state this is a [`Syncer::reconcile`]. If the kernel refuses the
    /// increment (someone edited our table), falls back to a full regeneration.
    pub fn sync(&mut self, state: DesiredState) -> Result<SyncOutcome, SyncError> {
        let plan = self.plan_sync(state)?;
        self.execute(plan)
    }

    fn plan_reconcile(&mut self, state: DesiredState) -> Result<SyncPlan, SyncError> {
        // Rendered while nft lists the live table: the listing is mostly nft starting up
        // and the render pure CPU, and one after the other they were a tenth of a cold load
        // at 10k rows.
        let (tx, live) = std::thread::scope(|scope| {
            let render = scope.spawn(|| full_ruleset(&state, &self.opts));
            let live = self.firewall.read_table();
            let tx = render
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (tx, live)
        });
        let live = live?;
        self.stamps = live
            .iter()
            .flat_map(|t| t.chains.keys())
            .filter_map(|c| Stamp::from_chain(c))
            .collect();
        // Nothing to compare with on a fresh host: the expected table's model (a tenth of a
        // cold load at 10k rows) is built only when there is a live table.
        let differences = match live {
            None => vec!["table is missing".to_owned()],
            Some(_) => {
                let expected = TableState::from_transaction(&tx).map_err(SyncError::Render)?;
                drift(&expected, &live)
            }
        };
        let ipvs = match self.ipvs.as_mut() {
            Some(ipvs) => {
                // An audit trusts no cached view: the kernel is read again.
                ipvs.invalidate();
                Some(ipvs.plan(&state, Scope::Everything)?)
            }
            None => None,
        };
        if differences.is_empty() {
            return Ok(SyncPlan {
                state,
                ipvs,
                nft: NftStep::Keep(SyncOutcome::Adopted),
                patterns: None,
                conntrack: Vec::new(),
            });
        }
        if live.is_some() {
            tracing::warn!(differences = differences.len(), first = %differences[0], "live table differs from the expected one; regenerating it whole");
        }
        let conntrack = match &self.applied {
            Some(old) => removed_reals(&StateDiff::between(old, &state), old),
            None => Vec::new(),
        };
        Ok(SyncPlan {
            state,
            ipvs,
            nft: NftStep::Full {
                tx,
                drift: differences,
            },
            patterns: None,
            conntrack,
        })
    }

    /// The hot path's plan: O(changes), nothing listed. Without an applied state, the
    /// reconcile's plan.
    fn plan_sync(&mut self, state: DesiredState) -> Result<SyncPlan, SyncError> {
        let Some(old) = &self.applied else {
            return self.plan_reconcile(state);
        };
        let diff = StateDiff::between(old, &state);
        if let Some(guard) = &self.guard {
            guard.check_removal(old.services.len(), diff.summary().services_removed)?;
        }
        let ipvs = match self.ipvs.as_mut() {
            // Scoped to what changed: with no change, only drains are finished — unless the
            // last IPVS step was refused half-way, when the plan covers everything again.
            Some(ipvs) => {
                let keys: Vec<_> = diff.changes.iter().map(|c| *c.key()).collect();
                Some(ipvs.plan(&state, Scope::Services(&keys))?)
            }
            None => None,
        };
        let (nft, patterns, conntrack) = if diff.is_empty() {
            let same = Some(self.patterns.clone());
            (NftStep::Keep(SyncOutcome::Unchanged), same, Vec::new())
        } else {
            let (step, patterns) = self.nft_step(&diff, old, &state, &state);
            (step, patterns, removed_reals(&diff, old))
        };
        Ok(SyncPlan {
            state,
            ipvs,
            nft,
            patterns,
            conntrack,
        })
    }

    /// The nft step from `old` to `new` (`diff` between them; `whole` the entire state once
    /// applied, `new` itself or, for a patch, only part of it) and the bucket patterns after
    /// it: the increment, or — when a new bucket pattern's id collides with a kept one's,
    /// which has to move (rare: 23 bits of hash per group) — the table regenerated whole.
    fn nft_step(
        &self,
        diff: &StateDiff,
        old: &DesiredState,
        new: &DesiredState,
        whole: &DesiredState,
    ) -> (NftStep, Option<PatternIndex>) {
        match incremental(diff, old, new, self.opts.backend, &self.patterns) {
            Some(inc) => (
                NftStep::Incremental {
                    tx: inc.tx,
                    summary: diff.summary(),
                },
                Some(inc.patterns),
            ),
            None => {
                tracing::info!("bucket pattern ids collide; regenerating the table whole");
                let full = NftStep::Full {
                    tx: full_ruleset(whole, &self.opts),
                    drift: vec!["bucket pattern ids collide".to_owned()],
                };
                (full, None)
            }
        }
    }

    /// The bucket patterns of `state` (none on the IPVS backend, which has no bucket maps).
    fn patterns_of(&self, state: &DesiredState) -> PatternIndex {
        match self.opts.backend {
            Backend::Nft => PatternIndex::of(state),
            Backend::Ipvs => PatternIndex::default(),
        }
    }

    /// Executes a plan, in its order. An error leaves what the earlier steps did in place;
    /// once the nft step succeeded its state is the applied one, so a refusal after the swap
    /// is finished by the next sync.
    fn execute(&mut self, plan: SyncPlan) -> Result<SyncOutcome, SyncError> {
        let SyncPlan {
            state,
            ipvs: mut ipvs_plan,
            nft,
            mut patterns,
            conntrack,
        } = plan;
        // 1. IPVS adds and edits.
        if let (Some(ipvs), Some(p)) = (self.ipvs.as_mut(), ipvs_plan.as_mut()) {
            ipvs.execute_before_swap(p, &state)?;
        }
        // 2. The nft transaction, and the stamp with it.
        let mut outcome = match nft {
            NftStep::Keep(outcome) => {
                let restamp = self.restamp(Transaction::default());
                if !restamp.is_empty() {
                    self.firewall.apply(&restamp)?;
                }
                outcome
            }
            NftStep::Full { mut tx, drift } => {
                // The full script deletes the table: old stamps go with it.
                self.stamps.clear();
                tx = self.restamp(tx);
                self.firewall.apply(&tx)?;
                SyncOutcome::Full { drift }
            }
            NftStep::Incremental { tx, summary } => {
                // Counted before the stamp's own operations join it.
                let operations = tx.len();
                match self.firewall.apply(&self.restamp(tx)) {
                    Ok(()) => SyncOutcome::Incremental {
                        summary,
                        operations,
                        conntrack_flushed: 0,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "incremental transaction refused; regenerating the table whole");
                        patterns = None;
                        self.stamps.clear();
                        let tx = self.restamp(full_ruleset(&state, &self.opts));
                        self.firewall.apply(&tx)?;
                        SyncOutcome::Full {
                            drift: vec![format!("incremental transaction refused: {e}")],
                        }
                    }
                }
            }
        };
        self.patterns = patterns.unwrap_or_else(|| self.patterns_of(&state));
        drop_elsewhere(self.applied.replace(state));
        self.stamps = self.next_stamp.take().into_iter().collect();
        // 3. IPVS drains, and deletes of what is idle.
        if let (Some(ipvs), Some(p)) = (self.ipvs.as_mut(), ipvs_plan) {
            let report = ipvs.execute_after_swap(p)?;
            if report != Default::default() {
                tracing::info!(?report, "IPVS synced");
            }
            if outcome == SyncOutcome::Adopted && report.changed > 0 {
                outcome = SyncOutcome::Full {
                    drift: vec![format!(
                        "IPVS: {} services/destinations added or repaired",
                        report.changed
                    )],
                };
            }
        }
        // 4. Connections to removed real servers.
        let flushed = self.flush_conntrack(&conntrack);
        if let SyncOutcome::Incremental {
            conntrack_flushed, ..
        } = &mut outcome
        {
            *conntrack_flushed = flushed;
        }
        Ok(outcome)
    }

    /// `tx` plus the stamp's change: the known stamps deleted (unless one is the next), the
    /// next one added. Nothing when the stamps are already right.
    fn restamp(&self, mut tx: Transaction) -> Transaction {
        for old in self
            .stamps
            .iter()
            .filter(|s| Some(*s) != self.next_stamp.as_ref())
        {
            tx.delete(Object::Chain(Chain {
                name: old.chain().to_owned(),
                hook: None,
            }));
        }
        if let Some(next) = self
            .next_stamp
            .as_ref()
            .filter(|n| !self.stamps.contains(n))
        {
            tx.add(Object::Chain(Chain {
                name: next.chain().to_owned(),
                hook: None,
            }));
        }
        tx
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

/// Frees a replaced state off the sync's path: at 100k rows dropping one takes 6–7 ms, a
/// quarter of what a one-change sync may take. Small states are dropped here.
fn drop_elsewhere(state: Option<DesiredState>) {
    const BIG: usize = 10_000;
    if let Some(state) = state.filter(|s| s.services.len() >= BIG) {
        // If no thread can be started, the state is dropped here after all.
        let _ = std::thread::Builder::new()
            .name("drop-state".into())
            .spawn(move || drop(state));
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

#[path = "sync_patch.rs"]
mod patch;

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
