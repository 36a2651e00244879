//! The audit log: one JSON line per inventory change — when, by which token, what operation on
//! what, the thing before and after, and the catalog revisions it went from and to. Appended
//! (and synced) before the inventory is replaced, under the catalog's write lock, so every
//! change on disk has its entry and entries are in the order the changes happened.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// RFC 3339, UTC, seconds.
    pub time: String,
    /// The token's name from the token file (`token` for a single-token file), or
    /// `in-process` for an embedding program's own calls.
    pub identity: String,
    pub operation: String,
    /// The instance id or server name (a moved instance: its new id).
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub revision_before: String,
    pub revision_after: String,
    /// Set when the inventory could not be written after this entry was appended: the
    /// change did not happen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Appends one entry as a line and syncs it to disk.
pub(crate) fn append(path: &Path, entry: &AuditEntry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write of the whole line: O_APPEND keeps concurrent appenders' lines whole.
    f.write_all(&line)?;
    f.sync_data()
}

/// The last `limit` entries, oldest first. A missing log is empty; a line that does not parse
/// (a torn last line after a crash) is skipped.
pub(crate) fn tail(path: &Path, limit: usize) -> std::io::Result<Vec<AuditEntry>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = std::collections::VecDeque::with_capacity(limit.min(1024));
    for line in std::io::BufReader::new(file).lines() {
        let Ok(entry) = serde_json::from_str::<AuditEntry>(&line?) else {
            continue;
        };
        if out.len() == limit {
            out.pop_front();
        }
        if limit > 0 {
            out.push_back(entry);
        }
    }
    Ok(out.into())
}
