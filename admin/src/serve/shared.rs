//! A replica of a catalog kept in PostgreSQL (`serve --state postgres://…`, see
//! `crate::pgstate`). Changes go to the database in one SERIALIZABLE transaction each —
//! `If-Match` checked against the stored revision, the same checks as the directory catalog,
//! the audit entry, the new revision — and are retried on serialization failures. Every
//! replica (this one included) learns of a change from its `NOTIFY`, reloads and publishes;
//! a periodic look at the head row catches anything missed while the listener reconnected.

use super::audit::AuditEntry;
use super::mutate::{log_change, plan, Change, Plan};
use super::state::{AdminState, MutationError, Options, Snapshot};
use crate::catalog::Catalog;
use crate::edit::Edit;
use crate::pgstate::{self, PgStateError, PgStore, Stored};
use sqlx::postgres::PgListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The database side of a replica: the store and the serial of the catalog it serves.
pub(super) struct Shared {
    pub store: PgStore,
    /// Serial of the published catalog: older ones (a slow reload racing a newer change) are
    /// never published over it.
    pub published: Mutex<i64>,
    /// One change at a time per replica. The database alone would keep changes correct, but
    /// every contender would validate a whole catalog before all but one lose; queued here,
    /// the next one finds the head moved and is refused from the head row (412) or goes in.
    /// Across replicas the SERIALIZABLE transaction still decides.
    pub writer: tokio::sync::Mutex<()>,
}

/// Serialization failures in a row before a change gives up (each retry re-reads, so with
/// `If-Match` it turns into a 412 at once; without, someone else's change went in).
const MAX_ATTEMPTS: u32 = 64;

impl AdminState {
    /// Opens a replica of the catalog stored at `url`; it must hold a valid catalog.
    pub async fn open_shared(url: &str, options: Options) -> Result<AdminState, PgStateError> {
        let store = PgStore::connect(url).await?;
        let stored = store.load().await?.ok_or(PgStateError::Empty)?;
        let catalog = Catalog::from_sources(&stored.sources).map_err(PgStateError::Invalid)?;
        let snap = Snapshot::new(catalog, stored.revision, 1).map_err(PgStateError::Invalid)?;
        let shared = Shared {
            store,
            published: Mutex::new(stored.serial),
            writer: tokio::sync::Mutex::new(()),
        };
        Ok(AdminState::with_snapshot(
            std::path::PathBuf::new(),
            options,
            snap,
            Some(Arc::new(shared)),
        ))
    }

    fn shared_or_panic(&self) -> &Shared {
        match self.shared() {
            Some(s) => s,
            None => unreachable!("shared-state path taken without a store"),
        }
    }

    /// Publishes `catalog` at `serial` unless a newer one is served already; returns what is
    /// served afterwards.
    fn publish_serial(
        &self,
        catalog: Catalog,
        revision: String,
        serial: i64,
    ) -> Result<Arc<Snapshot>, crate::CatalogErrors> {
        self.publish_if_newer(catalog, revision, serial)
            .map(|(snap, _)| snap)
    }

    /// [`Self::publish_serial`], also saying whether this call published.
    fn publish_if_newer(
        &self,
        catalog: Catalog,
        revision: String,
        serial: i64,
    ) -> Result<(Arc<Snapshot>, bool), crate::CatalogErrors> {
        let shared = self.shared_or_panic();
        let _files = self.lock_files();
        let mut published = shared.published.lock().unwrap_or_else(|e| e.into_inner());
        if serial <= *published {
            return Ok((self.snapshot(), false));
        }
        let snap = self.publish_snapshot(catalog, revision)?;
        *published = serial;
        Ok((snap, true))
    }

    /// Loads the stored catalog and publishes it when newer than the served one.
    pub(super) async fn refresh_shared(&self) -> Result<(), PgStateError> {
        let shared = self.shared_or_panic();
        let Some(Stored {
            sources,
            revision,
            serial,
        }) = shared.store.load().await?
        else {
            return Ok(());
        };
        if serial <= *shared.published.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(());
        }
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            Catalog::from_sources(&sources).and_then(|c| this.publish_if_newer(c, revision, serial))
        })
        .await
        .map_err(|e| PgStateError::Task(format!("reloading the catalog: {e}")))?;
        match result {
            // The NOTIFY loop and the head-row poll both got there; the other one published.
            Ok((_, false)) => {}
            Ok((snap, true)) => {
                self.record_reload(None);
                tracing::info!(serial, generation = snap.generation, etag = %snap.etag, "catalog reloaded from PostgreSQL");
            }
            Err(e) => {
                // Written behind ADMIN's back (every change through it is checked): keep
                // serving the previous catalog, and say so in /v1/status.
                for err in &e.0 {
                    tracing::warn!(%err, serial, "stored catalog rejected; still serving the previous one");
                }
                self.record_reload(Some(e));
            }
        }
        Ok(())
    }

    /// Applies `edit` in one SERIALIZABLE transaction (see the module comment).
    pub(super) async fn apply_edit_shared(
        &self,
        edit: &Edit,
        if_match: Option<&str>,
        identity: &str,
    ) -> Result<Change, MutationError> {
        let _writer = self.shared_or_panic().writer.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_edit_shared(edit, if_match, identity).await {
                Err(MutationError::Store(e)) if e.is_retryable() && attempt < MAX_ATTEMPTS => {
                    // A little jitter so the losers of one round do not collide again.
                    let ms = 1 + u64::from(attempt.min(8)) * (crate::durable::unique() % 5);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_edit_shared(
        &self,
        edit: &Edit,
        if_match: Option<&str>,
        identity: &str,
    ) -> Result<Change, MutationError> {
        let store = &self.shared_or_panic().store;
        // Under contention most requests are stale: one query refuses them, without a
        // transaction. (Checked again inside it: the head may move in between.)
        if let Some(expected) = if_match {
            let (_, current) = store
                .head()
                .await
                .map_err(MutationError::Store)?
                .ok_or(MutationError::Store(PgStateError::Empty))?;
            if !super::mutate::if_match_admits(expected, &current) {
                return Err(MutationError::Stale {
                    expected: expected.to_owned(),
                    current,
                });
            }
        }
        let mut tx = store.begin().await.map_err(MutationError::Store)?;
        // From the head row alone: reading every file first would slow the winners down.
        if let Some(expected) = if_match {
            let (_, current) = pgstate::read_head(&mut tx)
                .await
                .map_err(MutationError::Store)?
                .ok_or(MutationError::Store(PgStateError::Empty))?;
            if !super::mutate::if_match_admits(expected, &current) {
                return Err(MutationError::Stale {
                    expected: expected.to_owned(),
                    current,
                });
            }
        }
        let stored = pgstate::read(&mut tx)
            .await
            .map_err(MutationError::Store)?
            .ok_or(MutationError::Store(PgStateError::Empty))?;
        // The checks are CPU work: off the async workers, which keep serving long-polls.
        let planned = {
            let (edit, if_match, identity) = (
                edit.clone(),
                if_match.map(str::to_owned),
                identity.to_owned(),
            );
            let served = self.snapshot();
            tokio::task::spawn_blocking(move || {
                plan(
                    stored.sources,
                    &edit,
                    if_match.as_deref(),
                    &identity,
                    &served,
                )
            })
            .await
            .map_err(|e| MutationError::Io {
                path: crate::catalog::INVENTORY_FILE.into(),
                source: std::io::Error::other(e),
            })??
        };
        match planned {
            Plan::Unchanged {
                catalog,
                applied,
                revision,
            } => {
                tx.rollback()
                    .await
                    .map_err(|e| MutationError::Store(e.into()))?;
                let snap = match catalog {
                    None => self.snapshot(),
                    Some(catalog) => self
                        .publish_serial(catalog, revision.clone(), stored.serial)
                        .map_err(MutationError::InvalidCatalog)?,
                };
                Ok(Change::new(
                    edit,
                    applied,
                    false,
                    revision,
                    snap.etag.clone(),
                ))
            }
            Plan::Changed {
                sources,
                catalog,
                applied,
                entry,
            } => {
                let serial = pgstate::commit_inventory(tx, &sources.inventory, &entry)
                    .await
                    .map_err(MutationError::Store)?;
                log_change(&entry);
                let revision = entry.revision_after;
                let snap = self
                    .publish_serial(*catalog, revision.clone(), serial)
                    .map_err(MutationError::InvalidCatalog)?;
                Ok(Change::new(
                    edit,
                    applied,
                    true,
                    revision,
                    snap.etag.clone(),
                ))
            }
        }
    }

    pub(super) async fn audit_tail_shared(&self, limit: usize) -> std::io::Result<Vec<AuditEntry>> {
        self.shared_or_panic()
            .store
            .audit_tail(limit)
            .await
            .map_err(std::io::Error::other)
    }

    /// Follows the database: a `NOTIFY` newer than the served catalog reloads it at once; every
    /// `reload_interval` the head row is looked at too (a notification is lost while the
    /// listening connection is down). Runs until aborted.
    pub(super) fn spawn_follower(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            // Two loops side by side rather than one `select!`: a notification read is not
            // documented as safe to cancel, so nothing ever cancels it.
            let listen = async {
                loop {
                    if let Err(e) = state.listen().await {
                        tracing::warn!(%e, "listening for catalog changes in PostgreSQL; reconnecting");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            };
            let poll = async {
                let mut tick = tokio::time::interval(state.options().reload_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = state.refresh_if_head_moved().await {
                        tracing::warn!(%e, "looking at the catalog's head in PostgreSQL");
                    }
                }
            };
            tokio::join!(listen, poll);
        })
    }

    fn published_serial(&self) -> i64 {
        *self
            .shared_or_panic()
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    async fn refresh_if_head_moved(&self) -> Result<(), PgStateError> {
        let head = self.shared_or_panic().store.head().await?;
        if head.is_some_and(|(serial, _)| serial > self.published_serial()) {
            self.refresh_shared().await?;
        }
        Ok(())
    }

    async fn listen(&self) -> Result<(), PgStateError> {
        let shared = self.shared_or_panic();
        let mut listener = PgListener::connect_with(shared.store.pool()).await?;
        listener.listen(pgstate::CHANNEL).await?;
        // Whatever changed before LISTEN took effect.
        self.refresh_shared().await?;
        loop {
            match listener.try_recv().await? {
                Some(n) => {
                    let serial = n
                        .payload()
                        .split(' ')
                        .next()
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(i64::MAX);
                    if serial > self.published_serial() {
                        self.refresh_shared().await?;
                    }
                }
                // The connection dropped; the next call re-establishes it: catch up.
                None => self.refresh_shared().await?,
            }
        }
    }
}
