//! How a command ends badly. Every subcommand returns `Result<Exit, CliError>`; [`report`] is the
//! one place that prints the error (`portcullis: …`, or an export's located errors one per
//! line) and picks the exit code scripts rely on: 2 for input that is wrong (export, flags,
//! configuration, policy), 1 for work that failed (kernel, network, files).

use super::confirm::ConfirmError;
use crate::apply::ipvs::IpvsSyncError;
use crate::apply::{FlushError, GuardRefusal, NftError, SyncError};
use crate::daemon::config::ConfigError;
use crate::daemon::control::ControlError;
use crate::daemon::{DaemonError, ReloadError};
use crate::render::nft::{IfnameError, PolicyError};
use portcullis_export::ExportErrors;
use std::path::PathBuf;

/// Exit codes shared by the subcommands.
pub const OK: u8 = 0;
/// `diff`: the inputs differ (like diff(1)).
pub const CHANGES: u8 = 1;
pub const FAILED: u8 = 1;
pub const INVALID: u8 = 2;

/// How a command that did its job ended: `OK`; `CHANGES` for a diff that found some; `FAILED`
/// for an apply that was rolled back, as commit-confirm asked (it says so on stdout).
pub type Exit = u8;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An export with errors; each is printed, located, on its own line.
    #[error("{name}: rejected: {} error(s)", errors.errors.len())]
    Rejected { name: String, errors: ExportErrors },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("{0}")]
    Usage(&'static str),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("{refusal} (baseline: the last-known-good export in {})", baseline.display())]
    Refused {
        refusal: GuardRefusal,
        baseline: PathBuf,
    },
    #[error("--confirm-within refused: {0}")]
    NoRollback(#[source] ConfirmError),
    #[error(transparent)]
    Confirm(#[from] ConfirmError),
    #[error("apply failed, the kernel was left as it was: {0}")]
    ApplyFailed(#[source] SyncError),
    #[error("ROLLBACK FAILED ({why}): {source}")]
    RollbackFailed {
        why: String,
        #[source]
        source: SyncError,
    },
    #[error("cannot read the live table: {0}")]
    ReadLive(#[source] NftError),
    #[error("nft -c refused the transaction: {0}")]
    NftCheck(#[source] NftError),
    /// A flush that left something behind; each failure is printed on its own line.
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error(transparent)]
    Ipvs(#[from] IpvsSyncError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Rejected { .. }
            | CliError::Source(_)
            | CliError::Config(_)
            | CliError::Options(_)
            | CliError::Usage(_)
            | CliError::Refused { .. }
            | CliError::Daemon(_) => INVALID,
            CliError::Reload(_)
            | CliError::Control(_)
            | CliError::Sync(_)
            | CliError::Ipvs(_)
            | CliError::Unsupported(_)
            | CliError::NoRollback(_)
            | CliError::Confirm(_)
            | CliError::ApplyFailed(_)
            | CliError::RollbackFailed { .. }
            | CliError::ReadLive(_)
            | CliError::NftCheck(_)
            | CliError::Flush(_)
            | CliError::Io { .. } => FAILED,
        }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.into();
        move |source| CliError::Io { what, source }
    }
}

/// An export that could not be read at all (before any validation).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{what}: export larger than {limit} bytes, refused")]
    TooLarge { what: String, limit: u64 },
}

/// Rendering options (policy file, interface names) that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("cannot read policy {path}: {source}")]
    ReadPolicy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Policy {
        origin: String,
        #[source]
        source: PolicyError,
    },
    #[error("{flag}: {source}")]
    Interface {
        flag: &'static str,
        #[source]
        source: IfnameError,
    },
}

/// Prints how the command failed and returns its exit code.
pub fn report(error: &CliError) -> u8 {
    match error {
        CliError::Rejected { name, errors } => {
            for e in &errors.errors {
                eprintln!("{name}: {e}");
            }
            if errors.truncated {
                eprintln!(
                    "{name}: more errors not shown (first {} listed)",
                    errors.errors.len()
                );
            }
            eprintln!("{error}");
        }
        CliError::Flush(e) => {
            for failure in &e.failures {
                eprintln!("portcullis: {failure}");
            }
        }
        other => eprintln!("portcullis: {other}"),
    }
    error.exit_code()
}

/// A warning that does not change the outcome, in the same voice as errors.
pub fn warn(message: impl std::fmt::Display) {
    eprintln!("portcullis: warning: {message}");
}
