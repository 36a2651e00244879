//! `portcullis apply --once` (with the guard, `--force` and commit-confirm), `confirm` and
//! `flush` (our nft table and owned IPVS services): the one-shot, kernel-facing commands.

use super::confirm;
use super::error::{report, CliError, CHANGES, FAILED, INVALID, OK};
use super::input::load_state;
use super::pipeline::print_json;
use crate::apply::{drift, ConntrackNetlink, Firewall, Guard, NftCli, SyncOutcome, Syncer};
use crate::daemon::cache::StateDir;
use crate::daemon::journal::{Entry, Journal};
use crate::model::DesiredState;
use crate::render::nft::{full_ruleset, Backend, RenderOptions};
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
}

pub fn apply_once(args: ApplyOnce) -> u8 {
    if args.opts.backend == Backend::Ipvs && args.dry_run {
        eprintln!("portcullis: --dry-run covers the nftables side only; run `portcullis diff --live` and `ipvsadm-save -n` against `portcullis render --format ipvsadm` for IPVS");
    }
    if args.opts.backend == Backend::Ipvs && args.confirm_within.is_some() {
        eprintln!("portcullis: --confirm-within covers the nft backend only for now (an IPVS rollback is not implemented); nothing was changed");
        return FAILED;
    }
    let bytes = match super::input::read_source(args.source) {
        Ok(b) => b,
        Err(e) => return report(&e),
    };
    let state = match portcullis_export::parse(&bytes) {
        Ok(export) => DesiredState::from_export(&export),
        Err(errors) => {
            return report(&CliError::Rejected {
                name: super::input::display_name(args.source),
                errors,
            });
        }
    };
    let mut syncer = Syncer::new(
        NftCli::default(),
        ConntrackNetlink::default(),
        args.opts.clone(),
    );
    if args.dry_run {
        return dry_run_report(&mut syncer, &state, &args.opts);
    }
    if args.opts.backend == Backend::Ipvs {
        use crate::apply::ipvs::{IpvsSync, DEFAULT_DRAIN_GRACE};
        match IpvsSync::open(args.state_dir, DEFAULT_DRAIN_GRACE) {
            Ok(mut ipvs) => {
                ipvs.adopt = args.adopt_ipvs;
                syncer.set_ipvs(ipvs)
            }
            Err(e) => {
                eprintln!("portcullis: {e}");
                return FAILED;
            }
        }
    }
    let cache = StateDir::new(args.state_dir);
    let journal = Journal::new(args.state_dir);
    let last_good = match cache.load() {
        Ok(Some(c)) => portcullis_export::parse(&c.export)
            .ok()
            .map(|e| DesiredState::from_export(&e)),
        Ok(None) => None,
        Err(e) => {
            eprintln!("portcullis: warning: {e}");
            None
        }
    };
    if !args.force {
        if let Some(old) = &last_good {
            if let Err(refusal) = Guard::default().check(old, &state) {
                eprintln!(
                    "portcullis: {refusal} (baseline: the last-known-good export in {})",
                    args.state_dir.display()
                );
                journal_entry(&journal, "refused", refusal.to_string(), Duration::ZERO);
                return INVALID;
            }
        }
    }
    let rollback = match args.confirm_within {
        Some(_) => match confirm::rollback_target(&mut syncer, last_good) {
            Ok(target) => Some(target),
            Err(why) => {
                eprintln!("portcullis: --confirm-within refused: {why}");
                return FAILED;
            }
        },
        None => None,
    };
    warn_if_the_daemon_is_active(args.state_dir);
    let started = Instant::now();
    let (services, reals) = (state.services.len(), state.real_server_count());
    let outcome = syncer.reconcile(state);
    report_ipvs(&syncer);
    let detail = match outcome {
        Ok(SyncOutcome::Adopted) => {
            confirm::say(&format!(
                "nothing to do: the live table already matches ({services} services)"
            ));
            "adopted".to_owned()
        }
        Ok(SyncOutcome::Full { drift }) if drift.iter().all(|d| d.starts_with("IPVS:")) => {
            confirm::say(&format!("applied: IPVS services changed; the nft table already matched ({services} services, {reals} real servers)"));
            format!("apply --once: IPVS ({} changes)", drift.len())
        }
        Ok(SyncOutcome::Full { drift }) => {
            confirm::say(&format!(
                "applied: table regenerated ({services} services, {reals} real servers; {} differences)",
                drift.len()
            ));
            format!("apply --once: full ({} differences)", drift.len())
        }
        Ok(other) => {
            confirm::say(&format!("applied: {other:?}"));
            format!("apply --once: {other:?}")
        }
        Err(e) => {
            eprintln!("portcullis: apply failed, the kernel was left as it was: {e}");
            journal_entry(&journal, "failed", e.to_string(), started.elapsed());
            return FAILED;
        }
    };
    if let (Some(target), Some(within)) = (rollback, args.confirm_within) {
        confirm::say(&format!(
            "keeping this only if `portcullis confirm --state-dir {}` follows within {}; Ctrl-C rolls back now",
            args.state_dir.display(),
            humantime::format_duration(within)
        ));
        let answer = confirm::wait_for_confirmation(args.state_dir, within);
        if answer != Ok(confirm::Answer::Confirmed) {
            let why = match answer {
                Ok(confirm::Answer::Interrupted) => "interrupted".to_owned(),
                Ok(_) => format!(
                    "not confirmed within {}",
                    humantime::format_duration(within)
                ),
                Err(e) => e,
            };
            let delete = || {
                NftCli::default()
                    .delete_table()
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            return match confirm::roll_back(&mut syncer, target, delete) {
                Ok(()) => {
                    confirm::say(&format!("rolled back ({why}): the table is as it was"));
                    journal_entry(&journal, "rolled back", why, started.elapsed());
                    FAILED
                }
                Err(e) => {
                    eprintln!("portcullis: ROLLBACK FAILED ({why}): {e}");
                    journal_entry(
                        &journal,
                        "failed",
                        format!("rollback failed: {e}"),
                        started.elapsed(),
                    );
                    FAILED
                }
            };
        }
        confirm::say("confirmed: the change stays");
    }
    if let Err(e) = cache.save(&bytes, None, unix_now()) {
        eprintln!("portcullis: warning: could not save the last-known-good export: {e}");
    }
    journal_entry(&journal, "applied", detail, started.elapsed());
    OK
}

/// `portcullis confirm`: keeps what a waiting `apply --confirm-within` applied.
pub fn confirm(state_dir: &Path) -> u8 {
    match confirm::confirm(state_dir) {
        Ok(pid) => {
            println!("confirmed (apply process {pid})");
            OK
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            FAILED
        }
    }
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
        eprintln!("portcullis: warning: could not write the journal: {e}");
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
        eprintln!(
            "portcullis: warning: the daemon (pid {pid}) is active and will apply ADMIN's export again at its next change; `portcullis demote` it first to keep a manual change"
        );
    }
}

fn dry_run_report(
    syncer: &mut Syncer<NftCli, ConntrackNetlink>,
    state: &DesiredState,
    opts: &RenderOptions,
) -> u8 {
    let expected = match syncer.expected_table(state) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return FAILED;
        }
    };
    let live = match syncer.firewall.read_table() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portcullis: cannot read the live table: {e}");
            return FAILED;
        }
    };
    let differences = drift(&expected, &live);
    if differences.is_empty() {
        println!("nothing to do: the live table already matches");
        return OK;
    }
    for d in &differences {
        println!("~ {d}");
    }
    match syncer.firewall.check(&full_ruleset(state, opts)) {
        Ok(()) => {
            println!(
                "dry run: a full regeneration would apply cleanly (nft -c); nothing was changed"
            );
            OK
        }
        Err(e) => {
            eprintln!("portcullis: nft -c refused the transaction: {e}");
            FAILED
        }
    }
}

/// What the IPVS side sent, and what still drains.
fn report_ipvs(syncer: &Syncer<NftCli, ConntrackNetlink>) {
    if let Some(ipvs) = syncer.ipvs() {
        for op in ipvs.journal() {
            confirm::say(&format!("ipvs: {op}"));
        }
        let r = ipvs.last_report();
        if r.draining > 0 {
            confirm::say(&format!(
                "ipvs: {} destination(s)/service(s) drained at weight 0 still have connections; the next apply (or the daemon) deletes them once idle",
                r.draining
            ));
        }
    }
}

/// `portcullis flush`: our nft table and the IPVS services we own, nothing else.
pub fn flush(state_dir: &Path) -> u8 {
    let (done, failures) = match crate::apply::flush_owned(state_dir) {
        Ok(done) => (done, Vec::new()),
        Err(e) => (e.done, e.failures),
    };
    for id in &done.ipvs_deleted {
        println!("delete service {id}");
    }
    if !failures
        .iter()
        .any(|f| matches!(f, crate::apply::FlushFailure::Nft(_)))
    {
        if done.nft_table_deleted {
            println!("deleted table inet portcullis");
        } else {
            println!("nothing to flush: table inet portcullis does not exist");
        }
    }
    for failure in &failures {
        eprintln!("portcullis: {failure}");
    }
    if failures.is_empty() {
        OK
    } else {
        FAILED
    }
}

/// `diff --live`: differences between the live table and the table `export` renders to.
/// Exit 0 none, 1 some, 2 bad input; 1 as well when the table cannot be read.
pub fn diff_live(export: &Path, opts: &RenderOptions, json: bool) -> u8 {
    let state = match load_state(export) {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    let mut syncer = Syncer::new(NftCli::default(), ConntrackNetlink::default(), opts.clone());
    let (expected, live) = match (syncer.expected_table(&state), syncer.firewall.read_table()) {
        (Ok(e), Ok(l)) => (e, l),
        (Err(e), _) => {
            eprintln!("portcullis: {e}");
            return FAILED;
        }
        (_, Err(e)) => {
            eprintln!("portcullis: cannot read the live table: {e}");
            return FAILED;
        }
    };
    let differences = drift(&expected, &live);
    if json {
        if let Err(e) = print_json(&serde_json::json!({ "differences": differences })) {
            return report(&e);
        }
    } else {
        for d in &differences {
            println!("~ {d}");
        }
    }
    if differences.is_empty() {
        OK
    } else {
        CHANGES
    }
}
