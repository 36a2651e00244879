//! The two engines behind one small surface: connect from a URL, read the applied-patch table,
//! run a step inside a transaction, and take the run's lock. PostgreSQL serializes runners with
//! a session advisory lock held for the whole run; SQLite with its write lock, taken per patch
//! by `BEGIN IMMEDIATE` (the runner re-plans inside it, so it never repeats another's work).

use super::plan::{Applied, DbState};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The applied-patch table (in the connection's current schema on PostgreSQL).
pub const TABLE: &str = "portcullis_patches";
/// Advisory lock key of patch runs: "portcull" in ASCII.
const PG_LOCK_KEY: i64 = 0x706f_7274_6375_6c6c;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Url {
    Postgres(String),
    /// A file path (`sqlite://PATH`; `sqlite:///abs/path` and `sqlite://rel/path` both work).
    Sqlite(String),
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            PgConnectOptions::from_str(url).map_err(|e| format!("{}: {e}", redact(url)))?;
            Ok(Url::Postgres(url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or("");
            if path.is_empty() {
                return Err(format!("{url}: sqlite://PATH needs a file path"));
            }
            Ok(Url::Sqlite(path.to_owned()))
        } else {
            Err(format!(
                "{}: expected postgres://… or sqlite://PATH",
                redact(url)
            ))
        }
    }

    pub fn engine(&self) -> &'static str {
        match self {
            Url::Postgres(_) => "postgres",
            Url::Sqlite(_) => "sqlite",
        }
    }

    /// For output: the password of a PostgreSQL URL is replaced by `***`.
    pub fn display(&self) -> String {
        match self {
            Url::Postgres(u) => redact(u),
            Url::Sqlite(p) => format!("sqlite://{p}"),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(x) => x,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Connect(String),
    #[error("another patch run holds the lock (waited {0:?})")]
    LockTimeout(Duration),
    #[error("{0}")]
    Sql(String),
    /// The step's own SQL failed; its transaction was rolled back.
    #[error("{0}")]
    Patch(String),
}

fn sql_err(e: sqlx::Error) -> EngineError {
    EngineError::Sql(match e.as_database_error() {
        Some(d) => match d.code() {
            Some(code) => format!("{} (code {code})", d.message()),
            None => d.message().to_owned(),
        },
        None => e.to_string(),
    })
}

fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        d.code()
            .is_some_and(|c| c == "5" || c == "517" || c == "261")
            || d.message().contains("database is locked")
    })
}

pub enum Conn {
    Pg(PgConnection),
    Sqlite(SqliteConnection, Duration),
}

/// What one step runs: the SQL, then the rows recording it.
pub struct StepSql<'a> {
    pub sql: &'a str,
    /// (number, name, sha256) of every patch this step applies.
    pub records: Vec<(u32, String, String)>,
    pub via: &'static str,
}

impl Conn {
    /// `create`: make a missing SQLite file (patch runs); status never creates one.
    pub async fn open(
        url: &Url,
        create: bool,
        lock_timeout: Duration,
    ) -> Result<Conn, EngineError> {
        match url {
            Url::Postgres(u) => {
                let opts = PgConnectOptions::from_str(u)
                    .map_err(|e| EngineError::Connect(format!("{}: {e}", redact(u))))?;
                let c = opts
                    .connect()
                    .await
                    .map_err(|e| EngineError::Connect(format!("{}: {e}", redact(u))))?;
                Ok(Conn::Pg(c))
            }
            Url::Sqlite(path) => {
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(create)
                    .busy_timeout(lock_timeout);
                let c = opts
                    .connect()
                    .await
                    .map_err(|e| EngineError::Connect(format!("sqlite://{path}: {e}")))?;
                Ok(Conn::Sqlite(c, lock_timeout))
            }
        }
    }

    /// PostgreSQL: wait for the run lock (polling, so the wait is bounded). SQLite: nothing;
    /// its write lock is taken per step.
    pub async fn lock(&mut self, timeout: Duration) -> Result<(), EngineError> {
        let Conn::Pg(c) = self else { return Ok(()) };
        let start = Instant::now();
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(PG_LOCK_KEY)
                .fetch_one(&mut *c)
                .await
                .map_err(sql_err)?;
            if got {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(EngineError::LockTimeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn unlock(&mut self) {
        if let Conn::Pg(c) = self {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(PG_LOCK_KEY)
                .execute(&mut *c)
                .await;
        }
    }

    pub async fn close(self) {
        let _ = match self {
            Conn::Pg(c) => c.close().await,
            Conn::Sqlite(c, _) => c.close().await,
        };
    }

    /// Reads the state outside a transaction (status).
    pub async fn read_state(&mut self) -> Result<DbState, EngineError> {
        match self {
            Conn::Pg(c) => pg_state(c).await,
            Conn::Sqlite(c, _) => sqlite_state(c).await,
        }
    }

    /// Opens a step's transaction, re-reads the state inside it and asks `decide` what to run;
    /// runs that and records it, or rolls back when `decide` stops or the SQL fails (then the
    /// error is [`EngineError::Patch`]). Returns `decide`'s value and the step's duration.
    pub async fn step<'s, T>(
        &mut self,
        decide: impl FnOnce(&DbState) -> Decision<'s, T>,
    ) -> Result<(T, Option<Duration>), EngineError> {
        // One body for both engines: the same statements, typed per driver.
        macro_rules! run {
            ($tx:expr, $state:expr, $create:expr, $insert:expr) => {{
                let mut tx = $tx;
                let state = $state(&mut tx).await?;
                let (step, t) = match decide(&state) {
                    Decision::Run(step, t) => (step, t),
                    Decision::Stop(t) => {
                        tx.rollback().await.map_err(sql_err)?;
                        return Ok((t, None));
                    }
                };
                let start = Instant::now();
                if !state.table {
                    sqlx::raw_sql($create)
                        .execute(&mut *tx)
                        .await
                        .map_err(sql_err)?;
                }
                if let Err(e) = sqlx::raw_sql(AssertSqlSafe(step.sql))
                    .execute(&mut *tx)
                    .await
                {
                    let _ = tx.rollback().await;
                    return Err(EngineError::Patch(sql_err(e).to_string()));
                }
                let took = start.elapsed();
                for (number, name, sha) in &step.records {
                    sqlx::query($insert)
                        .bind(i64::from(*number))
                        .bind(name)
                        .bind(sha)
                        .bind(took.as_millis() as i64)
                        .bind(step.via)
                        .execute(&mut *tx)
                        .await
                        .map_err(sql_err)?;
                }
                tx.commit().await.map_err(sql_err)?;
                Ok((t, Some(took)))
            }};
        }
        match self {
            Conn::Pg(c) => run!(
                c.begin().await.map_err(sql_err)?,
                pg_state,
                PG_CREATE,
                "INSERT INTO portcullis_patches (number, name, sha256, duration_ms, via) VALUES ($1, $2, $3, $4, $5)"
            ),
            Conn::Sqlite(c, timeout) => {
                let timeout = *timeout;
                run!(
                    c.begin_with("BEGIN IMMEDIATE").await.map_err(|e| {
                        if is_busy(&e) {
                            EngineError::LockTimeout(timeout)
                        } else {
                            sql_err(e)
                        }
                    })?,
                    sqlite_state,
                    SQLITE_CREATE,
                    "INSERT INTO portcullis_patches (number, name, sha256, duration_ms, via) VALUES (?, ?, ?, ?, ?)"
                )
            }
        }
    }
}

/// What a step's `decide` callback chose.
pub enum Decision<'s, T> {
    Run(StepSql<'s>, T),
    Stop(T),
}

const PG_CREATE: &str = "CREATE TABLE portcullis_patches (
    number BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    duration_ms BIGINT NOT NULL,
    via TEXT NOT NULL
)";

const SQLITE_CREATE: &str = "CREATE TABLE portcullis_patches (
    number INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    duration_ms INTEGER NOT NULL,
    via TEXT NOT NULL
)";

fn rows_to_applied<R: Row>(rows: Vec<R>) -> Result<Vec<Applied>, EngineError>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|r| {
            let number: i64 = r.try_get(0).map_err(sql_err)?;
            Ok(Applied {
                number: u32::try_from(number)
                    .map_err(|_| EngineError::Sql(format!("{TABLE}: bad number {number}")))?,
                name: r.try_get(1).map_err(sql_err)?,
                sha256: r.try_get(2).map_err(sql_err)?,
                applied_at: r.try_get(3).map_err(sql_err)?,
                duration_ms: r.try_get(4).map_err(sql_err)?,
                via: r.try_get(5).map_err(sql_err)?,
            })
        })
        .collect()
}

async fn pg_state(c: &mut PgConnection) -> Result<DbState, EngineError> {
    let table: bool = sqlx::query_scalar("SELECT to_regclass('portcullis_patches') IS NOT NULL")
        .fetch_one(&mut *c)
        .await
        .map_err(sql_err)?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_catalog.pg_class cl JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace \
         WHERE n.nspname = current_schema() AND cl.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')",
    )
    .fetch_one(&mut *c)
    .await
    .map_err(sql_err)?;
    let applied = if table {
        let rows = sqlx::query(
            "SELECT number, name, sha256, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), duration_ms, via \
             FROM portcullis_patches ORDER BY number",
        )
        .fetch_all(&mut *c)
        .await
        .map_err(sql_err)?;
        rows_to_applied(rows)?
    } else {
        Vec::new()
    };
    Ok(DbState {
        table,
        empty: tables == 0,
        applied,
    })
}

async fn sqlite_state(c: &mut SqliteConnection) -> Result<DbState, EngineError> {
    let table: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'portcullis_patches'",
    )
    .fetch_one(&mut *c)
    .await
    .map_err(sql_err)?;
    let objects: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
            .fetch_one(&mut *c)
            .await
            .map_err(sql_err)?;
    let applied = if table > 0 {
        let rows = sqlx::query(
            "SELECT number, name, sha256, applied_at, duration_ms, via FROM portcullis_patches ORDER BY number",
        )
        .fetch_all(&mut *c)
        .await
        .map_err(sql_err)?;
        rows_to_applied(rows)?
    } else {
        Vec::new()
    };
    Ok(DbState {
        table: table > 0,
        empty: objects == 0,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("sqlite:///var/lib/x.db").unwrap(),
            Url::Sqlite("/var/lib/x.db".into())
        );
        assert_eq!(
            Url::parse("sqlite://rel.db?mode=rwc").unwrap(),
            Url::Sqlite("rel.db".into())
        );
        assert!(Url::parse("mysql://x").is_err());
        assert!(Url::parse("sqlite://").is_err());
        let pg = Url::parse("postgres://app:s3cret@127.0.0.1:5432/app").unwrap();
        assert_eq!(pg.display(), "postgres://app:***@127.0.0.1:5432/app");
        assert_eq!(redact("postgres://app@h/db"), "postgres://app@h/db");
    }
}
