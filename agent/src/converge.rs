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
use crate::process::{self, Process};
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

#[derive(Default)]
struct Supervised {
    local: Local,
    process: Option<Process>,
    started: Option<Instant>,
    restarts: u32,
    last_exit: Option<String>,
    tests: Vec<TestResult>,
    last_change: Option<ChangeOutcome>,
    backoff: Duration,
    next_start: Option<Instant>,
    error: Option<String>,
}

pub struct Agent {
    pub host: Host,
    pub admin: Admin,
    pub test_deadline: Duration,
    instances: BTreeMap<String, Supervised>,
}

impl Agent {
    /// Picks up what a previous agent left: instance directories and the processes in their
    /// pid files that are still those processes. Nothing is restarted.
    pub fn new(host: Host, admin: Admin, test_deadline: Duration) -> Agent {
        let mut instances = BTreeMap::new();
        for id in host.local_instances() {
            let local = host.local(&id);
            let process = local.process.and_then(Process::adopt);
            if let Some(p) = &process {
                tracing::info!(instance = %id, pid = p.id.pid, "adopted running instance");
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
            instances,
        }
    }

    pub async fn converge(&mut self, desired: &Desired) {
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
                    p.stop(timeout).await;
                }
            }
            match self.host.uninstall(&id) {
                Ok(()) => tracing::info!(instance = %id, "removed"),
                Err(e) => tracing::warn!(instance = %id, %e, "uninstall failed"),
            }
        }
    }

    async fn converge_one(
        &self,
        s: &mut Supervised,
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
                let how = p.stop(stop_timeout(d)).await;
                tracing::info!(instance = %d.id, %how, "stopped");
                s.last_exit = Some(how);
                s.local.process = None;
                s.local.since = now();
                self.host.save_local(&d.id, &s.local)?;
            }
            return Ok(());
        }
        if d.restart_generation > s.local.restart_generation {
            if let Some(p) = s.process.take() {
                s.last_exit = Some(p.stop(stop_timeout(d)).await);
            }
            s.local.restart_generation = d.restart_generation;
            self.start(s, d)?;
            return Ok(());
        }
        if let Some(p) = &mut s.process {
            if let Some(how) = p.exited() {
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

    fn start(&self, s: &mut Supervised, d: &DesiredInstance) -> Result<(), AgentError> {
        let Some(run) = &d.run else { return Ok(()) };
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
        let p = process::spawn(&argv, &env, &dir, &dir.join("output.log"))?;
        tracing::info!(instance = %d.id, pid = p.id.pid, "started");
        s.local.process = Some(p.id);
        s.local.since = now();
        s.process = Some(p);
        s.started = Some(Instant::now());
        s.next_start = None;
        self.host.save_local(&d.id, &s.local)
    }

    /// Install, switch, restart, test; roll back on failure.
    async fn change(
        &self,
        s: &mut Supervised,
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
        let old_pid = s.process.as_ref().map(|p| p.id.pid);
        if let Some(p) = s.process.take() {
            s.last_exit = Some(p.stop(stop_timeout(d)).await);
        }
        self.host.switch_current(&d.id, to.as_deref())?;
        tracing::info!(instance = %d.id, ?from, ?to, "switched");
        if runs && to.is_some() {
            self.start(s, d)?;
            let new_pid = s.process.as_ref().map(|p| p.id.pid);
            let proc_ref = &mut s.process;
            let results =
                crate::probe::run(address, &d.tests, self.test_deadline, || {
                    match proc_ref.as_mut() {
                        Some(p) if Some(p.id.pid) == old_pid => {
                            Err("the pid did not change".into())
                        }
                        Some(p) => match p.exited() {
                            Some(how) => Err(format!("the new process exited: {how}")),
                            None => Ok(()),
                        },
                        None => Err("not running".into()),
                    }
                })
                .await;
            // A process that died after its last test passed failed too.
            let died = s.process.as_mut().and_then(|p| p.exited());
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
                    s.last_exit = Some(p.stop(stop_timeout(d)).await);
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
            let alive = s.process.as_mut().is_some_and(|p| p.exited().is_none());
            let version = self.host.current(id);
            // A first install that failed leaves nothing to run: that is a failure, not a stop.
            let never_installed =
                version.is_none() && s.last_change.as_ref().is_some_and(|c| c.outcome != "ok");
            let state = if alive {
                ProcessState::Running
            } else if !runs {
                ProcessState::Installed
            } else if s.next_start.is_some() || s.error.is_some() || never_installed {
                ProcessState::Failed
            } else {
                ProcessState::Stopped
            };
            instances.push(ObservedInstance {
                id: id.clone(),
                version,
                state,
                pid: if alive {
                    s.process.as_ref().map(|p| p.id.pid)
                } else {
                    None
                },
                since: s.local.since,
                restarts: s.restarts,
                last_exit: s.last_exit.clone(),
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

fn stop_timeout(d: &DesiredInstance) -> Duration {
    Duration::from_millis(d.run.as_ref().map_or(10_000, |r| r.stop_timeout_ms))
}
