//! Fetching the export from ADMIN: conditional GET with the last ETag (an unchanged export
//! costs one 304 and no parsing), long-polling when the server holds requests, a request
//! timeout, TLS with the configured CA and client certificate, and a body size cap so a broken
//! or hostile server cannot exhaust the gateway's memory. `file://` sources are read directly.

use super::config::Config;
use std::time::{Duration, Instant};

#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The server said the export is unchanged (HTTP 304).
    NotModified {
        /// Whether the server long-polls (see [`Fetcher::fetch`]), so the next request can
        /// follow at once instead of after the poll interval.
        long_polled: bool,
    },
    New {
        body: Vec<u8>,
        etag: Option<String>,
        long_polled: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("ADMIN answered HTTP {0}")]
    Status(u16),
    #[error("export larger than {0} bytes, refused")]
    TooLarge(u64),
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// Cheap to clone (the HTTP client is shared): the run loop hands a clone to the poll in
/// flight, so the poll does not borrow the daemon while a health change is applied.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    /// The configured URLs (ADMIN replicas); [`super::replicas`] picks the one to ask.
    sources: Vec<String>,
    timeout: Duration,
    max_body: u64,
    bearer: Option<String>,
    long_poll: Option<Duration>,
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, FetchError> {
    std::fs::read(path)
        .map_err(|e| FetchError::Setup(format!("cannot read {what} {}: {e}", path.display())))
}

impl Fetcher {
    /// A fetcher for the configured source: reads the bearer token, CA bundle and client
    /// certificate files now, so a missing file fails start-up (or a reload) rather than the
    /// first poll.
    pub fn from_config(config: &Config) -> Result<Fetcher, FetchError> {
        let sources = config
            .source
            .as_ref()
            .map(|s| s.urls().to_vec())
            .filter(|urls| !urls.is_empty())
            .ok_or_else(|| {
                FetchError::Setup("no source configured (--source or `source =`)".into())
            })?;
        let bearer = match &config.bearer_token_file {
            Some(p) => Some(
                String::from_utf8(read(p, "the bearer token file")?)
                    .map_err(|_| FetchError::Setup(format!("{}: not UTF-8", p.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        // No client-wide timeout: a long-poll request legitimately lasts `long_poll` longer
        // than an ordinary one, so each request sets its own.
        let mut builder = reqwest::Client::builder().connect_timeout(config.request_timeout);
        if let Some(ca) = &config.tls.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca, "the CA file")?)
                .map_err(|e| FetchError::Setup(format!("{}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(FetchError::Setup(format!(
                    "{}: no PEM certificate found",
                    ca.display()
                )));
            }
            // The configured CA replaces the system's: ADMIN is an internal service, and
            // trusting every public CA for it would only widen who can impersonate it.
            builder = builder.tls_certs_only(certs);
        }
        if let (Some(cert), Some(key)) = (&config.tls.client_cert, &config.tls.client_key) {
            let mut pem = read(cert, "the client certificate")?;
            pem.push(b'\n');
            pem.extend(read(key, "the client key")?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                FetchError::Setup(format!(
                    "client certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(|e| {
            FetchError::Setup(format!("cannot build the HTTP client: {}", error_chain(&e)))
        })?;
        Ok(Fetcher {
            client,
            sources,
            timeout: config.request_timeout,
            max_body: config.max_body_bytes,
            bearer,
            long_poll: Some(config.long_poll).filter(|d| !d.is_zero()),
        })
    }

    /// The URL of replica `replica` (the first when out of range).
    pub fn source(&self, replica: usize) -> &str {
        self.sources
            .get(replica)
            .or(self.sources.first())
            .map_or("", String::as_str)
    }

    /// How many replicas there are to choose from.
    pub fn replica_count(&self) -> usize {
        self.sources.len()
    }

    /// Fetches the export from the first replica (see [`Fetcher::fetch_from`]).
    pub async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, FetchError> {
        self.fetch_from(0, etag).await
    }

    /// Fetches the export from replica `replica` unless it still has ETag `etag`. With
    /// long-polling on and an ETag to compare with, asks the server to hold the request until
    /// the export changes.
    pub async fn fetch_from(
        &self,
        replica: usize,
        etag: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        let source = self.source(replica);
        if let Some(path) = source.strip_prefix("file://") {
            return self.fetch_file(path, etag).await;
        }
        let wait = self.long_poll.filter(|_| etag.is_some());
        let mut request = match wait {
            Some(wait) => {
                let separator = if source.contains('?') { '&' } else { '?' };
                let url = format!("{source}{separator}wait={}ms", wait.as_millis());
                self.client.get(url).timeout(self.timeout + wait)
            }
            None => self.client.get(source).timeout(self.timeout),
        };
        if let Some(tag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, tag);
        }
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        let started = Instant::now();
        let mut response = request
            .send()
            .await
            .map_err(|e| FetchError::Request(error_chain(&e)))?;
        // A long-polling server says so (`Preference-Applied: wait=…`, as RFC 7240 does for
        // `Prefer: wait`); one that does not is recognised by a 304 that took the wait. A
        // server that ignores `wait` answers at once: then the poll interval applies.
        let long_polled = wait.is_some()
            && (response.headers().contains_key("preference-applied")
                || (response.status() == 304 && wait.is_some_and(|w| started.elapsed() >= w / 2)));
        match response.status().as_u16() {
            304 => return Ok(Fetched::NotModified { long_polled }),
            200 => {}
            other => return Err(FetchError::Status(other)),
        }
        if response.content_length().is_some_and(|n| n > self.max_body) {
            return Err(FetchError::TooLarge(self.max_body));
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        // Streamed, so an oversized body is cut off without being held whole. A body shorter
        // than its Content-Length is an error from reqwest, never a silently truncated export.
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Request(error_chain(&e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > self.max_body {
                return Err(FetchError::TooLarge(self.max_body));
            }
        }
        Ok(Fetched::New {
            body,
            etag,
            long_polled,
        })
    }

    async fn fetch_file(&self, path: &str, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let body = tokio::task::spawn_blocking({
            let path = path.to_owned();
            move || std::fs::read(&path).map_err(|source| FetchError::File { path, source })
        })
        .await
        .map_err(|e| FetchError::Request(e.to_string()))??;
        if body.len() as u64 > self.max_body {
            return Err(FetchError::TooLarge(self.max_body));
        }
        // A file has no ETag: its content hash plays that part, so an unchanged file is not
        // parsed again.
        let tag = format!("\"sha256:{}\"", crate::durable::sha256_hex(&body));
        if etag == Some(tag.as_str()) {
            return Ok(Fetched::NotModified { long_polled: false });
        }
        Ok(Fetched::New {
            body,
            etag: Some(tag),
            long_polled: false,
        })
    }
}

/// reqwest's top-level message ("error sending request") hides the cause operators need
/// (connection refused, certificate unknown): include the whole chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
