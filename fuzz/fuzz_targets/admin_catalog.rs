//! ADMIN's catalog loader from text (`Catalog::from_sources`): YAML syntax, the inventory and
//! meta-configuration readers, cross-checks, combined configurations and the derived export.
//! The input is a whole catalog: the inventory, then each meta file after a line
//! `#== <stem>` (the seeds are the example catalog in that form).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_admin::{Catalog, Sources};

const SEPARATOR: &str = "\n#== ";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // Sources::read reads files as UTF-8 and stops before the loader otherwise.
    };
    let mut parts = text.split(SEPARATOR);
    let inventory = parts.next().unwrap_or_default().to_owned();
    let metas = parts
        .map(|part| {
            let (stem, body) = part.split_once('\n').unwrap_or((part, ""));
            (stem.to_owned(), body.to_owned())
        })
        .collect();
    check(&Sources { inventory, metas });
});

fn check(sources: &Sources) {
    match Catalog::from_sources(sources) {
        Ok(catalog) => {
            // A Catalog is always valid: its export must pass the gateway's parser.
            let csv = portcullis_admin::export::csv(&catalog).expect("the export can be written");
            if let Err(e) = portcullis_export::parse(csv.as_bytes()) {
                panic!("an accepted catalog derived a rejected export: {e:?}\n{csv}");
            }
        }
        Err(errors) => assert!(!errors.0.is_empty(), "a rejection names an error"),
    }
}
