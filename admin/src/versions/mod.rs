//! Versions: a content-addressed store of service builds ([`store`]) and their deployment into
//! instance roots with tests and automatic rollback ([`deploy`], [`probe`]). Materialising runs
//! on the ADMIN host, into roots it can reach (docs/versions-and-db.md discusses the
//! host-side agent that is future work).

pub mod deploy;
mod hash;
pub mod probe;
mod release;
pub mod store;

pub use deploy::{Action, DeployReport, Deployer, InstanceVersions};
pub use store::{BuildReport, Manifest, Store};

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    /// A blob or manifest does not match its hash: nothing was switched.
    #[error("{0}")]
    Corrupt(String),
    /// Another deploy of the instance holds its lock.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Io(String),
}

impl VersionError {
    pub fn kind(&self) -> &'static str {
        match self {
            VersionError::BadInput(_) => "bad-input",
            VersionError::NotFound(_) => "not-found",
            VersionError::Corrupt(_) => "corrupt",
            VersionError::Busy(_) => "busy",
            VersionError::Io(_) => "io",
        }
    }
}
