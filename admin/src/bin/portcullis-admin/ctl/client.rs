//! `ctl`'s HTTP side: the client (base URL, token, `If-Match`) and how an answer becomes a
//! value or a [`CtlError`] with its exit code.

use super::{CtlArgs, TOKEN_ENV, URL_ENV};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// 401 or 403: the token is missing, wrong, or the server takes no changes.
    #[error("{url}: {message} (HTTP {status}; check --token-file or ${TOKEN_ENV})")]
    Auth {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: {source}")]
    Request { url: String, source: reqwest::Error },
    /// The server answered with an error; `details` are located catalog errors, if any.
    #[error("{message} (HTTP {status})")]
    Refused {
        status: u16,
        message: String,
        body: Value,
    },
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) | CtlError::TokenFile { .. } | CtlError::Auth { .. } => 2,
            CtlError::Request { .. } | CtlError::Refused { .. } => 1,
        }
    }

    /// Lines to print before the summary: a refused change's located catalog errors, as
    /// `check` prints them.
    pub fn located(&self) -> Vec<String> {
        let CtlError::Refused { body, .. } = self else {
            return Vec::new();
        };
        body["details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(super::print::located_error)
            .collect()
    }

    /// With `--json`, the error as JSON on stdout, where the caller's parser looks.
    pub fn json(&self) -> Value {
        match self {
            CtlError::Refused { status, body, .. } => json!({ "status": status, "response": body }),
            other => json!({ "error": other.to_string() }),
        }
    }
}

pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    if_match: Option<String>,
}

impl Client {
    pub(super) fn new(a: &CtlArgs) -> Result<Client, CtlError> {
        let base = a
            .url
            .clone()
            .or_else(|| std::env::var(URL_ENV).ok())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CtlError::Usage(format!(
                "--url: expected http://HOST:PORT or https://…, found {base:?}"
            )));
        }
        let token = match &a.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| CtlError::TokenFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_owned()),
        }
        .filter(|t| !t.is_empty());
        let http = reqwest::Client::builder()
            .timeout(a.timeout)
            .build()
            .map_err(|source| CtlError::Request {
                url: base.clone(),
                source,
            })?;
        Ok(Client {
            http,
            base,
            token,
            if_match: a.if_match.clone(),
        })
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if method != reqwest::Method::GET {
            if let Some(m) = &self.if_match {
                req = req.header("if-match", m);
            }
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let failed = |source| CtlError::Request {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(failed)?;
        let status = resp.status();
        let text = resp.text().await.map_err(failed)?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let message = || {
            body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned)
        };
        match status.as_u16() {
            200..=299 => Ok(body),
            401 | 403 => Err(CtlError::Auth {
                url,
                status: status.as_u16(),
                message: message(),
            }),
            code => Err(CtlError::Refused {
                status: code,
                message: message(),
                body,
            }),
        }
    }
}
