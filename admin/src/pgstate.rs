//! The catalog kept in PostgreSQL, so several ADMIN replicas serve one catalog
//! (`serve --state postgres://…`). What is stored is the directory catalog's files as text —
//! `inventory.yaml` and `meta/*.yaml` — so `catalog export` gives back the review format byte for
//! byte, plus a head row (the revision and a serial that grows with every change) and the audit
//! log. Every change is one SERIALIZABLE transaction that ends with a `NOTIFY` on [`CHANNEL`]
//! carrying the new serial and revision: each replica's listener reloads and publishes.
//!
//! Replication and failover of PostgreSQL itself are PostgreSQL's business (streaming
//! replication, Patroni, pg_auto_failover); this module only needs one writable primary.

use crate::catalog::{Sources, INVENTORY_FILE, META_DIR};
use crate::error::CatalogErrors;
use crate::serve::{revision, AuditEntry};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use std::path::Path;
use std::time::Duration;

/// The `LISTEN`/`NOTIFY` channel; a payload is `SERIAL REVISION`.
pub const CHANNEL: &str = "portcullis_catalog";

/// Idempotent; run under an advisory lock so replicas starting together do not race on
/// `CREATE TABLE IF NOT EXISTS` (which is not atomic against itself in PostgreSQL).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS portcullis_catalog_files (
    path TEXT PRIMARY KEY,
    content TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS portcullis_catalog_head (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    revision TEXT NOT NULL,
    serial BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS portcullis_audit (
    serial BIGINT PRIMARY KEY,
    entry TEXT NOT NULL
);
";

/// Any advisory-lock key ADMIN's schema set-up uses (the DB patcher uses its own).
const SCHEMA_LOCK: i64 = 0x706f_7274_6361_7401;

#[derive(Debug, thiserror::Error)]
pub enum PgStateError {
    #[error("PostgreSQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(
        "no catalog in PostgreSQL yet: load one with `portcullis-admin catalog import DIR --state URL`"
    )]
    Empty,
    /// The catalog (imported, or found in the database) does not pass the checks.
    #[error("the catalog is invalid:\n{0}")]
    Invalid(CatalogErrors),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A background task (validation off the async workers) panicked or was cancelled.
    #[error("{0}")]
    Task(String),
    /// A stored audit entry or file name that ADMIN did not write.
    #[error("corrupt state in PostgreSQL: {0}")]
    Corrupt(String),
}

impl PgStateError {
    /// A serialization failure or deadlock: the transaction is safe to run again.
    pub fn is_retryable(&self) -> bool {
        let PgStateError::Sql(sqlx::Error::Database(e)) = self else {
            return false;
        };
        matches!(e.code().as_deref(), Some("40001" | "40P01"))
    }
}

/// The catalog as stored: its files, revision and serial.
#[derive(Clone, Debug)]
pub struct Stored {
    pub sources: Sources,
    pub revision: String,
    pub serial: i64,
}

/// A pool of connections to the state database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

/// Whether `s` names a PostgreSQL database rather than a directory.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// A pool on `url` whose tables exist: `schema` (idempotent DDL) runs under the transaction
/// advisory lock `lock`, so replicas starting together do not race to create the same tables.
pub(crate) async fn connect_with_schema(
    url: &str,
    max_connections: u32,
    lock: i64,
    schema: &'static str,
) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(schema).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(pool)
}

impl PgStore {
    /// Connects and creates the tables when missing.
    pub async fn connect(url: &str) -> Result<PgStore, PgStateError> {
        let pool = connect_with_schema(url, 16, SCHEMA_LOCK, SCHEMA).await?;
        Ok(PgStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A SERIALIZABLE transaction: concurrent changes fail with a serialization error
    /// ([`PgStateError::is_retryable`]) instead of overwriting each other.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, PgStateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// The stored catalog; `None` before the first import.
    pub async fn load(&self) -> Result<Option<Stored>, PgStateError> {
        let mut tx = self.pool.begin().await?;
        // One snapshot for the head and the files.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let stored = read(&mut tx).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// The stored head: (serial, revision); cheap, for polling.
    pub async fn head(&self) -> Result<Option<(i64, String)>, PgStateError> {
        Ok(
            sqlx::query_as("SELECT serial, revision FROM portcullis_catalog_head")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Replaces the whole stored catalog by `sources` (validated first: an invalid catalog
    /// is refused and nothing is written), audited as an `import` by `identity`. Returns the
    /// new revision.
    pub async fn import(&self, sources: &Sources, identity: &str) -> Result<String, PgStateError> {
        crate::Catalog::from_sources(sources).map_err(PgStateError::Invalid)?;
        let after = revision(sources);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut tx = self.begin().await?;
                let before = read(&mut tx).await?;
                sqlx::query("DELETE FROM portcullis_catalog_files")
                    .execute(&mut *tx)
                    .await?;
                for (path, content) in files_of(sources) {
                    sqlx::query(
                        "INSERT INTO portcullis_catalog_files (path, content) VALUES ($1, $2)",
                    )
                    .bind(path)
                    .bind(content)
                    .execute(&mut *tx)
                    .await?;
                }
                let entry = AuditEntry {
                    time: crate::serve::audit_now(),
                    identity: identity.to_owned(),
                    operation: "import".into(),
                    target: "catalog".into(),
                    before: None,
                    after: None,
                    revision_before: before.map(|s| s.revision).unwrap_or_default(),
                    revision_after: after.clone(),
                    failed: None,
                };
                commit(tx, &entry).await
            }
            .await;
            match result {
                // Another writer committed in between: run again on top of it.
                Err(e) if e.is_retryable() && attempt < 64 => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(after),
            }
        }
    }

    /// The last `limit` audit entries, oldest first.
    pub async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, PgStateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT entry FROM (SELECT serial, entry FROM portcullis_audit ORDER BY serial DESC LIMIT $1) t ORDER BY serial",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(e,)| serde_json::from_str(&e).map_err(|e| PgStateError::Corrupt(e.to_string())))
            .collect()
    }
}

/// The head (serial, revision) inside `tx`.
pub async fn read_head(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<Option<(i64, String)>, PgStateError> {
    Ok(
        sqlx::query_as("SELECT serial, revision FROM portcullis_catalog_head")
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// Reads head and files inside `tx`.
pub async fn read(tx: &mut Transaction<'_, Postgres>) -> Result<Option<Stored>, PgStateError> {
    let Some((serial, rev)) = read_head(tx).await? else {
        return Ok(None);
    };
    let rows = sqlx::query("SELECT path, content FROM portcullis_catalog_files ORDER BY path")
        .fetch_all(&mut **tx)
        .await?;
    let mut sources = Sources::default();
    let mut inventory = None;
    for row in rows {
        let path: String = row.try_get("path")?;
        let content: String = row.try_get("content")?;
        if path == INVENTORY_FILE {
            inventory = Some(content);
        } else if let Some(stem) = path
            .strip_prefix(META_DIR)
            .and_then(|p| p.strip_prefix('/'))
            .and_then(|p| p.strip_suffix(".yaml"))
        {
            sources.metas.push((stem.to_owned(), content));
        } else {
            return Err(PgStateError::Corrupt(format!("unexpected file {path:?}")));
        }
    }
    sources.inventory = inventory
        .ok_or_else(|| PgStateError::Corrupt(format!("no {INVENTORY_FILE} in the catalog")))?;
    // Directory order (`Sources::read` sorts by stem), not the database's collation.
    sources.metas.sort();
    Ok(Some(Stored {
        sources,
        revision: rev,
        serial,
    }))
}

/// Writes a changed `inventory.yaml` inside `tx`, then [`commit`]s.
pub async fn commit_inventory(
    mut tx: Transaction<'static, Postgres>,
    inventory: &str,
    entry: &AuditEntry,
) -> Result<i64, PgStateError> {
    sqlx::query("UPDATE portcullis_catalog_files SET content = $1 WHERE path = $2")
        .bind(inventory)
        .bind(INVENTORY_FILE)
        .execute(&mut *tx)
        .await?;
    commit(tx, entry).await
}

/// Bumps the head to `entry.revision_after`, appends `entry` under the new serial, notifies
/// the replicas (delivered at commit) and commits. Returns the new serial.
async fn commit(
    mut tx: Transaction<'static, Postgres>,
    entry: &AuditEntry,
) -> Result<i64, PgStateError> {
    let serial: i64 = sqlx::query_scalar(
        "INSERT INTO portcullis_catalog_head (singleton, revision, serial) VALUES (TRUE, $1, 1)
         ON CONFLICT (singleton) DO UPDATE
           SET revision = EXCLUDED.revision, serial = portcullis_catalog_head.serial + 1
         RETURNING serial",
    )
    .bind(&entry.revision_after)
    .fetch_one(&mut *tx)
    .await?;
    let text = serde_json::to_string(entry).map_err(|e| PgStateError::Corrupt(e.to_string()))?;
    sqlx::query("INSERT INTO portcullis_audit (serial, entry) VALUES ($1, $2)")
        .bind(serial)
        .bind(text)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("{serial} {}", entry.revision_after))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(serial)
}

/// (path, text) of every file of `sources`, as a directory holds them.
fn files_of(sources: &Sources) -> Vec<(String, &str)> {
    std::iter::once((INVENTORY_FILE.to_owned(), sources.inventory.as_str()))
        .chain(
            sources
                .metas
                .iter()
                .map(|(stem, text)| (format!("{META_DIR}/{stem}.yaml"), text.as_str())),
        )
        .collect()
}

/// Writes `sources` into `dir` as a directory catalog (created when missing). Existing
/// `meta/*.yaml` files the stored catalog does not have are removed, so the directory is the
/// stored catalog; other files (patches, the audit log) are left alone.
pub fn write_dir(dir: &Path, sources: &Sources) -> Result<(), PgStateError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| PgStateError::Io { path, source }
    };
    let meta = dir.join(META_DIR);
    std::fs::create_dir_all(&meta).map_err(io(&meta))?;
    let keep: std::collections::BTreeSet<String> = sources
        .metas
        .iter()
        .map(|(stem, _)| format!("{stem}.yaml"))
        .collect();
    for e in std::fs::read_dir(&meta).map_err(io(&meta))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !keep.contains(&name) {
            std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
        }
    }
    for (path, text) in files_of(sources) {
        let path = dir.join(path);
        crate::durable::write_atomically(&path, text.as_bytes()).map_err(io(&path))?;
    }
    Ok(())
}
