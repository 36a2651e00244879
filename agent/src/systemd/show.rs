//! Reading `systemctl show --timestamp=unix -p PROPERTIES UNIT…`: `Key=value` lines, one block
//! per unit in the order asked, blocks separated by an empty line.

use crate::supervise::{State, Status};

/// The properties asked for (`-p`).
pub const PROPERTIES: &str =
    "LoadState,ActiveState,SubState,MainPID,NRestarts,ExecMainCode,ExecMainStatus,ActiveEnterTimestamp";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unit {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub main_pid: u32,
    pub n_restarts: u32,
    /// `si_code` of the main process's last exit: 1 exited, 2 killed, 3 dumped core.
    pub exec_main_code: u32,
    pub exec_main_status: i32,
    /// `@<seconds>` with `--timestamp=unix`; empty if it never was active.
    pub active_enter: Option<u64>,
}

pub fn parse(text: &str) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut cur: Option<Unit> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            units.extend(cur.take());
            continue;
        }
        let u = cur.get_or_insert_with(Unit::default);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "LoadState" => u.load_state = v.to_owned(),
            "ActiveState" => u.active_state = v.to_owned(),
            "SubState" => u.sub_state = v.to_owned(),
            "MainPID" => u.main_pid = v.parse().unwrap_or(0),
            "NRestarts" => u.n_restarts = v.parse().unwrap_or(0),
            "ExecMainCode" => u.exec_main_code = v.parse().unwrap_or(0),
            "ExecMainStatus" => u.exec_main_status = v.parse().unwrap_or(0),
            "ActiveEnterTimestamp" => {
                u.active_enter = v.strip_prefix('@').and_then(|s| s.parse().ok());
            }
            _ => {}
        }
    }
    units.extend(cur);
    units
}

impl Unit {
    /// How the main process last ended, in the process supervisor's words.
    pub fn how(&self) -> String {
        match self.exec_main_code {
            1 => format!("exit status {}", self.exec_main_status),
            2 => format!("signal {}", self.exec_main_status),
            3 => format!("signal {} (core dumped)", self.exec_main_status),
            _ => format!("{} ({})", self.active_state, self.sub_state),
        }
    }

    pub fn status(&self) -> Status {
        let state = match (self.active_state.as_str(), self.sub_state.as_str()) {
            (_, "auto-restart") => State::Restarting { how: self.how() },
            ("active" | "reloading", _) if self.main_pid != 0 => {
                State::Running { pid: self.main_pid }
            }
            // On its way up or down (its main process gone, the rest of its group being
            // stopped, then perhaps systemd's restart): systemd's business until it settles
            // as inactive or failed.
            ("activating" | "deactivating" | "active" | "reloading", _) => {
                State::Restarting { how: self.how() }
            }
            _ => State::Exited { how: self.how() },
        };
        Status {
            state,
            restarts: self.n_restarts,
            since: self.active_enter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from systemd 252 (Debian 12): a running unit, one that hit its start limit
    /// after five restarts of `exit 7`, and a unit that does not exist.
    #[test]
    fn real_output_of_three_units() {
        let units = parse(include_str!("testdata/show-252.txt"));
        assert_eq!(units.len(), 3);
        assert_eq!(
            units[0].status(),
            Status {
                state: State::Running { pid: 64 },
                restarts: 0,
                since: Some(1796256943)
            }
        );
        assert_eq!(
            units[1].status().state,
            State::Exited {
                how: "exit status 7".into()
            }
        );
        assert_eq!(units[1].n_restarts, 5);
        assert_eq!(units[2].load_state, "not-found");
        assert_eq!(units[2].active_enter, None);
        assert!(matches!(units[2].status().state, State::Exited { .. }));
    }

    /// Two captures (without the timestamp): waiting for `RestartSec=` after `exit 7`, and
    /// killed with SIGKILL without `Restart=`.
    #[test]
    fn real_output_between_restarts_and_after_a_signal() {
        let units = parse(include_str!("testdata/show-252-exits.txt"));
        assert_eq!(units.len(), 2);
        assert_eq!(
            units[0].status().state,
            State::Restarting {
                how: "exit status 7".into()
            }
        );
        assert_eq!(
            units[1].status().state,
            State::Exited {
                how: "signal 9".into()
            }
        );
    }
}
