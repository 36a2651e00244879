//! The catalog of bad exports under `tests/bad/`: each file states the errors it must produce
//! (`# expect: KIND LINE:COLUMN`, column 0 when no single field is at fault), and must produce
//! exactly those, all located, and nothing else.

use portcullis_export::{parse, ErrorKind, ExportErrors};
use std::path::Path;

fn kind_name(kind: ErrorKind) -> String {
    serde_json_free_kebab(format!("{kind:?}"))
}

/// `FrontendOverlap` → `frontend-overlap`, matching the JSON names.
fn serde_json_free_kebab(s: String) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn expectations(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_owned)
        .collect()
}

fn located(errors: &ExportErrors) -> Vec<String> {
    errors
        .errors
        .iter()
        .map(|e| {
            let col = e.column.as_ref().map_or(0, |c| c.index);
            format!("{} {}:{}", kind_name(e.kind), e.line, col)
        })
        .collect()
}

#[test]
fn every_bad_export_is_rejected_with_exactly_its_located_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/bad exists")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 25,
        "the catalog must cover at least 25 kinds of bad input"
    );
    let mut kinds = std::collections::BTreeSet::new();
    for path in files {
        let bytes = std::fs::read(&path).expect("readable");
        let mut expected = expectations(&bytes);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            path.display()
        );
        let errors = match parse(&bytes) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => e,
        };
        let mut got = located(&errors);
        for e in &errors.errors {
            assert!(e.line >= 1, "{}: unlocated error {e}", path.display());
            assert!(!e.message.is_empty());
            kinds.insert(e.kind);
        }
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "{}:\n{errors}", path.display());
    }
    assert!(
        kinds.len() >= 18,
        "catalog exercises only {} error kinds",
        kinds.len()
    );
}
