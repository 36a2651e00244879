//! What the server holds: the current snapshot behind a `watch` channel (readers clone an
//! `Arc`, long-polls wait on `changed()`), the outcome of the last reload, and the one writer
//! of `inventory.yaml`.

use crate::catalog::{Catalog, Sources, INVENTORY_FILE, META_DIR};
use crate::error::CatalogErrors;
use crate::inventory::{self, State};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Semaphore};

#[derive(Clone, Debug)]
pub struct Options {
    /// Bearer token for mutations (and reads with `auth_reads`). `None`: mutations refused.
    pub token: Option<String>,
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

/// One valid catalog and everything derived from it that readers need.
#[derive(Debug)]
pub struct Snapshot {
    pub catalog: Arc<Catalog>,
    pub csv: axum::body::Bytes,
    /// Strong ETag of the CSV, quotes included.
    pub etag: String,
    /// Increases with every published snapshot.
    pub generation: u64,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    fn new(catalog: Catalog, generation: u64) -> Result<Snapshot, CatalogErrors> {
        let csv = crate::export::csv(&catalog).map_err(|e| {
            CatalogErrors(vec![crate::CatalogError {
                file: INVENTORY_FILE.into(),
                line: 1,
                column: 1,
                key: String::new(),
                kind: crate::ErrorKind::ExportRejected,
                message: e.to_string(),
            }])
        })?;
        let digest = Sha256::digest(csv.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Snapshot {
            catalog: Arc::new(catalog),
            csv: csv.into(),
            etag: format!("\"{hex}\""),
            generation,
            loaded_at: SystemTime::now(),
        })
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
}

/// Shared server state; cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

#[derive(Debug, thiserror::Error)]
pub enum MutationError {
    #[error("no instance {0}")]
    NotFound(String),
    #[error("the catalog on disk is invalid; fix it before changing instances:\n{0}")]
    InvalidCatalog(CatalogErrors),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
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
        let catalog = Catalog::load(dir)?;
        let snap = Snapshot::new(catalog, 1)?;
        let (current, _) = watch::channel(Arc::new(snap));
        let (shutdown, _) = watch::channel(false);
        Ok(AdminState {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                waiters: Arc::new(Semaphore::new(options.max_waiters)),
                options,
                current,
                status: Mutex::new((ReloadStatus::default(), fp)),
                files: Mutex::new(()),
                shutdown,
            }),
        })
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

    fn lock_files(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, (ReloadStatus, Fingerprint)> {
        // A panic while holding this lock leaves plain data behind: keep serving.
        self.inner.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, catalog: Catalog) -> Result<Arc<Snapshot>, CatalogErrors> {
        let generation = self.snapshot().generation + 1;
        let snap = Arc::new(Snapshot::new(catalog, generation)?);
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
        let result = Catalog::load(&self.inner.dir).and_then(|c| self.publish(c));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut st = self.lock_status();
        st.1 = fp;
        st.0.last_attempt = Some(now);
        match result {
            Ok(snap) => {
                st.0.errors = None;
                tracing::info!(generation = snap.generation, etag = %snap.etag, "catalog reloaded");
                Ok(true)
            }
            Err(e) => {
                for err in &e.0 {
                    tracing::warn!(%err, "catalog edit rejected; still serving the previous catalog");
                }
                st.0.errors = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Polls the files every `reload_interval` on a blocking thread.
    pub fn spawn_reloader(&self) -> tokio::task::JoinHandle<()> {
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
    /// picked up by the reloader is kept, and an invalid one refuses the change.
    pub async fn set_state(&self, id: &str, state: State) -> Result<Mutation, MutationError> {
        let this = self.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || this.set_state_blocking(&id, state))
            .await
            .map_err(|e| MutationError::Io {
                path: INVENTORY_FILE.into(),
                source: std::io::Error::other(e),
            })?
    }

    fn set_state_blocking(&self, id: &str, state: State) -> Result<Mutation, MutationError> {
        let _files = self.lock_files();
        let dir = &self.inner.dir;
        let sources = Sources::read(dir).map_err(MutationError::InvalidCatalog)?;
        let catalog = Catalog::from_sources(&sources).map_err(MutationError::InvalidCatalog)?;
        let inst = catalog
            .instance(id)
            .ok_or_else(|| MutationError::NotFound(id.to_owned()))?;
        let previous = inst.state;
        if previous == state {
            // Make sure what is served is what is on disk.
            let snap = if self.snapshot().catalog.inventory_text == sources.inventory {
                self.snapshot()
            } else {
                self.publish_from(catalog)?
            };
            return Ok(Mutation {
                id: id.to_owned(),
                previous,
                state,
                changed: false,
                etag: snap.etag.clone(),
            });
        }
        let edited = inventory::with_state(&sources.inventory, &catalog.inventory, id, state)
            .ok_or_else(|| MutationError::NotFound(id.to_owned()))?;
        let (text, new_catalog) = match verified(&sources, edited, &catalog, id, state) {
            Some(ok) => ok,
            None => {
                // The in-place edit did not give exactly the intended change: write canonically.
                let mut inv = catalog.inventory.clone();
                if let Some(i) = inv.instances.iter_mut().find(|i| i.id == id) {
                    i.state = state;
                }
                let canonical = inventory::to_yaml(&inv);
                verified(&sources, canonical, &catalog, id, state).ok_or_else(|| {
                    MutationError::Io {
                        path: INVENTORY_FILE.into(),
                        source: std::io::Error::other("the rewritten inventory did not validate"),
                    }
                })?
            }
        };
        let path = dir.join(INVENTORY_FILE);
        crate::durable::write_atomically(&path, text.as_bytes()).map_err(|source| {
            MutationError::Io {
                path: path.display().to_string(),
                source,
            }
        })?;
        tracing::info!(
            id,
            from = previous.as_str(),
            to = state.as_str(),
            "instance state changed"
        );
        let snap = self.publish_from(new_catalog)?;
        // What we wrote is what we serve: no reload needed for it.
        self.lock_status().1 = fingerprint(dir);
        Ok(Mutation {
            id: id.to_owned(),
            previous,
            state,
            changed: true,
            etag: snap.etag.clone(),
        })
    }

    fn publish_from(&self, mut catalog: Catalog) -> Result<Arc<Snapshot>, MutationError> {
        catalog.dir = Some(self.inner.dir.clone());
        self.publish(catalog).map_err(MutationError::InvalidCatalog)
    }
}

/// Loads `text` as the new inventory and checks that exactly instance `id`'s state changed.
fn verified(
    sources: &Sources,
    text: String,
    before: &Catalog,
    id: &str,
    state: State,
) -> Option<(String, Catalog)> {
    let src = Sources {
        inventory: text,
        metas: sources.metas.clone(),
    };
    let after = Catalog::from_sources(&src).ok()?;
    let a = &before.inventory.instances;
    let b = &after.inventory.instances;
    let same = a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.id == y.id
                && x.version == y.version
                && (if x.id == id {
                    y.state == state
                } else {
                    x.state == y.state
                })
        })
        && before.inventory.servers.len() == after.inventory.servers.len()
        && before.inventory.locations.len() == after.inventory.locations.len();
    same.then_some((src.inventory, after))
}
