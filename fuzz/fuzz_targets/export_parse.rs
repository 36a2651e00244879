//! The export CSV parser (`portcullis_export::parse`): the gateway's only untrusted input
//! from the network. Accepted exports must round-trip through the writer; rejected ones
//! must be located and bounded (an operator reads them, the daemon logs them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_export::{parse, to_string, MAX_ERRORS};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(export) => {
            let rows = export.rows();
            let text = to_string(&rows).expect("an accepted export can be written");
            let again = parse(text.as_bytes()).expect("a written export parses again");
            assert_eq!(again.rows(), rows, "round trip changed the rows:\n{text}");
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a rejection names at least one error");
            assert!(errors.len() <= MAX_ERRORS);
            // Lines count from 1; at most one past the last line (a missing final record).
            let lines = data.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            for e in &errors.errors {
                assert!(e.line >= 1 && e.line <= lines + 1, "{e:?} of {lines} lines");
                // 512 bytes plus the "… (cut)" marker.
                assert!(e.message.len() <= 512 + 16, "unbounded message: {e:?}");
            }
        }
    }
});
