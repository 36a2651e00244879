//! `portcullis apply --once` and `portcullis flush`: the one-shot, kernel-facing commands.

use super::{load_state, FAILED, OK};
use crate::apply::{drift, ConntrackCli, Firewall, NftCli, SyncOutcome, Syncer};
use crate::render::nft::{full_ruleset, Backend, RenderOptions};
use std::path::Path;

pub fn apply_once(
    source: &Path,
    opts: RenderOptions,
    dry_run: bool,
    state_dir: &Path,
    adopt_ipvs: bool,
) -> u8 {
    if opts.backend == Backend::Ipvs && dry_run {
        eprintln!("portcullis: --dry-run covers the nftables side only; run `portcullis diff --live` and `ipvsadm-save -n` against `portcullis render --format ipvsadm` for IPVS");
    }
    let state = match load_state(source) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut syncer = Syncer::new(NftCli::default(), ConntrackCli::default(), opts.clone());
    if dry_run {
        return dry_run_report(&mut syncer, &state, &opts);
    }
    if opts.backend == Backend::Ipvs {
        match crate::apply::ipvs::IpvsSync::open(state_dir, crate::apply::ipvs::DEFAULT_DRAIN_GRACE)
        {
            Ok(mut ipvs) => {
                ipvs.adopt = adopt_ipvs;
                syncer.set_ipvs(ipvs)
            }
            Err(e) => {
                eprintln!("portcullis: {e}");
                return FAILED;
            }
        }
    }
    let (services, reals) = (state.services.len(), state.real_server_count());
    let outcome = syncer.reconcile(state);
    if let Some(ipvs) = syncer.ipvs() {
        for op in ipvs.journal() {
            println!("ipvs: {op}");
        }
        let r = ipvs.last_report();
        if r.draining > 0 {
            println!(
                "ipvs: {} destination(s)/service(s) drained at weight 0 still have connections; the next apply (or the daemon) deletes them once idle",
                r.draining
            );
        }
    }
    match outcome {
        Ok(SyncOutcome::Adopted) => {
            println!("nothing to do: the live table already matches ({services} services)");
            OK
        }
        Ok(SyncOutcome::Full { drift }) if drift.iter().all(|d| d.starts_with("IPVS:")) => {
            println!("applied: IPVS services changed; the nft table already matched ({services} services, {reals} real servers)");
            OK
        }
        Ok(SyncOutcome::Full { drift }) => {
            println!(
                "applied: table regenerated ({services} services, {reals} real servers; {} differences)",
                drift.len()
            );
            OK
        }
        Ok(other) => {
            println!("applied: {other:?}");
            OK
        }
        Err(e) => {
            eprintln!("portcullis: apply failed, the kernel was left as it was: {e}");
            FAILED
        }
    }
}

fn dry_run_report(
    syncer: &mut Syncer<NftCli, ConntrackCli>,
    state: &crate::model::DesiredState,
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

pub fn flush(state_dir: &Path) -> u8 {
    let ipvs = flush_ipvs(state_dir);
    let nft = match NftCli::default().delete_table() {
        Ok(true) => {
            println!("deleted table inet portcullis");
            OK
        }
        Ok(false) => {
            println!("nothing to flush: table inet portcullis does not exist");
            OK
        }
        Err(e) => {
            eprintln!("portcullis: flush failed: {e}");
            FAILED
        }
    };
    nft.max(ipvs)
}

/// Deletes the IPVS services the ownership file lists (none without the file: then nothing
/// in IPVS is known to be ours).
fn flush_ipvs(state_dir: &Path) -> u8 {
    use crate::apply::ipvs::{Balancer, IpvsNetlink, Op, Ownership, OWNERSHIP_FILE};
    let path = state_dir.join(OWNERSHIP_FILE);
    if !path.exists() {
        return OK;
    }
    let mut ownership = match Ownership::load(&path) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return FAILED;
        }
    };
    if ownership.owned.is_empty() {
        return OK;
    }
    let mut netlink = match IpvsNetlink::open() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return FAILED;
        }
    };
    let ops: Vec<Op> = ownership
        .owned
        .iter()
        .map(|id| Op::DelService(*id))
        .collect();
    let results = match netlink.apply(&ops) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis: flush of IPVS failed: {e}");
            return FAILED;
        }
    };
    let mut failed = false;
    for (op, r) in ops.iter().zip(results) {
        match r {
            // Already gone (deleted by hand) is as good as deleted.
            Ok(()) => println!("{op}"),
            Err(e) if e.errno() == Some(3) => {}
            Err(e) => {
                eprintln!("portcullis: {e}");
                failed = true;
            }
        }
    }
    if failed {
        return FAILED;
    }
    match ownership.retain(|_| false) {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("portcullis: {e}");
            FAILED
        }
    }
}

/// `diff --live`: differences between the live table and the table `export` renders to.
/// Exit 0 none, 1 some, 2 bad input; 1 as well when the table cannot be read.
pub fn diff_live(export: &Path, opts: &RenderOptions, json: bool) -> u8 {
    let state = match load_state(export) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut syncer = Syncer::new(NftCli::default(), ConntrackCli::default(), opts.clone());
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
        super::print_json(&serde_json::json!({ "differences": differences }));
    } else {
        for d in &differences {
            println!("~ {d}");
        }
    }
    if differences.is_empty() {
        OK
    } else {
        super::CHANGES
    }
}
