//! One meta-configuration (`meta/pgw.yaml`) fuzzed inside the otherwise fixed example
//! catalog, so mutations reach the meta reader and the gateway sections rather than dying
//! in a missing inventory. Same invariant as `admin_catalog`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_admin::{Catalog, Sources};

const INVENTORY: &str = include_str!("../../admin/example-catalog/inventory.yaml");
const FIXED: [(&str, &str); 4] = [
    (
        "default",
        include_str!("../../admin/example-catalog/meta/default.yaml"),
    ),
    (
        "logger",
        include_str!("../../admin/example-catalog/meta/logger.yaml"),
    ),
    (
        "mdb",
        include_str!("../../admin/example-catalog/meta/mdb.yaml"),
    ),
    (
        "tg",
        include_str!("../../admin/example-catalog/meta/tg.yaml"),
    ),
];

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = std::str::from_utf8(data) else {
        return;
    };
    let mut metas: Vec<(String, String)> = FIXED
        .iter()
        .map(|(stem, text)| ((*stem).to_owned(), (*text).to_owned()))
        .collect();
    metas.push(("pgw".to_owned(), meta.to_owned()));
    metas.sort();
    let sources = Sources {
        inventory: INVENTORY.to_owned(),
        metas,
    };
    match Catalog::from_sources(&sources) {
        Ok(catalog) => {
            let csv = portcullis_admin::export::csv(&catalog).expect("the export can be written");
            if let Err(e) = portcullis_export::parse(csv.as_bytes()) {
                panic!("an accepted catalog derived a rejected export: {e:?}\n{csv}");
            }
        }
        Err(errors) => assert!(!errors.0.is_empty(), "a rejection names an error"),
    }
});
