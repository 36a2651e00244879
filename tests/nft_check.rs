//! Every rendered nft script must be accepted by the real `nft` (`nft -c`), and an incremental
//! transaction applied on top of the old table must leave exactly what a full render of the new
//! state gives. Runs in a throwaway network namespace, so the host ruleset is never touched.

mod common;

use common::{in_fresh_netns, load_state, render_options, require_nft};
use portcullis::diff::StateDiff;
use portcullis::model::DesiredState;
use portcullis::render::nft;
use std::path::PathBuf;

fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-nft-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write script");
    path
}

/// Applies `full(old)`, checks then applies `incremental(old→new)`, and compares the table's
/// sets with a fresh `full(new)` applied in a second namespace.
fn check_transition(name: &str, old: &DesiredState, new: &DesiredState) {
    let opts = render_options(&["eth0", "bond0.100"]);
    let full_old = write_tmp(
        &format!("{name}-old.nft"),
        &nft::full_ruleset(old, &opts).to_nft(),
    );
    let full_new = write_tmp(
        &format!("{name}-new.nft"),
        &nft::full_ruleset(new, &opts).to_nft(),
    );
    let inc = nft::incremental(&StateDiff::between(old, new));
    let inc_path = write_tmp(&format!("{name}-inc.nft"), &inc.to_nft());
    let list = "for s in frontends_v4 frontends_v6 fwmarks_v4 fwmarks_v6; do nft -j list set inet portcullis $s 2>/dev/null || nft -j list map inet portcullis $s; done";

    let (ok, err) = in_fresh_netns(&format!(
        "nft -c -f {old} && nft -f {old} && nft -c -f {new}",
        old = full_old.display(),
        new = full_new.display()
    ));
    assert!(ok, "{name}: nft rejected the full ruleset:\n{err}");
    if inc.is_empty() {
        return;
    }
    let via_inc = write_tmp(&format!("{name}-via-inc.json"), "");
    let via_full = write_tmp(&format!("{name}-via-full.json"), "");
    let (ok, err) = in_fresh_netns(&format!(
        "nft -f {old}; nft -c -f {inc}; nft -f {inc}; ({list}) > {out}",
        old = full_old.display(),
        inc = inc_path.display(),
        out = via_inc.display()
    ));
    assert!(
        ok,
        "{name}: nft rejected the incremental transaction:\n{err}"
    );
    let (ok, err) = in_fresh_netns(&format!(
        "nft -f {new}; ({list}) > {out}",
        new = full_new.display(),
        out = via_full.display()
    ));
    assert!(ok, "{name}: {err}");
    let elements = |p: &PathBuf| elements_of(&std::fs::read_to_string(p).expect("listing"));
    let expected = elements(&via_full);
    let frontends: usize = new.services.values().map(|s| s.frontends.len()).sum();
    assert!(
        expected.len() >= frontends,
        "{name}: listing shows {} elements for {frontends} frontends",
        expected.len()
    );
    assert_eq!(
        elements(&via_inc),
        expected,
        "{name}: incremental apply left different set contents than a full render"
    );
}

/// Set elements from `nft -j list set` output, as sorted JSON texts (kernel order varies).
fn elements_of(listing: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("nft -j output is JSON");
        for item in v["nftables"].as_array().into_iter().flatten() {
            let set = item.get("set").or_else(|| item.get("map"));
            if let Some(set) = set {
                for e in set["elem"].as_array().into_iter().flatten() {
                    out.push(format!("{}: {e}", set["name"]));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn golden_examples_pass_nft_check_and_incremental_matches_full() {
    if !require_nft() {
        return;
    }
    let example = load_state("rules/examples/export.csv");
    let next = load_state("rules/examples/export-next.csv");
    let empty = load_state("tests/golden/empty/export.csv");
    let mixed = load_state("tests/golden/mixed-methods/export.csv");
    let moves_old = load_state("tests/golden/frontend-moves/old.csv");
    let moves_new = load_state("tests/golden/frontend-moves/new.csv");
    check_transition("example-next", &example, &next);
    check_transition("to-empty", &example, &empty);
    check_transition("from-empty", &empty, &mixed);
    check_transition("frontend-moves", &moves_old, &moves_new);
    check_transition("mixed-to-example", &mixed, &example);
}

#[test]
fn synthetic_exports_pass_nft_check_and_incremental_matches_full() {
    if !require_nft() {
        return;
    }
    let base = DesiredState::from_rows(&portcullis::synth::rows(3000));
    // A third of the services gone and one weight flipped: removals and in-place changes.
    let smaller = portcullis::synth::with_one_change(&portcullis::synth::rows(2000));
    portcullis_export::validate_rows(&smaller).expect("synthetic export is valid");
    let next = DesiredState::from_rows(&smaller);
    check_transition("synthetic", &base, &next);
    check_transition("synthetic-back", &next, &base);
}

#[test]
fn nft_rejects_a_broken_script_so_the_check_can_fail() {
    // Guards against a check that passes whatever it is given.
    if !require_nft() {
        return;
    }
    let bad = write_tmp(
        "bad.nft",
        "add table inet portcullis\nadd rule inet portcullis nosuchchain accept\n",
    );
    let (ok, _) = in_fresh_netns(&format!("nft -c -f {}", bad.display()));
    assert!(!ok);
}
