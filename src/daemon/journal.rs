//! What the daemon did, for netops: a journal of changes (JSON lines, rotated) and a status
//! snapshot, both in the state directory, read by `portcullis log` and `portcullis status`.

use crate::diff::DiffSummary;
use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

const JOURNAL: &str = "journal.jsonl";
const STATUS: &str = "status.json";
/// The journal is rotated (to `journal.jsonl.1`) past this size: years of changes at a few
/// hundred bytes each, and a bound on the disk a flapping ADMIN can use.
const MAX_JOURNAL_BYTES: u64 = 16 << 20;

/// What the daemon has done since it started, for `status` and the journal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub polls: u64,
    pub not_modified: u64,
    pub applied: u64,
    pub rejected: u64,
    pub refused: u64,
    pub failed: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_apply_unix: Option<u64>,
}

/// One event that changed, or refused to change, the data plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub time_unix: u64,
    pub etag: Option<String>,
    /// `applied`, `rejected`, `refused` or `failed`.
    pub result: String,
    /// For `applied`: `full`, `incremental` or `adopted`; otherwise the reason.
    pub detail: String,
    pub summary: Option<DiffSummary>,
    pub duration_ms: f64,
}

/// A snapshot of the daemon, rewritten after every step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub role: String,
    /// The export URL in use: with several ADMIN replicas, the one the next poll asks.
    pub source: String,
    /// Every replica configured, in order, when there are several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    pub etag: Option<String>,
    pub last_poll_unix: Option<u64>,
    pub services: usize,
    pub real_servers: usize,
    #[serde(flatten)]
    pub counters: Counters,
    /// Health checks: endpoints probed, and the real servers they hold out of rotation.
    #[serde(default)]
    pub health: HealthStatus,
}

/// The health part of the status snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    pub probed: usize,
    /// `SERVICE REAL (INSTANCE)` of each real server at weight 0 because its check fails.
    pub down: Vec<String>,
    /// Services whose every real server fails its check, kept in rotation (fail open).
    pub fail_open: Vec<String>,
}

pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(dir: impl Into<PathBuf>) -> Journal {
        Journal { dir: dir.into() }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }

    /// Appends one entry. Durable like the last-known-good export it accompanies: the entry
    /// is fsynced (one flush per change the daemon makes, not per poll), and so is the
    /// directory when the file is new or was just rotated. A crash can still tear the line
    /// being written; [`Journal::tail`] skips a torn line.
    pub fn append(&self, entry: &Entry) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.path();
        let mut new_entry_in_dir = !path.exists();
        if fs::metadata(&path).is_ok_and(|m| m.len() > MAX_JOURNAL_BYTES) {
            fs::rename(&path, self.dir.join(format!("{JOURNAL}.1")))?;
            new_entry_in_dir = true;
        }
        let mut line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        if new_entry_in_dir {
            crate::durable::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The last `n` entries, oldest first. Unreadable lines are skipped, not fatal: the
    /// journal is for humans, and a torn last line after a crash must not hide the rest.
    pub fn tail(&self, n: usize) -> std::io::Result<Vec<Entry>> {
        let file = match fs::File::open(self.path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut entries: Vec<Entry> = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect();
        let skip = entries.len().saturating_sub(n);
        Ok(entries.split_off(skip))
    }

    /// Rewrites the status snapshot, atomically (readers never see half of it) and durably.
    pub fn write_status(&self, status: &Status) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
        crate::durable::write_atomic(&self.dir.join(STATUS), &bytes)
    }

    pub fn read_status(dir: &Path) -> std::io::Result<Status> {
        let bytes = fs::read(dir.join(STATUS))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_tails_and_survives_a_torn_line() {
        let dir = crate::test_dir("journal");
        let j = Journal::new(&dir);
        assert!(j.tail(5).expect("empty").is_empty());
        for i in 0..4u64 {
            j.append(&Entry {
                time_unix: i,
                etag: Some(format!("\"v{i}\"")),
                result: "applied".into(),
                detail: "incremental".into(),
                summary: None,
                duration_ms: 1.5,
            })
            .expect("append");
        }
        OpenOptions::new()
            .append(true)
            .open(dir.join(JOURNAL))
            .and_then(|mut f| f.write_all(b"{\"time_unix\": 9, \"torn"))
            .expect("torn write");
        let last = j.tail(2).expect("tail");
        assert_eq!(last.iter().map(|e| e.time_unix).collect::<Vec<_>>(), [2, 3]);
        let status = Status {
            role: "active".into(),
            counters: Counters {
                polls: 3,
                ..Counters::default()
            },
            ..Status::default()
        };
        j.write_status(&status).expect("status");
        assert_eq!(Journal::read_status(&dir).expect("read"), status);
    }
}
