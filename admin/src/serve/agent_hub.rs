//! What ADMIN keeps for its host agents, beside the catalog: per-server tokens, each
//! instance's desired run state (start/stop/restart), and the last report of every agent.
//!
//! ```text
//! <state>/agents/run-state.json          instance id -> { state, restart_generation }
//! <state>/agents/observed/<server>.json  the last PUT /v1/servers/{server}/observed
//! ```
//!
//! Both are written atomically before they are served, so an ADMIN restart keeps a stopped
//! instance stopped. A change bumps a `watch` generation that desired-state long-polls wait on.

use crate::desired::RunControl;
use crate::versions::Store;
use portcullis_agent_proto::{Observed, RunState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}:{line}: expected `SERVER TOKEN`")]
    TokenLine { path: PathBuf, line: usize },
}

#[derive(Default)]
struct Data {
    run: BTreeMap<String, RunControl>,
    observed: BTreeMap<String, Observed>,
}

pub struct AgentHub {
    dir: PathBuf,
    store: Store,
    /// (server, token): a token lets its agent read that server's desired state and the
    /// blobs it references, and write that server's report — nothing else.
    tokens: Vec<(String, String)>,
    data: Mutex<Data>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub")
            .field("dir", &self.dir)
            .field("servers_with_tokens", &self.tokens.len())
            .finish()
    }
}

fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T, HubError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| HubError::Corrupt {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(HubError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `SERVER TOKEN` per line; `#` comments and blank lines skipped.
pub fn read_tokens(path: &Path) -> Result<Vec<(String, String)>, HubError> {
    let text = std::fs::read_to_string(path).map_err(|source| HubError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(server), Some(token), None) => out.push((server.to_owned(), token.to_owned())),
            _ => {
                return Err(HubError::TokenLine {
                    path: path.to_owned(),
                    line: n + 1,
                })
            }
        }
    }
    Ok(out)
}

impl AgentHub {
    /// The hub under `state_dir` (the version store's directory too: blobs are served from it).
    pub fn open(state_dir: &Path, tokens: Vec<(String, String)>) -> Result<AgentHub, HubError> {
        let dir = state_dir.join("agents");
        let run = read_json(&dir.join("run-state.json"))?;
        let mut observed = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(dir.join("observed")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(server) = name.strip_suffix(".json") {
                    observed.insert(server.to_owned(), read_json(&e.path())?);
                }
            }
        }
        Ok(AgentHub {
            dir,
            store: Store::new(state_dir),
            tokens,
            data: Mutex::new(Data { run, observed }),
            changed: watch::channel(0).0,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server `token` belongs to, compared in constant time against every token.
    pub fn server_of_token(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (server, t) in &self.tokens {
            if super::auth::constant_time_eq(token.as_bytes(), t.as_bytes()) {
                found = Some(server.as_str());
            }
        }
        found
    }

    /// Whether `server` has an agent (a token in `--agent-tokens`): its instances' versions are
    /// changed through the agent rather than copied into `--roots` on the ADMIN host.
    pub fn manages(&self, server: &str) -> bool {
        self.tokens.iter().any(|(s, _)| s == server)
    }

    pub fn run_control(&self, instance: &str) -> RunControl {
        self.lock().run.get(instance).copied().unwrap_or_default()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Sets the desired run state (`restart`: running, and the restart generation bumped).
    /// Written before it is served. Returns the new control.
    pub fn set_run(&self, instance: &str, action: RunAction) -> Result<RunControl, HubError> {
        let mut data = self.lock();
        let mut c = data.run.get(instance).copied().unwrap_or_default();
        match action {
            RunAction::Start => c.state = RunState::Running,
            RunAction::Stop => c.state = RunState::Stopped,
            RunAction::Restart => {
                c.state = RunState::Running;
                c.restart_generation += 1;
            }
        }
        let mut next = data.run.clone();
        next.insert(instance.to_owned(), c);
        self.write(&self.dir.join("run-state.json"), &next)?;
        data.run = next;
        drop(data);
        self.changed.send_modify(|g| *g += 1);
        Ok(c)
    }

    pub fn observed(&self, server: &str) -> Option<Observed> {
        self.lock().observed.get(server).cloned()
    }

    pub fn set_observed(&self, server: &str, report: Observed) -> Result<(), HubError> {
        let path = self.dir.join("observed").join(format!("{server}.json"));
        self.write(&path, &report)?;
        self.lock().observed.insert(server.to_owned(), report);
        Ok(())
    }

    fn write(&self, path: &Path, value: &impl serde::Serialize) -> Result<(), HubError> {
        let io = |source| HubError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        crate::durable::write_atomically(path, &bytes).map_err(io)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunAction {
    Start,
    Stop,
    Restart,
}

impl RunAction {
    pub fn parse(s: &str) -> Option<RunAction> {
        match s {
            "start" => Some(RunAction::Start),
            "stop" => Some(RunAction::Stop),
            "restart" => Some(RunAction::Restart),
            _ => None,
        }
    }
}
