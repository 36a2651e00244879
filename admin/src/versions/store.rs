//! The content-addressed version store under the ADMIN state directory:
//!
//! ```text
//! <state>/versions/blobs/<sha256[0..2]>/<sha256>   file contents, read-only, shared by versions
//! <state>/versions/manifests/<id>.json             one per version
//! ```
//!
//! A version's id is its readable label plus the first 12 hex digits of the sha256 of its
//! canonical manifest (type, then every file's path, mode, size and sha256 in path order), so
//! the same tree always gets the same id and any change to it gets another.

use super::hash::{hex, Sha256Writer};
use super::VersionError;
use crate::durable::unique;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated.
    pub path: String,
    /// Permission bits, e.g. 0o755 (serialized as a number).
    pub mode: u32,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub label: String,
    /// sha256 of the canonical manifest (what the id's suffix abbreviates).
    pub digest: String,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// What `build` did.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    pub id: String,
    pub files: usize,
    pub bytes: u64,
    /// Blobs written by this build (the rest were already in the store).
    pub new_blobs: usize,
    pub new_bytes: u64,
    /// False when a version with this id already existed.
    pub created: bool,
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !s.starts_with(['.', '-'])
}

/// A version id: `<label>_<12 hex>`.
pub fn is_id(s: &str) -> bool {
    match s.rsplit_once('_') {
        Some((label, h)) => {
            is_label(label)
                && h.len() == 12
                && h.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        }
        None => false,
    }
}

fn io(path: &Path, e: std::io::Error) -> VersionError {
    VersionError::Io(format!("{}: {e}", path.display()))
}

impl Store {
    /// The store under `state_dir` (created on first build).
    pub fn new(state_dir: &Path) -> Store {
        Store {
            root: state_dir.join("versions"),
        }
    }

    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("xx");
        self.root.join("blobs").join(prefix).join(sha256)
    }

    fn manifest_path(&self, id: &str) -> PathBuf {
        self.root.join("manifests").join(format!("{id}.json"))
    }

    /// Packs every regular file under `dir` as a version of `type_name`.
    pub fn build(
        &self,
        type_name: &str,
        dir: &Path,
        label: Option<&str>,
    ) -> Result<BuildReport, VersionError> {
        let label = label.unwrap_or(type_name);
        if !is_label(label) {
            return Err(VersionError::BadInput(format!(
                "label {label:?}: expected 1-64 letters, digits, . or - (not starting with . or -)"
            )));
        }
        let mut paths = Vec::new();
        walk(dir, dir, &mut paths)?;
        paths.sort();
        if paths.is_empty() {
            return Err(VersionError::BadInput(format!(
                "{}: no files to pack",
                dir.display()
            )));
        }
        let blobs = self.root.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| io(&blobs, e))?;
        let mut files = Vec::with_capacity(paths.len());
        let (mut new_blobs, mut new_bytes) = (0, 0);
        for rel in paths {
            let src = dir.join(&rel);
            let meta = std::fs::metadata(&src).map_err(|e| io(&src, e))?;
            let (sha256, size, fresh) = self.put_blob(&src)?;
            if fresh {
                new_blobs += 1;
                new_bytes += size;
            }
            files.push(FileEntry {
                path: rel,
                mode: meta.permissions().mode() & 0o7777,
                size,
                sha256,
            });
        }
        let digest = canonical_digest(type_name, &files);
        let id = format!("{label}_{}", &digest[..12]);
        let manifest = Manifest {
            id: id.clone(),
            type_name: type_name.to_owned(),
            label: label.to_owned(),
            digest,
            files,
        };
        let path = self.manifest_path(&id);
        let created = !path.exists();
        if created {
            let text = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| VersionError::Io(e.to_string()))?;
            write_atomic(&path, &text)?;
        }
        Ok(BuildReport {
            id,
            files: manifest.files.len(),
            bytes: manifest.total_size(),
            new_blobs,
            new_bytes,
            created,
        })
    }

    /// Stores `src` under its sha256; returns (sha256, size, newly stored). The file is hashed
    /// first, so a blob already in the store costs one read and no write.
    fn put_blob(&self, src: &Path) -> Result<(String, u64, bool), VersionError> {
        let file = std::fs::File::open(src).map_err(|e| io(src, e))?;
        let sha = super::hash::sha256_of(file).map_err(|e| io(src, e))?;
        let dst = self.blob_path(&sha);
        if dst.exists() {
            let size = std::fs::metadata(src).map_err(|e| io(src, e))?.len();
            return Ok((sha, size, false));
        }
        let blobs = self.root.join("blobs");
        let tmp = blobs.join(format!(".tmp-{}-{}", std::process::id(), unique()));
        let mut input = std::fs::File::open(src).map_err(|e| io(src, e))?;
        let out = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let mut w = Sha256Writer::new(out);
        let copied = std::io::copy(&mut input, &mut w).map_err(|e| io(src, e));
        let (out, digest) = w.finish();
        let size = match copied {
            Ok(n) if hex(&digest) == sha => n,
            Ok(_) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(VersionError::BadInput(format!(
                    "{}: changed while it was being packed",
                    src.display()
                )));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        out.sync_all().map_err(|e| io(&tmp, e))?;
        drop(out);
        let parent = dst.parent().unwrap_or(&blobs);
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))
            .map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| io(&dst, e))?;
        Ok((sha, size, true))
    }

    pub fn manifest(&self, id: &str) -> Result<Manifest, VersionError> {
        if !is_id(id) {
            return Err(VersionError::BadInput(format!(
                "{id:?} is not a version id (LABEL_0123456789ab)"
            )));
        }
        let path = self.manifest_path(id);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VersionError::NotFound(format!("no version {id}")))
            }
            Err(e) => return Err(io(&path, e)),
        };
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| VersionError::Corrupt(format!("{}: {e}", path.display())))?;
        if m.id != id || canonical_digest(&m.type_name, &m.files) != m.digest {
            return Err(VersionError::Corrupt(format!(
                "{}: the manifest does not match its id",
                path.display()
            )));
        }
        Ok(m)
    }

    /// Every version (optionally of one type), sorted by id.
    pub fn list(&self, type_name: Option<&str>) -> Result<Vec<Manifest>, VersionError> {
        let dir = self.root.join("manifests");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| io(&dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if !is_id(id) {
                continue;
            }
            let m = self.manifest(id)?;
            if type_name.is_none_or(|t| t == m.type_name) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Removes a version's manifest (its blobs go at the next gc). The caller checks that no
    /// instance uses it.
    pub fn remove(&self, id: &str) -> Result<(), VersionError> {
        self.manifest(id)?;
        let p = self.manifest_path(id);
        std::fs::remove_file(&p).map_err(|e| io(&p, e))
    }

    /// Deletes blobs no manifest references (and leftovers of interrupted builds). Returns
    /// (blobs removed, bytes freed).
    pub fn gc(&self) -> Result<(usize, u64), VersionError> {
        let used: BTreeSet<String> = self
            .list(None)?
            .into_iter()
            .flat_map(|m| m.files.into_iter().map(|f| f.sha256))
            .collect();
        let blobs = self.root.join("blobs");
        let rd = match std::fs::read_dir(&blobs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(io(&blobs, e)),
        };
        let (mut n, mut bytes) = (0, 0);
        for e in rd {
            let e = e.map_err(|e| io(&blobs, e))?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !path.is_dir() {
                continue;
            }
            for b in std::fs::read_dir(&path).map_err(|e| io(&path, e))? {
                let b = b.map_err(|e| io(&path, e))?;
                let sha = b.file_name().to_string_lossy().into_owned();
                if !used.contains(&sha) {
                    bytes += b.metadata().map(|m| m.len()).unwrap_or(0);
                    std::fs::remove_file(b.path()).map_err(|e| io(&b.path(), e))?;
                    n += 1;
                }
            }
        }
        Ok((n, bytes))
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, sha256: &str) -> Result<std::fs::File, VersionError> {
        let p = self.blob_path(sha256);
        std::fs::File::open(&p)
            .map_err(|e| VersionError::Corrupt(format!("blob {sha256} ({}): {e}", p.display())))
    }
}

/// A version's manifest or an instance record: parents created, then the crate's one durable
/// atomic write.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VersionError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    crate::durable::write_atomically(path, bytes).map_err(|e| io(path, e))
}

fn canonical_digest(type_name: &str, files: &[FileEntry]) -> String {
    // One definition with the agent, which recomputes it before trusting a file list.
    portcullis_agent_proto::release_digest(
        type_name,
        files
            .iter()
            .map(|f| (f.mode, f.size, f.sha256.as_str(), f.path.as_str())),
    )
}

/// Collects the relative paths of every regular file under `dir`. Symlinks and special files
/// are refused: a version is plain files whose bytes the store can vouch for.
fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), VersionError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| io(dir, e))?;
        let path = e.path();
        let ft = e.file_type().map_err(|e| io(&path, e))?;
        if ft.is_dir() {
            walk(base, &path, out)?;
        } else if ft.is_file() {
            let rel = path
                .strip_prefix(base)
                .map_err(|_| VersionError::BadInput(format!("{}: outside", path.display())))?;
            let rel = rel.to_str().ok_or_else(|| {
                VersionError::BadInput(format!("{}: file name is not UTF-8", path.display()))
            })?;
            if rel.contains('\n') {
                return Err(VersionError::BadInput(format!(
                    "{}: file name contains a newline",
                    path.display()
                )));
            }
            out.push(rel.to_owned());
        } else {
            return Err(VersionError::BadInput(format!(
                "{}: only regular files and directories can be packed (symlink or special file)",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_ids() {
        assert!(is_label("tg-2026.11.21-1"));
        assert!(!is_label("") && !is_label("-x") && !is_label("a b") && !is_label("a_b"));
        assert!(is_id("tg-2026.11.21-1_3f2a9c1b7e4d"));
        assert!(!is_id("tg_3F2A9C1B7E4D") && !is_id("tg_3f2a") && !is_id("3f2a9c1b7e4d"));
        assert!(!is_id("../x_3f2a9c1b7e4d"));
    }

    #[test]
    fn digest_covers_type_mode_and_path() {
        let f = |path: &str, mode| FileEntry {
            path: path.into(),
            mode,
            size: 1,
            sha256: "00".into(),
        };
        let base = canonical_digest("web", &[f("a", 0o644)]);
        assert_eq!(base, canonical_digest("web", &[f("a", 0o644)]));
        assert_ne!(base, canonical_digest("api", &[f("a", 0o644)]));
        assert_ne!(base, canonical_digest("web", &[f("a", 0o755)]));
        assert_ne!(base, canonical_digest("web", &[f("b", 0o644)]));
    }
}
