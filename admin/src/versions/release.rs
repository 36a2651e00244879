//! An instance root on disk: its install section (directories and links), releases
//! materialised from the store and verified file by file, and the `current` symlink switched
//! atomically. Nothing here decides what to deploy; `deploy.rs` does.

use super::deploy::unix_now;
use super::hash::Sha256Writer;
use super::store::{Manifest, Store};
use super::VersionError;
use crate::meta::LinkTarget;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Builds `releases/<id>` from the store unless a verified copy is already there.
pub(super) fn materialise(store: &Store, root: &Path, m: &Manifest) -> Result<(), VersionError> {
    let releases = root.join("releases");
    let dst = releases.join(&m.id);
    if dst.exists() {
        match verify_tree(&dst, m) {
            Ok(()) => return Ok(()),
            Err(why) => {
                // Someone changed a materialised release: keep it for inspection, rebuild.
                let aside = releases.join(format!(".broken-{}-{}", m.id, unix_now()));
                tracing::warn!(release = %dst.display(), %why, "rebuilding a modified release");
                std::fs::rename(&dst, &aside).map_err(|e| ioe(&dst, e))?;
            }
        }
    }
    let tmp = releases.join(format!(".tmp-{}-{}", m.id, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = copy_out(store, &tmp, m);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dst).map_err(|e| ioe(&dst, e))
}

fn copy_out(store: &Store, tmp: &Path, m: &Manifest) -> Result<(), VersionError> {
    std::fs::create_dir_all(tmp).map_err(|e| ioe(tmp, e))?;
    for f in &m.files {
        let path = safe_join(tmp, &f.path)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ioe(parent, e))?;
        }
        let mut blob = store.open_blob(&f.sha256)?;
        let out = std::fs::File::create(&path).map_err(|e| ioe(&path, e))?;
        let mut w = Sha256Writer::new(out);
        let n = std::io::copy(&mut blob, &mut w).map_err(|e| ioe(&path, e))?;
        let (out, digest) = w.finish();
        let got = super::hash::hex(&digest);
        if got != f.sha256 || n != f.size {
            return Err(VersionError::Corrupt(format!(
                "blob {} for {} is corrupt: {n} bytes hashing to {got} (manifest: {} bytes)",
                f.sha256, f.path, f.size
            )));
        }
        out.sync_all().map_err(|e| ioe(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| ioe(&path, e))?;
    }
    Ok(())
}

fn ioe(p: &Path, e: std::io::Error) -> VersionError {
    VersionError::Io(format!("{}: {e}", p.display()))
}

/// `base/rel`, refusing absolute paths and `..` (a manifest is data, not trusted paths).
fn safe_join(base: &Path, rel: &str) -> Result<PathBuf, VersionError> {
    let p = Path::new(rel);
    let ok = p
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !ok || rel.is_empty() {
        return Err(VersionError::Corrupt(format!(
            "manifest path {rel:?} escapes the release"
        )));
    }
    Ok(base.join(p))
}

fn verify_tree(dir: &Path, m: &Manifest) -> Result<(), VersionError> {
    for f in &m.files {
        let p = safe_join(dir, &f.path)?;
        let file = std::fs::File::open(&p).map_err(|e| ioe(&p, e))?;
        let got = super::hash::sha256_of(file).map_err(|e| ioe(&p, e))?;
        if got != f.sha256 {
            return Err(VersionError::Corrupt(format!(
                "{}: sha256 {got}, expected {}",
                p.display(),
                f.sha256
            )));
        }
    }
    Ok(())
}

/// Creates the install section's directories and links in the root.
pub(super) fn prepare_root(
    root: &Path,
    meta: &crate::meta::Meta,
    server: &crate::inventory::Server,
    index: u32,
) -> Result<(), VersionError> {
    std::fs::create_dir_all(root.join("releases")).map_err(|e| ioe(root, e))?;
    for d in &meta.install.mkdir {
        let p = safe_join(root, d).map_err(|_| {
            VersionError::BadInput(format!("install.mkdir {d:?}: must stay inside the root"))
        })?;
        std::fs::create_dir_all(&p).map_err(|e| ioe(&p, e))?;
    }
    for l in &meta.install.link {
        let target = match &l.target {
            LinkTarget::Path(p) => PathBuf::from(p),
            LinkTarget::Db => {
                if server.drives.is_empty() {
                    return Err(VersionError::BadInput(format!(
                        "server {} has no drives",
                        server.name
                    )));
                }
                PathBuf::from(&server.drives[(index as usize - 1) % server.drives.len()])
            }
            LinkTarget::Archive => PathBuf::from(server.archive.as_deref().ok_or_else(|| {
                VersionError::BadInput(format!("server {} has no archive mount", server.name))
            })?),
        };
        let p = safe_join(root, &l.path).map_err(|_| {
            VersionError::BadInput(format!(
                "install.link {:?}: must stay inside the root",
                l.path
            ))
        })?;
        match std::fs::read_link(&p) {
            Ok(t) if t == target => continue,
            Ok(_) => std::fs::remove_file(&p).map_err(|e| ioe(&p, e))?,
            Err(_) if p.symlink_metadata().is_ok() => {
                return Err(VersionError::BadInput(format!(
                    "{}: exists and is not a symlink (install.link {})",
                    p.display(),
                    l.path
                )))
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, &p).map_err(|e| ioe(&p, e))?;
    }
    Ok(())
}

/// Points `root/current` at `releases/<id>` (or removes it) by renaming a new symlink over
/// the old one: readers see the old or the new release, never neither.
pub(super) fn switch_current(root: &Path, id: Option<&str>) -> Result<(), VersionError> {
    let current = root.join("current");
    match id {
        Some(id) => {
            let tmp = root.join(format!(".current.tmp-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(Path::new("releases").join(id), &tmp)
                .map_err(|e| ioe(&tmp, e))?;
            std::fs::rename(&tmp, &current).map_err(|e| ioe(&current, e))
        }
        None => match std::fs::remove_file(&current) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ioe(&current, e)),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_stay_inside() {
        assert!(safe_join(Path::new("/r"), "bin/x").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x"] {
            assert!(safe_join(Path::new("/r"), bad).is_err(), "{bad}");
        }
    }
}
