//! `--supervisor systemd`: one generated unit per instance, run by the system manager.
//!
//! The agent writes `<unit dir>/portcullis-instance-<escaped id>.service` (atomically; a
//! `daemon-reload` only when its content changed), controls it with `systemctl
//! start|stop|reset-failed|daemon-reload` and observes it with `systemctl show`. systemd
//! restarts a crashed instance itself (`Restart=on-failure`); the unit outlives the agent, and
//! a restarted agent adopts every unit that is active (or between restarts) — it restarts
//! nothing healthy. The calls block (a `systemctl` run takes milliseconds; `stop` waits for
//! the process and runs off the runtime's threads).

mod show;
mod unit;

use crate::error::{io, AgentError};
use crate::host::write_atomically;
use crate::process::{self, ProcessId};
use crate::supervise::{Launch, Running, State, Status, Supervisor};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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

pub struct Units {
    /// Where the units go: `/run/systemd/system` (runtime units: gone after a reboot, when
    /// the agent starts the instances again).
    pub unit_dir: PathBuf,
}

/// A unit the agent started or adopted.
pub struct UnitRef {
    name: String,
    /// The last main pid seen (systemd's restarts change it).
    pid: u32,
}

impl Running for UnitRef {
    fn id(&self) -> ProcessId {
        ProcessId {
            pid: self.pid,
            start_time: process::start_time(self.pid).unwrap_or(0),
        }
    }

    fn status(&mut self) -> Status {
        match show(&self.name) {
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
            State::Running { pid } => Some(UnitRef { name, pid }),
            // systemd is restarting it: its business, not a reason to start it again.
            State::Restarting { .. } => Some(UnitRef { name, pid: 0 }),
            State::Exited { .. } => None,
        }
    }

    fn start(&self, l: &Launch) -> Result<UnitRef, AgentError> {
        let name = self.install(l)?;
        // A unit that hit its start limit refuses to start until its failure is cleared.
        let _ = systemctl(&["reset-failed", &name]);
        systemctl(&["start", &name])?;
        let pid = show(&name)?.main_pid;
        Ok(UnitRef { name, pid })
    }

    async fn stop(&self, running: UnitRef, _timeout: Duration) -> String {
        // The unit's `TimeoutStopSec=` (the instance's stop-timeout) bounds the wait.
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

    fn remove(&self, id: &str) -> Result<(), AgentError> {
        let name = unit_name(id);
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
