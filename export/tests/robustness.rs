//! The parser never panics, and whatever it rejects it rejects with located errors; whatever
//! it accepts survives a write/parse round trip unchanged.

use portcullis_export::{parse, to_string, ErrorKind, ExportErrors};
use proptest::prelude::*;

// Format 1.1, with the optional `check` column, so mutations reach its parser too.
const VALID: &str = "# portcullis-export 1.1
service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence,check
pgw,pgw.app1.1,tcp,192.0.2.10,443,,10.10.1.11,8443,100,wlc,nat,300,http:/health:200
pgw,pgw.app2.1,tcp,192.0.2.10,443,,10.10.1.12,8443,100,wlc,nat,300,tcp
tg,tg.app3.1,tcp,192.0.2.20,20000-29999,7,10.10.2.21,,10,sh,nat,,
tg,tg.app3.1,tcp,192.0.2.21,20000-29999,7,10.10.2.21,,10,sh,nat,,
logger,logger.6,udp,2001:db8::514,514,,fd00:10::61,5514,1,rr,nat,,none
";

fn located(errors: &ExportErrors, input_lines: usize) -> Result<(), TestCaseError> {
    prop_assert!(!errors.errors.is_empty());
    for e in &errors.errors {
        prop_assert!(
            e.line >= 1 && e.line as usize <= input_lines.max(1) + 1,
            "line {} of {}",
            e.line,
            input_lines
        );
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let lines = bytes.split(|&b| b == b'\n').count();
    match parse(bytes) {
        Ok(export) => {
            let text = to_string(&export.rows())
                .map_err(|e| TestCaseError::fail(format!("accepted but unwritable: {e}")))?;
            let again = parse(text.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("round trip rejected: {e}")))?;
            prop_assert_eq!(again.rows(), export.rows());
        }
        Err(errors) => located(&errors, lines)?,
    }
    Ok(())
}

/// Byte-level edits of a valid export: the kind of damage truncation, bad editors and bugs do.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Delete(usize),
    Insert(usize, u8),
    Truncate(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(b",-.:#\"\n\r 0179afx;\xff".to_vec());
    prop_oneof![
        (
            any::<usize>(),
            prop_oneof![interesting.clone(), any::<u8>()]
        )
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), interesting).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = bytes.len().max(1);
    match *m {
        Mutation::Set(i, b) => {
            if !bytes.is_empty() {
                bytes[i % n] = b;
            }
        }
        Mutation::Delete(i) => {
            if !bytes.is_empty() {
                bytes.remove(i % n);
            }
        }
        Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
        Mutation::Truncate(i) => bytes.truncate(i % n),
        Mutation::DuplicateLine(i) | Mutation::SwapLines(i, _) => {
            let mut lines: Vec<Vec<u8>> =
                bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            let k = lines.len();
            match *m {
                Mutation::DuplicateLine(_) => {
                    let l = lines[i % k].clone();
                    lines.insert(i % k, l);
                }
                Mutation::SwapLines(_, j) => lines.swap(i % k, j % k),
                _ => unreachable!(),
            }
            bytes = lines.join(&b'\n');
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_text_after_a_valid_header_never_panics(tail in "[a-z0-9.,:\\-#\" \n]{0,300}") {
        let header = VALID.lines().take(2).collect::<Vec<_>>().join("\n");
        check(format!("{header}\n{tail}").as_bytes())?;
    }

    #[test]
    fn mutated_valid_exports_are_accepted_or_rejected_with_location(ms in prop::collection::vec(mutation(), 1..6)) {
        let bytes = ms.iter().fold(VALID.as_bytes().to_vec(), mutate);
        check(&bytes)?;
    }
}

#[test]
fn the_seed_export_is_valid() {
    let export = parse(VALID.as_bytes()).expect("valid");
    assert_eq!(export.records.len(), 5);
    assert_eq!(export.records[0].line, 3);
}

/// The `check` column is optional (format 1.1): without it every row takes the gateway's
/// default, and the writer leaves it out unless a row says something, declaring 1.0 then.
#[test]
fn the_check_column_is_optional_and_written_only_when_used() {
    let export = parse(VALID.as_bytes()).expect("valid");
    let checks: Vec<String> = export
        .records
        .iter()
        .map(|r| {
            r.row
                .check
                .as_ref()
                .map_or(String::new(), |c| c.to_string())
        })
        .collect();
    assert_eq!(checks, ["http:/health:200", "tcp", "", "", "none"]);
    let written = to_string(&export.rows()).expect("writable");
    assert!(
        written.starts_with("# portcullis-export 1.1\n"),
        "{written}"
    );
    assert!(written
        .lines()
        .nth(1)
        .is_some_and(|h| h.ends_with(",check")));

    let mut rows = export.rows();
    for row in &mut rows {
        row.check = None;
    }
    let written = to_string(&rows).expect("writable");
    assert!(
        written.starts_with("# portcullis-export 1.0\n"),
        "{written}"
    );
    assert!(!written.contains("check"), "{written}");
    let again = parse(written.as_bytes()).expect("a 1.0 file");
    assert!(again.warnings.is_empty());
    assert_eq!(again.rows(), rows);
}

/// What a gateway of format 1.0 does with a 1.1 export: ignores the column, warns.
#[test]
fn a_newer_minor_column_is_ignored_with_a_warning() {
    let text = VALID
        .replace("# portcullis-export 1.1", "# portcullis-export 1.2")
        .replace(",check", ",check,owner")
        .replace(",http:/health:200", ",http:/health:200,ops")
        .replace(",tcp\n", ",tcp,ops\n")
        .replace(",,\n", ",,,\n")
        .replace(",none", ",none,");
    let export = parse(text.as_bytes()).expect("a newer minor is read");
    assert_eq!(export.warnings.len(), 1);
    assert_eq!(export.warnings[0].kind, ErrorKind::UnknownColumn);
    assert_eq!(
        export.warnings[0].column.as_ref().map(|c| c.index),
        Some(14)
    );
}

/// A huge value is quoted in part, with its length: a 16 MiB one-line export must not turn
/// into 16 MiB log lines (issue 16).
#[test]
fn long_values_are_quoted_in_part() {
    let huge = "9".repeat(16 << 20);
    let padded = format!(" {huge}");
    for (field, kind) in [
        (&huge, ErrorKind::BadValue),
        (&padded, ErrorKind::Whitespace),
    ] {
        let text = VALID.replacen("192.0.2.10,443", &format!("{field},443"), 1);
        let errors = parse(text.as_bytes()).expect_err("rejected");
        let first = &errors.errors[0];
        assert_eq!(first.kind, kind);
        let shown = first.to_string();
        assert!(
            shown.len() < 600,
            "{} bytes: {}",
            shown.len(),
            &shown[..200]
        );
        assert!(
            shown.contains(&format!("({} bytes in all)", field.len())),
            "{shown}"
        );
        assert!(shown.starts_with("line 3, column 4 (vip)"), "{shown}");
    }
}
