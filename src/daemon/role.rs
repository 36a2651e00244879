//! The role `portcullis promote` and `demote` ask for (run by operators or the Pacemaker
//! agent): written into the state directory, read by the daemon before every poll and at
//! start, and announced to a running daemon over the control socket ([`super::control`]).
//! The file outlives restarts, so a promoted node stays active after a daemon restart.

use super::config::Role;
use std::fs;
use std::path::Path;

const ROLE: &str = "role";

/// Records the wanted role, atomically and durably: a promotion survives a crash right after.
pub fn write_role(dir: &Path, role: Role) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let text = match role {
        Role::Active => "active\n",
        Role::Standby => "standby\n",
    };
    crate::durable::write_atomic(&dir.join(ROLE), text.as_bytes())
}

/// The role asked for, if any; an unreadable or unknown value is an error, not a guess.
pub fn read_role(dir: &Path) -> std::io::Result<Option<Role>> {
    match fs::read_to_string(dir.join(ROLE)) {
        Ok(text) => match text.trim() {
            "active" => Ok(Some(Role::Active)),
            "standby" => Ok(Some(Role::Standby)),
            other => Err(std::io::Error::other(format!(
                "unknown role {other:?} in {}",
                dir.join(ROLE).display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
