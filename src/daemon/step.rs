//! One step of the daemon: fetch → parse and validate → (standby: cache only) → guard → sync →
//! save as last-known-good. Any failure keeps the rules that are in place and is counted.
//! Also the steps that do not start with a fetch: start-up from the cache, a role switch and
//! the drift audit.
//!
//! Kernel calls block (an `nft` process, netlink); [`off_runtime`] runs them so the runtime's
//! other tasks (`/metrics`, `/healthz`, the control socket) keep answering meanwhile.

use super::cache::CacheError;
use super::config::Role;
use super::control::{ApplyLock, ControlError};
use super::core::{unix_now, Baseline, Daemon};
use super::fetch::{FetchError, Fetched};
use crate::apply::{Conntrack, Firewall, GuardRefusal, SyncError, SyncOutcome};
use crate::model::health::{ExportedChecks, Overlaid};
use crate::model::DesiredState;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one step did, for logs, tests and `status`.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    NotModified,
    Applied(SyncOutcome),
    /// Standby: the export was validated and cached, the kernel left alone.
    Cached,
    /// The export was invalid (the errors are logged); nothing changed.
    Rejected(usize),
    /// The guard refused the export; nothing changed.
    Refused(GuardRefusal),
    /// Fetching or applying failed; nothing changed.
    Failed(StepError),
    /// Nothing to apply at start-up or on promotion (ADMIN down and no usable cache).
    NothingToStartFrom(NoStart),
    /// Switched to standby: rules stay as they are, and are no longer updated.
    Demoted,
}

/// Why a step changed nothing. Shared (`Arc`) so a step can be logged, journaled and
/// returned without copying the error or flattening it to text.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Fetch(Arc<FetchError>),
    #[error(transparent)]
    Sync(Arc<SyncError>),
    /// Another process (`apply --once`, `flush`) is changing the kernel from this state
    /// directory; nothing was sent, the next poll tries again.
    #[error(transparent)]
    Busy(Arc<ControlError>),
}

/// Why there was nothing to apply.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NoStart {
    #[error("{0}; no last-known-good export yet")]
    NoCache(StepError),
    #[error("{0}; {1}")]
    BadCache(StepError, Arc<CacheError>),
    #[error("promoted, but no last-known-good export yet")]
    PromotedWithoutCache,
    #[error("promoted, but {0}")]
    PromotedWithBadCache(Arc<CacheError>),
}

// Errors carry no equality of their own; two are the same failure when they say the same.
impl PartialEq for StepError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl PartialEq for NoStart {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl From<FetchError> for StepError {
    fn from(e: FetchError) -> Self {
        StepError::Fetch(Arc::new(e))
    }
}

impl From<SyncError> for StepError {
    fn from(e: SyncError) -> Self {
        StepError::Sync(Arc::new(e))
    }
}

/// Runs a blocking kernel call without stalling the runtime's other tasks. `portcullis run`
/// drives the daemon on a multi-threaded runtime: the listeners run on its workers while the
/// daemon's own future (on `block_on`'s thread) waits for nft. Should the daemon ever run as a
/// task on a worker, `block_in_place` first hands that worker's other tasks to another thread.
/// On a current-thread runtime (unit tests) there is no other thread: it simply runs.
pub(super) fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl<F: Firewall, C: Conntrack> Daemon<F, C> {
    /// Start-up: the export from ADMIN if it answers, else the last-known-good from the cache,
    /// so a gateway rebooted while ADMIN is down still forwards traffic.
    pub async fn start(&mut self) -> Step {
        self.converge_sync_threads();
        let step = match self.poll_step().await {
            // ADMIN serves an export the guard refuses and nothing is applied (a reboot, a
            // flush): forward with the last-known-good meanwhile, and keep refusing.
            refused @ Step::Refused(_) if self.config.role == Role::Active => {
                match self.state_dir.load() {
                    Ok(Some(cached)) => {
                        let refused_etag = self.etag.take();
                        let step = self.handle(cached.export, cached.etag, false);
                        tracing::warn!(
                            ?step,
                            "export refused at start-up; the last-known-good export is applied"
                        );
                        // Polls go on asking for news against the refused export, so the same
                        // refusal is not fetched and journaled again every interval.
                        self.etag = refused_etag;
                        self.etag_in_force = false;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "last-known-good export refused"),
                }
                refused
            }
            Step::Failed(why) => {
                tracing::warn!(%why, "ADMIN unreachable at start-up; trying the last-known-good export");
                match self.state_dir.load() {
                    Ok(Some(cached)) => {
                        let step = self.handle(cached.export, cached.etag, false);
                        tracing::info!(?step, "started from the last-known-good export");
                        step
                    }
                    Ok(None) => Step::NothingToStartFrom(NoStart::NoCache(why)),
                    Err(e) => {
                        tracing::error!(error = %e, "last-known-good export refused");
                        Step::NothingToStartFrom(NoStart::BadCache(why, Arc::new(e)))
                    }
                }
            }
            other => other,
        };
        self.write_status();
        step
    }

    /// One poll of ADMIN and whatever follows from it — or, when `promote`/`demote` asked for
    /// another role since the last poll, the switch.
    pub async fn poll_once(&mut self) -> Step {
        let step = match self.switch_if_asked() {
            Some(step) => step,
            None => self.poll_step().await,
        };
        self.after_poll(&step);
        step
    }

    /// An unchanged export changes nothing but counters: the status file is refreshed at
    /// most once a second for those, the largest part of a 304's cost otherwise.
    pub(super) fn after_poll(&mut self, step: &Step) {
        let stale = self
            .status_written
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if *step != Step::NotModified || stale {
            self.write_status();
        }
    }

    /// The role switch `promote`/`demote` asked for, if any, done now.
    pub(super) fn switch_if_asked(&mut self) -> Option<Step> {
        match self.wanted_role() {
            Some(role) if role != self.config.role => Some(self.switch_role(role)),
            _ => None,
        }
    }

    pub(super) fn wanted_role(&self) -> Option<Role> {
        match super::role::read_role(&self.config.state_dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "ignoring the role file");
                None
            }
        }
    }

    /// Standby → active applies the last-known-good export at once (the standby kept it
    /// fresh); active → standby leaves the rules and stops updating them.
    fn switch_role(&mut self, role: Role) -> Step {
        tracing::warn!(from = ?self.config.role, to = ?role, "switching role");
        self.config.role = role;
        // Before the rules: a promoted node holds the synchronised connections when its
        // rules take traffic; a demoted one listens for the new active node's.
        self.converge_sync_threads();
        if role == Role::Standby {
            self.kick_after_switch();
            return Step::Demoted;
        }
        let step = match self.state_dir.load() {
            Ok(Some(cached)) => self.handle(cached.export, cached.etag, false),
            Ok(None) => Step::NothingToStartFrom(NoStart::PromotedWithoutCache),
            Err(e) => Step::NothingToStartFrom(NoStart::PromotedWithBadCache(Arc::new(e))),
        };
        // Once the rules are in: the synchronised connections' endpoints are backing off.
        self.kick_after_switch();
        step
    }

    /// The slow drift audit: reads the live table back and, if it is not what was applied
    /// (someone edited it by hand), regenerates it whole. Active role only.
    pub fn audit(&mut self) -> Option<Step> {
        if self.config.role != Role::Active {
            return None;
        }
        let applied = self.syncer.applied()?.clone();
        let step = match self.locked(|syncer| syncer.reconcile(applied)) {
            Ok(Ok(SyncOutcome::Adopted)) => return None,
            Ok(Ok(outcome)) => {
                tracing::warn!(?outcome, "drift repaired");
                Step::Applied(outcome)
            }
            Ok(Err(e)) => self.failed(e.into()),
            Err(busy) => self.failed(busy),
        };
        self.record(&step, self.etag.clone(), Duration::ZERO);
        Some(step)
    }

    async fn poll_step(&mut self) -> Step {
        let fetched = self.begin_poll().await;
        self.finish_poll(fetched)
    }

    /// Starts a poll: the fetch, as a future that borrows nothing of the daemon (the run
    /// loop keeps it in flight while it applies health changes).
    pub(super) fn begin_poll(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Fetched, FetchError>> + 'static {
        self.counters.polls += 1;
        self.last_poll = Some(unix_now());
        let replica = self.replicas.current();
        let etag = if self.replicas.unconditional() {
            None
        } else {
            self.etag.clone()
        };
        let fetcher = self.fetcher.clone();
        async move { fetcher.fetch_from(replica, etag.as_deref()).await }
    }

    /// The replica that did not answer hands the next fetch to the next one.
    fn choose_replica(&mut self, fetched: &Result<Fetched, FetchError>) {
        let from = self.replicas.current();
        if let Some(to) = self.replicas.after_fetch(fetched) {
            let (from, to) = (self.fetcher.source(from), self.fetcher.source(to));
            tracing::warn!(from, to, "ADMIN replica did not answer; switching");
            self.metrics.source_switched(from, to);
        }
    }

    /// What follows a fetch.
    pub(super) fn finish_poll(&mut self, fetched: Result<Fetched, FetchError>) -> Step {
        self.choose_replica(&fetched);
        self.pacing
            .after_fetch(&fetched, !self.config.long_poll.is_zero());
        match fetched {
            Ok(Fetched::NotModified { .. }) => {
                self.metrics.poll("not_modified");
                if self.etag_in_force {
                    self.metrics.synced();
                }
                self.counters.not_modified += 1;
                self.counters.consecutive_failures = 0;
                Step::NotModified
            }
            Ok(Fetched::New { body, etag, .. }) => self.handle(body, etag, true),
            Err(e) => {
                self.metrics.poll("failed");
                self.failed(e.into())
            }
        }
    }

    pub(super) fn failed(&mut self, e: StepError) -> Step {
        self.counters.failed += 1;
        self.counters.consecutive_failures += 1;
        self.counters.last_error = Some(e.to_string());
        tracing::warn!(error = %e, "sync step failed; rules left as they are");
        Step::Failed(e)
    }

    /// Handles a new export, and records what came of it.
    fn handle(&mut self, body: Vec<u8>, etag: Option<String>, save: bool) -> Step {
        let started = Instant::now();
        let tag = etag.clone();
        let step = self.handle_export(body, etag, save);
        super::record::log_applied(&step, tag.as_deref(), started.elapsed());
        self.observe(&step, started.elapsed());
        self.record(&step, tag, started.elapsed());
        release_freed_memory();
        step
    }

    fn handle_export(&mut self, body: Vec<u8>, etag: Option<String>, save: bool) -> Step {
        let export = match portcullis_export::parse(&body) {
            Ok(e) => e,
            Err(errors) => {
                for e in errors.errors.iter().take(20) {
                    tracing::error!("export rejected: {e}");
                }
                self.counters.rejected += 1;
                self.counters.last_error =
                    Some(format!("export rejected: {} error(s)", errors.len()));
                // Remember the ETag: the same bad export is not parsed again on every poll.
                self.etag = etag;
                self.etag_in_force = false;
                return Step::Rejected(errors.len());
            }
        };
        let state = DesiredState::from_export(&export);
        if let Err(refusal) = self.check_against_last_good(&state) {
            return self.refused(refusal, etag);
        }
        // Health: what the export asks to probe, and the export with what is down now
        // overlaid (weight 0) — the state the kernel gets.
        let checks = ExportedChecks::from_export(&export);
        let (targets, overlaid) = self.health.prepare(&state, &checks);
        if self.config.role == Role::Standby {
            self.store(&body, etag.as_deref(), save);
            // A standby probes too, so its view is warm when it is promoted.
            self.health.commit(state.clone(), checks, targets);
            self.baseline = Baseline::Loaded(Box::new(state));
            self.etag = etag;
            self.etag_in_force = true;
            return Step::Cached;
        }
        let Overlaid {
            state: to_apply,
            held_down,
            fail_open,
            down,
        } = overlaid;
        match self.locked(|syncer| syncer.sync(to_apply)) {
            Ok(Ok(outcome)) => {
                self.health.commit(state, checks, targets);
                self.health.note_applied(&held_down, &fail_open, down);
                self.store(&body, etag.as_deref(), save);
                self.etag = etag;
                self.etag_in_force = true;
                self.counters.applied += 1;
                self.counters.consecutive_failures = 0;
                self.counters.last_apply_unix = Some(unix_now());
                Step::Applied(outcome)
            }
            Ok(Err(SyncError::Guard(refusal))) => self.refused(refusal, etag),
            Ok(Err(e)) => self.failed(e.into()),
            Err(busy) => self.failed(busy),
        }
    }

    /// Runs a kernel change off the runtime, holding the state directory's apply lock so no
    /// `apply --once` or `flush` interleaves with it. The outer error: the lock is taken.
    pub(super) fn locked<R>(
        &mut self,
        change: impl FnOnce(&mut crate::apply::Syncer<F, C>) -> R,
    ) -> Result<R, StepError> {
        let _lock = ApplyLock::try_take(&self.config.state_dir)
            .map_err(|e| StepError::Busy(Arc::new(e)))?;
        Ok(off_runtime(|| change(&mut self.syncer)))
    }

    fn refused(&mut self, refusal: GuardRefusal, etag: Option<String>) -> Step {
        self.counters.refused += 1;
        self.counters.last_error = Some(refusal.to_string());
        tracing::error!(%refusal, "export refused by the guard");
        self.etag = etag;
        self.etag_in_force = false;
        Step::Refused(refusal)
    }

    /// The guard, while the syncer has nothing applied to hold an export against (after a
    /// restart, a reboot or a flush; always on a standby): the last-known-good export is the
    /// baseline, as for `apply --once`. Otherwise the syncer guards against what it applied.
    fn check_against_last_good(&mut self, state: &DesiredState) -> Result<(), GuardRefusal> {
        if self.syncer.applied().is_some() {
            self.baseline = Baseline::NotLoaded;
            return Ok(());
        }
        if let Baseline::NotLoaded = self.baseline {
            self.baseline = match self.state_dir.load() {
                Ok(Some(cached)) => match portcullis_export::parse(&cached.export) {
                    Ok(export) => Baseline::Loaded(Box::new(DesiredState::from_export(&export))),
                    Err(_) => Baseline::Nothing,
                },
                Ok(None) => Baseline::Nothing,
                Err(e) => {
                    tracing::error!(error = %e, "last-known-good export unusable; the guard has no baseline");
                    Baseline::Nothing
                }
            };
        }
        match &self.baseline {
            Baseline::Loaded(base) => self.config.guards.check(base, state),
            Baseline::NotLoaded | Baseline::Nothing => Ok(()),
        }
    }

    fn store(&mut self, body: &[u8], etag: Option<&str>, save: bool) {
        if !save {
            return;
        }
        if let Err(e) = self.state_dir.save(body, etag, unix_now()) {
            // The rules are applied; only the fallback for a future restart is stale.
            tracing::error!(error = %e, "could not save the last-known-good export");
        }
    }

    /// How long to wait before the next poll (see [`super::pacing`]).
    pub fn next_delay(&self) -> Duration {
        let failures = self
            .replicas
            .failures_for_backoff(self.counters.consecutive_failures);
        self.pacing.next_delay(self.config.interval, failures)
    }
}

/// Handling an export allocates several times its size (body, parsed rows, old and new state,
/// the rendered script) and frees most of it; glibc keeps freed memory for reuse, so without
/// this the resident size stays at the peak between changes, which may be hours.
#[allow(unsafe_code)]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap memory to the kernel; no pointers change.
    unsafe {
        libc::malloc_trim(0);
    }
}
