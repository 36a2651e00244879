//! Inventory changes over the REST API, against a real server on loopback: every kind valid
//! and invalid (with the exact located error), index assignment, a move in one revision,
//! `If-Match` and 412, concurrent conflicting changes, and the audit log.

use portcullis_admin::serve::{self, AdminState, Options, RunningServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "s3cret-token";
const OPS_TOKEN: &str = "0ps-t0ken";

fn copy_example() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
    let dir = tempfile::tempdir().unwrap();
    portcullis_admin::catalog::copy_files(&src, dir.path()).unwrap();
    dir
}

async fn start(dir: &Path) -> (AdminState, RunningServer) {
    let options = Options {
        token: Some(TOKEN.into()),
        tokens: vec![("alice".into(), OPS_TOKEN.into())],
        // No reloads behind the tests' back: every change here goes through the API.
        reload_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    let state = AdminState::open(dir, options).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state.clone(), listener).unwrap();
    (state, server)
}

struct Api {
    base: String,
    client: reqwest::Client,
    token: &'static str,
}

struct Reply {
    status: StatusCode,
    revision: String,
    body: Value,
}

impl Api {
    fn new(server: &RunningServer) -> Api {
        Api {
            base: server.url(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            token: TOKEN,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let revision = r.headers()["x-catalog-revision"]
            .to_str()
            .unwrap()
            .to_owned();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            revision,
            body,
        }
    }

    async fn revision(&self) -> String {
        self.call(Method::GET, "/v1/status", None, None)
            .await
            .revision
    }

    async fn export(&self) -> String {
        let r = self
            .client
            .get(format!("{}/v1/export.csv", self.base))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    }
}

/// The located errors of a refused change, one `file:line:column: key: message [kind]` each.
fn located(body: &Value) -> Vec<String> {
    body["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no located errors in {body}"))
        .iter()
        .map(|e| {
            format!(
                "{}:{}:{}: {}: {} [{}]",
                e["file"].as_str().unwrap(),
                e["line"],
                e["column"],
                e["key"].as_str().unwrap(),
                e["message"].as_str().unwrap(),
                e["kind"].as_str().unwrap()
            )
        })
        .collect()
}

/// A refused change writes nothing: the file, the revision and the export stay as they were.
async fn assert_unchanged(api: &Api, dir: &Path, inventory: &str, revision: &str) {
    assert_eq!(
        std::fs::read_to_string(dir.join("inventory.yaml")).unwrap(),
        inventory
    );
    assert_eq!(api.revision().await, revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_created_with_the_lowest_free_index_and_bad_ones_refused_where_they_fail() {
    let dir = copy_example();
    let (_state, server) = start(dir.path()).await;
    let api = Api::new(&server);
    let r0 = api.revision().await;

    // mdb has require-index and db1 holds 1-3: the new one is 4.
    let r = api
        .call(
            Method::POST,
            "/v1/instances",
            Some(json!({"type": "mdb", "server": "db1"})),
            Some(&r0),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["target"], "mdb.db1.4");
    assert_eq!(r.body["after"]["index"], 4);
    assert_eq!(r.body["revision"], r.revision.as_str());
    assert_ne!(r.revision, r0);
    // A hole is filled first: delete 2, create again → 2.
    let r = api
        .call(Method::DELETE, "/v1/instances/mdb.db1.2", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api
        .call(
            Method::POST,
            "/v1/instances",
            Some(json!({"type": "mdb", "server": "db1"})),
            None,
        )
        .await;
    assert_eq!(r.body["target"], "mdb.db1.2");
    // An explicit index is taken as given; a non-require-index type is written without one.
    let r = api
        .call(
            Method::POST,
            "/v1/instances",
            Some(json!({"type": "mdb", "server": "db1", "index": 6, "state": "drained"})),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["target"].as_str()),
        (StatusCode::CREATED, Some("mdb.db1.6"))
    );
    let text = std::fs::read_to_string(dir.path().join("inventory.yaml")).unwrap();
    assert!(
        text.contains("  - { type: mdb, server: db1, index: 6, state: drained }\n"),
        "{text}"
    );
    assert!(
        text.contains("# The one log collector."),
        "comments survive: {text}"
    );

    let inventory = std::fs::read_to_string(dir.path().join("inventory.yaml")).unwrap();
    let rev = api.revision().await;
    let refused = [
        // A second instance of a unique type.
        (json!({"type": "logger", "server": "archive1"}), StatusCode::UNPROCESSABLE_ENTITY,
         vec!["inventory.yaml:28:5: instances[10]: type logger is unique: only one instance in the whole cloud (first is logger.archive1.1 at line 24) [unique]".to_owned(),
              "inventory.yaml:28:5: instances[10].index: duplicate instance logger.archive1.1 (index 1 of logger on archive1 is already used at line 24) [duplicate-index]".to_owned()]),
        (json!({"type": "logger", "server": "app1"}), StatusCode::UNPROCESSABLE_ENTITY,
         vec!["inventory.yaml:28:5: instances[10]: type logger is unique: only one instance in the whole cloud (first is logger.archive1.1 at line 24) [unique]".to_owned(),
              "inventory.yaml:28:5: instances[10].server: logger links data to Archive (meta/logger.yaml:11) but server app1 has no archive mount [placement]".to_owned()]),
        (json!({"type": "nosuch", "server": "app1"}), StatusCode::UNPROCESSABLE_ENTITY,
         vec!["inventory.yaml:28:5: instances[10].type: unknown type \"nosuch\" (no meta/nosuch.yaml) [unknown-reference]".to_owned()]),
        (json!({"type": "tg", "server": "app9"}), StatusCode::UNPROCESSABLE_ENTITY,
         vec!["inventory.yaml:28:5: instances[10].server: unknown server \"app9\" [unknown-reference]".to_owned()]),
        // Same type, server and index as an existing one.
        (json!({"type": "tg", "server": "app1"}), StatusCode::UNPROCESSABLE_ENTITY,
         vec!["inventory.yaml:28:5: instances[10].index: duplicate instance tg.app1.1 (index 1 of tg on app1 is already used at line 18) [duplicate-index]".to_owned()]),
    ];
    for (spec, status, errors) in refused {
        let r = api
            .call(Method::POST, "/v1/instances", Some(spec.clone()), None)
            .await;
        assert_eq!(r.status, status, "{spec}: {}", r.body);
        assert_eq!(located(&r.body), errors, "{spec}");
        assert_unchanged(&api, dir.path(), &inventory, &rev).await;
    }
    // Not even a change: a malformed body, an out-of-range index.
    for (spec, status) in [
        (json!({"type": "tg"}), StatusCode::BAD_REQUEST),
        (
            json!({"type": "tg", "server": "app1", "colour": "red"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"type": "mdb", "server": "db1", "index": 0}),
            StatusCode::CONFLICT,
        ),
    ] {
        let r = api
            .call(Method::POST, "/v1/instances", Some(spec.clone()), None)
            .await;
        assert_eq!(r.status, status, "{spec}: {}", r.body);
        assert_unchanged(&api, dir.path(), &inventory, &rev).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_move_and_servers_valid_and_invalid() {
    let dir = copy_example();
    let (_state, server) = start(dir.path()).await;
    let api = Api::new(&server);

    // Delete: unknown → 404; the last mdb, which pgw and tg depend on → refused, located.
    let r = api
        .call(Method::DELETE, "/v1/instances/tg.app9.1", None, None)
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no instance tg.app9.1"))
    );
    for id in ["mdb.db1.1", "mdb.db1.2"] {
        let r = api
            .call(Method::DELETE, &format!("/v1/instances/{id}"), None, None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["before"]["id"], id);
        assert_eq!(r.body["after"], Value::Null);
    }
    let inventory = std::fs::read_to_string(dir.path().join("inventory.yaml")).unwrap();
    let rev = api.revision().await;
    let r = api
        .call(Method::DELETE, "/v1/instances/mdb.db1.3", None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(
        located(&r.body),
        [
            "meta/pgw.yaml:8:11: depends[0]: pgw depends on mdb, which has no instance [dependency-missing]",
            "meta/tg.yaml:7:11: depends[0]: tg depends on mdb, which has no instance [dependency-missing]",
        ]
    );
    assert_unchanged(&api, dir.path(), &inventory, &rev).await;

    // Servers: add one (valid); a duplicate, a bad name, an unknown location are refused.
    let app3 = json!({"name": "app3", "kind": "app", "location": "tcn", "address": "10.0.1.13"});
    let r = api
        .call(Method::POST, "/v1/servers", Some(app3.clone()), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api.call(Method::GET, "/v1/servers/app3", None, None).await;
    assert_eq!(
        (r.body["address"].as_str(), r.body["instances"].clone()),
        (Some("10.0.1.13"), json!([]))
    );
    let r = api
        .call(Method::POST, "/v1/servers", Some(app3), None)
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("server app3 already exists"))
    );
    let inventory = std::fs::read_to_string(dir.path().join("inventory.yaml")).unwrap();
    let rev = api.revision().await;
    let r = api
        .call(
            Method::POST,
            "/v1/servers",
            Some(
                json!({"name": "app4", "kind": "app", "location": "mars", "address": "10.0.1.14"}),
            ),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(located(&r.body), ["inventory.yaml:13:9: servers.app4.location: unknown location \"mars\" [unknown-reference]"]);
    let r = api
        .call(
            Method::POST,
            "/v1/servers",
            Some(
                json!({"name": "app.4", "kind": "app", "location": "tcn", "address": "10.0.1.14"}),
            ),
            None,
        )
        .await;
    assert_eq!(located(&r.body), ["inventory.yaml:11:3: servers.\"app.4\": a server name: 1-32 of A-Z a-z 0-9 - _ (no dots: it is part of instance ids) [bad-value]"]);
    assert_unchanged(&api, dir.path(), &inventory, &rev).await;

    // Move: into a taken real server (pgw on app1 already listens there) → refused, located;
    // to app3 → one revision in which the export has the new instance and not the old.
    let r = api
        .call(
            Method::POST,
            "/v1/instances/pgw.app2.1/move",
            Some(json!({"server": "app1"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    // pgw has require-index: index 1 is taken on app1, so the move takes 2.
    assert_eq!(located(&r.body), ["inventory.yaml:17:5: instances[1]: pgw.app1.2 and pgw.app1.1 (line 16) are on the same server, but pgw exports gateway ports (meta/pgw.yaml): both would be the same real server address and port [real-server-collision]"]);
    assert_unchanged(&api, dir.path(), &inventory, &rev).await;
    let r = api
        .call(
            Method::POST,
            "/v1/instances/pgw.app2.1/move",
            Some(json!({"server": "app9"})),
            None,
        )
        .await;
    assert_eq!(
        located(&r.body),
        ["inventory.yaml:17:5: instances[1].server: unknown server \"app9\" [unknown-reference]"]
    );

    let before = api.export().await;
    let status = api.call(Method::GET, "/v1/status", None, None).await;
    let generation = status.body["generation"].as_u64().unwrap();
    let r = api
        .call(
            Method::POST,
            "/v1/instances/pgw.app2.1/move",
            Some(json!({"server": "app3"})),
            Some(&rev),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // One new snapshot: no export was ever served with both instances or neither.
    let status = api.call(Method::GET, "/v1/status", None, None).await;
    assert_eq!(status.body["generation"].as_u64(), Some(generation + 1));
    assert_eq!(
        (r.body["before"]["id"].as_str(), r.body["target"].as_str()),
        (Some("pgw.app2.1"), Some("pgw.app3.1"))
    );
    let after = api.export().await;
    assert_eq!(
        after,
        before
            .replace(
                "pgw.app2.1,tcp,203.0.113.10,80,,10.0.1.12",
                "pgw.app3.1,tcp,203.0.113.10,80,,10.0.1.13"
            )
            .replace(
                "pgw.app2.1,tcp,203.0.113.10,443,,10.0.1.12",
                "pgw.app3.1,tcp,203.0.113.10,443,,10.0.1.13"
            )
    );

    // Remove a server: unknown → 404, with instances → 409 naming them, empty → gone.
    let r = api
        .call(Method::DELETE, "/v1/servers/app9", None, None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .call(Method::DELETE, "/v1/servers/app3", None, None)
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("server app3 still has instances: pgw.app3.1; delete or move them first")
        )
    );
    let r = api
        .call(
            Method::POST,
            "/v1/instances/pgw.app3.1/move",
            Some(json!({"server": "app2"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api
        .call(Method::DELETE, "/v1/servers/app3", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(api.export().await, before, "back where it started");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_match_is_412_and_the_audit_log_says_who_did_what() {
    let dir = copy_example();
    let (_state, server) = start(dir.path()).await;
    let mut api = Api::new(&server);
    let r0 = api.revision().await;
    let r = api
        .call(
            Method::POST,
            "/v1/instances/tg.app1.1/drain",
            None,
            Some(&format!("\"{r0}\"")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["previous"].as_str(), r.body["state"].as_str()),
        (Some("production"), Some("drained"))
    );
    let r1 = r.revision;
    // r0 is stale now: refused, nothing written, and the answer names the current revision.
    let inventory = std::fs::read_to_string(dir.path().join("inventory.yaml")).unwrap();
    let r = api
        .call(
            Method::POST,
            "/v1/instances/tg.app1.1/maintenance",
            None,
            Some(&r0),
        )
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.body);
    assert_eq!(
        (r.revision.as_str(), r.body["details"]["revision"].as_str()),
        (r1.as_str(), Some(r1.as_str()))
    );
    assert_unchanged(&api, dir.path(), &inventory, &r1).await;
    // A hand edit changes the revision too, even before the reloader sees it.
    std::fs::write(
        dir.path().join("inventory.yaml"),
        format!("{inventory}# edited\n"),
    )
    .unwrap();
    let r = api
        .call(
            Method::POST,
            "/v1/instances/tg.app1.1/undrain",
            None,
            Some(&r1),
        )
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.body);
    api.token = OPS_TOKEN;
    let r = api
        .call(
            Method::POST,
            "/v1/instances/tg.app1.1/undrain",
            None,
            Some(&r.revision),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // No change, no entry.
    let r = api
        .call(Method::POST, "/v1/instances/tg.app1.1/undrain", None, None)
        .await;
    assert_eq!(r.body["changed"], false);

    let r = api.call(Method::GET, "/v1/audit", None, None).await;
    let entries = r.body["entries"].as_array().unwrap();
    let summary: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e["identity"].as_str().unwrap(),
                e["operation"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["before"]["state"].as_str().unwrap(),
                e["after"]["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("token", "set-state", "tg.app1.1", "production", "drained"),
            ("alice", "set-state", "tg.app1.1", "drained", "production"),
        ]
    );
    assert_eq!(
        (
            entries[0]["revision_before"].as_str(),
            entries[0]["revision_after"].as_str()
        ),
        (Some(r0.as_str()), Some(r1.as_str()))
    );
    assert!(entries[0]["time"].as_str().unwrap().ends_with('Z'));
    // Persisted: one JSON line per change next to the catalog.
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    // The audit log is for token holders only.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/audit", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_conflicting_changes_lose_nothing() {
    let dir = copy_example();
    let (_state, server) = start(dir.path()).await;
    let api = std::sync::Arc::new(Api::new(&server));
    let r0 = api.revision().await;
    // Every task adds its own server against the same revision: one wins, the rest get 412
    // and retry from the revision the 412 names, until each is in.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let api = api.clone();
            let mut rev = r0.clone();
            tokio::spawn(async move {
                let spec = json!({"name": format!("x{i}"), "kind": "app", "location": "tcn", "address": format!("10.9.0.{}", i + 1)});
                let mut stale = 0;
                loop {
                    let r = api.call(Method::POST, "/v1/servers", Some(spec.clone()), Some(&rev)).await;
                    match r.status {
                        StatusCode::CREATED => return stale,
                        StatusCode::PRECONDITION_FAILED => {
                            stale += 1;
                            rev = r.revision;
                        }
                        other => panic!("{other}: {}", r.body),
                    }
                }
            })
        })
        .collect();
    let mut stale_total = 0;
    let mut first_try = 0;
    for t in tasks {
        let stale = t.await.unwrap();
        stale_total += stale;
        first_try += usize::from(stale == 0);
    }
    // Only one change can win against r0.
    assert_eq!(first_try, 1);
    assert!(stale_total >= 49, "{stale_total}");
    let r = api.call(Method::GET, "/v1/servers", None, None).await;
    let names: Vec<_> = r.body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    for i in 0..50 {
        assert!(names.contains(&format!("x{i}")), "x{i} lost: {names:?}");
    }
    let r = api
        .call(Method::GET, "/v1/audit?limit=1000", None, None)
        .await;
    let audit = r.body["entries"].as_array().unwrap();
    assert_eq!(audit.len(), 50);
    // Each entry starts from the revision the previous one ended at: a chain, nothing lost.
    for w in audit.windows(2) {
        assert_eq!(w[0]["revision_after"], w[1]["revision_before"]);
    }
    assert_eq!(audit[0]["revision_before"].as_str(), Some(r0.as_str()));
    server.stop().await.unwrap();
}
