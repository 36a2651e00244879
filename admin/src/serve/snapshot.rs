//! What readers are served: one valid catalog with its export (whole and per location), their
//! ETags, and the catalog revision that `If-Match` is checked against.

use crate::catalog::{Catalog, Sources, INVENTORY_FILE};
use crate::error::CatalogErrors;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::SystemTime;

/// One valid catalog and everything derived from it that readers need.
#[derive(Debug)]
pub struct Snapshot {
    pub catalog: Arc<Catalog>,
    pub csv: axum::body::Bytes,
    /// Strong ETag of the CSV, quotes included.
    pub etag: String,
    /// The catalog revision: a digest of every catalog file's text (`X-Catalog-Revision`,
    /// `If-Match`). Any change to the catalog, by the API or by hand, changes it.
    pub revision: String,
    /// The export of each location (`?location=`): only rows whose VIP is one of that
    /// location's IP-label addresses.
    pub locations: std::collections::BTreeMap<String, LocationExport>,
    /// Increases with every published snapshot.
    pub generation: u64,
    pub loaded_at: SystemTime,
}

/// One location's part of the export.
#[derive(Debug)]
pub struct LocationExport {
    pub csv: axum::body::Bytes,
    pub etag: String,
}

/// A strong ETag: 16 bytes of the SHA-256 of `data`, in hex, quoted.
fn etag_of(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// The revision of a catalog's files (see [`Snapshot::revision`]).
pub fn revision(sources: &Sources) -> String {
    // Length-prefixed parts: moving text from one file to the next changes the revision.
    let mut h = Sha256::new();
    let parts = std::iter::once(sources.inventory.as_str()).chain(
        sources
            .metas
            .iter()
            .flat_map(|(n, t)| [n.as_str(), t.as_str()]),
    );
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Snapshot {
    pub(super) fn new(
        catalog: Catalog,
        revision: String,
        generation: u64,
    ) -> Result<Snapshot, CatalogErrors> {
        let rejected = |e: portcullis_export::WriteError| {
            CatalogErrors(vec![crate::CatalogError {
                file: INVENTORY_FILE.into(),
                line: 1,
                column: 1,
                key: String::new(),
                kind: crate::ErrorKind::ExportRejected,
                message: e.to_string(),
            }])
        };
        let rows = crate::export::rows(&catalog);
        let csv = portcullis_export::to_string(&rows).map_err(rejected)?;
        let mut locations = std::collections::BTreeMap::new();
        for (name, location) in &catalog.inventory.locations {
            let vips: Vec<_> = location.ip_labels.values().flatten().collect();
            let mine: Vec<_> = rows
                .iter()
                .filter(|r| vips.contains(&&r.vip))
                .cloned()
                .collect();
            let text = portcullis_export::to_string(&mine).map_err(rejected)?;
            let etag = etag_of(text.as_bytes());
            let export = LocationExport {
                csv: text.into(),
                etag,
            };
            locations.insert(name.clone(), export);
        }
        Ok(Snapshot {
            catalog: Arc::new(catalog),
            etag: etag_of(csv.as_bytes()),
            csv: csv.into(),
            revision,
            locations,
            generation,
            loaded_at: SystemTime::now(),
        })
    }
}
