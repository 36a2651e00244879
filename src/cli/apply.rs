//! `portcullis apply --once` (with the guard, `--force` and commit-confirm) and `confirm`: a
//! hand-made change to the kernel, journaled like the daemon's, in the daemon's state directory.

use super::confirm::{self, say, Answer};
use super::error::{warn, CliError, Exit, FAILED, OK};
use super::input::{display_name, read_source};
use super::live::CliSyncer;
use crate::apply::ipvs::{IpvsSync, DEFAULT_DRAIN_GRACE};
use crate::apply::stamp::Stamp;
use crate::apply::{ConntrackNetlink, Guard, NftCli, SyncOutcome, Syncer};
use crate::daemon::cache::{Cached, StateDir};
use crate::daemon::control::ApplyLock;
use crate::daemon::journal::{Entry, Journal};
use crate::model::DesiredState;
use crate::render::nft::{Backend, RenderOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// What `portcullis apply --once` was asked to do.
pub struct ApplyOnce<'a> {
    pub source: &'a Path,
    pub opts: RenderOptions,
    pub dry_run: bool,
    /// Skip the guard against withdrawing most services at once.
    pub force: bool,
    /// Roll back unless `portcullis confirm` follows within this time.
    pub confirm_within: Option<Duration>,
    /// Where the last-known-good export (the guard's baseline and the rollback target), the
    /// journal, the pending confirmation and the IPVS ownership file live: the daemon's
    /// state directory.
    pub state_dir: &'a Path,
    /// IPVS backend: take over IPVS services the export names that portcullis did not create.
    pub adopt_ipvs: bool,
    /// Read the live table back and repair it whole, even when its stamp says it is what the
    /// cached export rendered (a hand edit the stamp cannot see).
    pub read_back: bool,
}

pub fn apply_once(args: ApplyOnce) -> Result<Exit, CliError> {
    if args.opts.backend == Backend::Ipvs && args.dry_run {
        warn("--dry-run covers the nftables side only; run `portcullis diff --live` and `ipvsadm-save -n` against `portcullis render --format ipvsadm` for IPVS");
    }
    if args.opts.backend == Backend::Ipvs && args.confirm_within.is_some() {
        return Err(CliError::Unsupported("--confirm-within covers the nft backend only for now (an IPVS rollback is not implemented); nothing was changed"));
    }
    let bytes = read_source(args.source)?;
    let parse = || match portcullis_export::parse(&bytes) {
        Ok(export) => Ok(DesiredState::from_export(&export)),
        Err(errors) => Err(CliError::Rejected {
            name: display_name(args.source),
            errors,
        }),
    };
    let mut syncer = Syncer::new(
        NftCli::default(),
        ConntrackNetlink::default(),
        args.opts.clone(),
    );
    if args.dry_run {
        return super::live::dry_run(&mut syncer, &parse()?, &args.opts);
    }
    let cache = StateDir::new(args.state_dir);
    // The new export and the cached one are parsed at once, on two threads: each is a parse
    // of the whole file (7–9 ms at 10k rows), and one after the other they were a third of
    // an `apply --once` of one change.
    let (state, lock, cached) = std::thread::scope(|scope| {
        let new = scope.spawn(parse);
        // Held until this apply (and its commit-confirm wait) is over: no daemon sync, other
        // apply or flush from this state directory interleaves with it. Taken before the
        // cache is read, so that no other writer replaces the cache in between.
        let lock = ApplyLock::try_take(args.state_dir);
        let cached = lock.as_ref().ok().map(|_| load_cached(&cache));
        let state = new
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (state, lock, cached)
    });
    // A bad export is reported first, whatever the lock says: it changes nothing either way.
    let state = state?;
    let _lock = lock?;
    let (cached, mut last_good) = cached.unwrap_or_default();
    if args.opts.backend == Backend::Ipvs {
        let mut ipvs = IpvsSync::open(args.state_dir, DEFAULT_DRAIN_GRACE)?;
        ipvs.adopt = args.adopt_ipvs;
        syncer.set_ipvs(ipvs);
    }
    let journal = Journal::new(args.state_dir);
    if let (false, Some(old)) = (args.force, &last_good) {
        if let Err(refusal) = Guard::default().check(old, &state) {
            journal_entry(&journal, "refused", refusal.to_string(), Duration::ZERO);
            return Err(CliError::Refused {
                refusal,
                baseline: args.state_dir.to_owned(),
            });
        }
    }
    // The fast path: a table stamped with the cached export's digest is what that export
    // rendered, so only the difference is sent. Otherwise (no stamp, another export, a
    // commit-confirm that must read what it may restore, --read-back) the table is read back.
    // The IPVS backend always reads its IPVS table back (a restart repairs hand edits there,
    // which no stamp covers).
    let fast =
        args.opts.backend == Backend::Nft && !args.read_back && args.confirm_within.is_none();
    let next_stamp = Stamp::of(&bytes, &args.opts);
    let stamped = match (&cached, fast.then(|| last_good.take()).flatten()) {
        // Another export than the cached one: its transaction deletes the old stamp, so the
        // kernel checks the stamp as part of the change (and refuses it whole without).
        (Some(c), Some(old)) if Stamp::of(&c.export, &args.opts) != next_stamp => {
            syncer.assume_stamped_unchecked(old, Stamp::of(&c.export, &args.opts));
            true
        }
        // The same export: nothing will be sent, so look for the stamp.
        (Some(c), Some(old)) => syncer
            .assume_stamped(old, Stamp::of(&c.export, &args.opts))
            .unwrap_or_else(|e| {
                warn(format!("cannot look for the table's stamp: {e}"));
                false
            }),
        _ => false,
    };
    let rollback = match args.confirm_within {
        Some(_) => {
            Some(confirm::rollback_target(&mut syncer, last_good).map_err(CliError::NoRollback)?)
        }
        None => None,
    };
    warn_if_the_daemon_is_active(args.state_dir);
    let started = Instant::now();
    let (services, reals) = (state.services.len(), state.real_server_count());
    syncer.set_next_stamp(next_stamp);
    let outcome = if stamped {
        syncer.sync(state)
    } else {
        syncer.reconcile(state)
    };
    report_ipvs(&syncer);
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            journal_entry(&journal, "failed", e.to_string(), started.elapsed());
            return Err(CliError::ApplyFailed(e));
        }
    };
    let detail = describe(&outcome, services, reals);
    if let (Some(target), Some(within)) = (rollback, args.confirm_within) {
        say(&format!(
            "keeping this only if `portcullis confirm --state-dir {}` follows within {}; Ctrl-C rolls back now",
            args.state_dir.display(),
            humantime::format_duration(within)
        ));
        let why = match confirm::wait_for_confirmation(args.state_dir, within) {
            Ok(Answer::Confirmed) => None,
            Ok(Answer::Interrupted) => Some("interrupted".to_owned()),
            Ok(Answer::TimedOut) => Some(format!(
                "not confirmed within {}",
                humantime::format_duration(within)
            )),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            return match confirm::roll_back(&mut syncer, target) {
                Ok(()) => {
                    say(&format!("rolled back ({why}): the table is as it was"));
                    journal_entry(&journal, "rolled back", why, started.elapsed());
                    Ok(FAILED)
                }
                Err(source) => {
                    let detail = format!("rollback failed: {source}");
                    journal_entry(&journal, "failed", detail, started.elapsed());
                    Err(CliError::RollbackFailed { why, source })
                }
            };
        }
        say("confirmed: the change stays");
    }
    if let Err(e) = cache.save(&bytes, None, unix_now()) {
        warn(format!("could not save the last-known-good export: {e}"));
    }
    journal_entry(&journal, "applied", detail, started.elapsed());
    Ok(OK)
}

/// Says what the apply did; returns the journal's detail for it.
/// The cached last-known-good export, and its state when it still parses (`None` for both
/// when there is none; a cache that cannot be read is warned about).
fn load_cached(cache: &StateDir) -> (Option<Cached>, Option<DesiredState>) {
    let cached = cache.load().unwrap_or_else(|e| {
        warn(e);
        None
    });
    let state = cached.as_ref().and_then(|c| {
        portcullis_export::parse(&c.export)
            .ok()
            .map(|e| DesiredState::from_export(&e))
    });
    (cached, state)
}

fn describe(outcome: &SyncOutcome, services: usize, reals: usize) -> String {
    match outcome {
        SyncOutcome::Adopted => {
            say(&format!(
                "nothing to do: the live table already matches ({services} services)"
            ));
            "adopted".to_owned()
        }
        SyncOutcome::Full { drift } if drift.iter().all(|d| d.starts_with("IPVS:")) => {
            say(&format!("applied: IPVS services changed; the nft table already matched ({services} services, {reals} real servers)"));
            format!("apply --once: IPVS ({} changes)", drift.len())
        }
        SyncOutcome::Full { drift } => {
            say(&format!(
                "applied: table regenerated ({services} services, {reals} real servers; {} differences)",
                drift.len()
            ));
            format!("apply --once: full ({} differences)", drift.len())
        }
        SyncOutcome::Unchanged => {
            say(&format!(
                "nothing to do: the table is stamped with this export ({services} services)"
            ));
            "unchanged (stamped)".to_owned()
        }
        SyncOutcome::Incremental {
            summary,
            operations,
            ..
        } => {
            say(&format!(
                "applied: only the difference ({operations} operations: {summary}); the table's stamp named the cached export"
            ));
            format!("apply --once: incremental ({operations} operations)")
        }
    }
}

/// `portcullis confirm`: keeps what a waiting `apply --confirm-within` applied.
pub fn confirm(state_dir: &Path) -> Result<Exit, CliError> {
    let pid = confirm::confirm(state_dir)?;
    println!("confirmed (apply process {pid})");
    Ok(OK)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn journal_entry(journal: &Journal, result: &str, detail: String, took: Duration) {
    let entry = Entry {
        time_unix: unix_now(),
        etag: None,
        result: result.to_owned(),
        detail,
        summary: None,
        duration_ms: took.as_secs_f64() * 1000.0,
    };
    if let Err(e) = journal.append(&entry) {
        warn(format!("could not write the journal: {e}"));
    }
}

/// A running active daemon would put ADMIN's export back at its next change: say so.
fn warn_if_the_daemon_is_active(state_dir: &Path) {
    let Some(pid) = crate::daemon::control::running_daemon(state_dir) else {
        return;
    };
    let standby = crate::daemon::role::read_role(state_dir)
        .ok()
        .flatten()
        .is_some_and(|r| r == crate::daemon::config::Role::Standby);
    if !standby {
        warn(format!("the daemon (pid {pid}) is active and will apply ADMIN's export again at its next change; `portcullis demote` it first to keep a manual change"));
    }
}

/// What the IPVS side sent, and what still drains.
fn report_ipvs(syncer: &CliSyncer) {
    if let Some(ipvs) = syncer.ipvs() {
        for op in ipvs.journal() {
            say(&format!("ipvs: {op}"));
        }
        let r = ipvs.last_report();
        if r.draining > 0 {
            say(&format!(
                "ipvs: {} destination(s)/service(s) drained at weight 0 still have connections; the next apply (or the daemon) deletes them once idle",
                r.draining
            ));
        }
    }
}
