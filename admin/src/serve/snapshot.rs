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
    /// The cloud-wide export (empty when [`Snapshot::refused`]).
    pub csv: axum::body::Bytes,
    /// Strong ETag of the CSV, quotes included. When the cloud-wide export is refused, the
    /// digest of every location's export instead, so it still moves with every change.
    pub etag: String,
    /// Why the cloud-wide export is not served (409): a fwmark groups frontends of several
    /// locations, which only the per-location exports can carry.
    pub refused: Option<String>,
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
        let refused = crate::export::cloud_wide_refusal(&catalog, &rows);
        let csv = match refused {
            Some(_) => String::new(),
            None => portcullis_export::to_string(&rows).map_err(rejected)?,
        };
        let mut locations = std::collections::BTreeMap::new();
        for name in catalog.inventory.locations.keys() {
            let mine = crate::export::location_rows(&catalog, &rows, name).unwrap_or_default();
            let text = portcullis_export::to_string(&mine).map_err(rejected)?;
            let etag = etag_of(text.as_bytes());
            let export = LocationExport {
                csv: text.into(),
                etag,
            };
            locations.insert(name.clone(), export);
        }
        let etag = match refused {
            None => etag_of(csv.as_bytes()),
            Some(_) => {
                let tags: String = locations
                    .values()
                    .map(|l: &LocationExport| l.etag.as_str())
                    .collect();
                etag_of(tags.as_bytes())
            }
        };
        Ok(Snapshot {
            catalog: Arc::new(catalog),
            etag,
            refused,
            csv: csv.into(),
            revision,
            locations,
            generation,
            loaded_at: SystemTime::now(),
        })
    }
}
