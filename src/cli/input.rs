//! Reading an export (file, standard input or URL) for the CLI and reporting its errors the way editors and humans like:
//! `FILE: line L, column C (name): expected …, found …`.

use portcullis_export::{Export, ExportErrors};
use std::io::Read;
use std::path::Path;

pub enum Loaded {
    Valid(Export),
    Invalid(ExportErrors),
    Unreadable(String),
}

/// Largest export accepted from a URL: far above any real one (100k rows is 7 MB), small
/// enough that a broken server cannot exhaust the gateway's memory.
const MAX_EXPORT_BYTES: u64 = 64 << 20;

/// Reads an export from a file, `-` (standard input), or an `http(s)://` / `file://` URL.
pub(crate) fn read_source(path: &Path) -> Result<Vec<u8>, String> {
    let text = path.to_string_lossy();
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        return Ok(buf);
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        return fetch(&text);
    }
    let file = text.strip_prefix("file://").map_or(path, Path::new);
    std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot set up HTTP: {e}"))?;
    let response = client
        .get(url)
        .send()
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("cannot fetch {url}: HTTP {status}"));
    }
    let mut body = Vec::new();
    response
        .take(MAX_EXPORT_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    if body.len() as u64 > MAX_EXPORT_BYTES {
        return Err(format!(
            "{url}: export larger than {MAX_EXPORT_BYTES} bytes, refused"
        ));
    }
    Ok(body)
}

pub fn load_export(path: &Path) -> Loaded {
    let bytes = match read_source(path) {
        Ok(b) => b,
        Err(msg) => return Loaded::Unreadable(msg),
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
