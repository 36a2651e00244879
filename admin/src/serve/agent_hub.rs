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
//! Replicas sharing a catalog in PostgreSQL keep both there instead (agent_pg.rs,
//! [`AgentHub::open_shared`]), so every replica serves every agent.

use crate::desired::RunControl;
use crate::versions::Store;
use portcullis_agent_proto::{Observed, RunState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    #[cfg(feature = "db")]
    #[error("PostgreSQL: {0}")]
    Sql(#[from] sqlx::Error),
    /// A row ADMIN did not write (shared state in PostgreSQL).
    #[error("corrupt agent state in PostgreSQL: {0}")]
    Stored(String),
    /// A blocking write's task panicked or was cancelled.
    #[error("{0}")]
    Task(String),
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
    /// Run states and reports in PostgreSQL rather than under `dir`.
    #[cfg(feature = "db")]
    shared: Option<super::agent_pg::PgHub>,
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
            #[cfg(feature = "db")]
            shared: None,
        })
    }

    /// The hub of a replica sharing its catalog in PostgreSQL at `url`: run states and reports
    /// in the database (shared by every replica, followed through `NOTIFY`), the version store
    /// (the blobs agents fetch) under `store_dir`. Spawns the task following the database; it
    /// ends with the hub.
    #[cfg(feature = "db")]
    pub async fn open_shared(
        url: &str,
        store_dir: &Path,
        tokens: Vec<(String, String)>,
    ) -> Result<Arc<AgentHub>, HubError> {
        let pg = super::agent_pg::PgHub::connect(url).await?;
        let data = Data {
            run: pg.load_run().await?,
            observed: pg.load_observed(None).await?,
        };
        let hub = Arc::new(AgentHub {
            dir: store_dir.join("agents"),
            store: Store::new(store_dir),
            tokens,
            data: Mutex::new(data),
            changed: watch::channel(0).0,
            shared: Some(pg.clone()),
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            while let Err(e) = follow(&weak, &pg).await {
                tracing::warn!(%e, "following the agents' state in PostgreSQL; reconnecting");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        Ok(hub)
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
    pub async fn set_run(
        self: &Arc<Self>,
        instance: &str,
        action: RunAction,
    ) -> Result<RunControl, HubError> {
        #[cfg(feature = "db")]
        if let Some(pg) = &self.shared {
            let c = pg.save_run(instance, action).await?;
            self.lock().run.insert(instance.to_owned(), c);
            self.changed.send_modify(|g| *g += 1);
            return Ok(c);
        }
        let (hub, i) = (self.clone(), instance.to_owned());
        tokio::task::spawn_blocking(move || hub.set_run_in_dir(&i, action))
            .await
            .map_err(|e| HubError::Task(e.to_string()))?
    }

    fn set_run_in_dir(&self, instance: &str, action: RunAction) -> Result<RunControl, HubError> {
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

    pub async fn set_observed(
        self: &Arc<Self>,
        server: &str,
        report: Observed,
    ) -> Result<(), HubError> {
        #[cfg(feature = "db")]
        if let Some(pg) = &self.shared {
            pg.save_observed(server, &report).await?;
            self.lock().observed.insert(server.to_owned(), report);
            return Ok(());
        }
        let (hub, s) = (self.clone(), server.to_owned());
        tokio::task::spawn_blocking(move || hub.set_observed_in_dir(&s, report))
            .await
            .map_err(|e| HubError::Task(e.to_string()))?
    }

    fn set_observed_in_dir(&self, server: &str, report: Observed) -> Result<(), HubError> {
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

/// Follows the database for the hub behind `weak` until the hub is gone (`Ok`) or the
/// connection breaks (the error): reloads what each notification names, everything at first.
#[cfg(feature = "db")]
async fn follow(
    weak: &std::sync::Weak<AgentHub>,
    pg: &super::agent_pg::PgHub,
) -> Result<(), HubError> {
    use super::agent_pg::{next_change, Change};
    let mut listener = pg.listen().await?;
    let mut change = Change::All;
    loop {
        let (run, observed) = match &change {
            Change::All => (Some(pg.load_run().await?), pg.load_observed(None).await?),
            Change::Run => (Some(pg.load_run().await?), BTreeMap::new()),
            Change::Observed(server) => (None, pg.load_observed(Some(server)).await?),
        };
        // In a block: neither the hub nor its lock is held while waiting for the next change.
        {
            let Some(hub) = weak.upgrade() else {
                return Ok(());
            };
            let run_changed = {
                let mut data = hub.lock();
                data.observed.extend(observed);
                run.is_some_and(|run| {
                    let changed = run != data.run;
                    data.run = run;
                    changed
                })
            };
            if run_changed {
                hub.changed.send_modify(|g| *g += 1);
            }
        }
        change = next_change(&mut listener).await?;
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
