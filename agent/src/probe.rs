//! The type's tests, run by the agent against the process it just started: `GET
//! http://<server address>:<port><path>` expecting a status, or a TCP connect. Retried until
//! they pass, the deadline passes, or `alive` says the process is gone (no point waiting).

use portcullis_agent_proto::{TestResult, TestSpec};
use std::time::{Duration, Instant};

fn host(address: &str) -> String {
    if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

/// Why one try of a test failed; its text goes into the report's `detail`.
#[derive(Debug, thiserror::Error)]
enum TestFailure {
    #[error("GET {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {got} (expected {expected})")]
    Status {
        url: String,
        got: u16,
        expected: u16,
    },
    #[error("connect {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connect {addr}: timed out")]
    Timeout { addr: String },
}

/// One try of a test: what passed (for the report), or why it failed.
async fn once(
    client: &reqwest::Client,
    address: &str,
    t: &TestSpec,
) -> Result<String, TestFailure> {
    let per_try = Duration::from_secs(2);
    match t {
        TestSpec::Http {
            port, path, expect, ..
        } => {
            let url = format!("http://{}:{port}{path}", host(address));
            let r = match client.get(&url).timeout(per_try).send().await {
                Ok(r) => r,
                Err(source) => return Err(TestFailure::Request { url, source }),
            };
            let got = r.status().as_u16();
            if got == *expect {
                Ok(format!("GET {url}: HTTP {got}"))
            } else {
                Err(TestFailure::Status {
                    url,
                    got,
                    expected: *expect,
                })
            }
        }
        TestSpec::Tcp { port, .. } => {
            let addr = format!("{}:{port}", host(address));
            match tokio::time::timeout(per_try, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(format!("connect {addr}: ok")),
                Ok(Err(source)) => Err(TestFailure::Connect { addr, source }),
                Err(_) => Err(TestFailure::Timeout { addr }),
            }
        }
    }
}

pub async fn run(
    address: &str,
    tests: &[TestSpec],
    deadline: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Vec<TestResult> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let start = Instant::now();
    let interval = Duration::from_millis(200);
    let mut out = Vec::new();
    for t in tests {
        let name = match t {
            TestSpec::Http { name, .. } | TestSpec::Tcp { name, .. } => name.clone(),
        };
        let mut attempts = 0;
        let (ok, detail) = loop {
            attempts += 1;
            if let Err(gone) = alive() {
                break (false, gone);
            }
            match once(&client, address, t).await {
                Ok(d) => break (true, d),
                Err(e) if start.elapsed() + interval >= deadline => break (false, e.to_string()),
                Err(_) => tokio::time::sleep(interval).await,
            }
        };
        out.push(TestResult {
            name,
            ok,
            detail,
            attempts,
        });
    }
    out
}
