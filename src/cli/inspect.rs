//! `portcullis status` and `portcullis log`: what the daemon did, read from its state directory
//! (so they work whether or not the daemon is running).

use super::error::{CliError, Exit, OK};
use super::pipeline::{emit, print_json};
use crate::apply::ipvs::sync_daemon;
use crate::daemon::config::{Config, Role};
use crate::daemon::conntrackd::{query_stats, SyncStats};
use crate::daemon::journal::{Journal, Status};
use crate::render::conntrackd::{SyncLink, Transport};
use crate::render::nft::Backend;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Appends a line to a command's output, written whole at its end by [`emit`] (which ends
/// quietly when the reader went away, where `println!` would panic).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

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

/// The connection-state sync as `status` shows it: the link from the configuration, the
/// numbers from conntrackd (or why there are none).
#[derive(Serialize)]
struct SyncReport {
    /// primary on the active node (its promotion committed the peer's connections), backup
    /// on the standby (it keeps the peer's in its external cache).
    role: &'static str,
    peer: String,
    interface: String,
    transport: Transport,
    conntrackd: Option<SyncStats>,
    error: Option<String>,
}

/// The `ipvs` backend's connection sync as `status` shows it: the kernel's sync threads
/// against the one this node's role wants, and the size of its connection table.
#[derive(Serialize)]
struct IpvsSyncReport {
    interface: String,
    sync_id: u32,
    /// `master` on the active node, `backup` on the standby.
    wanted: &'static str,
    /// The threads running, e.g. `master on sync0 (sync id 9)`.
    running: Vec<String>,
    /// Entries of the IPVS connection table (synchronised ones included).
    connections: Option<usize>,
    error: Option<String>,
}

#[derive(Serialize)]
struct StatusWithSync<'a> {
    #[serde(flatten)]
    status: &'a Status,
    /// conntrackd's (the nft backend).
    sync: Option<SyncReport>,
    /// The kernel's IPVS sync threads (the ipvs backend).
    ipvs_sync: Option<IpvsSyncReport>,
}

fn ipvs_sync_report(link: &SyncLink, status: &Status) -> IpvsSyncReport {
    let mut errors = Vec::new();
    let running = match sync_daemon::running_threads() {
        Ok(threads) => threads
            .iter()
            .map(|d| {
                format!(
                    "{} on {} (sync id {})",
                    if d.backup { "backup" } else { "master" },
                    d.interface,
                    d.sync_id
                )
            })
            .collect(),
        Err(e) => {
            errors.push(format!("IPVS sync threads: {e}"));
            Vec::new()
        }
    };
    let connections = sync_daemon::connection_count()
        .map_err(|e| errors.push(format!("/proc/net/ip_vs_conn: {e}")))
        .ok();
    IpvsSyncReport {
        interface: link.interface.clone(),
        sync_id: u32::from(link.ipvs_sync_id),
        wanted: if status.role == "active" {
            "master"
        } else {
            "backup"
        },
        running,
        connections,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

fn sync_report(link: &SyncLink, status: &Status) -> SyncReport {
    let (conntrackd, error) = match query_stats(&link.socket) {
        Ok(stats) => (Some(stats), None),
        Err(e) => (None, Some(e.to_string())),
    };
    SyncReport {
        role: if status.role == "active" {
            "primary"
        } else {
            "backup"
        },
        peer: match (link.transport, link.peer_address) {
            (Transport::Multicast, _) | (_, None) => link.multicast_group.to_string(),
            (Transport::Udp, Some(peer)) => peer.to_string(),
        },
        interface: link.interface.clone(),
        transport: link.transport,
        conntrackd,
        error,
    }
}

/// `config`: the gateway's TOML, for its `[sync]` section (the default path may be absent).
pub fn status(state_dir: &Path, json: bool, config: Option<&Path>) -> Result<Exit, CliError> {
    let s: Status = Journal::read_status(state_dir).map_err(CliError::io(format!(
        "no status in {} (is the daemon running with this --state-dir?)",
        state_dir.display()
    )))?;
    let config = match config {
        Some(path) => Config::read(path)?,
        // The default file is only consulted for [sync]: a broken one must not hide the
        // daemon's status (the daemon itself reports it at its next start or reload).
        None => Config::read_default().unwrap_or_else(|e| {
            eprintln!("portcullis: {e} (sync not shown)");
            Config::default()
        }),
    };
    // The ipvs backend syncs connections with the kernel's threads, the nft one with
    // conntrackd: each is asked about its own.
    let (sync, ipvs_sync) = match (&config.sync, config.backend) {
        (None, _) => (None, None),
        (Some(link), Backend::Ipvs) => (None, Some(ipvs_sync_report(link, &s))),
        (Some(link), _) => (Some(sync_report(link, &s)), None),
    };
    if json {
        return print_json(&StatusWithSync {
            status: &s,
            sync,
            ipvs_sync,
        });
    }
    let mut out = String::new();
    say!(out, "role:          {}", s.role);
    match s.replicas.iter().position(|r| *r == s.source) {
        Some(i) => say!(
            out,
            "source:        {} (ADMIN replica {} of {})",
            s.source,
            i + 1,
            s.replicas.len()
        ),
        None => say!(out, "source:        {}", s.source),
    }
    say!(out, "etag:          {}", s.etag.as_deref().unwrap_or("-"));
    say!(out, "last poll:     {}", ago(s.last_poll_unix));
    let c = &s.counters;
    say!(out, "last apply:    {}", ago(c.last_apply_unix));
    say!(
        out,
        "applied:       {} virtual services, {} real servers",
        s.services,
        s.real_servers
    );
    say!(
        out,
        "polls:         {} ({} unchanged), {} applied, {} rejected, {} refused by the guard, {} failed",
        c.polls, c.not_modified, c.applied, c.rejected, c.refused, c.failed
    );
    if let Some(e) = &c.last_error {
        say!(
            out,
            "last error:    {e} ({} failures in a row)",
            c.consecutive_failures
        );
    }
    let h = &s.health;
    if h.probed > 0 || !h.down.is_empty() || !h.fail_open.is_empty() {
        say!(
            out,
            "health:        {} endpoints probed, {} real servers down, {} services failing open",
            h.probed,
            h.down.len(),
            h.fail_open.len()
        );
        for d in &h.down {
            say!(out, "  down:        {d}");
        }
        for f in &h.fail_open {
            say!(
                out,
                "  fail open:   {f} (every real server fails its check; all kept)"
            );
        }
    }
    if let Some(r) = &sync {
        print_sync(&mut out, r);
    }
    if let Some(r) = &ipvs_sync {
        print_ipvs_sync(&mut out, r);
    }
    emit(&out)
}

fn print_ipvs_sync(out: &mut String, r: &IpvsSyncReport) {
    say!(
        out,
        "sync:          {} (IPVS sync thread) over {}, sync id {}",
        r.wanted,
        r.interface,
        r.sync_id
    );
    if r.running.is_empty() && r.error.is_none() {
        say!(out, "sync threads:  none running");
    }
    for thread in &r.running {
        say!(out, "sync threads:  {thread}");
    }
    if let Some(n) = r.connections {
        say!(
            out,
            "sync table:    {n} connections in IPVS (synchronised ones included)"
        );
    }
    if let Some(e) = &r.error {
        say!(out, "sync error:    {e}");
    }
}

fn print_sync(out: &mut String, r: &SyncReport) {
    let transport = match r.transport {
        Transport::Udp => "udp",
        Transport::Multicast => "multicast",
    };
    say!(
        out,
        "sync:          {} (conntrackd), peer {} over {} ({transport})",
        r.role,
        r.peer,
        r.interface
    );
    match (&r.conntrackd, &r.error) {
        (Some(c), _) => {
            say!(
                out,
                "sync caches:   {} connections of this node, {} from the peer",
                c.internal_entries,
                c.external_entries
            );
            say!(
        out,
                "sync traffic:  {} packets sent, {} received ({} send / {} receive errors, {} messages lost)",
                c.sent_packets, c.received_packets, c.send_errors, c.receive_errors, c.lost_messages
            );
        }
        (None, Some(e)) => say!(out, "sync error:    {e}"),
        (None, None) => {}
    }
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
    let mut out = String::new();
    for e in entries {
        let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e.time_unix));
        let summary = e.summary.map(|s| format!(": {s}")).unwrap_or_default();
        say!(
            out,
            "{when}  {:<8} {}{summary}  [{} in {:.0} ms]",
            e.result,
            e.detail,
            e.etag.as_deref().unwrap_or("-"),
            e.duration_ms
        );
    }
    emit(&out)
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
