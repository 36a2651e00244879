//! `--netns`: a throwaway network namespace (`ip netns`), so the demo can apply with the real
//! nft as root without touching the host's ruleset. This is demo scaffolding, which is why it
//! lives here and not in the gateway: the gateway itself never creates namespaces.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot create a network namespace (needs root and iproute2)")]
    Create,
    #[error("cannot list the table in namespace {name}: {source}")]
    List {
        name: String,
        source: std::io::Error,
    },
}

/// A network namespace, deleted on drop (also when the demo fails).
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn create() -> Result<Namespace, NamespaceError> {
        let name = format!("portcullis-demo-{}", std::process::id());
        let created = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !created {
            return Err(NamespaceError::Create);
        }
        // Loopback down would only matter for traffic; bring it up so the namespace is usable.
        let _ = Command::new("ip")
            .args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
            .status();
        Ok(Namespace { name })
    }

    /// `nft list table inet portcullis` inside the namespace, as an operator would read it.
    pub fn list_table(&self) -> Result<String, NamespaceError> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "list", "table"])
            .args(["inet", "portcullis"])
            .output()
            .map_err(|source| NamespaceError::List {
                name: self.name.clone(),
                source,
            })?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
