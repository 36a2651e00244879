//! DB patching: bring a service's database to the catalog's patch level, one direction only
//! (install from scratch, or apply pending patches in order). Files: [`patches`] reads
//! `patches/<type>/`, [`plan`] decides, [`engine`] talks to PostgreSQL or SQLite.
//!
//! Every patch runs in its own transaction together with the row recording it, so a failing
//! patch leaves neither a schema change nor a record. A run re-plans inside each transaction
//! while holding the engine's lock, so concurrent runners never apply a patch twice.

pub mod engine;
pub mod patches;
pub mod plan;
pub mod text;

use crate::catalog::Catalog;
use crate::value::Value;
use engine::{Conn, Decision, EngineError, StepSql, Url};
use patches::PatchSet;
use plan::{Allow, DbStatus, PatchStep};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// The combined-configuration key holding an instance's database URL.
pub const URL_KEY: &str = "database.url";

/// What to patch: a type's patch set and a database.
#[derive(Clone, Debug)]
pub struct Target {
    pub type_name: String,
    pub patches: PatchSet,
    pub url: Url,
    /// The instance it belongs to, when named by instance.
    pub instance: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Bad arguments, catalog or patch files; nothing was done.
    #[error("{0}")]
    BadInput(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    LockTimeout(String),
    /// Drift, missing files or gaps; nothing was done.
    #[error("refused:\n{0}")]
    Refused(String),
    /// A database error outside a patch (reading the table, committing).
    #[error("database error: {0}")]
    Database(String),
}

impl DbError {
    /// The exit code of `db status` / `db patch` (documented in docs/versions-and-db.md).
    pub fn exit_code(&self) -> u8 {
        2
    }
    pub fn kind(&self) -> &'static str {
        match self {
            DbError::BadInput(_) => "bad-input",
            DbError::Connect(_) => "connect",
            DbError::LockTimeout(_) => "lock-timeout",
            DbError::Refused(_) => "refused",
            DbError::Database(_) => "database",
        }
    }
}

fn from_engine(e: EngineError) -> DbError {
    match e {
        EngineError::Connect(m) => DbError::Connect(m),
        EngineError::LockTimeout(_) => DbError::LockTimeout(e.to_string()),
        EngineError::Sql(m) | EngineError::Patch(m) => DbError::Database(m),
    }
}

impl Target {
    /// A type's patches and an explicit URL (`--type TYPE --url URL`).
    pub fn explicit(catalog_dir: &Path, type_name: &str, url: &str) -> Result<Target, DbError> {
        Ok(Target {
            type_name: type_name.to_owned(),
            patches: PatchSet::load(catalog_dir, type_name).map_err(DbError::BadInput)?,
            url: Url::parse(url).map_err(DbError::BadInput)?,
            instance: None,
        })
    }

    /// An instance of a loaded catalog: its type's patches and the `database.url` of its
    /// combined configuration.
    pub fn instance(catalog: &Catalog, catalog_dir: &Path, id: &str) -> Result<Target, DbError> {
        let idx = catalog
            .instance_index(id)
            .ok_or_else(|| DbError::BadInput(format!("no instance {id}")))?;
        let inst = &catalog.inventory.instances[idx];
        let config = crate::config::combined(catalog, idx).map_err(|errors| {
            DbError::BadInput(
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        let url = lookup(&config, URL_KEY).ok_or_else(|| {
            DbError::BadInput(format!(
                "{id}: its combined configuration has no {URL_KEY} (a string postgres://… or sqlite:///PATH)"
            ))
        })?;
        let url = match url {
            Value::Str(s) => s.clone(),
            _ => {
                return Err(DbError::BadInput(format!(
                    "{id}: {URL_KEY} must be a string"
                )))
            }
        };
        Ok(Target {
            type_name: inst.type_name.clone(),
            patches: PatchSet::load(catalog_dir, &inst.type_name).map_err(DbError::BadInput)?,
            url: Url::parse(&url)
                .map_err(|e| DbError::BadInput(format!("{id}: {URL_KEY}: {e}")))?,
            instance: Some(id.to_owned()),
        })
    }
}

fn lookup<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(v, |v, k| match v {
        Value::Map(m) => m.get(k),
        _ => None,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub instance: Option<String>,
    #[serde(rename = "type")]
    pub type_name: String,
    pub engine: &'static str,
    pub url: String,
    #[serde(flatten)]
    pub status: DbStatus,
    /// True when `db patch` would run without an override.
    pub clean: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct AppliedStep {
    /// First and last patch number the step applied (a baseline covers several).
    pub number: u32,
    pub name: String,
    pub via: &'static str,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailedPatch {
    pub number: u32,
    pub name: String,
    pub error: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PatchReport {
    /// `applied`, `nothing` (already up to date) or `failed` (rolled back; exit 1).
    pub outcome: &'static str,
    pub applied: Vec<AppliedStep>,
    pub failed: Option<FailedPatch>,
    /// The status after the run.
    pub after: StatusReport,
}

#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    pub allow: Allow,
    pub lock_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            allow: Allow::default(),
            lock_timeout: Duration::from_secs(30),
        }
    }
}

fn report(t: &Target, status: DbStatus) -> StatusReport {
    StatusReport {
        instance: t.instance.clone(),
        type_name: t.type_name.clone(),
        engine: t.url.engine(),
        url: t.url.display(),
        clean: status.is_clean(),
        status,
    }
}

/// Reads the database's patch status; changes nothing. A missing SQLite file reads as an
/// empty database (everything pending) and is not created.
pub async fn status(t: &Target) -> Result<StatusReport, DbError> {
    if let Url::Sqlite(path) = &t.url {
        if !Path::new(path).exists() {
            let empty = plan::DbState {
                table: false,
                empty: true,
                applied: Vec::new(),
            };
            return Ok(report(t, plan::status(&t.patches, &empty)));
        }
    }
    let mut conn = Conn::open(&t.url, false, Duration::from_secs(5))
        .await
        .map_err(from_engine)?;
    let state = conn.read_state().await.map_err(from_engine);
    conn.close().await;
    Ok(report(t, plan::status(&t.patches, &state?)))
}

/// Applies what is pending, each step in its own transaction, under the run lock.
pub async fn patch(t: &Target, opts: RunOptions) -> Result<PatchReport, DbError> {
    let mut conn = Conn::open(&t.url, true, opts.lock_timeout)
        .await
        .map_err(from_engine)?;
    let result = run_locked(&mut conn, t, opts).await;
    conn.unlock().await;
    let after = match &result {
        Ok(_) => conn.read_state().await.map_err(from_engine),
        Err(_) => Ok(Default::default()),
    };
    conn.close().await;
    let (applied, failed) = result?;
    let after = report(t, plan::status(&t.patches, &after?));
    Ok(PatchReport {
        outcome: if failed.is_some() {
            "failed"
        } else if applied.is_empty() {
            "nothing"
        } else {
            "applied"
        },
        applied,
        failed,
        after,
    })
}

enum Next {
    Done,
    Refused(String),
    Ran(u32, String, &'static str),
}

async fn run_locked(
    conn: &mut Conn,
    t: &Target,
    opts: RunOptions,
) -> Result<(Vec<AppliedStep>, Option<FailedPatch>), DbError> {
    conn.lock(opts.lock_timeout).await.map_err(from_engine)?;
    let set = &t.patches;
    let mut applied = Vec::new();
    loop {
        let mut attempted: Option<(u32, String)> = None;
        let result = conn
            .step(|state| {
                let s = plan::status(set, state);
                if let Some(why) = plan::refusal(&s, opts.allow) {
                    return Decision::Stop(Next::Refused(why));
                }
                match plan::next_step(set, &s, opts.allow) {
                    None => Decision::Stop(Next::Done),
                    Some(PatchStep::Baseline { upto }) => {
                        let Some(b) = &set.baseline else {
                            return Decision::Stop(Next::Done);
                        };
                        attempted = Some((upto, patches::SCHEMA_FILE.to_owned()));
                        let records = set
                            .patches
                            .iter()
                            .filter(|p| p.number <= upto)
                            .map(|p| (p.number, p.name.clone(), p.sha256.clone()))
                            .collect();
                        Decision::Run(
                            StepSql {
                                sql: &b.sql,
                                records,
                                via: "baseline",
                            },
                            Next::Ran(upto, patches::SCHEMA_FILE.to_owned(), "baseline"),
                        )
                    }
                    Some(PatchStep::Patch(p)) => {
                        attempted = Some((p.number, p.name.clone()));
                        Decision::Run(
                            StepSql {
                                sql: &p.sql,
                                records: vec![(p.number, p.name.clone(), p.sha256.clone())],
                                via: "patch",
                            },
                            Next::Ran(p.number, p.name.clone(), "patch"),
                        )
                    }
                }
            })
            .await;
        match result {
            Ok((Next::Done, _)) => return Ok((applied, None)),
            Ok((Next::Refused(why), _)) => return Err(DbError::Refused(why)),
            Ok((Next::Ran(number, name, via), took)) => applied.push(AppliedStep {
                number,
                name,
                via,
                duration_ms: took.map_or(0, |d| d.as_millis() as u64),
            }),
            Err(EngineError::Patch(error)) => {
                let (number, name) = attempted.unwrap_or_default();
                return Ok((
                    applied,
                    Some(FailedPatch {
                        number,
                        name,
                        error,
                    }),
                ));
            }
            Err(e) => return Err(from_engine(e)),
        }
    }
}
