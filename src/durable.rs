//! Durable, atomic replacement of a state file: the one way every file in the state directory
//! is written (last-known-good export, status snapshot, IPVS ownership, role, pending
//! confirmation).
//!
//! A reader sees the old contents or the new, never a mix; after [`write_atomic`] returns, the
//! new contents survive a crash or power loss. The steps, each for a reason:
//! 1. a temporary file in the *same directory* (a rename across file systems is not atomic),
//!    created exclusively (`O_EXCL`) under an unpredictable name, so nobody can pre-create
//!    it, point a symlink at it or guess it;
//! 2. write, then fsync the file: its data is on disk before its name is;
//! 3. rename it over the target: atomic for readers;
//! 4. fsync the directory: the rename itself is durable only once the directory entry is.
//!
//! On any error the temporary file is removed and the target is left as it was.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The mode of state files: readable by all (what `fs::write` gives under the usual umask),
/// so `portcullis status` and `log` work for operators without root. They hold no secret.
const STATE_FILE_MODE: u32 = 0o644;

/// Replaces `path` with `bytes`, atomically and durably (see the module comment). The
/// directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_parts(path, &[bytes])
}

/// [`write_atomic`] of the concatenation of `parts` (a header and a large body, say),
/// without copying them into one buffer first.
pub fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A leading dot keeps the temporary out of `ls` and of globs over the directory.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| with_path(e, dir))?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(STATE_FILE_MODE))?;
    for part in parts {
        tmp.write_all(part)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(e, dir))
}

/// The SHA-256 of `bytes` in lower-case hex: how state files carry a checksum that is
/// verified on read (the last-known-good export, the IPVS ownership file).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes sure a directory entry just created in `dir` (a new file, a rename) survives a
/// crash, for files appended to in place rather than replaced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(e, dir))
}

/// Errors about the directory name it; errors about the file itself do not, as every caller
/// names the file it was writing.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn empty_dir(tag: &str) -> std::path::PathBuf {
        crate::test_dir(&format!("durable-{tag}"))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_and_replaces_leaving_no_temporary_behind() {
        let dir = empty_dir("replace");
        let path = dir.join("state.json");
        write_atomic(&path, b"one").expect("create");
        assert_eq!(fs::read(&path).expect("read"), b"one");
        write_atomic(&path, b"two, longer").expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"two, longer");
        assert_eq!(entries(&dir), ["state.json"]);
        assert_eq!(
            fs::metadata(&path).expect("stat").mode() & 0o777,
            STATE_FILE_MODE
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_planted_file_or_symlink_at_the_old_temporary_name_is_not_followed() {
        // The old writers used fixed names such as `.role.tmp`: someone who could create
        // that name decided what was written where. The helper never uses a fixed name, and
        // the rename replaces a symlink at the target rather than writing through it.
        let dir = empty_dir("planted");
        let victim = dir.join("victim");
        fs::write(&victim, b"untouched").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join(".role.tmp")).expect("symlink");
        std::os::unix::fs::symlink(&victim, dir.join("role")).expect("symlink");
        write_atomic(&dir.join("role"), b"active\n").expect("write");
        assert_eq!(fs::read(&victim).expect("read"), b"untouched");
        assert_eq!(fs::read(dir.join("role")).expect("read"), b"active\n");
        assert!(!fs::symlink_metadata(dir.join("role"))
            .expect("stat")
            .file_type()
            .is_symlink());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temporary() {
        let dir = empty_dir("failed");
        let path = dir.join("last-good.csv");
        write_atomic(&path, b"good").expect("write");
        // The rename cannot replace a non-empty directory: the write fails at step 3.
        let blocked = dir.join("blocked");
        fs::create_dir_all(blocked.join("inside")).expect("mkdir");
        assert!(write_atomic(&blocked, b"x").is_err());
        assert_eq!(fs::read(&path).expect("read"), b"good");
        assert_eq!(entries(&dir), ["blocked", "last-good.csv"]);
        // A missing directory is an error naming it, not a panic.
        let err = write_atomic(&dir.join("no/such/file"), b"x").expect_err("no dir");
        assert!(err.to_string().contains("no/such"), "{err}");
        let _ = fs::remove_dir_all(dir);
    }
}
