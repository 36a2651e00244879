//! Reading an export (file, standard input or URL) for the CLI. URLs go through the daemon's own
//! [`Fetcher`], with the TLS (CA, client certificate), bearer token, timeout and size cap of the
//! configuration file when there is one, so `portcullis check https://…` reaches an ADMIN the
//! daemon reaches. Errors are typed; [`super::error::report`] prints them located:
//! `FILE: line L, column C (name): expected …, found …`.

use super::error::{CliError, SourceError};
use crate::daemon::config::Config;
use crate::daemon::fetch::{Fetched, Fetcher};
use crate::model::DesiredState;
use portcullis_export::Export;
use std::io::Read;
use std::path::Path;

/// How the CLI names an input in messages.
pub fn display_name(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".into()
    } else {
        path.display().to_string()
    }
}

/// Largest export read from a file or standard input: the daemon's default body cap. Far
/// above any real export (100k rows is 7 MB); `check /dev/zero` or a 1 GB one-line file must
/// end with a clear error, not an allocation failure.
pub const MAX_EXPORT_BYTES: u64 = crate::daemon::config::DEFAULT_MAX_BODY_BYTES;

/// Reads an export from a file, `-` (standard input), or an `http(s)://` / `file://` URL.
pub(crate) fn read_source(path: &Path) -> Result<Vec<u8>, CliError> {
    let text = path.to_string_lossy();
    if path == Path::new("-") {
        return Ok(read_capped(std::io::stdin().lock(), "standard input")?);
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        return fetch(&text);
    }
    let file = text.strip_prefix("file://").map_or(path, Path::new);
    let what = file.display().to_string();
    let opened = std::fs::File::open(file).map_err(|source| SourceError::Read {
        what: what.clone(),
        source,
    })?;
    Ok(read_capped(opened, &what)?)
}

/// Reads at most [`MAX_EXPORT_BYTES`]; more is refused without reading it.
fn read_capped(input: impl Read, what: &str) -> Result<Vec<u8>, SourceError> {
    let mut buf = Vec::new();
    input
        .take(MAX_EXPORT_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| SourceError::Read {
            what: what.to_owned(),
            source,
        })?;
    if buf.len() as u64 > MAX_EXPORT_BYTES {
        return Err(SourceError::TooLarge {
            what: what.to_owned(),
            limit: MAX_EXPORT_BYTES,
        });
    }
    Ok(buf)
}

fn fetch(url: &str) -> Result<Vec<u8>, CliError> {
    let failed = |reason: String| SourceError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let config = Config {
        source: Some(url.into()),
        ..Config::read_default()?
    };
    let fetcher = Fetcher::from_config(&config).map_err(|e| failed(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the runtime: {e}")))?;
    match runtime.block_on(fetcher.fetch(None)) {
        Ok(Fetched::New { body, .. }) => Ok(body),
        // Asked without an ETag, a 304 is the server's error.
        Ok(Fetched::NotModified { .. }) => Err(failed("HTTP 304 to an unconditional GET".into()))?,
        Err(e) => Err(failed(e.to_string()))?,
    }
}

/// Reads and validates an export; warnings are logged.
pub fn load_export(path: &Path) -> Result<Export, CliError> {
    let bytes = read_source(path)?;
    match portcullis_export::parse(&bytes) {
        Ok(export) => {
            for w in &export.warnings {
                tracing::warn!("{}: {w}", path.display());
            }
            tracing::debug!(rows = export.records.len(), file = %path.display(), "export parsed");
            Ok(export)
        }
        Err(errors) => Err(CliError::Rejected {
            name: display_name(path),
            errors,
        }),
    }
}

/// The desired state an export describes.
pub fn load_state(path: &Path) -> Result<DesiredState, CliError> {
    load_export(path).map(|e| DesiredState::from_export(&e))
}
