//! The daemon's TOML configuration (`Config::parse`). An accepted configuration must
//! serialize and parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::daemon::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, "fuzz.toml") {
        let written = toml::to_string(&config).expect("an accepted configuration serializes");
        let again = Config::parse(&written, "written.toml")
            .unwrap_or_else(|e| panic!("written configuration rejected: {e}\n{written}"));
        assert_eq!(
            again, config,
            "round trip changed the configuration:\n{written}"
        );
    }
});
