//! One supervised process: started in its own process group (so the agent's own signals and
//! death do not reach it), recognised again after an agent restart by its pid *and* its start
//! time (a recycled pid is not the instance), stopped with SIGTERM then SIGKILL.

use crate::error::{io, AgentError};
use rustix::process::{kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the pid file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot.
    pub start_time: u64,
}

pub struct Process {
    pub id: ProcessId,
    /// Our own child (reaped here, exit status known), or adopted after an agent restart.
    child: Option<Child>,
}

/// The start time of a live (not zombie) process; `None` when there is none.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state (field 3) comes field 4; the start time is field 22.
    fields.nth(18)?.parse().ok()
}

pub fn spawn(
    argv: &[String],
    env: &[(String, String)],
    dir: &Path,
    log: &Path,
) -> Result<Process, AgentError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| AgentError::Refused("run.command is empty".into()))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    let child = Command::new(program)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        // A file, not a pipe: the service must outlive the agent without dying of SIGPIPE.
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| AgentError::Refused(format!("starting {program}: {e}")))?;
    let pid = child.id();
    // Just forked: it is alive (or a zombie, whose exit try_wait reports next).
    let start_time = start_time(pid).unwrap_or(0);
    Ok(Process {
        id: ProcessId { pid, start_time },
        child: Some(child),
    })
}

impl Process {
    /// The process in a pid file, if it is still that process.
    pub fn adopt(id: ProcessId) -> Option<Process> {
        (start_time(id.pid) == Some(id.start_time)).then_some(Process { id, child: None })
    }

    /// `None` while it runs; otherwise how it ended.
    pub fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            Some(c) => match c.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(describe(status)),
                Err(e) => Some(format!("unknown ({e})")),
            },
            None => match start_time(self.id.pid) {
                Some(t) if t == self.id.start_time => None,
                _ => Some("unknown (not a child of this agent)".into()),
            },
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = i32::try_from(self.id.pid).ok().and_then(Pid::from_raw) {
            // The whole group: a shell wrapper's children go too.
            let _ = kill_process_group(pid, sig);
        }
    }

    /// SIGTERM, then SIGKILL after `timeout`; returns how it ended.
    pub async fn stop(mut self, timeout: Duration) -> String {
        if let Some(how) = self.exited() {
            return how;
        }
        self.signal(Signal::TERM);
        let start = Instant::now();
        loop {
            if let Some(how) = self.exited() {
                return how;
            }
            if start.elapsed() >= timeout {
                self.signal(Signal::KILL);
            }
            if start.elapsed() >= timeout + Duration::from_secs(5) {
                return "did not exit after SIGKILL".into();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> Process {
        spawn(
            &["sleep".into(), "30".into()],
            &[],
            dir,
            &dir.join("out.log"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_process_is_adopted_only_with_its_own_start_time_and_stops_on_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let p = sleeper(dir.path());
        assert!(p.id.start_time > 0);
        assert!(Process::adopt(p.id).is_some());
        // Same pid, other start time: a recycled pid, not the instance.
        let recycled = ProcessId {
            start_time: p.id.start_time + 1,
            ..p.id
        };
        assert!(Process::adopt(recycled).is_none());
        let id = p.id;
        let how = p.stop(Duration::from_secs(5)).await;
        assert_eq!(how, "signal 15");
        assert!(Process::adopt(id).is_none(), "stopped, so nothing to adopt");
    }

    #[tokio::test]
    async fn an_exit_status_is_reported_and_a_missing_program_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = spawn(
            &["sh".into(), "-c".into(), "exit 3".into()],
            &[],
            dir.path(),
            &dir.path().join("out.log"),
        )
        .unwrap();
        let how = loop {
            if let Some(how) = p.exited() {
                break how;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(how, "exit status 3");
        let missing = spawn(
            &["/nonexistent/program".into()],
            &[],
            dir.path(),
            &dir.path().join("out.log"),
        );
        assert!(matches!(missing, Err(AgentError::Refused(_))));
    }
}
