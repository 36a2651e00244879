//! Installing a version into an instance's root, on the ADMIN host:
//!
//! ```text
//! <roots>/<instance id>/releases/<version id>/…   materialised from the store, verified
//! <roots>/<instance id>/current -> releases/<id>  switched atomically (rename over)
//! <roots>/<instance id>/<install.mkdir, install.link entries>
//! <state>/instances/<instance id>.json            current version, stack, history
//! <state>/instances/<instance id>.lock            one deploy per instance at a time
//! ```
//!
//! After the switch the type's `tests` run; if one fails, `current` goes back to the previous
//! release and the attempt is recorded as rolled back. A release is built in a temporary
//! directory and renamed into place only when every file's sha256 matched, so a partial or
//! corrupt copy never becomes `current`.

use super::hash::Sha256Writer;
use super::probe::{self, TestResult};
use super::store::{write_atomic, Manifest, Store};
use super::VersionError;
use crate::catalog::Catalog;
use crate::meta::LinkTarget;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Install,
    Upgrade,
    Downgrade,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "install" => Some(Action::Install),
            "upgrade" => Some(Action::Upgrade),
            "downgrade" => Some(Action::Downgrade),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub at: String,
    pub action: Action,
    pub from: Option<String>,
    pub to: String,
    /// `ok`, `rolled-back` (a test failed; `current` was switched back) or `failed` (nothing
    /// was switched: e.g. a corrupt blob).
    pub outcome: String,
    #[serde(default)]
    pub tests: Vec<TestResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What ADMIN knows of an instance's versions.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InstanceVersions {
    pub current: Option<String>,
    /// Successful activations, newest last; `downgrade` without `--to` pops back through it.
    pub stack: Vec<String>,
    pub history: Vec<DeploymentRecord>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeployReport {
    pub instance: String,
    pub action: Action,
    pub from: Option<String>,
    pub to: String,
    /// `ok`, `unchanged`, `rolled-back` or `failed`.
    pub outcome: String,
    pub tests: Vec<TestResult>,
    pub root: String,
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Deployer {
    pub store: Store,
    pub state_dir: PathBuf,
    /// Instance roots live in `<roots>/<instance id>`.
    pub roots: PathBuf,
    /// How long tests are retried after a switch.
    pub test_deadline: Duration,
    pub test_interval: Duration,
    /// How long to wait for another deploy of the same instance.
    pub lock_timeout: Duration,
}

impl Deployer {
    pub fn new(state_dir: &Path, roots: &Path) -> Deployer {
        Deployer {
            store: Store::new(state_dir),
            state_dir: state_dir.to_owned(),
            roots: roots.to_owned(),
            test_deadline: Duration::from_secs(30),
            test_interval: Duration::from_millis(500),
            lock_timeout: Duration::from_secs(60),
        }
    }

    fn record_path(&self, instance: &str) -> PathBuf {
        self.state_dir
            .join("instances")
            .join(format!("{instance}.json"))
    }

    pub fn root(&self, instance: &str) -> PathBuf {
        self.roots.join(instance)
    }

    pub fn versions_of(&self, instance: &str) -> Result<InstanceVersions, VersionError> {
        let p = self.record_path(instance);
        match std::fs::read(&p) {
            Ok(t) => serde_json::from_slice(&t)
                .map_err(|e| VersionError::Corrupt(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InstanceVersions::default()),
            Err(e) => Err(VersionError::Io(format!("{}: {e}", p.display()))),
        }
    }

    fn save(&self, instance: &str, v: &InstanceVersions) -> Result<(), VersionError> {
        let text = serde_json::to_vec_pretty(v).map_err(|e| VersionError::Io(e.to_string()))?;
        write_atomic(&self.record_path(instance), &text)
    }

    /// Every version id some instance has as current or could downgrade to (for `gc`/`rm`).
    pub fn versions_in_use(&self) -> Result<Vec<(String, String)>, VersionError> {
        let dir = self.state_dir.join("instances");
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(inst) = name.strip_suffix(".json") {
                let v = self.versions_of(inst)?;
                for id in v.stack.iter().chain(v.current.iter()) {
                    out.push((inst.to_owned(), id.clone()));
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn lock(&self, instance: &str) -> Result<std::fs::File, VersionError> {
        let dir = self.state_dir.join("instances");
        std::fs::create_dir_all(&dir)
            .map_err(|e| VersionError::Io(format!("{}: {e}", dir.display())))?;
        let p = dir.join(format!("{instance}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| VersionError::Io(format!("{}: {e}", p.display())))?;
        let start = Instant::now();
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(f),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < self.lock_timeout => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(VersionError::Busy(format!(
                        "{instance}: another install/upgrade/downgrade is running (waited {:?})",
                        self.lock_timeout
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(VersionError::Io(format!("{}: {e}", p.display())))
                }
            }
        }
    }

    /// Installs, upgrades or downgrades `instance` to `to` (downgrade: default the previous
    /// version). Serialized per instance; records the attempt whatever its outcome.
    pub async fn deploy(
        &self,
        catalog: &Catalog,
        instance: &str,
        action: Action,
        to: Option<&str>,
    ) -> Result<DeployReport, VersionError> {
        let idx = catalog
            .instance_index(instance)
            .ok_or_else(|| VersionError::NotFound(format!("no instance {instance}")))?;
        let inst = &catalog.inventory.instances[idx];
        let meta = catalog
            .meta(&inst.type_name)
            .ok_or_else(|| VersionError::BadInput(format!("no type {}", inst.type_name)))?;
        let server = catalog
            .inventory
            .servers
            .get(&inst.server)
            .ok_or_else(|| VersionError::BadInput(format!("no server {}", inst.server)))?;
        let _lock = self.lock(instance).await?;
        let mut versions = self.versions_of(instance)?;
        let from = versions.current.clone();
        let target = match (action, to, &from) {
            (Action::Install, _, Some(cur)) => {
                return Err(VersionError::BadInput(format!(
                    "{instance} already has {cur}: use upgrade or downgrade"
                )))
            }
            (Action::Upgrade | Action::Downgrade, _, None) => {
                return Err(VersionError::BadInput(format!(
                    "{instance} has no version yet: use install"
                )))
            }
            (_, Some(t), _) => t.to_owned(),
            (Action::Downgrade, None, Some(_)) => match versions.stack.iter().rev().nth(1) {
                Some(prev) => prev.clone(),
                None => {
                    return Err(VersionError::BadInput(format!(
                        "{instance}: no previous version to go back to"
                    )))
                }
            },
            (_, None, _) => {
                return Err(VersionError::BadInput(
                    "install and upgrade need --to VERSION".into(),
                ))
            }
        };
        let manifest = self.store.manifest(&target)?;
        if manifest.type_name != inst.type_name {
            return Err(VersionError::BadInput(format!(
                "{target} is a version of {}, not of {}",
                manifest.type_name, inst.type_name
            )));
        }
        let root = self.root(instance);
        let mut report = DeployReport {
            instance: instance.to_owned(),
            action,
            from: from.clone(),
            to: target.clone(),
            outcome: String::new(),
            tests: Vec::new(),
            root: root.display().to_string(),
            error: None,
        };
        if from.as_deref() == Some(target.as_str()) {
            report.outcome = "unchanged".into();
            return Ok(report);
        }
        let mut record = DeploymentRecord {
            at: now_utc(),
            action,
            from: from.clone(),
            to: target.clone(),
            outcome: String::new(),
            tests: Vec::new(),
            error: None,
        };
        let prepared = prepare_root(&root, meta, server, inst.index)
            .and_then(|()| self.materialise(&root, &manifest));
        if let Err(e) = prepared {
            record.outcome = "failed".into();
            record.error = Some(e.to_string());
            versions.history.push(record);
            self.save(instance, &versions)?;
            return Err(e);
        }
        switch_current(&root, Some(&target))?;
        let results = probe::run(
            server.address,
            &meta.tests,
            self.test_deadline,
            self.test_interval,
        )
        .await;
        let passed = results.iter().all(|r| r.ok);
        record.tests = results.clone();
        report.tests = results;
        if passed {
            record.outcome = "ok".into();
            versions.current = Some(target.clone());
            match (action, to) {
                (Action::Downgrade, None) => {
                    versions.stack.pop();
                }
                (Action::Downgrade, Some(t)) => match versions.stack.iter().rposition(|v| v == t) {
                    Some(i) => versions.stack.truncate(i + 1),
                    None => versions.stack.push(target.clone()),
                },
                _ => versions.stack.push(target.clone()),
            }
        } else {
            switch_current(&root, from.as_deref())?;
            record.outcome = "rolled-back".into();
        }
        report.outcome = record.outcome.clone();
        versions.history.push(record);
        self.save(instance, &versions)?;
        Ok(report)
    }

    /// Builds `releases/<id>` from the store unless a verified copy is already there.
    fn materialise(&self, root: &Path, m: &Manifest) -> Result<(), VersionError> {
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
        let result = self.copy_out(&tmp, m);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &dst).map_err(|e| ioe(&dst, e))
    }

    fn copy_out(&self, tmp: &Path, m: &Manifest) -> Result<(), VersionError> {
        std::fs::create_dir_all(tmp).map_err(|e| ioe(tmp, e))?;
        for f in &m.files {
            let path = safe_join(tmp, &f.path)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ioe(parent, e))?;
            }
            let mut blob = self.store.open_blob(&f.sha256)?;
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

fn verify_tree(dir: &Path, m: &Manifest) -> Result<(), String> {
    for f in &m.files {
        let p = safe_join(dir, &f.path).map_err(|e| e.to_string())?;
        let file = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let got = super::hash::sha256_of(file).map_err(|e| format!("{}: {e}", p.display()))?;
        if got != f.sha256 {
            return Err(format!(
                "{}: sha256 {got}, expected {}",
                p.display(),
                f.sha256
            ));
        }
    }
    Ok(())
}

/// Creates the install section's directories and links in the root.
fn prepare_root(
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
fn switch_current(root: &Path, id: Option<&str>) -> Result<(), VersionError> {
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for now (civil-from-days, proleptic Gregorian).
pub fn now_utc() -> String {
    let secs = unix_now() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let t = now_utc();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
