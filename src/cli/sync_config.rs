//! `portcullis sync-config`: the conntrackd configuration rendered from the `[sync]` section of
//! the gateway's TOML, so the sync link is described in one file (see `render::conntrackd`).

use super::error::{CliError, Exit, OK};
use crate::daemon::config::{Config, DEFAULT_PATH};
use crate::render::conntrackd::conntrackd_conf;
use std::path::Path;

/// Prints the configuration, or replaces `output` with it atomically (conntrackd never reads a
/// half-written file, and a failed render leaves the old one in place).
pub fn sync_config(config: Option<&Path>, output: Option<&Path>) -> Result<Exit, CliError> {
    let (c, origin) = match config {
        Some(path) => (Config::read(path)?, path.display().to_string()),
        None => (Config::read_default()?, DEFAULT_PATH.to_owned()),
    };
    let Some(link) = &c.sync else {
        return Err(CliError::Usage(
            "the configuration has no [sync] section (interface, local_address, peer_address)",
        ));
    };
    let text = conntrackd_conf(link, &origin);
    match output {
        None => print!("{text}"),
        Some(path) => crate::durable::write_atomic(path, text.as_bytes())
            .map_err(CliError::io(format!("cannot write {}", path.display())))?,
    }
    Ok(OK)
}
