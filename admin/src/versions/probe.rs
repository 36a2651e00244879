//! The type's `tests` run after a switch: `GET http://<server address>:<port><path>` expecting a
//! status, or a TCP connect. A service needs a moment to come up on its new release, so every
//! test is retried until it passes or the deadline passes.

use crate::meta::TestSpec;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    pub ok: bool,
    /// What the last attempt saw, e.g. `HTTP 503 (expected 200)` or `connection refused`.
    pub detail: String,
    pub attempts: u32,
}

async fn once(client: &reqwest::Client, addr: IpAddr, t: &TestSpec) -> Result<String, String> {
    let per_try = Duration::from_secs(2);
    match t {
        TestSpec::Http {
            port, path, expect, ..
        } => {
            let host = match addr {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            };
            let url = format!("http://{host}:{port}{path}");
            let r = client
                .get(&url)
                .timeout(per_try)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let got = r.status().as_u16();
            if got == *expect {
                Ok(format!("GET {url}: HTTP {got}"))
            } else {
                Err(format!("GET {url}: HTTP {got} (expected {expect})"))
            }
        }
        TestSpec::Tcp { port, .. } => {
            let sa = std::net::SocketAddr::new(addr, *port);
            match tokio::time::timeout(per_try, tokio::net::TcpStream::connect(sa)).await {
                Ok(Ok(_)) => Ok(format!("connect {sa}: ok")),
                Ok(Err(e)) => Err(format!("connect {sa}: {e}")),
                Err(_) => Err(format!("connect {sa}: timed out")),
            }
        }
    }
}

fn name(t: &TestSpec) -> &str {
    match t {
        TestSpec::Http { name, .. } | TestSpec::Tcp { name, .. } => name,
    }
}

/// Runs every test, each retried every `interval` until it passes or `deadline` passes.
pub async fn run(
    addr: IpAddr,
    tests: &[TestSpec],
    deadline: Duration,
    interval: Duration,
) -> Vec<TestResult> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let start = Instant::now();
    let mut out = Vec::with_capacity(tests.len());
    for t in tests {
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            match once(&client, addr, t).await {
                Ok(d) => break (true, d),
                Err(d) if start.elapsed() + interval >= deadline => break (false, d),
                Err(_) => tokio::time::sleep(interval).await,
            }
        };
        out.push(TestResult {
            name: name(t).to_owned(),
            ok: result.0,
            detail: result.1,
            attempts,
        });
    }
    out
}
