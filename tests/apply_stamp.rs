//! `apply --once` against the real kernel (a network namespace): a table stamped with the
//! cached export's digest gets only the difference, and ends exactly as a full regeneration
//! would leave it; a table without the right stamp (removed by hand, or changed by someone
//! who does not stamp) is read back and regenerated as before.

mod common;

use common::{require_nft, Netns};
use std::path::Path;

fn apply(ns: &Netns, state: &Path, export: &str, extra: &[&str]) -> String {
    let out = ns
        .command(env!("CARGO_BIN_EXE_portcullis"))
        .args(["apply", "--once", "--external-iface", "lo", "--source"])
        .arg(common::repo().join(export))
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .output()
        .expect("run portcullis");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{export}: {text}");
    text
}

/// `diff --live`: exit 0 when the kernel's table is exactly what the export renders.
fn live_matches(ns: &Netns, export: &str) -> bool {
    ns.command(env!("CARGO_BIN_EXE_portcullis"))
        .args(["diff", "--live", "--external-iface", "lo"])
        .arg(common::repo().join(export))
        .status()
        .expect("run portcullis")
        .success()
}

fn stamps(ns: &Netns) -> Vec<String> {
    ns.exec(&["nft", "list", "table", "inet", "portcullis"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain applied_"))
        .map(|rest| rest.trim_end_matches(" {").to_owned())
        .collect()
}

#[test]
fn a_stamped_table_gets_only_the_difference_and_ends_as_a_full_render() {
    if !require_nft() {
        return;
    }
    let ns = Netns::new("stamp");
    let dir = common::tmp_dir("stamp");
    let state = dir.join("state");
    let (first, next) = (
        "rules/examples/export.csv",
        "rules/examples/export-next.csv",
    );

    let out = apply(&ns, &state, first, &[]);
    assert!(out.contains("table regenerated"), "{out}");
    assert_eq!(stamps(&ns).len(), 1, "the first apply stamps the table");

    let out = apply(&ns, &state, next, &[]);
    assert!(out.contains("only the difference"), "{out}");
    assert!(
        live_matches(&ns, next),
        "the increment left the full render of {next}"
    );
    assert_eq!(stamps(&ns).len(), 1, "one stamp, the new export's");

    let out = apply(&ns, &state, next, &[]);
    assert!(out.contains("nothing to do"), "{out}");

    // The stamp removed by hand: the increment, which deletes the old stamp, is refused by
    // the kernel as a whole, and the table is regenerated.
    let stamp = format!("applied_{}", stamps(&ns)[0]);
    ns.exec(&["nft", "delete", "chain", "inet", "portcullis", &stamp]);
    let out = apply(&ns, &state, first, &[]);
    assert!(out.contains("table regenerated"), "{out}");
    assert!(live_matches(&ns, first));

    // --read-back reads and repairs even a stamped table: a hand-added element goes.
    ns.exec(&[
        "nft",
        "add",
        "element",
        "inet",
        "portcullis",
        "fwmarks_v4",
        "{ 198.18.0.1 . tcp . 9 : 5 }",
    ]);
    assert!(!live_matches(&ns, first), "the hand edit shows");
    let out = apply(&ns, &state, first, &["--read-back"]);
    assert!(out.contains("table regenerated"), "{out}");
    assert!(live_matches(&ns, first), "repaired");
}
