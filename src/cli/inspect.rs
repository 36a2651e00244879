//! `portcullis status` and `portcullis log`: what the daemon did, read from its state directory
//! (so they work whether or not the daemon is running).

use super::error::{CliError, Exit, OK};
use super::pipeline::print_json;
use crate::daemon::config::Role;
use crate::daemon::journal::{Journal, Status};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn ago(unix: Option<u64>) -> String {
    let Some(t) = unix else {
        return "never".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(now.saturating_sub(t)))
    )
}

pub fn status(state_dir: &Path, json: bool) -> Result<Exit, CliError> {
    let s: Status = Journal::read_status(state_dir).map_err(CliError::io(format!(
        "no status in {} (is the daemon running with this --state-dir?)",
        state_dir.display()
    )))?;
    if json {
        return print_json(&s);
    }
    println!("role:          {}", s.role);
    println!("source:        {}", s.source);
    println!("etag:          {}", s.etag.as_deref().unwrap_or("-"));
    println!("last poll:     {}", ago(s.last_poll_unix));
    let c = &s.counters;
    println!("last apply:    {}", ago(c.last_apply_unix));
    println!(
        "applied:       {} virtual services, {} real servers",
        s.services, s.real_servers
    );
    println!(
        "polls:         {} ({} unchanged), {} applied, {} rejected, {} refused by the guard, {} failed",
        c.polls, c.not_modified, c.applied, c.rejected, c.refused, c.failed
    );
    if let Some(e) = &c.last_error {
        println!(
            "last error:    {e} ({} failures in a row)",
            c.consecutive_failures
        );
    }
    let h = &s.health;
    if h.probed > 0 || !h.down.is_empty() || !h.fail_open.is_empty() {
        println!(
            "health:        {} endpoints probed, {} real servers down, {} services failing open",
            h.probed,
            h.down.len(),
            h.fail_open.len()
        );
        for d in &h.down {
            println!("  down:        {d}");
        }
        for f in &h.fail_open {
            println!("  fail open:   {f} (every real server fails its check; all kept)");
        }
    }
    Ok(OK)
}

pub fn log(state_dir: &Path, n: usize, json: bool) -> Result<Exit, CliError> {
    let entries = Journal::new(state_dir)
        .tail(n)
        .map_err(CliError::io(format!(
            "cannot read the journal in {}",
            state_dir.display()
        )))?;
    if json {
        return print_json(&entries);
    }
    for e in entries {
        let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e.time_unix));
        let summary = e.summary.map(|s| format!(": {s}")).unwrap_or_default();
        println!(
            "{when}  {:<8} {}{summary}  [{} in {:.0} ms]",
            e.result,
            e.detail,
            e.etag.as_deref().unwrap_or("-"),
            e.duration_ms
        );
    }
    Ok(OK)
}

/// `portcullis promote` / `demote`: records the wanted role and wakes the daemon through its
/// control socket.
pub fn set_role(state_dir: &Path, role: Role) -> Result<Exit, CliError> {
    crate::daemon::role::write_role(state_dir, role).map_err(CliError::io(format!(
        "cannot record the role in {}",
        state_dir.display()
    )))?;
    let woke = crate::daemon::control::wake(state_dir)?;
    let role = format!("{role:?}").to_lowercase();
    if woke {
        println!("{role}: the daemon was woken and switches now");
    } else {
        println!("{role}: recorded; no running daemon was found, it applies at the next start");
    }
    Ok(OK)
}
