//! Who runs an instance's process: the agent itself ([`Processes`], `--supervisor process`) or
//! systemd (`crate::systemd::Units`, `--supervisor systemd`). Converging needs only what is
//! here: start, stop, restart, adopt what a previous agent left running, and observe.
//!
//! Restarts after a crash: the process supervisor reports every exit at once and converging
//! restarts it with its backoff; systemd restarts a unit itself (`Restart=on-failure`) and the
//! agent only sees [`State::Restarting`], until systemd gives up (its start limit) or the
//! process exited cleanly — then [`State::Exited`] and the agent's backoff takes over.

use crate::error::AgentError;
use crate::process::{self, Process, ProcessId};
use std::path::PathBuf;
use std::time::Duration;

/// How to run one instance, with the host paths already filled in.
pub struct Launch {
    pub id: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    /// SIGTERM, then SIGKILL after this long.
    pub stop_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Running {
        pid: u32,
    },
    /// Exited, and its supervisor is about to start it again: nothing for the agent to do.
    Restarting {
        how: String,
    },
    /// Exited for good (until the agent starts it).
    Exited {
        how: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// Restarts the supervisor made on its own (systemd's `NRestarts`); the agent counts its own.
    pub restarts: u32,
    /// When it entered its running state, if the supervisor knows (seconds since the epoch).
    pub since: Option<u64>,
}

/// One running (or adopted) instance.
pub trait Running {
    /// What `agent.json` records to recognise it after an agent restart.
    fn id(&self) -> ProcessId;
    fn status(&mut self) -> Status;
}

pub trait Supervisor {
    type Running: Running;
    /// What a previous agent left running for instance `id` (`recorded`: its `agent.json`
    /// entry), if it still runs. Never starts or restarts anything.
    fn adopt(&self, id: &str, recorded: Option<ProcessId>) -> Option<Self::Running>;
    fn start(&self, launch: &Launch) -> Result<Self::Running, AgentError>;
    /// Stops it (SIGTERM, then SIGKILL after `timeout`); returns how it ended.
    async fn stop(&self, running: Self::Running, timeout: Duration) -> String;
    /// Stops and starts again; returns the new process and how the old one ended.
    async fn restart(
        &self,
        running: Self::Running,
        launch: &Launch,
    ) -> Result<(Self::Running, String), AgentError> {
        let how = self.stop(running, launch.stop_timeout).await;
        Ok((self.start(launch)?, how))
    }
    /// Forgets an instance that is no longer placed here (after [`Supervisor::stop`]).
    fn remove(&self, id: &str) -> Result<(), AgentError>;
    /// Called once per pass before the instances are looked at: a supervisor whose
    /// observations cost a process (`systemctl show`) takes them all at once here.
    fn refresh(&self) {}
}

/// `--supervisor process`: children of the agent in their own process groups.
pub struct Processes;

impl Running for Process {
    fn id(&self) -> ProcessId {
        self.id
    }

    fn status(&mut self) -> Status {
        let state = match self.exited() {
            None => State::Running { pid: self.id.pid },
            Some(how) => State::Exited { how },
        };
        Status {
            state,
            restarts: 0,
            since: None,
        }
    }
}

impl Supervisor for Processes {
    type Running = Process;

    fn adopt(&self, _id: &str, recorded: Option<ProcessId>) -> Option<Process> {
        recorded.and_then(Process::adopt)
    }

    fn start(&self, l: &Launch) -> Result<Process, AgentError> {
        process::spawn(&l.argv, &l.env, &l.dir, &l.log)
    }

    async fn stop(&self, running: Process, timeout: Duration) -> String {
        running.stop(timeout).await
    }

    fn remove(&self, _id: &str) -> Result<(), AgentError> {
        Ok(())
    }
}
