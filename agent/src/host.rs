//! The agent's root on disk, and every change it makes there:
//!
//! ```text
//! <root>/desired.json                      the last desired state and its ETag (ADMIN down: used)
//! <root>/releases/<version id>/…           verified files, shared by the instances running it
//! <root>/instances/<id>/current            -> ../../releases/<version id>, switched atomically
//! <root>/instances/<id>/config.json        the combined configuration (`${config}`)
//! <root>/instances/<id>/instance.json      its last desired spec (to uninstall it once removed)
//! <root>/instances/<id>/agent.json         pid and start time, restarts applied, failed versions
//! <root>/instances/<id>/output.log         the process's stdout and stderr
//! ```
//!
//! Every file is replaced by writing a temporary file beside it and renaming it over.

use crate::error::{io, AgentError};
use crate::process::ProcessId;
use portcullis_agent_proto::{DesiredInstance, Release};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// What the agent remembers of an instance across its own restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Local {
    pub process: Option<ProcessId>,
    pub since: u64,
    /// The last restart generation acted on: an agent restart does not repeat a restart.
    pub restart_generation: u64,
    /// Versions that failed their tests here: not retried until ADMIN asks for another one.
    pub failed: BTreeSet<String>,
}

pub struct Host {
    pub root: PathBuf,
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// `base/rel` for a relative path that stays below `base` (no `..`, not absolute).
pub fn inside(base: &Path, rel: &str) -> Result<PathBuf, AgentError> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(AgentError::Refused(format!(
            "{rel:?} must stay inside {}",
            base.display()
        )));
    }
    Ok(base.join(p))
}

impl Host {
    pub fn instance_dir(&self, id: &str) -> Result<PathBuf, AgentError> {
        inside(&self.root.join("instances"), id)
    }

    pub fn release_dir(&self, id: &str) -> Result<PathBuf, AgentError> {
        inside(&self.root.join("releases"), id)
    }

    /// Instance ids with a directory here.
    pub fn local_instances(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.root.join("instances"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    pub fn read_json<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Option<T> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes)
            .inspect_err(|e| tracing::warn!(path = %path.display(), %e, "unreadable; ignored"))
            .ok()
    }

    pub fn write_json(&self, path: &Path, value: &impl Serialize) -> Result<(), AgentError> {
        let bytes =
            serde_json::to_vec_pretty(value).map_err(|e| AgentError::Refused(e.to_string()))?;
        write_atomically(path, &bytes)
    }

    pub fn local(&self, id: &str) -> Local {
        self.instance_dir(id)
            .ok()
            .and_then(|d| self.read_json(&d.join("agent.json")))
            .unwrap_or_default()
    }

    pub fn save_local(&self, id: &str, local: &Local) -> Result<(), AgentError> {
        self.write_json(&self.instance_dir(id)?.join("agent.json"), local)
    }

    /// The version `current` points at.
    pub fn current(&self, id: &str) -> Option<String> {
        let link = std::fs::read_link(self.instance_dir(id).ok()?.join("current")).ok()?;
        link.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Points `current` at `releases/<version>` (or removes it) by renaming a new symlink over
    /// it: the instance sees the old release or the new one, never neither.
    pub fn switch_current(&self, id: &str, version: Option<&str>) -> Result<(), AgentError> {
        let dir = self.instance_dir(id)?;
        let current = dir.join("current");
        match version {
            Some(v) => {
                self.release_dir(v)?;
                let tmp = dir.join(format!(".current.tmp-{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(Path::new("../../releases").join(v), &tmp)
                    .map_err(io(&tmp))?;
                std::fs::rename(&tmp, &current).map_err(io(&current))
            }
            None => match std::fs::remove_file(&current) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&current)(e)),
                _ => Ok(()),
            },
        }
    }

    /// The instance directory, its `install` directories and drive links, its configuration
    /// and its spec. Idempotent: run on every pass.
    pub fn prepare(&self, d: &DesiredInstance) -> Result<(), AgentError> {
        let dir = self.instance_dir(&d.id)?;
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for m in &d.install.mkdir {
            let p = inside(&dir, m)?;
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        for l in &d.install.links {
            let p = inside(&dir, &l.path)?;
            let target = Path::new(&l.target);
            match std::fs::read_link(&p) {
                Ok(t) if t == target => continue,
                Ok(_) => std::fs::remove_file(&p).map_err(io(&p))?,
                Err(_) if p.symlink_metadata().is_ok() => {
                    return Err(AgentError::Refused(format!(
                        "{}: exists and is not a symlink ({} link)",
                        p.display(),
                        l.drive
                    )))
                }
                Err(_) => {}
            }
            std::os::unix::fs::symlink(target, &p).map_err(io(&p))?;
        }
        let config =
            serde_json::to_vec_pretty(&d.config).map_err(|e| AgentError::Refused(e.to_string()))?;
        let config_path = dir.join("config.json");
        if std::fs::read(&config_path).ok().as_deref() != Some(&config[..]) {
            write_atomically(&config_path, &config)?;
        }
        if self
            .read_json::<DesiredInstance>(&dir.join("instance.json"))
            .as_ref()
            != Some(d)
        {
            self.write_json(&dir.join("instance.json"), d)?;
        }
        Ok(())
    }

    /// `${config}`, `${instance-dir}` and `${release}` in `text`.
    pub fn expand(&self, id: &str, text: &str) -> Result<String, AgentError> {
        let dir = self.instance_dir(id)?;
        let d = dir.display().to_string();
        Ok(text
            .replace("${config}", &format!("{d}/config.json"))
            .replace("${instance-dir}", &d)
            .replace("${release}", &format!("{d}/current")))
    }

    /// Makes `releases/<id>` from blobs unless a copy is already there. The file list must hash
    /// to the release's digest and every blob to its sha256; the tree is built aside and renamed
    /// into place, so a partial or corrupt copy never exists under its name.
    pub async fn materialise(
        &self,
        r: &Release,
        fetch: impl AsyncFn(&str) -> Result<Vec<u8>, AgentError>,
    ) -> Result<(), AgentError> {
        let fail = |message: String| AgentError::Release {
            id: r.id.clone(),
            message,
        };
        if !r.is_consistent() {
            return Err(fail(
                "the file list does not match the version's digest".into(),
            ));
        }
        let dst = self.release_dir(&r.id)?;
        if dst.is_dir() {
            return Ok(());
        }
        let tmp = self.release_dir(&format!(".tmp-{}-{}", r.id, std::process::id()))?;
        let _ = std::fs::remove_dir_all(&tmp);
        let result = async {
            for f in &r.files {
                let bytes = fetch(&f.sha256).await?;
                let got = {
                    use sha2::Digest;
                    portcullis_agent_proto::hex(&sha2::Sha256::digest(&bytes))
                };
                if got != f.sha256 || bytes.len() as u64 != f.size {
                    return Err(fail(format!(
                        "{}: got {} bytes hashing to {got}, expected {} bytes {}",
                        f.path,
                        bytes.len(),
                        f.size,
                        f.sha256
                    )));
                }
                let p = inside(&tmp, &f.path)?;
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::write(&p, &bytes).map_err(io(&p))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode & 0o7777))
                    .map_err(io(&p))?;
            }
            std::fs::rename(&tmp, &dst).map_err(io(&dst))
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Removes an instance that is no longer placed here: its `uninstall` paths, confined to
    /// the root and to the drive mounts (`db`, `archive`) its links point at, then its directory.
    pub fn uninstall(&self, id: &str) -> Result<(), AgentError> {
        let dir = self.instance_dir(id)?;
        if let Some(spec) = self.read_json::<DesiredInstance>(&dir.join("instance.json")) {
            let mut allowed: Vec<PathBuf> = vec![self.root.clone()];
            // The server's drive mounts, as ADMIN resolved them — not `path` links, which may
            // point anywhere.
            allowed.extend(
                spec.install
                    .links
                    .iter()
                    .filter(|l| l.drive == "db" || l.drive == "archive")
                    .map(|l| PathBuf::from(&l.target)),
            );
            for u in &spec.uninstall {
                let path = PathBuf::from(self.expand(id, u)?);
                let confined = path.is_absolute()
                    && path
                        .components()
                        .all(|c| !matches!(c, Component::ParentDir))
                    && allowed.iter().any(|a| path.starts_with(a) && path != *a);
                if !confined {
                    tracing::warn!(instance = id, path = %path.display(), "uninstall path outside the root and the instance's drives: left alone");
                    continue;
                }
                let removed = if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match removed {
                    Ok(()) => tracing::info!(instance = id, path = %path.display(), "uninstalled"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path)(e)),
                }
            }
        }
        std::fs::remove_dir_all(&dir).map_err(io(&dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_agent_proto::{Install, LinkStep, RunState};

    fn spec(uninstall: &[&str], links: Vec<LinkStep>) -> DesiredInstance {
        DesiredInstance {
            id: "db.s.1".into(),
            type_name: "db".into(),
            index: 1,
            release: None,
            config: serde_json::json!({}),
            install: Install {
                mkdir: vec!["log".into()],
                links,
            },
            run: None,
            run_state: RunState::Running,
            restart_generation: 0,
            tests: Vec::new(),
            uninstall: uninstall.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn uninstall_removes_only_under_the_root_and_the_instances_drives() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let drive = t.path().join("drive1");
        let elsewhere = t.path().join("elsewhere");
        for d in [&root, &drive, &elsewhere] {
            std::fs::create_dir_all(d.join("db-1")).unwrap();
        }
        let host = Host { root: root.clone() };
        let link = |path: &str, drive_label: &str, target: &Path| LinkStep {
            path: path.into(),
            drive: drive_label.into(),
            target: target.display().to_string(),
        };
        let d = spec(
            &[
                &format!("{}/db-1", drive.display()),
                &format!("{}/db-1", elsewhere.display()),
                &format!("{}/../elsewhere/db-1", drive.display()),
                "${instance-dir}/log",
            ],
            vec![
                link("data", "db", &drive),
                link("other", "path", &elsewhere),
            ],
        );
        host.prepare(&d).unwrap();
        assert!(root.join("instances/db.s.1/log").is_dir());
        host.uninstall("db.s.1").unwrap();
        assert!(
            !drive.join("db-1").exists(),
            "on the instance's drive: removed"
        );
        assert!(
            elsewhere.join("db-1").exists(),
            "a `path` link target is not a drive"
        );
        assert!(drive.exists() && !root.join("instances/db.s.1").exists());
    }

    #[test]
    fn paths_from_admin_stay_inside() {
        let base = Path::new("/r");
        assert!(inside(base, "web.a.1").is_ok());
        for bad in ["", "/etc", "..", "a/../../x", "./x"] {
            assert!(inside(base, bad).is_err(), "{bad}");
        }
    }

    fn release(content: &[u8]) -> Release {
        use sha2::Digest;
        let sha = portcullis_agent_proto::hex(&sha2::Sha256::digest(content));
        let files = vec![portcullis_agent_proto::ReleaseFile {
            path: "bin/run".into(),
            mode: 0o755,
            size: content.len() as u64,
            sha256: sha,
        }];
        let digest = portcullis_agent_proto::release_digest(
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

    #[tokio::test]
    async fn a_release_is_built_only_from_blobs_matching_its_manifest() {
        let t = tempfile::tempdir().unwrap();
        let host = Host {
            root: t.path().to_owned(),
        };
        let r = release(b"#!/bin/sh\n");
        // A blob that is not what the manifest says: refused, nothing under its name.
        let wrong = host
            .materialise(&r, async |_: &str| Ok(b"#!/bin/sh\nrm -rf /\n".to_vec()))
            .await;
        assert!(
            matches!(wrong, Err(AgentError::Release { .. })),
            "{wrong:?}"
        );
        assert!(!host.release_dir(&r.id).unwrap().exists());
        // A file list that is not the version's: refused before anything is fetched.
        let mut forged = r.clone();
        forged.files[0].mode = 0o4755;
        let refused = host
            .materialise(&forged, async |_: &str| -> Result<Vec<u8>, AgentError> {
                panic!("fetched a blob of a forged file list")
            })
            .await;
        assert!(matches!(refused, Err(AgentError::Release { .. })));
        host.materialise(&r, async |_: &str| Ok(b"#!/bin/sh\n".to_vec()))
            .await
            .unwrap();
        let p = host.release_dir(&r.id).unwrap().join("bin/run");
        assert_eq!(std::fs::read(&p).unwrap(), b"#!/bin/sh\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o755
        );
    }
}
