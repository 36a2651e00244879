//! Golden-file tests: each case renders an export (and, with an older export, the diff and the
//! incremental transaction) and compares byte-for-byte with files under `tests/golden/CASE/`.
//! After an intended change, regenerate with `UPDATE_GOLDEN=1 cargo test --test golden` and
//! review the diff like code.

mod common;

use common::{load_state, repo};
use portcullis::diff::{StateDiff, Style};
use portcullis::render::nft::Backend;
use portcullis::render::{ipvsadm, nft};

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
        for (backend, name) in [(Backend::Ipvs, "ipvs"), (Backend::Nft, "nft")] {
            let opts = common::render_options(backend, &["eth0"]);
            check(
                case,
                &format!("full-{name}.nft"),
                &nft::full_ruleset(&state, &opts).to_nft(),
            );
            if let Some(old) = old {
                let old = load_state(old);
                let tx =
                    nft::incremental_between(&old, &state, backend).expect("no pattern collision");
                check(case, &format!("incremental-{name}.nft"), &tx.to_nft());
            }
        }
        check(case, "ipvsadm.txt", &ipvsadm::ipvsadm_save(&state));
        check(
            case,
            "state.json",
            &(serde_json::to_string_pretty(&state).expect("json") + "\n"),
        );
        if let Some(old) = old {
            let diff = StateDiff::between(&load_state(old), &state);
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
    const OUTPUTS: &[&str] = &[
        "full-ipvs.nft",
        "full-nft.nft",
        "incremental-ipvs.nft",
        "incremental-nft.nft",
        "ipvsadm.txt",
        "state.json",
        "diff.txt",
        "diff.json",
    ];
    const INPUTS: &[&str] = &["export.csv", "old.csv", "new.csv"];
    for entry in std::fs::read_dir(repo().join("tests/golden")).expect("golden dir") {
        let entry = entry.expect("entry");
        let case = entry.file_name().into_string().expect("utf-8 name");
        let Some(&(_, old, _)) = CASES.iter().find(|(c, _, _)| *c == case) else {
            panic!("tests/golden/{case} is not a case in tests/golden.rs");
        };
        for file in std::fs::read_dir(entry.path()).expect("case dir") {
            let name = file
                .expect("entry")
                .file_name()
                .into_string()
                .expect("utf-8 name");
            let is_output = OUTPUTS.contains(&name.as_str())
                && (old.is_some()
                    || !(name.starts_with("incremental") || name.starts_with("diff")));
            assert!(
                is_output || INPUTS.contains(&name.as_str()),
                "stale golden file tests/golden/{case}/{name}"
            );
        }
    }
}

/// The balancing maps depend on the export, never on its row order: the same rows reversed
/// and interleaved render byte-identical tables (the bucket owners included).
#[test]
fn row_order_does_not_change_the_rendered_maps() {
    use portcullis::model::DesiredState;
    let mut rows = portcullis::synth::rows(3000);
    rows.extend(
        portcullis_export::parse(
            std::fs::read(repo().join("rules/examples/export.csv"))
                .expect("read example")
                .as_slice(),
        )
        .expect("example is valid")
        .rows(),
    );
    let opts = common::render_options(Backend::Nft, &["eth0"]);
    let render = |rows: &[portcullis_export::ExportRow]| {
        nft::full_ruleset(&DesiredState::from_rows(rows), &opts).to_nft()
    };
    let straight = render(&rows);
    let mut reversed = rows.clone();
    reversed.reverse();
    // Odd rows first, then even ones: every service's rows come in another order.
    let (odd, even): (Vec<_>, Vec<_>) = rows
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 1);
    let interleaved: Vec<_> = odd.into_iter().chain(even).map(|(_, r)| r).collect();
    assert!(
        straight.contains("lb_pattern_v4 {") && straight.contains("lb_real_v4 {"),
        "the nft backend's maps are rendered"
    );
    assert!(
        straight == render(&reversed),
        "reversed rows render another table"
    );
    assert!(
        straight == render(&interleaved),
        "interleaved rows render another table"
    );
}
