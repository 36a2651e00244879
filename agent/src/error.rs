//! The agent's errors: what ADMIN answered, and what the host refused.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("ADMIN {url}: {message}")]
    Admin { url: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("release {id}: {message}")]
    Release { id: String, message: String },
    #[error("{0}")]
    Refused(String),
}

pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_owned(),
        source,
    }
}
