//! `db status` and `db patch` (docs/versions-and-db.md). Every failure is a [`CliError::Db`],
//! so with `--json` even a refusal reaches the caller as JSON on stdout.

use crate::error::{CliError, Outcome};
use portcullis_admin::db::{self, DbError};
use portcullis_admin::Catalog;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct DbArgs {
    #[command(subcommand)]
    command: DbCommand,
}

#[derive(clap::Subcommand)]
enum DbCommand {
    /// Applied, pending, drifted and missing patches and gaps. Exit 0 clean, 2 when a patch
    /// run would be refused or the database cannot be read.
    Status {
        #[command(flatten)]
        target: DbTarget,
    },
    /// Apply pending patches in order. Exit 0 done or nothing to do, 1 a patch failed and was
    /// rolled back, 2 refused (drift, missing file, gap, lock timeout, bad input).
    Patch {
        #[command(flatten)]
        target: DbTarget,
        /// Proceed despite these refusals: drift, missing, gap (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', value_parser = ["drift", "missing", "gap"])]
        allow: Vec<String>,
        /// How long to wait for a concurrent run to finish, e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        lock_timeout: Duration,
    },
}

#[derive(clap::Args)]
struct DbTarget {
    #[arg(long)]
    catalog: PathBuf,
    /// An instance id (`type.server.index`); its URL is `database.url` of its combined config.
    #[arg(required_unless_present = "url", conflicts_with_all = ["type_name", "url"])]
    instance: Option<String>,
    /// The service type whose patches/<TYPE>/ to use (with --url).
    #[arg(long = "type", value_name = "TYPE", requires = "url")]
    type_name: Option<String>,
    /// postgres://… or sqlite://PATH (with --type).
    #[arg(long, requires = "type_name")]
    url: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn db(a: DbArgs) -> Result<Outcome, CliError> {
    let (DbCommand::Status { target } | DbCommand::Patch { target, .. }) = &a.command;
    let json = target.json;
    let fail = |error: DbError| CliError::Db { error, json };
    let t = resolve(target).map_err(fail)?;
    let rt = crate::current_thread_runtime()?;
    match a.command {
        DbCommand::Status { .. } => {
            let r = rt.block_on(db::status(&t)).map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", db::text::status(&r));
            }
            Ok(if r.clean {
                Outcome::Done
            } else {
                Outcome::Refused
            })
        }
        DbCommand::Patch {
            allow,
            lock_timeout,
            ..
        } => {
            let opts = db::RunOptions {
                allow: db::plan::Allow {
                    drift: allow.iter().any(|a| a == "drift"),
                    missing: allow.iter().any(|a| a == "missing"),
                    gap: allow.iter().any(|a| a == "gap"),
                },
                lock_timeout,
            };
            let r = rt.block_on(db::patch(&t, opts)).map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", db::text::patch(&r));
            }
            Ok(if r.failed.is_some() {
                Outcome::RolledBack
            } else {
                Outcome::Done
            })
        }
    }
}

/// The database to work on: an instance's (`database.url` of its combined configuration), or
/// an explicit `--type` and `--url`.
fn resolve(t: &DbTarget) -> Result<db::Target, DbError> {
    match (&t.instance, &t.type_name, &t.url) {
        (Some(id), _, _) => {
            let c = Catalog::load(&t.catalog).map_err(|e| DbError::BadInput(e.to_string()))?;
            db::Target::instance(&c, &t.catalog, id)
        }
        (None, Some(ty), Some(url)) => db::Target::explicit(&t.catalog, ty, url),
        _ => Err(DbError::BadInput(
            "name an INSTANCE, or --type TYPE with --url URL".into(),
        )),
    }
}
