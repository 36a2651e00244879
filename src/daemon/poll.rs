//! The daemon's cycle: fetch → parse and validate → (standby: cache only) → guard → sync →
//! save as last-known-good. Any failure keeps the rules that are in place and is counted; the
//! next attempt comes after a capped exponential backoff with jitter.
//!
//! Kernel calls are blocking (`nft` processes) and run on the loop's thread: the daemon has
//! one job, and syncs must not overlap anyway.

use super::cache::StateDir;
use super::config::{Config, Role};
use super::fetch::{Fetched, Fetcher};
use super::journal::{Entry, Journal, Status};
use super::metrics::Metrics;
use crate::apply::{Conntrack, Firewall, SyncError, SyncOutcome, Syncer};
use crate::model::DesiredState;
use crate::render::nft::RenderOptions;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one step did, for logs, tests and `status`.
#[derive(Debug, PartialEq)]
pub enum Step {
    NotModified,
    Applied(SyncOutcome),
    /// Standby: the export was validated and cached, the kernel left alone.
    Cached,
    /// The export was invalid (the errors are logged); nothing changed.
    Rejected(usize),
    /// The guard refused the export; nothing changed.
    Refused(String),
    /// Fetching or applying failed; nothing changed.
    Failed(String),
    /// Nothing to apply at start-up (ADMIN down and no usable cache).
    NothingToStartFrom(String),
    /// Switched to standby: rules stay as they are, and are no longer updated.
    Demoted,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub polls: u64,
    pub not_modified: u64,
    pub applied: u64,
    pub rejected: u64,
    pub refused: u64,
    pub failed: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_apply_unix: Option<u64>,
}

pub struct Daemon<F, C> {
    pub config: Config,
    fetcher: Fetcher,
    state_dir: StateDir,
    journal: Journal,
    pub syncer: Syncer<F, C>,
    etag: Option<String>,
    last_poll: Option<u64>,
    /// Whether the export behind `etag` is the one in force (false after it was rejected or
    /// refused: a 304 for it must not count as "rules are current").
    etag_in_force: bool,
    pub counters: Counters,
    pub metrics: Metrics,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<F: Firewall, C: Conntrack> Daemon<F, C> {
    pub fn new(
        config: Config,
        firewall: F,
        conntrack: C,
        opts: RenderOptions,
    ) -> Result<Self, String> {
        let source = config
            .source
            .clone()
            .ok_or("no source configured (--source or `source =`)")?;
        let bearer = match &config.bearer_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let fetcher = Fetcher::new(
            &source,
            config.request_timeout,
            config.max_body_bytes,
            bearer,
        )
        .map_err(|e| e.to_string())?;
        let mut syncer = Syncer::new(firewall, conntrack, opts);
        syncer.set_guard(Some(config.guards));
        Ok(Daemon {
            state_dir: StateDir::new(&config.state_dir),
            journal: Journal::new(&config.state_dir),
            config,
            fetcher,
            syncer,
            etag: None,
            last_poll: None,
            etag_in_force: false,
            counters: Counters::default(),
            metrics: Metrics::default(),
        })
    }

    /// Start-up: the export from ADMIN if it answers, else the last-known-good from the cache,
    /// so a gateway rebooted while ADMIN is down still forwards traffic.
    pub async fn start(&mut self) -> Step {
        let step = self.start_step().await;
        self.write_status();
        step
    }

    async fn start_step(&mut self) -> Step {
        match self.poll_step().await {
            Step::Failed(why) => {
                tracing::warn!(%why, "ADMIN unreachable at start-up; trying the last-known-good export");
                match self.state_dir.load() {
                    Ok(Some(cached)) => {
                        let step = self.handle(cached.export, cached.etag, false);
                        tracing::info!(?step, "started from the last-known-good export");
                        step
                    }
                    Ok(None) => {
                        Step::NothingToStartFrom(format!("{why}; no last-known-good export yet"))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "last-known-good export refused");
                        Step::NothingToStartFrom(format!("{why}; {e}"))
                    }
                }
            }
            other => other,
        }
    }

    /// One poll of ADMIN and whatever follows from it — or, when `promote`/`demote` asked for
    /// another role since the last poll, the switch.
    pub async fn poll_once(&mut self) -> Step {
        let step = match self.wanted_role() {
            Some(role) if role != self.config.role => self.switch_role(role),
            _ => self.poll_step().await,
        };
        self.write_status();
        step
    }

    /// The slow drift audit: reads the live table back and, if it is not what was applied
    /// (someone edited it by hand), regenerates it whole. Active role only.
    pub fn audit(&mut self) -> Option<Step> {
        if self.config.role != Role::Active {
            return None;
        }
        let applied = self.syncer.applied()?.clone();
        let step = match self.syncer.reconcile(applied) {
            Ok(SyncOutcome::Adopted) => return None,
            Ok(outcome) => {
                tracing::warn!(?outcome, "drift repaired");
                Step::Applied(outcome)
            }
            Err(e) => self.failed(&e),
        };
        self.record(&step, self.etag.clone(), Duration::ZERO);
        Some(step)
    }

    fn wanted_role(&self) -> Option<Role> {
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
        if role == Role::Standby {
            return Step::Demoted;
        }
        match self.state_dir.load() {
            Ok(Some(cached)) => self.handle(cached.export, cached.etag, false),
            Ok(None) => {
                Step::NothingToStartFrom("promoted, but no last-known-good export yet".into())
            }
            Err(e) => Step::NothingToStartFrom(format!("promoted, but {e}")),
        }
    }

    async fn poll_step(&mut self) -> Step {
        self.counters.polls += 1;
        self.last_poll = Some(now());
        match self.fetcher.fetch(self.etag.as_deref()).await {
            Ok(Fetched::NotModified) => {
                self.metrics.poll("not_modified");
                if self.etag_in_force {
                    self.metrics.synced();
                }
                self.counters.not_modified += 1;
                self.counters.consecutive_failures = 0;
                Step::NotModified
            }
            Ok(Fetched::New { body, etag }) => self.handle(body, etag, true),
            Err(e) => {
                self.metrics.poll("failed");
                self.failed(&e)
            }
        }
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) -> Step {
        self.counters.failed += 1;
        self.counters.consecutive_failures += 1;
        self.counters.last_error = Some(e.to_string());
        tracing::warn!(error = %e, "sync step failed; rules left as they are");
        Step::Failed(e.to_string())
    }

    /// Handles a new export and journals what came of it.
    fn handle(&mut self, body: Vec<u8>, etag: Option<String>, save: bool) -> Step {
        let started = std::time::Instant::now();
        let tag = etag.clone();
        let step = self.handle_export(body, etag, save);
        self.observe(&step, started.elapsed());
        self.record(&step, tag, started.elapsed());
        step
    }

    fn observe(&self, step: &Step, took: Duration) {
        let m = &self.metrics;
        let outcome = match step {
            Step::Applied(SyncOutcome::Unchanged) => "unchanged",
            Step::Applied(_) => {
                m.apply_seconds.observe(took.as_secs_f64());
                "applied"
            }
            Step::Cached => "cached",
            Step::Rejected(_) => "rejected",
            Step::Refused(_) => {
                m.guard_refusals.inc();
                "refused"
            }
            Step::NotModified => "not_modified",
            Step::Demoted => "demoted",
            Step::Failed(_) | Step::NothingToStartFrom(_) => "failed",
        };
        m.poll(outcome);
        if matches!(step, Step::Applied(_) | Step::Cached) {
            m.synced();
        }
        if let Some(applied) = self.syncer.applied() {
            m.virtual_services.set(applied.services.len() as i64);
            m.real_servers.set(applied.real_server_count() as i64);
        }
    }

    fn record(&mut self, step: &Step, etag: Option<String>, took: Duration) {
        let (result, detail, summary) = match step {
            Step::Applied(SyncOutcome::Unchanged)
            | Step::Cached
            | Step::NotModified
            | Step::Demoted => return,
            Step::Applied(SyncOutcome::Adopted) => ("applied", "adopted".to_owned(), None),
            Step::Applied(SyncOutcome::Full { drift }) => (
                "applied",
                format!("full ({} differences)", drift.len()),
                None,
            ),
            Step::Applied(SyncOutcome::Incremental { summary, .. }) => {
                ("applied", "incremental".to_owned(), Some(*summary))
            }
            Step::Rejected(n) => ("rejected", format!("{n} validation error(s)"), None),
            Step::Refused(why) => ("refused", why.clone(), None),
            Step::Failed(why) | Step::NothingToStartFrom(why) => ("failed", why.clone(), None),
        };
        let entry = Entry {
            time_unix: now(),
            etag,
            result: result.to_owned(),
            detail,
            summary,
            duration_ms: took.as_secs_f64() * 1000.0,
        };
        if let Err(e) = self.journal.append(&entry) {
            tracing::error!(error = %e, "could not write the journal");
        }
    }

    /// The snapshot `portcullis status` shows.
    pub fn status(&self) -> Status {
        let applied = self.syncer.applied();
        Status {
            role: format!("{:?}", self.config.role).to_lowercase(),
            source: self.config.source.clone().unwrap_or_default(),
            etag: self.etag.clone(),
            last_poll_unix: self.last_poll,
            services: applied.map_or(0, |s| s.services.len()),
            real_servers: applied.map_or(0, DesiredState::real_server_count),
            counters: self.counters.clone(),
        }
    }

    fn write_status(&self) {
        if let Err(e) = self.journal.write_status(&self.status()) {
            tracing::warn!(error = %e, "could not write the status file");
        }
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
        if self.config.role == Role::Standby {
            self.store(&body, etag.as_deref(), save);
            self.etag = etag;
            self.etag_in_force = true;
            return Step::Cached;
        }
        match self.syncer.sync(state) {
            Ok(outcome) => {
                self.store(&body, etag.as_deref(), save);
                self.etag = etag;
                self.etag_in_force = true;
                self.counters.applied += 1;
                self.counters.consecutive_failures = 0;
                self.counters.last_apply_unix = Some(now());
                if outcome == SyncOutcome::Unchanged {
                    tracing::debug!("export unchanged");
                } else {
                    tracing::info!(?outcome, "export applied");
                }
                Step::Applied(outcome)
            }
            Err(SyncError::Guard(refusal)) => {
                self.counters.refused += 1;
                self.counters.last_error = Some(refusal.to_string());
                tracing::error!(%refusal, "export refused by the guard");
                self.etag = etag;
                self.etag_in_force = false;
                Step::Refused(refusal.to_string())
            }
            Err(e) => self.failed(&e),
        }
    }

    fn store(&mut self, body: &[u8], etag: Option<&str>, save: bool) {
        if !save {
            return;
        }
        if let Err(e) = self.state_dir.save(body, etag, now()) {
            // The rules are applied; only the fallback for a future restart is stale.
            tracing::error!(error = %e, "could not save the last-known-good export");
        }
    }

    /// How long to wait before the next poll: the interval, or after failures an exponential
    /// backoff capped at a minute, with up to 10 % jitter so a fleet does not poll in step.
    pub fn next_delay(&self) -> Duration {
        let base = self.config.interval;
        let n = self.counters.consecutive_failures.min(6);
        let delay = (base * 2u32.pow(n)).min(Duration::from_secs(60).max(base));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        delay + delay.mul_f64((nanos % 1000) as f64 / 10_000.0)
    }

    /// Polls until `shutdown` resolves. Rules stay in place on exit.
    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        if let Some(addr) = self.config.metrics {
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics.serve(addr).await {
                    tracing::error!(error = %e, %addr, "metrics listener failed");
                }
            });
        }
        // Installed before the pid file exists: SIGUSR1's default action would end the process.
        let mut wake =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
        if let Err(e) = super::role::write_pid(&self.config.state_dir) {
            tracing::warn!(error = %e, "cannot write the pid file; promote/demote will wait for the next poll");
        }
        // A role asked for before this start (a promotion while the daemon was down) counts.
        if let Some(role) = self.wanted_role() {
            self.config.role = role;
        }
        let step = self.start().await;
        tracing::info!(?step, "started");
        let mut audit = tokio::time::interval(self.config.audit_interval);
        audit.tick().await; // the first tick is immediate; start-up has just reconciled
        loop {
            let woken = async {
                match wake.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down; rules stay in place");
                    return;
                }
                _ = tokio::time::sleep(self.next_delay()) => {}
                _ = woken => tracing::info!("woken by SIGUSR1"),
                _ = audit.tick() => {
                    self.audit();
                    continue;
                }
            }
            // A SIGUSR1 during the poll abandons it: a promotion must not wait out the request
            // timeout of an ADMIN that went down (the failover case warm standby is for).
            // Only the fetch awaits, so nothing is left half-done.
            let interrupted = match wake.as_mut() {
                Some(s) => tokio::select! {
                    step = self.poll_once() => {
                        tracing::debug!(?step, "poll");
                        false
                    }
                    _ = s.recv() => true,
                },
                None => {
                    self.poll_once().await;
                    false
                }
            };
            if interrupted {
                tracing::info!("woken by SIGUSR1 during a poll; poll abandoned");
                let step = self.poll_once().await;
                tracing::debug!(?step, "poll");
            }
        }
    }
}
