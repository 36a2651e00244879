//! Every rendered nft script must be accepted by the real `nft`, and an incremental
//! transaction applied on top of the old table must leave exactly the table a full render of
//! the new state gives, as the kernel lists it. Runs in throwaway network namespaces, so the
//! host ruleset is never touched.

mod common;

use common::{load_state, render_options, require_nft, Netns};
use portcullis::apply::{drift, Firewall, NftCli, TableState};
use portcullis::model::DesiredState;
use portcullis::render::nft::{self, Backend};

/// Applies `full(old)` then `incremental(old→new)` in one namespace and `full(new)` in
/// another, and requires the two live tables to be identical (chains, rules as nft lists
/// them, every element), and equal to what the twin predicts.
fn check_transition(name: &str, old: &DesiredState, new: &DesiredState) {
    for backend in [Backend::Ipvs, Backend::Nft] {
        let opts = render_options(backend, &["eth0", "bond0.100"]);
        let (a, b) = (
            Netns::new(&format!("{name}-a")),
            Netns::new(&format!("{name}-b")),
        );
        let (mut via_inc, mut via_full) = (NftCli::in_netns(&a.name), NftCli::in_netns(&b.name));
        let full_old = nft::full_ruleset(old, &opts);
        let full_new = nft::full_ruleset(new, &opts);
        via_inc
            .check(&full_old)
            .unwrap_or_else(|e| panic!("{name} {backend:?}: full(old): {e}"));
        via_inc.apply(&full_old).expect("apply full(old)");
        let inc = nft::incremental_between(old, new, backend).expect("no pattern collision");
        via_inc
            .check(&inc)
            .unwrap_or_else(|e| panic!("{name} {backend:?}: nft -c refused the increment: {e}"));
        via_inc.apply(&inc).expect("apply increment");
        via_full
            .apply(&full_new)
            .unwrap_or_else(|e| panic!("{name} {backend:?}: full(new): {e}"));

        let live_inc = via_inc.read_table().expect("read back");
        let live_full = via_full.read_table().expect("read back");
        assert!(live_full.is_some());
        assert_eq!(
            live_inc, live_full,
            "{name} {backend:?}: incremental and full tables differ"
        );
        let predicted = TableState::from_transaction(&full_new).expect("twin applies full(new)");
        let differences = drift(&predicted, &live_full);
        assert!(
            differences.is_empty(),
            "{name} {backend:?}: twin and kernel disagree: {differences:?}"
        );
    }
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
    check_transition("next", &example, &next);
    check_transition("to-empty", &example, &empty);
    check_transition("from-empty", &empty, &mixed);
    check_transition("moves", &moves_old, &moves_new);
    check_transition("mixed", &mixed, &example);
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
    check_transition("synth", &base, &next);
    check_transition("synth-back", &next, &base);
}

#[test]
fn nft_errors_come_back_typed_and_located() {
    if !require_nft() {
        return;
    }
    // Guards against a check that passes whatever it is given, and shows the error form.
    let ns = Netns::new("bad");
    let mut fw = NftCli::in_netns(&ns.name);
    let mut tx = nft::Transaction::new();
    tx.add(nft::transaction::Object::Table { comment: None });
    tx.add(nft::transaction::Object::Rule(nft::transaction::Rule {
        chain: "nosuchchain".into(),
        expr: "accept".into(),
    }));
    let err = fw
        .check(&tx)
        .expect_err("nft must refuse a rule in a missing chain");
    match err {
        portcullis::apply::NftError::Rejected { diagnostics, .. } => {
            assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
            assert_eq!(diagnostics[0].line, 2);
            assert!(diagnostics[0].source.contains("nosuchchain"));
        }
        other => panic!("expected a rejection, got {other}"),
    }
    assert_eq!(
        fw.read_table().expect("read"),
        None,
        "a refused batch changes nothing"
    );
}

/// `apply --once` hands nft its script without a file anyone can name: a spy `nft` first on
/// PATH records, at the moment nft runs, what the temporary directory holds and what its
/// standard input is, then runs the real nft. Before, the script was a predictable
/// `$TMPDIR/portcullis-<pid>-<seq>.nft` that another local user could plant (issue 16).
#[test]
fn apply_leaves_no_file_in_the_temp_dir_for_nft_to_read() {
    if !require_nft() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let real_nft = std::process::Command::new("sh")
        .args(["-c", "command -v nft"])
        .output()
        .expect("sh");
    let real_nft = String::from_utf8_lossy(&real_nft.stdout).trim().to_owned();
    let dir = common::tmp_dir("nft-tmp");
    let (spy_dir, tmp, log, state) = (
        dir.join("bin"),
        dir.join("tmp"),
        dir.join("spy.log"),
        dir.join("state"),
    );
    for d in [&spy_dir, &tmp, &state] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let spy = spy_dir.join("nft");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\n\
             echo \"tmpdir=[$(ls -A \"$TMPDIR\")] stdin=$(readlink /proc/self/fd/0)\" >> '{}'\n\
             exec '{real_nft}' \"$@\"\n",
            log.display()
        ),
    )
    .expect("spy");
    std::fs::set_permissions(&spy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ns = Netns::new("tmpdir");
    let path = format!(
        "{}:{}",
        spy_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let apply = |export: &str| {
        let out = ns
            .command("env")
            .arg(format!("PATH={path}"))
            .arg(format!("TMPDIR={}", tmp.display()))
            .arg(env!("CARGO_BIN_EXE_portcullis"))
            .args(["apply", "--once", "--external-iface", "lo", "--source"])
            .arg(common::repo().join(export))
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("run portcullis");
        assert!(
            out.status.success(),
            "{export}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    apply("rules/examples/export.csv");
    apply("rules/examples/export-next.csv");
    let log = std::fs::read_to_string(&log).expect("the spy ran");
    let batches: Vec<&str> = log.lines().filter(|l| l.contains("/memfd:")).collect();
    assert!(
        batches.len() >= 2,
        "both applies sent their script on an in-memory stdin:\n{log}"
    );
    assert!(
        log.lines().all(|l| l.starts_with("tmpdir=[] ")),
        "nothing in TMPDIR while nft ran:\n{log}"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).expect("ls").count(),
        0,
        "nothing left behind"
    );
    assert!(ns
        .exec(&["nft", "list", "table", "inet", "portcullis"])
        .contains("chain"));
    let _ = std::fs::remove_dir_all(&dir);
}
