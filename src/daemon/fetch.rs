//! Fetching the export from ADMIN: conditional GET with the last ETag (an unchanged export
//! costs one 304 and no parsing), a request timeout, and a body size cap so a broken or hostile
//! server cannot exhaust the gateway's memory. `file://` sources are read directly.

use std::time::Duration;

#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The server said the export is unchanged (HTTP 304).
    NotModified,
    New {
        body: Vec<u8>,
        etag: Option<String>,
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
}

pub struct Fetcher {
    client: reqwest::Client,
    source: String,
    max_body: u64,
    bearer: Option<String>,
}

impl Fetcher {
    pub fn new(
        source: &str,
        timeout: Duration,
        max_body: u64,
        bearer: Option<String>,
    ) -> Result<Fetcher, FetchError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| FetchError::Request(e.to_string()))?;
        Ok(Fetcher {
            client,
            source: source.to_owned(),
            max_body,
            bearer,
        })
    }

    /// Fetches the export unless it still has ETag `etag`.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, FetchError> {
        if let Some(path) = self.source.strip_prefix("file://") {
            let body = tokio::task::spawn_blocking({
                let path = path.to_owned();
                move || std::fs::read(&path).map_err(|source| FetchError::File { path, source })
            })
            .await
            .map_err(|e| FetchError::Request(e.to_string()))??;
            if body.len() as u64 > self.max_body {
                return Err(FetchError::TooLarge(self.max_body));
            }
            // A file has no ETag: its content hash plays that part, so an unchanged file is
            // not parsed again.
            let tag = format!("\"sha256:{}\"", super::cache::sha256_hex(&body));
            if etag == Some(tag.as_str()) {
                return Ok(Fetched::NotModified);
            }
            return Ok(Fetched::New {
                body,
                etag: Some(tag),
            });
        }
        let mut request = self.client.get(&self.source);
        if let Some(tag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, tag);
        }
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| FetchError::Request(e.to_string()))?;
        match response.status().as_u16() {
            304 => return Ok(Fetched::NotModified),
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
            .map_err(|e| FetchError::Request(e.to_string()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > self.max_body {
                return Err(FetchError::TooLarge(self.max_body));
            }
        }
        Ok(Fetched::New { body, etag })
    }
}
