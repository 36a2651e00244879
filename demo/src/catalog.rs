//! The example catalog of `admin/example-catalog`, built into the binary so the demo runs from
//! anywhere (an installed binary too), and written out to a temporary directory for ADMIN to
//! open. A test checks the list against the directory, so a new catalog file cannot be missed.

use std::path::{Path, PathBuf};

pub const EXAMPLE_CATALOG: &[(&str, &str)] = &[
    (
        "inventory.yaml",
        include_str!("../../admin/example-catalog/inventory.yaml"),
    ),
    (
        "meta/default.yaml",
        include_str!("../../admin/example-catalog/meta/default.yaml"),
    ),
    (
        "meta/logger.yaml",
        include_str!("../../admin/example-catalog/meta/logger.yaml"),
    ),
    (
        "meta/mdb.yaml",
        include_str!("../../admin/example-catalog/meta/mdb.yaml"),
    ),
    (
        "meta/pgw.yaml",
        include_str!("../../admin/example-catalog/meta/pgw.yaml"),
    ),
    (
        "meta/tg.yaml",
        include_str!("../../admin/example-catalog/meta/tg.yaml"),
    ),
];

#[derive(Debug, thiserror::Error)]
#[error("cannot write the example catalog at {path}: {source}")]
pub struct WriteError {
    path: PathBuf,
    source: std::io::Error,
}

/// Writes the built-in catalog under `dir` (created as needed).
pub fn write_example(dir: &Path) -> Result<(), WriteError> {
    for (name, text) in EXAMPLE_CATALOG {
        let path = dir.join(name);
        let written = match path.parent() {
            Some(parent) => {
                std::fs::create_dir_all(parent).and_then(|()| std::fs::write(&path, text))
            }
            None => std::fs::write(&path, text),
        };
        written.map_err(|source| WriteError { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalog_is_the_example_directory() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../admin/example-catalog");
        let mut on_disk = Vec::new();
        for sub in ["", "meta"] {
            for entry in std::fs::read_dir(root.join(sub)).expect("example catalog") {
                let path = entry.expect("entry").path();
                if path.is_file() {
                    let rel = path.strip_prefix(&root).expect("prefix");
                    on_disk.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let mut built_in: Vec<String> = EXAMPLE_CATALOG
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        built_in.sort();
        assert_eq!(
            built_in, on_disk,
            "update EXAMPLE_CATALOG in demo/src/catalog.rs"
        );
    }

    #[test]
    fn the_written_catalog_opens_in_admin() {
        let dir = tempfile::Builder::new()
            .prefix("pc-demo-catalog-")
            .tempdir()
            .expect("temp dir");
        write_example(dir.path()).expect("write");
        let opened = portcullis_admin::serve::AdminState::open(
            dir.path(),
            portcullis_admin::serve::Options::default(),
        );
        assert!(opened.is_ok(), "{:?}", opened.err());
    }
}
