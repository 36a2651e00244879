//! The commands that read, check or clear the live kernel state without applying an export:
//! `diff --live`, `apply --once --dry-run` and `flush`.

use super::error::{CliError, Exit, CHANGES, OK};
use super::input::load_state;
use super::pipeline::print_json;
use crate::apply::{drift, ConntrackNetlink, Firewall, NftCli, Syncer};
use crate::model::DesiredState;
use crate::render::nft::{full_ruleset, RenderOptions};
use std::path::Path;

/// The syncer the one-shot commands drive: the real nft and conntrack.
pub type CliSyncer = Syncer<NftCli, ConntrackNetlink>;

/// The differences between the live table and the table `state` renders to.
fn differences(syncer: &mut CliSyncer, state: &DesiredState) -> Result<Vec<String>, CliError> {
    let expected = syncer.expected_table(state)?;
    let live = syncer.firewall.read_table().map_err(CliError::ReadLive)?;
    Ok(drift(&expected, &live))
}

/// `diff --live`: exit 0 no differences, 1 some (or the table cannot be read), 2 bad input.
pub fn diff_live(export: &Path, opts: &RenderOptions, json: bool) -> Result<Exit, CliError> {
    let state = load_state(export)?;
    let mut syncer = Syncer::new(NftCli::default(), ConntrackNetlink::default(), opts.clone());
    let differences = differences(&mut syncer, &state)?;
    if json {
        print_json(&serde_json::json!({ "differences": differences }))?;
    } else {
        for d in &differences {
            println!("~ {d}");
        }
    }
    Ok(if differences.is_empty() { OK } else { CHANGES })
}

/// `apply --once --dry-run`: what would change, and whether nft accepts it (`nft -c`).
pub fn dry_run(
    syncer: &mut CliSyncer,
    state: &DesiredState,
    opts: &RenderOptions,
) -> Result<Exit, CliError> {
    let differences = differences(syncer, state)?;
    if differences.is_empty() {
        println!("nothing to do: the live table already matches");
        return Ok(OK);
    }
    for d in &differences {
        println!("~ {d}");
    }
    syncer
        .firewall
        .check(&full_ruleset(state, opts))
        .map_err(CliError::NftCheck)?;
    println!("dry run: a full regeneration would apply cleanly (nft -c); nothing was changed");
    Ok(OK)
}

/// `portcullis flush`: our nft table and the IPVS services we own, nothing else. What was
/// removed is printed even when something else failed.
pub fn flush(state_dir: &Path) -> Result<Exit, CliError> {
    let _lock = crate::daemon::control::ApplyLock::try_take(state_dir)?;
    let result = crate::apply::flush_owned(state_dir);
    let (done, failures) = match &result {
        Ok(done) => (done, &[][..]),
        Err(e) => (&e.done, &e.failures[..]),
    };
    for id in &done.ipvs_deleted {
        println!("delete service {id}");
    }
    let nft_failed = failures
        .iter()
        .any(|f| matches!(f, crate::apply::FlushFailure::Nft(_)));
    if !nft_failed {
        if done.nft_table_deleted {
            println!("deleted table inet portcullis");
        } else {
            println!("nothing to flush: table inet portcullis does not exist");
        }
    }
    result?;
    Ok(OK)
}
