//! DB patching of a catalog instance: the URL from its combined configuration (`database.url`),
//! over the REST API (token required for the patch) and the CLI, on a SQLite database.
#![cfg(feature = "db")]

use portcullis_admin::serve::{self, AdminState, Options};
use std::path::Path;
use std::process::Command;

const TOKEN: &str = "db-t0ken";

fn catalog(dir: &Path, db_url: Option<&str>) {
    std::fs::create_dir_all(dir.join("meta")).unwrap();
    std::fs::create_dir_all(dir.join("patches/web")).unwrap();
    std::fs::write(
        dir.join("inventory.yaml"),
        "locations:\n  l1: { ip-labels: { www: [203.0.113.1] } }\n\
         servers:\n  s1: { kind: app, location: l1, address: 10.0.0.1 }\n\
         instances:\n  - { type: web, server: s1 }\n  - { type: nodb, server: s1 }\n",
    )
    .unwrap();
    let config = match db_url {
        Some(u) => format!("config:\n  database:\n    url: \"{u}\"\n"),
        None => String::new(),
    };
    std::fs::write(dir.join("meta/web.yaml"), format!("type: web\n{config}")).unwrap();
    std::fs::write(dir.join("meta/nodb.yaml"), "type: nodb\n").unwrap();
    std::fs::write(
        dir.join("patches/web/0001_devices.sql"),
        "CREATE TABLE devices (id INTEGER PRIMARY KEY);\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_status_and_patch_with_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("web.db");
    catalog(dir.path(), Some(&format!("sqlite://{}", db.display())));
    let state = AdminState::open(
        dir.path(),
        Options {
            token: Some(TOKEN.into()),
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state, listener).unwrap();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = server.url();

    let r = c
        .get(format!("{base}/v1/db/web.s1.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["pending"][0]["name"], "0001_devices.sql");
    assert_eq!(v["engine"], "sqlite");
    assert!(!db.exists(), "status must not create the database");

    let patch = format!("{base}/v1/db/web.s1.1/patch");
    assert_eq!(c.post(&patch).send().await.unwrap().status(), 401);
    assert!(!db.exists());
    let r = c.post(&patch).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "applied");
    assert_eq!(v["applied"][0]["number"], 1);
    let r = c.post(&patch).bearer_auth(TOKEN).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "nothing");

    std::fs::write(
        dir.path().join("patches/web/0002_bad.sql"),
        "CREATE TABLE x (;\n",
    )
    .unwrap();
    let r = c.post(&patch).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["failed"]["number"], 2);

    std::fs::write(dir.path().join("patches/web/0002_bad.sql"), "-- fixed\n").unwrap();
    std::fs::write(
        dir.path().join("patches/web/0001_devices.sql"),
        "-- edited\n",
    )
    .unwrap();
    let r = c.post(&patch).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["details"]["kind"], "refused");
    let r = c
        .post(format!("{patch}?allow=drift"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = c
        .get(format!("{base}/v1/db/nodb.s1.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("no database.url"),
        "{v}"
    );
    let r = c
        .get(format!("{base}/v1/db/nope.s1.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await.unwrap();
}

#[test]
fn cli_takes_the_url_from_the_instance_config() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("web.db");
    catalog(dir.path(), Some(&format!("sqlite://{}", db.display())));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
            .arg("db")
            .args(args)
            .arg("--catalog")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&["patch", "web.s1.1", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["after"]["instance"], "web.s1.1");
    assert_eq!(v["applied"][0]["name"], "0001_devices.sql");
    let out = run(&["status", "web.s1.1"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 applied, 0 pending"));
    let out = run(&["status", "nodb.s1.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database.url"));
    let out = run(&["status", "web.s1.9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no instance web.s1.9"));
}
