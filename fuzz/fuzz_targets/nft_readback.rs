//! The nft read-back parser (`portcullis::apply::parse_table`): `nft -j list table` output,
//! from which drift is judged. JSON of any shape must give a value or an error, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = portcullis::apply::parse_table(json);
    }
});
