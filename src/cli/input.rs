//! Reading an export file for the CLI and reporting its errors the way editors and humans like:
//! `FILE: line L, column C (name): expected …, found …`.

use portcullis_export::{Export, ExportErrors};
use std::io::Read;
use std::path::Path;

pub enum Loaded {
    Valid(Export),
    Invalid(ExportErrors),
    Unreadable(String),
}

pub fn load_export(path: &Path) -> Loaded {
    let bytes = if path == Path::new("-") {
        let mut buf = Vec::new();
        match std::io::stdin().lock().read_to_end(&mut buf) {
            Ok(_) => buf,
            Err(e) => return Loaded::Unreadable(format!("cannot read standard input: {e}")),
        }
    } else {
        match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Loaded::Unreadable(format!("cannot read {}: {e}", path.display())),
        }
    };
    match portcullis_export::parse(&bytes) {
        Ok(export) => {
            for w in &export.warnings {
                tracing::warn!("{}: {w}", path.display());
            }
            tracing::debug!(rows = export.records.len(), file = %path.display(), "export parsed");
            Loaded::Valid(export)
        }
        Err(errors) => Loaded::Invalid(errors),
    }
}

pub fn report(path: &Path, errors: &ExportErrors) {
    let name = if path == Path::new("-") {
        "<stdin>".into()
    } else {
        path.display().to_string()
    };
    for e in &errors.errors {
        eprintln!("{name}: {e}");
    }
    if errors.truncated {
        eprintln!(
            "{name}: more errors not shown (first {} listed)",
            errors.errors.len()
        );
    }
    eprintln!("{name}: rejected: {} error(s)", errors.errors.len());
}
