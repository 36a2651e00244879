//! The last-known-good export: the last export that applied successfully, kept in the state
//! directory so a gateway that reboots while ADMIN is down still forwards traffic.
//!
//! One file, written atomically and durably ([`crate::durable`]), whose
//! first line records the export's SHA-256, its ETag and when it was saved; the export bytes
//! follow unchanged. A file whose checksum does not match is reported as corrupt and never
//! applied.

use crate::durable::sha256_hex;
use std::fs;
use std::path::{Path, PathBuf};

const FILE: &str = "last-good.csv";
const MAGIC: &str = "# portcullis-last-good v1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    pub export: Vec<u8>,
    pub etag: Option<String>,
    /// Seconds since the Unix epoch.
    pub saved_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but cannot be trusted: it is reported, never applied.
    #[error("{path} is corrupt ({why}); it will not be applied")]
    Corrupt { path: PathBuf, why: String },
}

/// The state directory (default `/var/lib/portcullis`).
#[derive(Clone, Debug)]
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateDir { path: path.into() }
    }

    fn file(&self) -> PathBuf {
        self.path.join(FILE)
    }

    /// Saves `export` (with the ETag it was served with) as the last-known-good.
    pub fn save(&self, export: &[u8], etag: Option<&str>, saved_at: u64) -> Result<(), CacheError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        fs::create_dir_all(&self.path).map_err(io(&self.path))?;
        // An ETag is a quoted token; anything with a line break would corrupt our header.
        let etag = etag.filter(|e| !e.contains(['\n', '\r'])).unwrap_or("");
        let header = format!(
            "{MAGIC} sha256={} saved={saved_at} etag={etag}\n",
            sha256_hex(export)
        );
        crate::durable::write_atomic_parts(&self.file(), &[header.as_bytes(), export])
            .map_err(io(&self.file()))?;
        Ok(())
    }

    /// The last-known-good export, `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Cached>, CacheError> {
        let path = self.file();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let corrupt = |why: &str| CacheError::Corrupt {
            path: path.clone(),
            why: why.to_owned(),
        };
        let split = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("no header line"))?;
        let header =
            std::str::from_utf8(&bytes[..split]).map_err(|_| corrupt("header is not UTF-8"))?;
        let fields = header
            .strip_prefix(MAGIC)
            .ok_or_else(|| corrupt("not a portcullis cache file"))?;
        let field = |name: &str| {
            fields
                .split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| corrupt(&format!("header lacks {name}")))
        };
        let export = bytes[split + 1..].to_vec();
        if field("sha256")? != sha256_hex(&export) {
            return Err(corrupt("checksum mismatch"));
        }
        let saved_at = field("saved")?
            .parse()
            .map_err(|_| corrupt("bad saved time"))?;
        let etag = fields
            .split_once(" etag=")
            .map(|(_, e)| e.to_owned())
            .filter(|e| !e.is_empty());
        Ok(Some(Cached {
            export,
            etag,
            saved_at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        crate::test_dir(&format!("cache-{tag}"))
    }

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = StateDir::new(tmpdir("rt"));
        assert_eq!(dir.load().expect("empty dir is fine"), None);
        dir.save(b"service,instance\n", Some("\"v1\""), 100)
            .expect("save");
        dir.save(
            b"# portcullis-export 1.1\nservice\n",
            Some("\"v2\" etag=x"),
            200,
        )
        .expect("save");
        let c = dir.load().expect("load").expect("present");
        assert_eq!(c.export, b"# portcullis-export 1.1\nservice\n");
        assert_eq!(c.etag.as_deref(), Some("\"v2\" etag=x"));
        assert_eq!(c.saved_at, 200);
        let leftovers: Vec<_> = fs::read_dir(&dir.path).expect("dir").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn detects_corruption() {
        let dir = StateDir::new(tmpdir("bad"));
        dir.save(b"service,instance\nweb,web.1\n", None, 1)
            .expect("save");
        let path = dir.path.join(FILE);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(dir.load(), Err(CacheError::Corrupt { .. })));
        fs::write(&path, b"garbage without header").expect("write");
        assert!(matches!(dir.load(), Err(CacheError::Corrupt { .. })));
        fs::write(&path, b"").expect("write");
        assert!(matches!(dir.load(), Err(CacheError::Corrupt { .. })));
    }
}
