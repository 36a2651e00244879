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
//! corrupt copy never becomes `current` (that disk side is `release.rs`).

use super::probe::{self, TestResult};
use super::release;
use super::store::{write_atomic, Store};
use super::VersionError;
use crate::catalog::Catalog;
use serde::{Deserialize, Serialize};
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
        let prepared = release::prepare_root(&root, meta, server, inst.index)
            .and_then(|()| release::materialise(&self.store, &root, &manifest));
        if let Err(e) = prepared {
            record.outcome = "failed".into();
            record.error = Some(e.to_string());
            versions.history.push(record);
            self.save(instance, &versions)?;
            return Err(e);
        }
        release::switch_current(&root, Some(&target))?;
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
            release::switch_current(&root, from.as_deref())?;
            record.outcome = "rolled-back".into();
        }
        report.outcome = record.outcome.clone();
        versions.history.push(record);
        self.save(instance, &versions)?;
        Ok(report)
    }
}

pub(super) fn unix_now() -> u64 {
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
    fn timestamps_are_utc_rfc3339() {
        let t = now_utc();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
