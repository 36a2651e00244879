//! Talking to ADMIN: the long-polled desired state (ETag, `?wait=`), blobs, and reports.

use crate::error::AgentError;
use portcullis_agent_proto::{Desired, Observed};
use std::time::Duration;

pub struct Admin {
    http: reqwest::Client,
    base: String,
    server: String,
    token: Option<String>,
}

/// What a poll of the desired state gave.
pub enum Poll {
    Changed { desired: Desired, etag: String },
    Unchanged,
}

impl Admin {
    pub fn new(base: &str, server: &str, token: Option<String>) -> Result<Admin, AgentError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| AgentError::Admin {
                url: base.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Admin {
            http,
            base: base.trim_end_matches('/').to_owned(),
            server: server.to_owned(),
            token,
        })
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn fail(url: &str, message: impl ToString) -> AgentError {
        AgentError::Admin {
            url: url.to_owned(),
            message: message.to_string(),
        }
    }

    /// `GET /v1/servers/{me}/desired?wait=`: held by ADMIN until it differs from `etag`.
    pub async fn desired(&self, etag: Option<&str>, wait: Duration) -> Result<Poll, AgentError> {
        let url = format!(
            "{}/v1/servers/{}/desired?wait={}ms",
            self.base,
            self.server,
            wait.as_millis()
        );
        let mut req = self
            .auth(self.http.get(&url))
            .timeout(wait + Duration::from_secs(10));
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        let r = req.send().await.map_err(|e| Self::fail(&url, e))?;
        if r.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Poll::Unchanged);
        }
        if !r.status().is_success() {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            return Err(Self::fail(&url, format!("HTTP {status}: {body}")));
        }
        let etag = r
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = r.bytes().await.map_err(|e| Self::fail(&url, e))?;
        let desired = serde_json::from_slice(&bytes).map_err(|e| Self::fail(&url, e))?;
        Ok(Poll::Changed { desired, etag })
    }

    /// `GET /v1/blobs/{sha256}`; the caller verifies the bytes.
    pub async fn blob(&self, sha256: &str) -> Result<Vec<u8>, AgentError> {
        let url = format!("{}/v1/blobs/{sha256}", self.base);
        let r = self
            .auth(self.http.get(&url))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| Self::fail(&url, e))?;
        if !r.status().is_success() {
            return Err(Self::fail(&url, format!("HTTP {}", r.status())));
        }
        Ok(r.bytes().await.map_err(|e| Self::fail(&url, e))?.to_vec())
    }

    pub async fn report(&self, observed: &Observed) -> Result<(), AgentError> {
        let url = format!("{}/v1/servers/{}/observed", self.base, self.server);
        let body = serde_json::to_vec(observed).map_err(|e| Self::fail(&url, e))?;
        let r = self
            .auth(self.http.put(&url))
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| Self::fail(&url, e))?;
        if !r.status().is_success() {
            return Err(Self::fail(&url, format!("HTTP {}", r.status())));
        }
        Ok(())
    }
}
