//! What ADMIN and `portcullis-agent` exchange, as plain serde types with no I/O:
//!
//! - [`Desired`]: `GET /v1/servers/{name}/desired` — every instance placed on one server, with
//!   the release it should run (a file list, each file fetched from `GET /v1/blobs/{sha256}`),
//!   its combined configuration, install steps, run command and desired run state.
//! - [`Observed`]: `PUT /v1/servers/{name}/observed` — what the agent sees on the host.
//! - [`release_digest`]: the canonical digest of a release, which both sides compute the same
//!   way, so the agent checks that the file list it was handed is the version it names.
//!
//! A crate of its own so the agent depends on neither ADMIN's HTTP server nor sqlx, and ADMIN
//! does not depend on the agent's process supervision: both depend on these few types.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;

/// One server's desired state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub server: String,
    /// The server's address from the inventory: where the type's tests connect.
    pub address: String,
    pub instances: Vec<DesiredInstance>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredInstance {
    /// `type.server.index`.
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub index: u32,
    /// The release to run; `None`: the instance has no version yet (nothing to install).
    pub release: Option<Release>,
    /// The combined configuration, written to `${config}` on the host.
    pub config: serde_json::Value,
    pub install: Install,
    /// How the instance runs; `None`: the type has no `run` section (files only).
    pub run: Option<RunSpec>,
    pub run_state: RunState,
    /// Bumped by `POST /v1/instances/{id}/restart`: a value the agent has not acted on yet
    /// means "restart once".
    pub restart_generation: u64,
    pub tests: Vec<TestSpec>,
    /// Paths (with the variables already substituted) the agent removes when the instance is
    /// removed from the server; the agent keeps them with its local copy of the instance.
    pub uninstall: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// `label_<12 hex>`.
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    /// sha256 of the canonical manifest ([`release_digest`]).
    pub digest: String,
    pub files: Vec<ReleaseFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseFile {
    /// Relative, `/`-separated.
    pub path: String,
    pub mode: u32,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Install {
    /// Directories relative to the instance directory.
    pub mkdir: Vec<String>,
    pub links: Vec<LinkStep>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkStep {
    /// Relative to the instance directory.
    pub path: String,
    /// What the meta-configuration said: `db`, `archive` or `path`.
    pub drive: String,
    /// The absolute target, resolved from the server's drives or archive mount by ADMIN.
    pub target: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// argv; `${config}`, `${instance-dir}` and `${release}` are left for the agent to fill in
    /// (host paths only it knows), every other variable is substituted by ADMIN.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// SIGTERM, then SIGKILL after this long.
    pub stop_timeout_ms: u64,
}

/// The variables the agent substitutes in a [`RunSpec`] (and in `uninstall`).
pub const AGENT_VARIABLES: &[&str] = &["config", "instance-dir", "release"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TestSpec {
    Http {
        name: String,
        port: u16,
        path: String,
        expect: u16,
    },
    Tcp {
        name: String,
        port: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub attempts: u32,
}

/// What an agent reports for its server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Seconds since the epoch when the agent made the report.
    pub at: u64,
    /// The desired-state ETag the agent last converged to.
    pub desired_etag: Option<String>,
    pub instances: Vec<ObservedInstance>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    Stopped,
    /// Exits faster than it can be restarted, or could not be started at all.
    Failed,
    /// Installed, nothing to run (the type has no `run`).
    Installed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObservedInstance {
    pub id: String,
    /// The release `current` points at.
    pub version: Option<String>,
    pub state: ProcessState,
    pub pid: Option<u32>,
    /// Seconds since the epoch the process (or the state) started.
    pub since: u64,
    /// Restarts after unexpected exits since the agent started supervising it.
    pub restarts: u32,
    /// e.g. `exit status 3`, `signal 9`, `unknown (adopted)`.
    pub last_exit: Option<String>,
    pub tests: Vec<TestResult>,
    /// The last version change on the host and how it ended.
    pub last_change: Option<ChangeOutcome>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeOutcome {
    pub from: Option<String>,
    pub to: String,
    /// `ok`, `rolled-back` (a test failed or the new process died; the previous release runs
    /// again) or `failed` (nothing switched, e.g. a blob did not match its sha256).
    pub outcome: String,
    pub error: Option<String>,
    pub at: u64,
}

/// The canonical digest of a release: sha256 over a version line, the type, then every file's
/// mode, size, sha256 and path in the given (path) order. ADMIN names a version by it; the agent
/// recomputes it from the file list it received before trusting that list.
pub fn release_digest<'a>(
    type_name: &str,
    files: impl IntoIterator<Item = (u32, u64, &'a str, &'a str)>,
) -> String {
    use sha2::Digest;
    let mut text = Vec::new();
    let _ = writeln!(text, "portcullis-version 1\ntype {type_name}");
    for (mode, size, sha256, path) in files {
        let _ = writeln!(text, "{mode:o} {size} {sha256} {path}");
    }
    hex(&sha2::Sha256::digest(&text))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Release {
    /// Whether the file list hashes to the digest and the id's suffix abbreviates it.
    pub fn is_consistent(&self) -> bool {
        let d = release_digest(
            &self.type_name,
            self.files
                .iter()
                .map(|f| (f.mode, f.size, f.sha256.as_str(), f.path.as_str())),
        );
        d == self.digest
            && self
                .id
                .rsplit_once('_')
                .is_some_and(|(_, h)| d.starts_with(h) && h.len() == 12)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(files: Vec<ReleaseFile>) -> Release {
        let digest = release_digest(
            "web",
            files
                .iter()
                .map(|f| (f.mode, f.size, f.sha256.as_str(), f.path.as_str())),
        );
        Release {
            id: format!("web_{}", &digest[..12]),
            type_name: "web".into(),
            digest,
            files,
        }
    }

    #[test]
    fn a_changed_file_list_no_longer_matches_its_digest() {
        let f = ReleaseFile {
            path: "bin/web".into(),
            mode: 0o755,
            size: 3,
            sha256: "ab".into(),
        };
        let r = release(vec![f.clone()]);
        assert!(r.is_consistent());
        let mut swapped = r.clone();
        swapped.files[0].sha256 = "cd".into();
        assert!(!swapped.is_consistent());
        let mut renamed = r.clone();
        renamed.id = "web_000000000000".into();
        assert!(!renamed.is_consistent());
    }
}
