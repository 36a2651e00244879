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
    /// The next request can follow at once: the server long-polls and will hold it until
    /// something changes.
    poll_at_once: bool,
    /// New exports fetched one after the other, without a 304 between them.
    news_in_a_row: u32,
    status_written: Option<std::time::Instant>,
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
        let fetcher = Fetcher::from_config(&config).map_err(|e| e.to_string())?;
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
            poll_at_once: false,
            news_in_a_row: 0,
            status_written: None,
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
        let step = match self.switch_if_asked() {
            Some(step) => step,
            None => self.poll_step().await,
        };
        // An unchanged export changes nothing but counters: the status file (a create, write
        // and rename) is refreshed at most once a second for those, the largest part of a
        // 304's cost otherwise.
        let stale = self
            .status_written
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if step != Step::NotModified || stale {
            self.write_status();
        }
        step
    }

    /// The role switch `promote`/`demote` asked for, if any, done now.
    fn switch_if_asked(&mut self) -> Option<Step> {
        match self.wanted_role() {
            Some(role) if role != self.config.role => Some(self.switch_role(role)),
            _ => None,
        }
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
        let fetched = self.fetcher.fetch(self.etag.as_deref()).await;
        // A long-polling server holds the next request until something changes, so it can
        // go at once. After a new export from a server not known to long-poll, one request
        // goes at once (to find out); a server that ignores ETags thus gets the poll
        // interval, never a busy loop.
        let long_poll = !self.config.long_poll.is_zero();
        self.poll_at_once = match &fetched {
            Ok(Fetched::NotModified { long_polled }) => {
                self.news_in_a_row = 0;
                *long_polled
            }
            Ok(Fetched::New { long_polled, .. }) => {
                self.news_in_a_row += 1;
                long_poll && (*long_polled || self.news_in_a_row <= 1)
            }
            Err(_) => {
                self.news_in_a_row = 0;
                false
            }
        };
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
        release_freed_memory();
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

    fn write_status(&mut self) {
        if let Err(e) = self.journal.write_status(&self.status()) {
            tracing::warn!(error = %e, "could not write the status file");
        }
        self.status_written = Some(std::time::Instant::now());
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
        let n = self.counters.consecutive_failures.min(6);
        if n == 0 && self.poll_at_once {
            return Duration::ZERO;
        }
        let base = self.config.interval;
        let delay = (base * 2u32.pow(n)).min(Duration::from_secs(60).max(base));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        delay + delay.mul_f64((nanos % 1000) as f64 / 10_000.0)
    }

    /// Takes a new configuration (SIGHUP). Whatever can change at run time changes at once:
    /// source, timeouts, TLS, token, guards, intervals, interfaces and policy (the table is
    /// then regenerated). A change that needs a restart (state directory, metrics listener,
    /// backend) refuses the whole reload, so the daemon never runs half old, half new. The
    /// role stays what promote/demote made it. Returns the keys that changed.
    pub fn reload(
        &mut self,
        new: Config,
        opts: RenderOptions,
    ) -> Result<Vec<&'static str>, String> {
        let old = &self.config;
        for (same, key) in [
            (old.state_dir == new.state_dir, "state_dir"),
            (old.metrics == new.metrics, "metrics"),
            (old.backend == new.backend, "backend"),
        ] {
            if !same {
                return Err(format!(
                    "{key} cannot change without a restart; reload refused"
                ));
            }
        }
        let fetcher = Fetcher::from_config(&new).map_err(|e| e.to_string())?;
        let mut changed = Vec::new();
        macro_rules! note {
            ($($field:ident).+) => {
                if old.$($field).+ != new.$($field).+ {
                    changed.push(stringify!($($field).+));
                }
            };
        }
        note!(source);
        note!(interval);
        note!(long_poll);
        note!(audit_interval);
        note!(request_timeout);
        note!(max_body_bytes);
        note!(bearer_token_file);
        note!(tls);
        note!(guards);
        note!(interfaces);
        note!(policy_file);
        if self.syncer.options().policy != opts.policy {
            changed.push("policy");
        }
        let source_changed = old.source != new.source;
        // Compared rendered, not by path: an edited policy file under the same name counts.
        let render_changed = self.syncer.options() != &opts;
        let role = old.role;
        self.fetcher = fetcher;
        self.syncer.set_guard(Some(new.guards));
        self.config = Config { role, ..new };
        if source_changed {
            // Another ADMIN may number its ETags differently: fetch the export whole.
            self.etag = None;
            self.etag_in_force = false;
        }
        if render_changed {
            self.syncer.set_options(opts);
            if self.config.role == Role::Active {
                if let Some(applied) = self.syncer.applied().cloned() {
                    let started = std::time::Instant::now();
                    let step = match self.syncer.reconcile(applied) {
                        Ok(outcome) => Step::Applied(outcome),
                        Err(e) => self.failed(&e),
                    };
                    tracing::info!(?step, "table regenerated for the new interfaces/policy");
                    self.record(&step, self.etag.clone(), started.elapsed());
                }
            }
        }
        self.write_status();
        Ok(changed)
    }

    /// Polls until `shutdown` resolves. Rules stay in place on exit. SIGUSR1 (promote/demote)
    /// and SIGHUP (reload, through `reload_config`) interrupt a poll in flight, so a held
    /// long-poll never delays a failover.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
        mut reload_config: impl FnMut() -> Result<(Config, RenderOptions), String>,
    ) {
        use tokio::signal::unix::{signal, SignalKind};
        tokio::pin!(shutdown);
        if let Some(addr) = self.config.metrics {
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics.serve(addr).await {
                    tracing::error!(error = %e, %addr, "metrics listener failed");
                }
            });
        }
        // Installed before the pid file exists: SIGUSR1's and SIGHUP's default action would
        // end the process.
        let mut wake = signal(SignalKind::user_defined1()).ok();
        let mut hangup = signal(SignalKind::hangup()).ok();
        if let Err(e) = super::role::write_pid(&self.config.state_dir) {
            tracing::warn!(error = %e, "cannot write the pid file; promote/demote will wait for the next poll");
        }
        // A role asked for before this start (a promotion while the daemon was down) counts.
        if let Some(role) = self.wanted_role() {
            self.config.role = role;
        }
        let step = self.start().await;
        tracing::info!(?step, "started");
        let mut audit = new_audit_timer(self.config.audit_interval).await;
        let mut poll_now = false;
        loop {
            enum Event {
                Shutdown,
                Wake,
                Reload,
                Audit,
                Polled(Step),
            }
            let delay = if poll_now {
                Duration::ZERO
            } else {
                self.next_delay()
            };
            poll_now = false;
            let event = tokio::select! {
                _ = &mut shutdown => Event::Shutdown,
                _ = recv(&mut wake) => Event::Wake,
                _ = recv(&mut hangup) => Event::Reload,
                _ = audit.tick() => Event::Audit,
                step = async {
                    tokio::time::sleep(delay).await;
                    self.poll_once().await
                } => Event::Polled(step),
            };
            match event {
                Event::Shutdown => {
                    tracing::info!("shutting down; rules stay in place");
                    return;
                }
                Event::Wake => {
                    tracing::info!("woken by SIGUSR1");
                    // The switch is local (a promotion applies the cached export); the poll
                    // that follows must stay interruptible, so it happens in the select.
                    if let Some(step) = self.switch_if_asked() {
                        tracing::info!(?step, "role switched");
                        self.write_status();
                    }
                    poll_now = true;
                }
                Event::Reload => {
                    let audit_before = self.config.audit_interval;
                    match reload_config().and_then(|(c, o)| self.reload(c, o)) {
                        Ok(changed) => tracing::info!(?changed, "configuration reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "configuration not reloaded; the running one stays")
                        }
                    }
                    if self.config.audit_interval != audit_before {
                        audit = new_audit_timer(self.config.audit_interval).await;
                    }
                }
                Event::Audit => {
                    self.audit();
                }
                Event::Polled(step) => tracing::debug!(?step, "poll"),
            }
        }
    }
}

/// Handling an export allocates several times its size (body, parsed rows, old and new state,
/// the rendered script) and frees most of it; glibc keeps freed memory for reuse, so without
/// this the resident size stays at the peak between changes, which may be hours.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap memory to the kernel; no pointers change.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An audit timer whose first tick is one period away (start-up has just reconciled).
async fn new_audit_timer(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval(period);
    timer.tick().await;
    timer
}

/// The next delivery of a signal; never, when the handler could not be installed.
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
