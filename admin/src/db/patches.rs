//! A type's patch directory, `patches/<type>/`: numbered `NNNN_description.sql` files applied in
//! order, and an optional `schema.sql` baseline that installs an empty database in one step.
//! Reading it is pure file work; nothing here talks to a database.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const PATCH_DIR: &str = "patches";
pub const SCHEMA_FILE: &str = "schema.sql";
/// The line a `schema.sql` starts with, naming the last patch it already contains.
pub const BASELINE_MARKER: &str = "-- portcullis-baseline:";

#[derive(Clone, Debug)]
pub struct PatchFile {
    pub number: u32,
    /// The file name, e.g. `0003_add_devices_index.sql`.
    pub name: String,
    pub sql: String,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct Baseline {
    /// The schema equals patches 1..=`upto` applied in order.
    pub upto: u32,
    pub sql: String,
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct PatchSet {
    pub dir: PathBuf,
    /// Sorted by number, numbers unique.
    pub patches: Vec<PatchFile>,
    pub baseline: Option<Baseline>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `0012_add_index.sql` → 12. `None` for names that are not patch files.
fn patch_number(name: &str) -> Result<Option<u32>, String> {
    let Some(stem) = name.strip_suffix(".sql") else {
        return Ok(None);
    };
    if name == SCHEMA_FILE {
        return Ok(None);
    }
    let digits: String = stem.chars().take_while(|c| c.is_ascii_digit()).collect();
    let rest = &stem[digits.len()..];
    let good_rest = rest.len() > 1
        && rest.starts_with('_')
        && rest[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match digits.parse::<u32>() {
        Ok(n) if n >= 1 && digits.len() <= 9 && good_rest => Ok(Some(n)),
        _ => Err(format!(
            "{name}: expected NNNN_description.sql (a number from 1, then _ and letters, digits, - or _)"
        )),
    }
}

impl PatchSet {
    /// Reads `<catalog>/patches/<type_name>/`. A missing directory is an error: a type with a
    /// database has patches, and a typo must not look like "nothing to do".
    pub fn load(catalog_dir: &Path, type_name: &str) -> Result<PatchSet, String> {
        let dir = catalog_dir.join(PATCH_DIR).join(type_name);
        let rd = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut patches: Vec<PatchFile> = Vec::new();
        let mut baseline = None;
        let mut errors = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name == SCHEMA_FILE {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                match read_baseline(&bytes) {
                    Ok(b) => baseline = Some(b),
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                }
                continue;
            }
            match patch_number(&name) {
                Ok(None) => {}
                Ok(Some(number)) => {
                    let bytes =
                        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    match String::from_utf8(bytes) {
                        Ok(sql) => patches.push(PatchFile {
                            number,
                            sha256: sha256_hex(sql.as_bytes()),
                            name,
                            sql,
                        }),
                        Err(_) => errors.push(format!("{}: not UTF-8 text", path.display())),
                    }
                }
                Err(e) => errors.push(format!("{}/{e}", dir.display())),
            }
        }
        patches.sort_by(|a, b| a.number.cmp(&b.number).then(a.name.cmp(&b.name)));
        for w in patches.windows(2) {
            if w[0].number == w[1].number {
                errors.push(format!(
                    "{}: {} and {} have the same number {}",
                    dir.display(),
                    w[0].name,
                    w[1].name,
                    w[0].number
                ));
            }
        }
        if let Some(b) = &baseline {
            if !patches.iter().any(|p| p.number == b.upto) {
                errors.push(format!(
                    "{}/{SCHEMA_FILE}: baseline {} names no patch file (the schema must equal patches up to an existing one)",
                    dir.display(),
                    b.upto
                ));
            }
        }
        if errors.is_empty() {
            Ok(PatchSet {
                dir,
                patches,
                baseline,
            })
        } else {
            Err(errors.join("\n"))
        }
    }

    pub fn get(&self, number: u32) -> Option<&PatchFile> {
        self.patches.iter().find(|p| p.number == number)
    }
}

fn read_baseline(bytes: &[u8]) -> Result<Baseline, String> {
    let sql = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    let first = sql.lines().next().unwrap_or("");
    let upto = first
        .strip_prefix(BASELINE_MARKER)
        .and_then(|n| n.trim().parse::<u32>().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            format!(
                "line 1: expected `{BASELINE_MARKER} NNNN` (the last patch the schema contains)"
            )
        })?;
    Ok(Baseline {
        upto,
        sha256: sha256_hex(bytes),
        sql: sql.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_names() {
        assert_eq!(patch_number("0001_init.sql"), Ok(Some(1)));
        assert_eq!(patch_number("0420_add-index_2.sql"), Ok(Some(420)));
        assert_eq!(patch_number("README.md"), Ok(None));
        assert_eq!(patch_number("schema.sql"), Ok(None));
        assert!(patch_number("0000_zero.sql").is_err());
        assert!(patch_number("init.sql").is_err());
        assert!(patch_number("0001.sql").is_err());
        assert!(patch_number("0001_sp ace.sql").is_err());
    }

    #[test]
    fn load_checks_duplicates_and_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("patches/web");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("0001_a.sql"), "create table a (x int);").unwrap();
        std::fs::write(p.join("0002_b.sql"), "create table b (x int);").unwrap();
        std::fs::write(p.join("notes.txt"), "ignored").unwrap();
        let set = PatchSet::load(dir.path(), "web").unwrap();
        assert_eq!(
            set.patches.iter().map(|p| p.number).collect::<Vec<_>>(),
            [1, 2]
        );
        std::fs::write(p.join("schema.sql"), "create table a (x int);\n").unwrap();
        let e = PatchSet::load(dir.path(), "web").unwrap_err();
        assert!(e.contains("expected `-- portcullis-baseline: NNNN`"), "{e}");
        std::fs::write(p.join("schema.sql"), "-- portcullis-baseline: 7\n").unwrap();
        let e = PatchSet::load(dir.path(), "web").unwrap_err();
        assert!(e.contains("baseline 7 names no patch file"), "{e}");
        std::fs::write(p.join("schema.sql"), "-- portcullis-baseline: 2\n").unwrap();
        assert_eq!(
            PatchSet::load(dir.path(), "web")
                .unwrap()
                .baseline
                .unwrap()
                .upto,
            2
        );
        std::fs::write(p.join("02_b_again.sql"), "").unwrap();
        let e = PatchSet::load(dir.path(), "web").unwrap_err();
        assert!(e.contains("have the same number 2"), "{e}");
        assert!(PatchSet::load(dir.path(), "nope").is_err());
    }
}
