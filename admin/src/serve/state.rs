//! What the server holds: the current snapshot behind a `watch` channel (readers clone an
//! `Arc`, long-polls wait on `changed()`), the outcome of the last reload, and the one writer
//! of `inventory.yaml`.

pub use super::snapshot::{revision, LocationExport, Snapshot};
use crate::catalog::{Catalog, Sources, INVENTORY_FILE, META_DIR};
use crate::error::CatalogErrors;
use crate::inventory::State;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Semaphore};

#[derive(Clone, Debug)]
pub struct Options {
    /// Bearer token for mutations (and reads with `auth_reads`); its audit identity is
    /// `token`. With neither it nor `tokens`, mutations are refused.
    pub token: Option<String>,
    /// More tokens, each with the name the audit log records for it: (name, token).
    pub tokens: Vec<(String, String)>,
    /// The append-only audit log of inventory changes (JSON lines); `None`:
    /// `<catalog>/audit.jsonl`.
    pub audit_log: Option<PathBuf>,
    pub auth_reads: bool,
    pub reload_interval: Duration,
    /// Longest long-poll; longer `?wait=` values are clamped to it.
    pub max_wait: Duration,
    /// Long-polls held at once; beyond it a request is answered at once.
    pub max_waiters: usize,
    /// Request body limit in bytes.
    pub body_limit: usize,
    /// Serve HTTPS with these files.
    pub tls: Option<super::tls::TlsFiles>,
    /// The version store and instance roots (`/v1/versions`, install/upgrade/downgrade);
    /// `None`: those endpoints answer 404.
    pub versions: Option<crate::versions::Deployer>,
    /// Host agents (`/v1/servers/{name}/desired`, blobs, reports, start/stop); `None`: those
    /// endpoints answer 404.
    pub agents: Option<std::sync::Arc<super::AgentHub>>,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address at most, so one client cannot take every
    /// slot (a gateway long-polls with one, an operator's script a few).
    pub max_connections_per_client: usize,
    /// Time a client has to send a request's headers (and to finish a TLS handshake).
    pub header_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: None,
            tokens: Vec::new(),
            audit_log: None,
            auth_reads: false,
            reload_interval: Duration::from_secs(1),
            max_wait: Duration::from_secs(60),
            max_waiters: 10_000,
            body_limit: 16 * 1024,
            tls: None,
            versions: None,
            agents: None,
            max_connections: 16_384,
            max_connections_per_client: 64,
            header_timeout: Duration::from_secs(20),
        }
    }
}

/// The outcome of the last reload attempt (`/v1/status`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    /// Seconds since the epoch of the last attempt.
    pub last_attempt: Option<u64>,
    /// Errors of the last attempt: the catalog on disk is invalid and the previous one is
    /// still served.
    pub errors: Option<CatalogErrors>,
}

/// Files and their (mtime, size): a change in any means "reload".
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files = vec![dir.join(INVENTORY_FILE)];
    if let Ok(rd) = std::fs::read_dir(dir.join(META_DIR)) {
        files.extend(rd.flatten().map(|e| e.path()));
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(&p).ok();
            let mtime = md.as_ref().and_then(|m| m.modified().ok());
            let len = md.map_or(0, |m| m.len());
            (p, mtime, len)
        })
        .collect()
}

struct Inner {
    dir: PathBuf,
    options: Options,
    current: watch::Sender<Arc<Snapshot>>,
    status: Mutex<(ReloadStatus, Fingerprint)>,
    /// Held while the files are read and a snapshot published (reload) or written (state
    /// change), so a reload that read the old inventory cannot publish it after a change.
    files: Mutex<()>,
    pub(super) waiters: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    /// Set when the catalog lives in PostgreSQL (`dir` is then empty).
    #[cfg(feature = "db")]
    shared: Option<Arc<super::shared::Shared>>,
}

/// Shared server state; cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

#[derive(Debug, thiserror::Error)]
pub enum MutationError {
    /// The change does not apply: an unknown instance or server, a server still in use.
    #[error(transparent)]
    Edit(#[from] crate::edit::EditError),
    #[error("the catalog on disk is invalid; fix it before changing instances:\n{0}")]
    InvalidCatalog(CatalogErrors),
    /// The change would make the catalog invalid: nothing was written. The errors are located
    /// in the `inventory.yaml` that would have been written.
    #[error("the change would make the catalog invalid; nothing was written:\n{0}")]
    Rejected(CatalogErrors),
    /// `If-Match` named another revision than the current one.
    #[error("the catalog changed: revision {current}, not {expected}")]
    Stale { expected: String, current: String },
    /// The audit log could not be appended: the change was refused, so no change goes
    /// unaudited.
    #[error("appending to the audit log {path}: {source}")]
    Audit {
        path: String,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The catalog's database could not be read or written: nothing changed.
    #[cfg(feature = "db")]
    #[error("the catalog's database: {0}")]
    Store(crate::pgstate::PgStateError),
}

/// The result of a state change.
#[derive(Clone, Debug, Serialize)]
pub struct Mutation {
    pub id: String,
    pub previous: State,
    pub state: State,
    /// False when the instance already was in that state (nothing written).
    pub changed: bool,
    /// ETag of the export after the change.
    pub etag: String,
}

impl AdminState {
    /// Loads the catalog in `dir`; it must be valid to start.
    pub fn open(dir: &Path, options: Options) -> Result<AdminState, CatalogErrors> {
        let fp = fingerprint(dir);
        let (catalog, rev) = load(dir)?;
        let snap = Snapshot::new(catalog, rev, 1)?;
        let state = AdminState::with_snapshot(
            dir.to_owned(),
            options,
            snap,
            #[cfg(feature = "db")]
            None,
        );
        state.lock_status().1 = fp;
        Ok(state)
    }

    pub(super) fn with_snapshot(
        dir: PathBuf,
        options: Options,
        snap: Snapshot,
        #[cfg(feature = "db")] shared: Option<Arc<super::shared::Shared>>,
    ) -> AdminState {
        let (current, _) = watch::channel(Arc::new(snap));
        let (shutdown, _) = watch::channel(false);
        AdminState {
            inner: Arc::new(Inner {
                dir,
                waiters: Arc::new(Semaphore::new(options.max_waiters)),
                options,
                current,
                status: Mutex::new((ReloadStatus::default(), Vec::new())),
                files: Mutex::new(()),
                shutdown,
                #[cfg(feature = "db")]
                shared,
            }),
        }
    }

    /// The replica's database side, when the catalog lives in PostgreSQL.
    #[cfg(feature = "db")]
    pub(super) fn shared(&self) -> Option<&super::shared::Shared> {
        self.inner.shared.as_deref()
    }

    /// Where the catalog comes from, for `/v1/status`: its directory, or `postgresql`.
    pub fn catalog_source(&self) -> String {
        #[cfg(feature = "db")]
        if self.shared().is_some() {
            return "postgresql".into();
        }
        self.inner.dir.display().to_string()
    }

    /// Records the outcome of a reload attempt for `/v1/status`.
    pub(super) fn record_reload(&self, errors: Option<CatalogErrors>) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut st = self.lock_status();
        st.0.last_attempt = Some(now);
        st.0.errors = errors;
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.borrow().clone()
    }

    /// A receiver that sees every new snapshot (long-polls).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.current.subscribe()
    }

    pub(super) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    pub(super) fn waiters(&self) -> &Arc<Semaphore> {
        &self.inner.waiters
    }

    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.lock_status().0.clone()
    }

    pub(super) fn lock_files(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, (ReloadStatus, Fingerprint)> {
        // A panic while holding this lock leaves plain data behind: keep serving.
        self.inner.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn publish_snapshot(
        &self,
        catalog: Catalog,
        revision: String,
    ) -> Result<Arc<Snapshot>, CatalogErrors> {
        let generation = self.snapshot().generation + 1;
        let snap = Arc::new(Snapshot::new(catalog, revision, generation)?);
        self.inner.current.send_replace(snap.clone());
        Ok(snap)
    }

    /// Reloads when the files changed since the last look. `Ok(true)`: a new catalog is
    /// served; `Err`: the files are invalid and the previous catalog is kept.
    /// Blocking: call it from a blocking thread.
    pub fn reload_if_changed(&self) -> Result<bool, CatalogErrors> {
        let _files = self.lock_files();
        let fp = fingerprint(&self.inner.dir);
        {
            let st = self.lock_status();
            if st.1 == fp {
                return Ok(false);
            }
        }
        let result = load(&self.inner.dir).and_then(|(c, rev)| self.publish_snapshot(c, rev));
        self.lock_status().1 = fp;
        match result {
            Ok(snap) => {
                self.record_reload(None);
                tracing::info!(generation = snap.generation, etag = %snap.etag, "catalog reloaded");
                Ok(true)
            }
            Err(e) => {
                for err in &e.0 {
                    tracing::warn!(%err, "catalog edit rejected; still serving the previous catalog");
                }
                self.record_reload(Some(e.clone()));
                Err(e)
            }
        }
    }

    /// Polls the files every `reload_interval` on a blocking thread.
    pub fn spawn_reloader(&self) -> tokio::task::JoinHandle<()> {
        #[cfg(feature = "db")]
        if self.shared().is_some() {
            return self.spawn_follower();
        }
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(state.inner.options.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = state.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = s.reload_if_changed();
                })
                .await;
            }
        })
    }

    /// Sets instance `id` to `state` in `inventory.yaml` (written atomically) and serves the
    /// result at once, waking long-polls. Reads the files fresh: an edit on disk not yet
    /// picked up by the reloader is kept, and an invalid one refuses the change. Audited as
    /// `in-process`; the API's routes use [`AdminState::apply_edit`].
    pub async fn set_state(&self, id: &str, state: State) -> Result<Mutation, MutationError> {
        let edit = crate::edit::Edit::SetState {
            id: id.to_owned(),
            state,
        };
        let change = self.apply_edit(edit, None, "in-process").await?;
        let state_of = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .and_then(|v| serde_json::from_value::<State>(v["state"].clone()).ok())
        };
        Ok(Mutation {
            id: id.to_owned(),
            previous: state_of(&change.before).unwrap_or(state),
            state,
            changed: change.changed,
            etag: change.etag,
        })
    }

    /// Publishes a catalog just written to (or confirmed on) disk, and remembers its files'
    /// fingerprint: what was written is what is served, no reload needed for it.
    pub(super) fn publish_written(
        &self,
        mut catalog: Catalog,
        revision: String,
    ) -> Result<Arc<Snapshot>, CatalogErrors> {
        catalog.dir = Some(self.inner.dir.clone());
        let snap = self.publish_snapshot(catalog, revision)?;
        self.lock_status().1 = fingerprint(&self.inner.dir);
        Ok(snap)
    }
}

/// Reads and validates the catalog in `dir`, with its revision.
fn load(dir: &Path) -> Result<(Catalog, String), CatalogErrors> {
    let sources = Sources::read(dir)?;
    let mut catalog = Catalog::from_sources(&sources)?;
    catalog.dir = Some(dir.to_owned());
    Ok((catalog, revision(&sources)))
}
