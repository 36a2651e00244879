//! The catalog shared in PostgreSQL (`serve --state postgres://…`), against a throwaway
//! cluster (support/pg.rs) and real `portcullis-admin` processes on loopback: import/export
//! round trip, a change on replica A waking a long-poll held on replica B (latency printed over
//! 100 changes, not asserted), 100 concurrent conflicting changes across A and B (none lost,
//! the stale ones 412, the audit chain unbroken), A carrying on when B is killed; and in
//! process: a refused change stores nothing, a no-op is not audited, and an import made
//! elsewhere wakes a running replica's long-poll through NOTIFY.
#![cfg(feature = "db")]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::pg::Cluster;

const TOKEN: &str = "s3cret-token";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog")
}

fn admin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
        .args(args)
        .output()
        .unwrap()
}

fn assert_exit(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Every file of a directory catalog (relative path → bytes).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        "inventory.yaml".to_owned(),
        std::fs::read(dir.join("inventory.yaml")).unwrap(),
    )];
    for e in std::fs::read_dir(dir.join("meta")).unwrap() {
        let e = e.unwrap();
        let name = format!("meta/{}", e.file_name().to_string_lossy());
        out.push((name, std::fs::read(e.path()).unwrap()));
    }
    out.sort();
    out
}

#[test]
fn import_then_export_gives_back_the_same_files_and_an_invalid_import_writes_nothing() {
    let Some(pg) = Cluster::start() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(pg.create_db("roundtrip"));
    let src = example();
    let src_s = src.display().to_string();

    // Export before any import: refused, pointing at `catalog import`.
    let out = tempfile::tempdir().unwrap();
    let out_s = out.path().display().to_string();
    let err = assert_exit(&admin(&["catalog", "export", &out_s, "--state", &url]), 2);
    assert!(err.contains("catalog import"), "{err}");

    assert_exit(&admin(&["catalog", "import", &src_s, "--state", &url]), 0);
    assert_exit(&admin(&["catalog", "export", &out_s, "--state", &url]), 0);
    assert_eq!(files(out.path()), files(&src));

    // A broken copy is refused with its located errors; the stored catalog is untouched.
    let broken = tempfile::tempdir().unwrap();
    portcullis_admin::catalog::copy_files(&src, broken.path()).unwrap();
    let inv = std::fs::read_to_string(broken.path().join("inventory.yaml")).unwrap();
    std::fs::write(
        broken.path().join("inventory.yaml"),
        inv.replace("server: db1, index: 2", "server: nowhere, index: 2"),
    )
    .unwrap();
    let b = broken.path().display().to_string();
    let err = assert_exit(&admin(&["catalog", "import", &b, "--state", &url]), 2);
    assert!(
        err.contains("inventory.yaml:22:5: instances[5].server: unknown server \"nowhere\""),
        "{err}"
    );
    let again = tempfile::tempdir().unwrap();
    let again_s = again.path().display().to_string();
    assert_exit(&admin(&["catalog", "export", &again_s, "--state", &url]), 0);
    assert_eq!(files(again.path()), files(&src));
}

/// A `serve --state URL` process on a loopback port; killed on drop.
struct Replica {
    child: Child,
    base: String,
    stderr: PathBuf,
}

impl Replica {
    fn start(url: &str, token_file: &Path, log_dir: &Path, name: &str) -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let stderr = log_dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
            .args(["serve", "--state", url, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--token-file")
            .arg(token_file)
            // The follower's fallback look at the head row; the NOTIFY path is what wakes.
            .args(["--reload-interval", "5s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Replica {
            child,
            base: format!("http://127.0.0.1:{port}"),
            stderr,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            eprintln!("--- {} ({}):\n{log}", self.base, self.stderr.display());
        }
    }
}

struct Reply {
    status: StatusCode,
    revision: String,
    body: Value,
}

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{base}{path}"))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let revision = r
            .headers()
            .get("x-catalog-revision")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            revision,
            body,
        }
    }

    async fn status(&self, base: &str) -> Value {
        self.call(base, Method::GET, "/v1/status", None, None)
            .await
            .body
    }

    /// (ETag, body) of the export.
    async fn export(&self, base: &str) -> (String, String) {
        let r = self
            .client
            .get(format!("{base}/v1/export.csv"))
            .send()
            .await
            .unwrap();
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        (etag, r.text().await.unwrap())
    }

    /// Waits (bounded) until the replica answers.
    async fn ready(&self, base: &str) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(format!("{base}/v1/status")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{base} did not come up");
    }

    /// Waits (bounded) until `base` serves `revision`.
    async fn serves(&self, base: &str, revision: &str) {
        // Generous: a loaded CI machine validating a debug build's catalogs is slow.
        for _ in 0..2400 {
            if self.status(base).await["revision"] == revision {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{base} never served revision {revision}");
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_catalog() {
    let Some(pg) = Cluster::start() else { return };
    let url = pg.create_db("replicas").await;
    let src = example().display().to_string();
    assert_exit(&admin(&["catalog", "import", &src, "--state", &url]), 0);
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let a = Replica::start(&url, &token_file, tmp.path(), "a");
    let mut b = Replica::start(&url, &token_file, tmp.path(), "b");
    let api = Api {
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    api.ready(&a.base).await;
    api.ready(&b.base).await;
    assert_eq!(api.status(&a.base).await["catalog"], "postgresql");

    // 1. A change posted to A wakes a long-poll held on B with the new export.
    let mut latencies = Vec::new();
    for i in 0..100 {
        let (etag, before) = api.export(&b.base).await;
        let poll = {
            let api = api.clone();
            let base = b.base.clone();
            tokio::spawn(async move {
                let r = api
                    .client
                    .get(format!("{base}/v1/export.csv?wait=30s"))
                    .header("if-none-match", etag)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body = r.text().await.unwrap();
                (status, body, Instant::now())
            })
        };
        // Only post once B holds the poll, so the time measured is the change's.
        while api.status(&b.base).await["long_polls"] != 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let action = if i % 2 == 0 { "drain" } else { "undrain" };
        let posted = Instant::now();
        let r = api
            .call(
                &a.base,
                Method::POST,
                &format!("/v1/instances/pgw.app1.1/{action}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let (status, body, woke) = poll.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_ne!(body, before);
        assert_eq!(body, api.export(&a.base).await.1);
        latencies.push(woke.saturating_duration_since(posted));
    }
    latencies.sort();
    println!(
        "replica A POST → long-poll on replica B answered, over {} changes: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    // 2. 100 concurrent changes across A and B, all against one revision: exactly one goes
    // in per revision, the stale ones get 412 and retry from the revision it names; none is
    // lost.
    let r0 = api.status(&a.base).await["revision"]
        .as_str()
        .unwrap()
        .to_owned();
    let audit_before = api
        .call(&a.base, Method::GET, "/v1/audit?limit=10000", None, None)
        .await
        .body["entries"]
        .as_array()
        .unwrap()
        .len();
    let bases = Arc::new([a.base.clone(), b.base.clone()]);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let api = api.clone();
            let bases = bases.clone();
            let mut rev = r0.clone();
            tokio::spawn(async move {
                let spec = json!({"name": format!("x{i}"), "kind": "app", "location": "tcn",
                                  "address": format!("10.9.{}.{}", i / 200, i % 200 + 1)});
                let mut stale = 0u32;
                loop {
                    // Half on each replica (each under the per-client connection limit).
                    let base = &bases[i % 2];
                    let r = api
                        .call(
                            base,
                            Method::POST,
                            "/v1/servers",
                            Some(spec.clone()),
                            Some(&rev),
                        )
                        .await;
                    match r.status {
                        StatusCode::CREATED => return stale,
                        StatusCode::PRECONDITION_FAILED => {
                            stale += 1;
                            rev = r.revision;
                            // As a well-behaved client would: do not hammer while another
                            // change is being validated and committed.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("{other}: {}", r.body),
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut stale_total = 0;
    for t in tasks {
        stale_total += t.await.unwrap();
    }
    // Only one change can go in against r0: the 99 others were told they were stale.
    assert!(stale_total >= 99, "{stale_total} stale answers");
    println!(
        "100 concurrent changes across two replicas in {:?}: {stale_total} answered 412 and retried",
        started.elapsed()
    );
    // The stored head is the last audit entry's revision (the audit log is read from the
    // database); both replicas come to serve it.
    let entries = api
        .call(&b.base, Method::GET, "/v1/audit?limit=10000", None, None)
        .await
        .body["entries"]
        .as_array()
        .unwrap()
        .clone();
    let head = entries[entries.len() - 1]["revision_after"]
        .as_str()
        .unwrap()
        .to_owned();
    api.serves(&a.base, &head).await;
    api.serves(&b.base, &head).await;
    for base in bases.iter() {
        let servers = api
            .call(base, Method::GET, "/v1/servers", None, None)
            .await
            .body;
        let names: Vec<&str> = servers["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["name"].as_str())
            .filter(|n| n.starts_with('x'))
            .collect();
        assert_eq!(names.len(), 100, "{base}: {names:?}");
    }
    // The audit chain: every entry starts from the revision the one before ended at, and the
    // last ends at what is served.
    assert_eq!(entries.len(), audit_before + 100);
    assert_eq!(entries[0]["operation"], "import");
    for pair in entries.windows(2) {
        assert_eq!(
            pair[1]["revision_before"], pair[0]["revision_after"],
            "{pair:?}"
        );
    }

    // 3. B killed: A keeps answering reads and changes.
    b.kill();
    let r = api
        .call(
            &a.base,
            Method::POST,
            "/v1/instances/pgw.app2.1/drain",
            None,
            Some(&head),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (_, csv) = api.export(&a.base).await;
    let row = csv
        .lines()
        .find(|l| l.starts_with("pgw,pgw.app2.1,"))
        .unwrap();
    assert_eq!(row.split(',').nth(8), Some("0"), "drained: {row}");
    assert_eq!(api.status(&a.base).await["revision"], r.body["revision"]);
    drop(a);
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_writes_nothing_and_an_import_reaches_a_running_replica() {
    use portcullis_admin::serve::{self, AdminState, Options};
    let Some(pg) = Cluster::start() else { return };
    let url = pg.create_db("inprocess").await;
    // Before any import a replica refuses to start, saying how to load one.
    let options = || Options {
        token: Some(TOKEN.into()),
        reload_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    let err = AdminState::open_shared(&url, options())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("catalog import"), "{err}");
    let src = example().display().to_string();
    assert_exit(&admin(&["catalog", "import", &src, "--state", &url]), 0);
    let state = AdminState::open_shared(&url, options()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state.clone(), listener).unwrap();
    let base = server.url();
    let api = Api {
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    let r0 = state.snapshot().revision.clone();

    // A second instance of a unique type: 422 with the located errors, nothing stored.
    let r = api
        .call(
            &base,
            Method::POST,
            "/v1/instances",
            Some(json!({"type": "logger", "server": "app1"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["details"][0]["kind"], "unique", "{}", r.body);
    // Draining twice: the second changes nothing and is not audited.
    for _ in 0..2 {
        let r = api
            .call(
                &base,
                Method::POST,
                "/v1/instances/tg.app1.1/drain",
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let audit = api
        .call(&base, Method::GET, "/v1/audit", None, None)
        .await
        .body;
    let ops: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["import", "set-state"]);
    assert_eq!(audit["entries"][1]["revision_before"], r0.as_str());

    // An import from elsewhere (here: the original catalog again) reaches the running replica
    // through its NOTIFY (the head-row poll is an hour away): a held long-poll wakes.
    let etag = state.snapshot().etag.clone();
    let poll = {
        let client = api.client.clone();
        let base = base.clone();
        tokio::spawn(async move {
            client
                .get(format!("{base}/v1/export.csv?wait=30s"))
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    while api.status(&base).await["long_polls"] != 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_exit(&admin(&["catalog", "import", &src, "--state", &url]), 0);
    assert_eq!(poll.await.unwrap(), StatusCode::OK);
    assert_eq!(state.snapshot().revision, r0);
    server.stop().await.unwrap();
}
