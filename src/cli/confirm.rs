//! `portcullis apply --once --confirm-within 30s` and `portcullis confirm`: commit-confirm for
//! changes made by hand, as iptables-apply does it. The apply waits for `confirm` (run from
//! another shell, or by whatever automation checked the new rules); without it, the table goes
//! back to exactly what it was. A lost SSH session (SIGHUP) does not stop the clock; Ctrl-C
//! or SIGTERM rolls back at once.
//!
//! The state to roll back to must be known exactly before anything changes: either "no table"
//! or the last-known-good export, checked against the live table. Anything else (a table that
//! drifted, no cache) is refused rather than rolled back approximately.

use crate::apply::{drift, Conntrack, Firewall, Syncer};
use crate::model::DesiredState;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PENDING: &str = "confirm-pending";
const CONFIRMED: &str = "confirmed";

/// What the table goes back to when the change is not confirmed.
pub enum Rollback {
    /// There was no table: delete ours.
    NoTable,
    /// The live table was exactly this state's (the last-known-good export).
    To(Box<DesiredState>),
}

/// Works out the rollback target before anything changes, or says why there is none.
pub fn rollback_target<F: Firewall, C: Conntrack>(
    syncer: &mut Syncer<F, C>,
    last_good: Option<DesiredState>,
) -> Result<Rollback, String> {
    let live = syncer
        .firewall
        .read_table()
        .map_err(|e| format!("cannot read the live table: {e}"))?;
    if live.is_none() {
        return Ok(Rollback::NoTable);
    }
    let Some(old) = last_good else {
        return Err(
            "the live table is not from a known export (no last-known-good export in \
             the state directory), so it could not be restored exactly; apply without \
             --confirm-within, or from the daemon's host"
                .into(),
        );
    };
    let expected = syncer.expected_table(&old).map_err(|e| e.to_string())?;
    let differences = drift(&expected, &live);
    if let Some(first) = differences.first() {
        return Err(format!(
            "the live table differs from the last-known-good export ({} differences, first: \
             {first}), so it could not be restored exactly; apply without --confirm-within",
            differences.len()
        ));
    }
    Ok(Rollback::To(Box::new(old)))
}

/// Puts the table back as it was.
pub fn roll_back<F: Firewall, C: Conntrack>(
    syncer: &mut Syncer<F, C>,
    target: Rollback,
    delete_table: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    match target {
        Rollback::NoTable => delete_table(),
        Rollback::To(state) => syncer
            .reconcile(*state)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Confirmed,
    TimedOut,
    Interrupted,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Marks a confirmation as pending in `dir`, then waits for `portcullis confirm`, the
/// deadline, or SIGINT/SIGTERM. SIGHUP is ignored while waiting.
pub fn wait_for_confirmation(dir: &Path, within: Duration) -> Result<Answer, String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let confirmed = dir.join(CONFIRMED);
    let _ = std::fs::remove_file(&confirmed);
    let pending = dir.join(PENDING);
    let deadline = now_unix() + within.as_secs();
    let pending_text = format!("{} {deadline}\n", std::process::id());
    crate::durable::write_atomic(&pending, pending_text.as_bytes())
        .map_err(|e| format!("{}: {e}", pending.display()))?;

    let interrupted = Arc::new(AtomicBool::new(false));
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, interrupted.clone())
            .map_err(|e| format!("cannot install a handler for signal {signal}: {e}"))?;
    }
    // A registered handler replaces SIGHUP's default action (terminate); its flag is unread.
    let _ = signal_hook::flag::register(SIGHUP, Arc::new(AtomicBool::new(false)));

    let started = Instant::now();
    let answer = loop {
        if confirmed.exists() {
            break Answer::Confirmed;
        }
        if interrupted.load(Ordering::Relaxed) {
            break Answer::Interrupted;
        }
        if started.elapsed() >= within {
            break Answer::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_file(&pending);
    let _ = std::fs::remove_file(&confirmed);
    Ok(answer)
}

/// `portcullis confirm`: keeps the change a waiting `apply --confirm-within` made.
pub fn confirm(dir: &Path) -> Result<u32, String> {
    let pending = dir.join(PENDING);
    let text = std::fs::read_to_string(&pending).map_err(|_| {
        format!(
            "nothing to confirm: no apply --confirm-within is waiting (no {})",
            pending.display()
        )
    })?;
    let pid: u32 = text
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("{}: unreadable", pending.display()))?;
    if !PathBuf::from(format!("/proc/{pid}")).exists() {
        let _ = std::fs::remove_file(&pending);
        return Err(format!(
            "nothing to confirm: the waiting apply (pid {pid}) is gone"
        ));
    }
    let marker = dir.join(CONFIRMED);
    crate::durable::write_atomic(&marker, b"").map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(pid)
}

/// Prints to stdout, ignoring errors: after a lost SSH session stdout is gone, and the
/// rollback must still happen.
pub fn say(text: &str) {
    let _ = writeln!(std::io::stdout(), "{text}");
}
