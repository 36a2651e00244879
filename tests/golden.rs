//! Golden-file tests: each case renders an export (and, with an older export, the diff and the
//! incremental transaction) and compares byte-for-byte with files under `tests/golden/CASE/`.
//! After an intended change, regenerate with `UPDATE_GOLDEN=1 cargo test --test golden` and
//! review the diff like code.

mod common;

use common::{load_state, repo};
use portcullis::diff::{StateDiff, Style};
use portcullis::render::{ipvsadm, nft};
use std::path::Path;

/// (case, older export or none, export).
const CASES: &[(&str, Option<&str>, &str)] = &[
    ("example", None, "rules/examples/export.csv"),
    (
        "example-next",
        Some("rules/examples/export.csv"),
        "rules/examples/export-next.csv",
    ),
    (
        "empty",
        Some("rules/examples/export.csv"),
        "tests/golden/empty/export.csv",
    ),
    (
        "mixed-methods",
        None,
        "tests/golden/mixed-methods/export.csv",
    ),
    (
        "frontend-moves",
        Some("tests/golden/frontend-moves/old.csv"),
        "tests/golden/frontend-moves/new.csv",
    ),
];

fn check(case: &str, file: &str, actual: &str) {
    let path = repo().join("tests/golden").join(case).join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("case dir")).expect("create case dir");
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the rendering:\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn renders_match_golden_files() {
    for &(case, old, new) in CASES {
        let state = load_state(new);
        let opts = common::render_options(&["eth0"]);
        check(case, "full.nft", &nft::full_ruleset(&state, &opts).to_nft());
        check(case, "ipvsadm.txt", &ipvsadm::ipvsadm_save(&state));
        check(
            case,
            "state.json",
            &(serde_json::to_string_pretty(&state).expect("json") + "\n"),
        );
        if let Some(old) = old {
            let diff = StateDiff::between(&load_state(old), &state);
            check(case, "incremental.nft", &nft::incremental(&diff).to_nft());
            check(case, "diff.txt", &diff.to_human(Style::Plain));
            check(
                case,
                "diff.json",
                &(serde_json::to_string_pretty(&diff).expect("json") + "\n"),
            );
        }
    }
}

#[test]
fn every_golden_file_belongs_to_a_case() {
    // A stale file would look like coverage that is not there.
    for entry in std::fs::read_dir(repo().join("tests/golden")).expect("golden dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8 name");
        assert!(
            CASES.iter().any(|(c, _, _)| *c == name),
            "tests/golden/{name} is not a case in tests/golden.rs"
        );
    }
    assert!(Path::new(&repo())
        .join("tests/golden/example/full.nft")
        .exists());
}
