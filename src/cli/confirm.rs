//! `portcullis apply --once --confirm-within 30s` and `portcullis confirm`: commit-confirm for
//! changes made by hand, as iptables-apply does it. The apply waits for `confirm` (run from
//! another shell, or by whatever automation checked the new rules); without it, the table goes
//! back to exactly what it was. A lost SSH session (SIGHUP) does not stop the clock; Ctrl-C
//! or SIGTERM rolls back at once.
//!
//! The state to roll back to must be known exactly before anything changes: either "no table"
//! or the last-known-good export, checked against the live table. Anything else (a table that
//! drifted, no cache) is refused rather than rolled back approximately.

use crate::apply::stamp::Stamp;
use crate::apply::{drift, Conntrack, Firewall, NftError, SyncError, Syncer};
use crate::model::DesiredState;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PENDING: &str = "confirm-pending";
const CONFIRMED: &str = "confirmed";
/// How often the waiting apply looks for `portcullis confirm`'s marker.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("cannot read the live table: {0}")]
    ReadLive(#[source] NftError),
    #[error(
        "the live table is not from a known export (no last-known-good export in the state \
         directory), so it could not be restored exactly; apply without --confirm-within, or \
         from the daemon's host"
    )]
    UnknownTable,
    #[error(
        "the live table differs from the last-known-good export ({count} differences, first: \
         {first}), so it could not be restored exactly; apply without --confirm-within"
    )]
    Drifted { count: usize, first: String },
    #[error(transparent)]
    Render(#[from] SyncError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nothing to confirm: no apply --confirm-within is waiting (no {})", .0.display())]
    NothingPending(PathBuf),
    #[error("{}: unreadable", .0.display())]
    Unreadable(PathBuf),
    #[error("nothing to confirm: the waiting apply (pid {0}) is gone")]
    Gone(u32),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfirmError + '_ {
    move |source| ConfirmError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the table goes back to when the change is not confirmed.
pub enum Rollback {
    /// There was no table: delete ours.
    NoTable,
    /// The live table was exactly this state's (the last-known-good export), with this
    /// stamp (or none).
    To(Box<DesiredState>, Option<Stamp>),
}

/// Works out the rollback target before anything changes, or says why there is none.
pub fn rollback_target<F: Firewall, C: Conntrack>(
    syncer: &mut Syncer<F, C>,
    last_good: Option<DesiredState>,
) -> Result<Rollback, ConfirmError> {
    let live = syncer
        .firewall
        .read_table()
        .map_err(ConfirmError::ReadLive)?;
    if live.is_none() {
        return Ok(Rollback::NoTable);
    }
    let old = last_good.ok_or(ConfirmError::UnknownTable)?;
    let expected = syncer.expected_table(&old)?;
    let differences = drift(&expected, &live);
    if let Some(first) = differences.first() {
        return Err(ConfirmError::Drifted {
            count: differences.len(),
            first: first.clone(),
        });
    }
    let stamp = live
        .iter()
        .flat_map(|t| t.chains.keys())
        .find_map(|c| Stamp::from_chain(c));
    Ok(Rollback::To(Box::new(old), stamp))
}

/// Puts the table back as it was.
pub fn roll_back<F: Firewall, C: Conntrack>(
    syncer: &mut Syncer<F, C>,
    target: Rollback,
) -> Result<(), SyncError> {
    match target {
        Rollback::NoTable => syncer
            .firewall
            .delete_table()
            .map(|_| ())
            .map_err(Into::into),
        Rollback::To(state, stamp) => {
            // Byte-identical means the stamp too: the one it had, or none.
            if let Some(stamp) = stamp {
                syncer.set_next_stamp(stamp);
            }
            syncer.reconcile(*state).map(|_| ())
        }
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
/// deadline, or SIGINT/SIGTERM. SIGHUP (a lost SSH session) is caught and ignored: the clock
/// keeps running.
pub fn wait_for_confirmation(dir: &Path, within: Duration) -> Result<Answer, ConfirmError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let confirmed = dir.join(CONFIRMED);
    let _ = std::fs::remove_file(&confirmed);
    let pending = dir.join(PENDING);
    let deadline = now_unix() + within.as_secs();
    let pending_text = format!("{} {deadline}\n", std::process::id());
    let announce = || crate::durable::write_atomic(&pending, pending_text.as_bytes());
    let answer = wait(&confirmed, within, announce);
    let _ = std::fs::remove_file(&pending);
    let _ = std::fs::remove_file(&confirmed);
    answer.map_err(io(dir))
}

/// The wait itself, on a small runtime for the signals (the daemon's signal handling, the
/// same crate: no second one for this). `announce` writes the pending marker once the
/// handlers are in place: whoever reads the marker learns this pid, and a SIGHUP or SIGINT
/// sent from then on must find them installed, not the default action that ends the
/// process without a rollback.
fn wait(
    confirmed: &Path,
    within: Duration,
    announce: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<Answer> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        // Installed so SIGHUP's default action (ending the process) cannot end the wait.
        let _hangup = signal(SignalKind::hangup())?;
        announce()?;
        let marker = async {
            while !confirmed.exists() {
                tokio::time::sleep(POLL).await;
            }
        };
        Ok(tokio::select! {
            _ = marker => Answer::Confirmed,
            _ = interrupt.recv() => Answer::Interrupted,
            _ = terminate.recv() => Answer::Interrupted,
            _ = tokio::time::sleep(within) => Answer::TimedOut,
        })
    })
}

/// `portcullis confirm`: keeps the change a waiting `apply --confirm-within` made; returns the
/// waiting apply's pid.
pub fn confirm(dir: &Path) -> Result<u32, ConfirmError> {
    let pending = dir.join(PENDING);
    let text = std::fs::read_to_string(&pending)
        .map_err(|_| ConfirmError::NothingPending(pending.clone()))?;
    let pid: u32 = text
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| ConfirmError::Unreadable(pending.clone()))?;
    if !PathBuf::from(format!("/proc/{pid}")).exists() {
        let _ = std::fs::remove_file(&pending);
        return Err(ConfirmError::Gone(pid));
    }
    let marker = dir.join(CONFIRMED);
    crate::durable::write_atomic(&marker, b"").map_err(io(&marker))?;
    Ok(pid)
}

/// Prints to stdout, ignoring errors: after a lost SSH session stdout is gone, and the
/// rollback must still happen.
pub fn say(text: &str) {
    let _ = writeln!(std::io::stdout(), "{text}");
}
