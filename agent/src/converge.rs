//! Bringing the host to the desired state, one instance at a time, and saying what it sees.
//!
//! Per instance and pass: prepare its directory (install steps, configuration); if ADMIN names
//! another version, materialise it, switch `current`, restart, and run the type's tests against
//! the *new* process (its pid must differ from the old one's and it must stay alive) — a failure
//! switches back to the previous release and restarts that, and the version is not tried again
//! here; then hold the desired run state: start (with backoff after crashes), stop, restart.

use crate::client::Admin;
use crate::error::AgentError;
use crate::host::{Host, Local};
use crate::supervise::{Launch, Running, State, Supervisor};
use portcullis_agent_proto::{
    ChangeOutcome, Desired, DesiredInstance, Observed, ObservedInstance, ProcessState, RunState,
    TestResult,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting was healthy: its next restart is immediate.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Supervised<R> {
    local: Local,
    process: Option<R>,
    started: Option<Instant>,
    restarts: u32,
    last_exit: Option<String>,
    tests: Vec<TestResult>,
    last_change: Option<ChangeOutcome>,
    backoff: Duration,
    next_start: Option<Instant>,
    error: Option<String>,
}

// Not derived: that would require `R: Default`.
impl<R> Default for Supervised<R> {
    fn default() -> Self {
        Supervised {
            local: Local::default(),
            process: None,
            started: None,
            restarts: 0,
            last_exit: None,
            tests: Vec::new(),
            last_change: None,
            backoff: Duration::ZERO,
            next_start: None,
            error: None,
        }
    }
}

pub struct Agent<S: Supervisor> {
    pub host: Host,
    pub admin: Admin,
    pub test_deadline: Duration,
    supervisor: S,
    instances: BTreeMap<String, Supervised<S::Running>>,
}

impl<S: Supervisor> Agent<S> {
    /// Picks up what a previous agent left: instance directories and what its supervisor still
    /// runs for them (for processes: the ones in their pid files that are still those
    /// processes). Nothing is restarted.
    pub fn new(host: Host, admin: Admin, test_deadline: Duration, supervisor: S) -> Agent<S> {
        let mut instances = BTreeMap::new();
        for id in host.local_instances() {
            let local = host.local(&id);
            let process = supervisor.adopt(&id, local.process);
            if let Some(p) = &process {
                tracing::info!(instance = %id, pid = p.id().pid, "adopted running instance");
            }
            instances.insert(
                id,
                Supervised {
                    started: process.as_ref().map(|_| Instant::now()),
                    process,
                    local,
                    ..Supervised::default()
                },
            );
        }
        Agent {
            host,
            admin,
            test_deadline,
            supervisor,
            instances,
        }
    }

    pub async fn converge(&mut self, desired: &Desired) {
        self.supervisor.refresh();
        for d in &desired.instances {
            let mut s = self.instances.remove(&d.id).unwrap_or_default();
            match self.converge_one(&mut s, d, &desired.address).await {
                Ok(()) => s.error = None,
                Err(e) => {
                    if s.error.as_deref() != Some(&e.to_string()) {
                        tracing::warn!(instance = %d.id, %e, "cannot converge");
                    }
                    s.error = Some(e.to_string());
                }
            }
            self.instances.insert(d.id.clone(), s);
        }
        let removed: Vec<String> = self
            .instances
            .keys()
            .filter(|id| !desired.instances.iter().any(|d| &d.id == *id))
            .cloned()
            .collect();
        for id in removed {
            if let Some(s) = self.instances.remove(&id) {
                if let Some(p) = s.process {
                    let timeout = Duration::from_secs(10);
                    self.supervisor.stop(p, timeout).await;
                }
            }
            if let Err(e) = self.supervisor.remove(&id) {
                tracing::warn!(instance = %id, %e, "removing its supervision failed");
            }
            match self.host.uninstall(&id) {
                Ok(()) => tracing::info!(instance = %id, "removed"),
                Err(e) => tracing::warn!(instance = %id, %e, "uninstall failed"),
            }
        }
    }

    async fn converge_one(
        &self,
        s: &mut Supervised<S::Running>,
        d: &DesiredInstance,
        address: &str,
    ) -> Result<(), AgentError> {
        self.host.prepare(d)?;
        let current = self.host.current(&d.id);
        let want = d.release.as_ref().map(|r| r.id.clone());
        if want != current && want.as_ref().is_none_or(|w| !s.local.failed.contains(w)) {
            self.change(s, d, address, current.clone(), want).await?;
        }
        let should_run = d.run.is_some()
            && d.run_state == RunState::Running
            && self.host.current(&d.id).is_some();
        if !should_run {
            if let Some(p) = s.process.take() {
                let how = self.supervisor.stop(p, stop_timeout(d)).await;
                tracing::info!(instance = %d.id, %how, "stopped");
                s.last_exit = Some(how);
                s.local.process = None;
                s.local.since = now();
                self.host.save_local(&d.id, &s.local)?;
            }
            return Ok(());
        }
        if d.restart_generation > s.local.restart_generation {
            s.local.restart_generation = d.restart_generation;
            match s.process.take() {
                Some(p) => {
                    let Some(launch) = self.launch(d)? else {
                        return Ok(());
                    };
                    let (p, how) = self.supervisor.restart(p, &launch).await?;
                    s.last_exit = Some(how);
                    self.started(s, d, p)?;
                }
                None => self.start(s, d)?,
            }
            return Ok(());
        }
        if let Some(p) = &mut s.process {
            if let State::Exited { how } = p.status().state {
                tracing::warn!(instance = %d.id, %how, "exited; restarting after backoff");
                let ran = s.started.map_or(Duration::ZERO, |t| t.elapsed());
                s.backoff = if ran >= HEALTHY_RUN || s.backoff.is_zero() {
                    FIRST_BACKOFF
                } else {
                    (s.backoff * 2).min(MAX_BACKOFF)
                };
                s.next_start = Some(Instant::now() + s.backoff);
                s.last_exit = Some(how);
                s.process = None;
                s.local.process = None;
                s.local.since = now();
                self.host.save_local(&d.id, &s.local)?;
            }
        }
        if s.process.is_none() && s.next_start.is_none_or(|t| Instant::now() >= t) {
            if s.next_start.is_some() {
                s.restarts += 1;
            }
            self.start(s, d)?;
        }
        Ok(())
    }

    /// How `d` runs here, `None` if it does not run at all.
    fn launch(&self, d: &DesiredInstance) -> Result<Option<Launch>, AgentError> {
        let Some(run) = &d.run else { return Ok(None) };
        let argv = run
            .command
            .iter()
            .map(|a| self.host.expand(&d.id, a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = run
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.host.expand(&d.id, v)?)))
            .collect::<Result<Vec<_>, AgentError>>()?;
        let dir = self.host.instance_dir(&d.id)?;
        Ok(Some(Launch {
            id: d.id.clone(),
            argv,
            env,
            log: dir.join("output.log"),
            dir,
            stop_timeout: stop_timeout(d),
        }))
    }

    fn start(&self, s: &mut Supervised<S::Running>, d: &DesiredInstance) -> Result<(), AgentError> {
        let Some(launch) = self.launch(d)? else {
            return Ok(());
        };
        let p = self.supervisor.start(&launch)?;
        self.started(s, d, p)
    }

    fn started(
        &self,
        s: &mut Supervised<S::Running>,
        d: &DesiredInstance,
        p: S::Running,
    ) -> Result<(), AgentError> {
        tracing::info!(instance = %d.id, pid = p.id().pid, "started");
        s.local.process = Some(p.id());
        s.local.since = now();
        s.process = Some(p);
        s.started = Some(Instant::now());
        s.next_start = None;
        self.host.save_local(&d.id, &s.local)
    }

    /// Install, switch, restart, test; roll back on failure.
    async fn change(
        &self,
        s: &mut Supervised<S::Running>,
        d: &DesiredInstance,
        address: &str,
        from: Option<String>,
        to: Option<String>,
    ) -> Result<(), AgentError> {
        let mut outcome = ChangeOutcome {
            from: from.clone(),
            to: to.clone().unwrap_or_default(),
            outcome: "ok".into(),
            error: None,
            at: now(),
        };
        if let Some(release) = &d.release {
            let fetched = self
                .host
                .materialise(release, async |sha: &str| self.admin.blob(sha).await)
                .await;
            if let Err(e) = fetched {
                outcome.outcome = "failed".into();
                outcome.error = Some(e.to_string());
                s.last_change = Some(outcome);
                return Err(e);
            }
        }
        let runs = d.run.is_some() && d.run_state == RunState::Running;
        let old_pid = s.process.as_ref().map(|p| p.id().pid);
        if let Some(p) = s.process.take() {
            s.last_exit = Some(self.supervisor.stop(p, stop_timeout(d)).await);
        }
        self.host.switch_current(&d.id, to.as_deref())?;
        tracing::info!(instance = %d.id, ?from, ?to, "switched");
        if runs && to.is_some() {
            self.start(s, d)?;
            let new_pid = s.process.as_ref().map(|p| p.id().pid);
            let proc_ref = &mut s.process;
            let results =
                crate::probe::run(address, &d.tests, self.test_deadline, || {
                    match proc_ref.as_mut() {
                        Some(p) if Some(p.id().pid) == old_pid => {
                            Err("the pid did not change".into())
                        }
                        Some(p) => match exited(p) {
                            Some(how) => Err(format!("the new process exited: {how}")),
                            None => Ok(()),
                        },
                        None => Err("not running".into()),
                    }
                })
                .await;
            // A process that died after its last test passed failed too.
            let died = s.process.as_mut().and_then(exited);
            let passed = results.iter().all(|r| r.ok) && died.is_none() && new_pid != old_pid;
            s.tests = results;
            if !passed {
                let why = died
                    .map(|how| format!("the new process exited: {how}"))
                    .or_else(|| {
                        s.tests
                            .iter()
                            .find(|r| !r.ok)
                            .map(|r| format!("{}: {}", r.name, r.detail))
                    });
                tracing::warn!(instance = %d.id, ?to, ?why, "tests failed; rolling back");
                if let Some(p) = s.process.take() {
                    s.last_exit = Some(self.supervisor.stop(p, stop_timeout(d)).await);
                }
                self.host.switch_current(&d.id, from.as_deref())?;
                if let Some(v) = &to {
                    s.local.failed.insert(v.clone());
                }
                if from.is_some() {
                    self.start(s, d)?;
                }
                outcome.outcome = "rolled-back".into();
                outcome.error = why;
            }
        }
        self.host.save_local(&d.id, &s.local)?;
        s.last_change = Some(outcome);
        Ok(())
    }

    /// What the agent sees now.
    pub fn observed(&mut self, desired: Option<&Desired>, etag: Option<&str>) -> Observed {
        let mut instances = Vec::new();
        for (id, s) in &mut self.instances {
            let runs = desired
                .and_then(|d| d.instances.iter().find(|i| &i.id == id))
                .and_then(|i| i.run.as_ref())
                .is_some();
            let status = s.process.as_mut().map(|p| p.status());
            let pid = match status.as_ref().map(|st| &st.state) {
                Some(State::Running { pid }) => Some(*pid),
                _ => None,
            };
            let alive = pid.is_some();
            // A supervisor restarting it on its own is in its backoff: failed for now.
            let restarting = matches!(
                status.as_ref().map(|st| &st.state),
                Some(State::Restarting { .. })
            );
            let version = self.host.current(id);
            // A first install that failed leaves nothing to run: that is a failure, not a stop.
            let never_installed =
                version.is_none() && s.last_change.as_ref().is_some_and(|c| c.outcome != "ok");
            let state = if alive {
                ProcessState::Running
            } else if !runs {
                ProcessState::Installed
            } else if restarting || s.next_start.is_some() || s.error.is_some() || never_installed {
                ProcessState::Failed
            } else {
                ProcessState::Stopped
            };
            instances.push(ObservedInstance {
                id: id.clone(),
                version,
                state,
                pid,
                since: status
                    .as_ref()
                    .and_then(|st| st.since)
                    .unwrap_or(s.local.since),
                restarts: s.restarts + status.as_ref().map_or(0, |st| st.restarts),
                last_exit: match status.map(|st| st.state) {
                    Some(State::Restarting { how }) => Some(how),
                    _ => s.last_exit.clone(),
                },
                tests: s.tests.clone(),
                last_change: s.last_change.clone(),
            });
        }
        Observed {
            at: now(),
            desired_etag: etag.map(str::to_owned),
            instances,
        }
    }
}

/// `Some(how)` once the process is not running, whether or not its supervisor restarts it.
fn exited<R: Running>(p: &mut R) -> Option<String> {
    match p.status().state {
        State::Running { .. } => None,
        State::Restarting { how } | State::Exited { how } => Some(how),
    }
}

fn stop_timeout(d: &DesiredInstance) -> Duration {
    Duration::from_millis(d.run.as_ref().map_or(10_000, |r| r.stop_timeout_ms))
}

#[cfg(test)]
#[path = "converge_tests.rs"]
mod tests;
