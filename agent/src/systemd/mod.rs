//! `--supervisor systemd`: one generated unit per instance, run by the system manager.
//!
//! The agent writes `<unit dir>/portcullis-instance-<escaped id>.service` (atomically; a
//! `daemon-reload` only when its content changed), controls it with `systemctl
//! start|stop|reset-failed|daemon-reload` and observes it with `systemctl show`. systemd
//! restarts a crashed instance itself (`Restart=on-failure`); the unit outlives the agent, and
//! a restarted agent adopts every unit that is active (or between restarts) — it restarts
//! nothing healthy. The calls block (a `systemctl` run takes milliseconds; `stop` waits for
//! the process and runs off the runtime's threads). A `systemctl show` costs ~10 ms of wall
//! time, so a pass asks once for every unit ([`Supervisor::refresh`]) and the instances read
//! that snapshot; a unit started or stopped since is asked about on its own.

mod show;
mod unit;

use crate::error::{io, AgentError};
use crate::host::write_atomically;
use crate::process::{self, ProcessId};
use crate::supervise::{Launch, Running, State, Status, Supervisor};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a pass's snapshot answers for (a pass is every 250 ms).
const SNAPSHOT_AGE: Duration = Duration::from_millis(200);

use unit::unit_name;

/// Runs `systemctl ARGS`; its stdout, or its stderr as the error.
fn systemctl(args: &[&str]) -> Result<String, AgentError> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| AgentError::Refused(format!("running systemctl: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(AgentError::Refused(format!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn show(name: &str) -> Result<show::Unit, AgentError> {
    let text = systemctl(&["show", "--timestamp=unix", "-p", show::PROPERTIES, name])?;
    show::parse(&text)
        .into_iter()
        .next()
        .ok_or_else(|| AgentError::Refused(format!("systemctl show {name}: no output")))
}

/// One `systemctl show` of every unit the agent handles.
#[derive(Default)]
struct Snapshot {
    /// The units it handed out and not removed since.
    known: BTreeSet<String>,
    at: Option<Instant>,
    units: BTreeMap<String, show::Unit>,
}

type Shared = Rc<RefCell<Snapshot>>;

pub struct Units {
    /// Where the units go: `/run/systemd/system` (runtime units: gone after a reboot, when
    /// the agent starts the instances again).
    unit_dir: PathBuf,
    snapshot: Shared,
}

/// A unit the agent started or adopted.
pub struct UnitRef {
    name: String,
    /// The last main pid seen (systemd's restarts change it).
    pid: u32,
    snapshot: Shared,
}

impl UnitRef {
    fn observe(&self) -> Result<show::Unit, AgentError> {
        let cached = {
            let s = self.snapshot.borrow();
            s.at.filter(|at| at.elapsed() < SNAPSHOT_AGE)
                .and_then(|_| s.units.get(&self.name).cloned())
        };
        match cached {
            Some(u) => Ok(u),
            None => show(&self.name),
        }
    }
}

impl Running for UnitRef {
    fn id(&self) -> ProcessId {
        ProcessId {
            pid: self.pid,
            start_time: process::start_time(self.pid).unwrap_or(0),
        }
    }

    fn status(&mut self) -> Status {
        match self.observe() {
            Ok(u) => {
                let st = u.status();
                if let State::Running { pid } = st.state {
                    self.pid = pid;
                }
                st
            }
            Err(e) => Status {
                state: State::Exited {
                    how: format!("unknown ({e})"),
                },
                restarts: 0,
                since: None,
            },
        }
    }
}

impl Units {
    pub fn new(unit_dir: PathBuf) -> Units {
        Units {
            unit_dir,
            snapshot: Shared::default(),
        }
    }

    fn handle(&self, name: String, pid: u32) -> UnitRef {
        let mut s = self.snapshot.borrow_mut();
        // What the snapshot says about it predates this start or stop.
        s.units.remove(&name);
        s.known.insert(name.clone());
        UnitRef {
            name,
            pid,
            snapshot: self.snapshot.clone(),
        }
    }

    /// Fails unless a systemd manager answers `systemctl`.
    pub fn check(&self) -> Result<(), AgentError> {
        systemctl(&["show", "-p", "Version", "--value"])
            .map(|_| ())
            .map_err(|e| AgentError::Refused(format!("--supervisor systemd: {e}")))
    }

    /// Writes the unit if its content changed, then reloads systemd.
    fn install(&self, l: &Launch) -> Result<String, AgentError> {
        let name = unit_name(&l.id);
        let text = unit::render(l)?;
        let path = self.unit_dir.join(&name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            write_atomically(&path, text.as_bytes())?;
            systemctl(&["daemon-reload"])?;
        }
        Ok(name)
    }
}

impl Supervisor for Units {
    type Running = UnitRef;

    fn adopt(&self, id: &str, _recorded: Option<ProcessId>) -> Option<UnitRef> {
        let name = unit_name(id);
        let u = show(&name)
            .inspect_err(|e| tracing::warn!(instance = id, %e, "cannot observe its unit"))
            .ok()?;
        match u.status().state {
            State::Running { pid } => Some(self.handle(name, pid)),
            // systemd is restarting it: its business, not a reason to start it again.
            State::Restarting { .. } => Some(self.handle(name, 0)),
            State::Exited { .. } => None,
        }
    }

    fn start(&self, l: &Launch) -> Result<UnitRef, AgentError> {
        let name = self.install(l)?;
        // A unit that hit its start limit refuses to start until its failure is cleared.
        let _ = systemctl(&["reset-failed", &name]);
        let started = systemctl(&["start", &name]);
        let unit = self.handle(name, 0);
        started?;
        let pid = show(&unit.name)?.main_pid;
        Ok(UnitRef { pid, ..unit })
    }

    async fn stop(&self, running: UnitRef, _timeout: Duration) -> String {
        // The unit's `TimeoutStopSec=` (the instance's stop-timeout) bounds the wait.
        self.snapshot.borrow_mut().units.remove(&running.name);
        let name = running.name;
        let stopped = tokio::task::spawn_blocking(move || {
            systemctl(&["stop", &name])?;
            show(&name)
        })
        .await;
        match stopped {
            Ok(Ok(u)) => u.how(),
            Ok(Err(e)) => format!("unknown ({e})"),
            Err(e) => format!("unknown ({e})"),
        }
    }

    fn refresh(&self) {
        let names: Vec<String> = self.snapshot.borrow().known.iter().cloned().collect();
        if names.is_empty() {
            return;
        }
        let mut args = vec!["show", "--timestamp=unix", "-p", show::PROPERTIES];
        args.extend(names.iter().map(String::as_str));
        let at = Instant::now();
        let units = match systemctl(&args) {
            Ok(text) => show::parse(&text),
            Err(e) => {
                tracing::warn!(%e, "observing the units");
                Vec::new()
            }
        };
        let mut s = self.snapshot.borrow_mut();
        // One block per unit, in the order asked; anything else is not trusted.
        if units.len() == names.len() {
            s.units = names.into_iter().zip(units).collect();
            s.at = Some(at);
        } else {
            s.units.clear();
            s.at = None;
        }
    }

    fn remove(&self, id: &str) -> Result<(), AgentError> {
        let name = unit_name(id);
        {
            let mut s = self.snapshot.borrow_mut();
            s.known.remove(&name);
            s.units.remove(&name);
        }
        let path = self.unit_dir.join(&name);
        if !path.exists() {
            return Ok(());
        }
        let _ = systemctl(&["stop", &name]);
        std::fs::remove_file(&path).map_err(io(&path))?;
        systemctl(&["daemon-reload"])?;
        // Forget a failed state too, so nothing of the instance stays loaded.
        let _ = systemctl(&["reset-failed", &name]);
        Ok(())
    }
}
