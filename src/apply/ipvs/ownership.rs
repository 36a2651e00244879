//! Which IPVS services portcullis owns. IPVS has no comment or tag on a service, so ownership
//! lives in a state file (`<state_dir>/ipvs-owned.json`): the identities portcullis created.
//! Everything else in the kernel is foreign and never touched, so services an operator adds
//! with ipvsadm (or keepalived manages) survive every sync.
//!
//! The file is written *before* services are added (an intent log: a crash between the write
//! and the add leaves an owned identity that simply is not in the kernel, which the next
//! start-up forgets) and after services are deleted. The intent only protects if it is on
//! disk before the add, so every write is atomic *and* durable ([`crate::durable`]: fsync of
//! the file and of the directory) before the caller goes on. Since version 2 the file carries
//! a SHA-256 of its service list, verified on every load: a flipped bit that still parses
//! (another port, another address) would otherwise make a foreign service look owned.

use super::ServiceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct Ownership {
    /// `None`: in memory only (tests, dry runs).
    path: Option<PathBuf>,
    pub owned: BTreeSet<ServiceId>,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    services: BTreeSet<ServiceId>,
    /// SHA-256 (hex) of `services` as compact JSON; absent in version-1 files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

const VERSION: u32 = 2;

fn checksum(services: &BTreeSet<ServiceId>) -> io::Result<String> {
    let canonical = serde_json::to_vec(services).map_err(io::Error::other)?;
    Ok(crate::durable::sha256_hex(&canonical))
}

impl Ownership {
    pub fn in_memory() -> Ownership {
        Ownership::default()
    }

    /// Loads the state file; a missing file means nothing is owned yet.
    pub fn load(path: &Path) -> io::Result<Ownership> {
        let owned = match std::fs::read(path) {
            Ok(bytes) => {
                let invalid = |why: String| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {why}", path.display()),
                    )
                };
                let file: File =
                    serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
                match (&file.sha256, file.version) {
                    (Some(sum), _) if *sum != checksum(&file.services)? => {
                        return Err(invalid(
                            "checksum mismatch: the file is corrupt; nothing in IPVS is \
                             treated as owned until it is repaired (apply --once --adopt-ipvs)"
                                .into(),
                        ))
                    }
                    (Some(_), _) | (None, 1) => {}
                    (None, v) => return Err(invalid(format!("version {v} without a checksum"))),
                }
                file.services
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        Ok(Ownership {
            path: Some(path.to_path_buf()),
            owned,
        })
    }

    pub fn contains(&self, id: &ServiceId) -> bool {
        self.owned.contains(id)
    }

    /// Records `ids` as owned and persists when that changed anything.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = ServiceId>) -> io::Result<()> {
        let before = self.owned.len();
        self.owned.extend(ids);
        if self.owned.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// Keeps only the identities `keep` accepts, persisting when that changed anything.
    pub fn retain(&mut self, keep: impl FnMut(&ServiceId) -> bool) -> io::Result<()> {
        let before = self.owned.len();
        self.owned.retain(keep);
        if self.owned.len() != before {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let body = serde_json::to_vec_pretty(&File {
            version: VERSION,
            sha256: Some(checksum(&self.owned)?),
            services: self.owned.clone(),
        })
        .map_err(io::Error::other)?;
        crate::durable::write_atomic(path, &body)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_export::Proto;

    #[test]
    fn survives_a_reload_and_a_missing_file_is_empty() {
        let dir = crate::test_dir("own");
        let path = dir.join("ipvs-owned.json");
        let _ = std::fs::remove_file(&path);
        let mut own = Ownership::load(&path).expect("load");
        assert!(own.owned.is_empty());
        let a = ServiceId::Addr {
            proto: Proto::Tcp,
            addr: "192.0.2.1".parse().expect("ip"),
            port: 80,
        };
        let b = ServiceId::Fwmark {
            mark: 7,
            ipv6: true,
        };
        own.extend([a, b]).expect("save");
        let again = Ownership::load(&path).expect("reload");
        assert_eq!(again.owned, [a, b].into_iter().collect());
        own.retain(|id| *id != a).expect("save");
        assert_eq!(
            Ownership::load(&path).expect("reload").owned,
            [b].into_iter().collect()
        );
        // A flipped bit that still parses: another port. The checksum catches it.
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"sha256\""), "{text}");
        own.extend([a]).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replacen(": 80", ": 81", 1)).expect("write");
        let e = Ownership::load(&path).expect_err("corrupt");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        // A version-1 file (no checksum) still loads.
        std::fs::write(&path, r#"{"version":1,"services":[]}"#).expect("write");
        assert!(Ownership::load(&path).expect("v1").owned.is_empty());
        std::fs::write(&path, "{not json").expect("write");
        assert!(Ownership::load(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
