//! How a command ended: an [`Outcome`] when it ran to the end (its report is printed already),
//! or a [`CliError`] that `main` prints — the only place that writes `portcullis-admin: …` — and
//! turns into the exit code. The codes and messages are what scripts and tests rely on.

#[cfg(feature = "db")]
use portcullis_admin::db::DbError;
use portcullis_admin::versions::VersionError;
use portcullis_admin::{CatalogError, CatalogErrors};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A command that ran to the end: what its exit code says about the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Done,
    /// Exit 1: a switch whose tests failed was switched back, or a patch failed and was rolled
    /// back.
    RolledBack,
    /// Exit 2: the answer is no — an invalid catalog (`check --json`), a database a patch run
    /// would refuse (`db status`).
    Refused,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::RolledBack => 1,
            Outcome::Refused => 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The catalog does not load; `print` shows every located error before this summary.
    #[error("{}: catalog rejected: {} error(s)", dir.display(), errors.0.len())]
    Catalog { dir: PathBuf, errors: CatalogErrors },
    #[error("no instance {id} in {}", dir.display())]
    NoInstance { id: String, dir: PathBuf },
    /// The instance's combined configuration has errors; `print` shows each first.
    #[error("{id}: {} error(s) in the combined configuration", errors.len())]
    Config {
        id: String,
        errors: Vec<CatalogError>,
    },
    #[error(transparent)]
    Export(#[from] portcullis_export::WriteError),
    /// `export`: an unknown `--location`, or no cloud-wide export (fwmarks span locations).
    #[error("{0}")]
    ExportRefused(String),
    #[error("{}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: empty token file", .0.display())]
    EmptyTokenFile(PathBuf),
    #[error("{}:{line}: expected `NAME TOKEN`", path.display())]
    BadTokenLine { path: PathBuf, line: usize },
    #[error("agents: {0}")]
    Agents(portcullis_admin::serve::HubError),
    #[error("serve --state postgres://… --agent-tokens F also needs --agent-store DIR: the state directory whose version store serves the agents' blobs")]
    AgentStoreNeeded,
    #[error(
        "serve: give either --catalog DIR or --state postgres://… (a shared catalog), not both"
    )]
    CatalogOrSharedState,
    #[cfg(not(feature = "db"))]
    #[error("--state postgres://…: this build has no PostgreSQL support (the `db` feature)")]
    NoSharedState,
    /// The catalog in PostgreSQL: unreachable, empty, invalid or corrupt.
    #[cfg(feature = "db")]
    #[error(transparent)]
    SharedState(#[from] portcullis_admin::pgstate::PgStateError),
    #[error("--reload-interval: must be more than zero, e.g. 1s or 500ms")]
    ZeroReloadInterval,
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The server stopped on an error (accepting, TLS set-up).
    #[error("{0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Version(#[from] VersionError),
    /// `ctl`: the server refused, could not be reached, or the usage or token was wrong.
    #[error(transparent)]
    Ctl(crate::ctl::CtlError),
    /// `install|upgrade|downgrade` refused by ADMIN before anything changed (unknown instance
    /// or version, no agent, a deploy already running): bad input, as in the local mode.
    #[error(transparent)]
    DeployRefused(crate::ctl::CtlError),
    #[error("{id} is in use by {} (current or downgrade target)", users.join(", "))]
    VersionInUse { id: String, users: Vec<String> },
    /// `json`: the command was asked for JSON, so the error goes to stdout as
    /// `{"error": …, "kind": …}` where the caller's parser expects it.
    #[cfg(feature = "db")]
    #[error("{error}")]
    Db { error: DbError, json: bool },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NoInstance { .. } => 1,
            CliError::Ctl(e) => e.exit_code(),
            CliError::DeployRefused(_) => 2,
            CliError::Runtime(_) | CliError::Listen { .. } | CliError::Serve(_) => 1,
            #[cfg(feature = "db")]
            CliError::Db { error, .. } => error.exit_code(),
            #[cfg(feature = "db")]
            CliError::SharedState(e) => match e {
                portcullis_admin::pgstate::PgStateError::Invalid(_)
                | portcullis_admin::pgstate::PgStateError::Empty => 2,
                _ => 1,
            },
            CliError::CatalogOrSharedState | CliError::AgentStoreNeeded => 2,
            #[cfg(not(feature = "db"))]
            CliError::NoSharedState => 2,
            CliError::Catalog { .. }
            | CliError::Config { .. }
            | CliError::Export(_)
            | CliError::ExportRefused(_)
            | CliError::TokenFile { .. }
            | CliError::EmptyTokenFile(_)
            | CliError::BadTokenLine { .. }
            | CliError::Agents(_)
            | CliError::ZeroReloadInterval
            | CliError::Version(_)
            | CliError::VersionInUse { .. } => 2,
        }
    }

    /// Writes the error where its reader looks: located catalog errors one per line as
    /// `file:line:column: key: message` (what editors jump to), then the one-line summary.
    pub fn print(&self) {
        let located: &[CatalogError] = match self {
            CliError::Catalog { errors, .. } => &errors.0,
            CliError::Config { errors, .. } => errors,
            #[cfg(feature = "db")]
            CliError::Db { error, json: true } => {
                let v = serde_json::json!({ "error": error.to_string(), "kind": error.kind() });
                println!("{v}");
                return;
            }
            CliError::Ctl(e) | CliError::DeployRefused(e) => {
                for line in e.located() {
                    eprintln!("{line}");
                }
                &[]
            }
            _ => &[],
        };
        for e in located {
            eprintln!("{e}");
        }
        eprintln!("portcullis-admin: {self}");
    }
}
