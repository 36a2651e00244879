//! `portcullis-admin serve --state postgres://… --agent-tokens F --agent-store DIR`, the process:
//! without `--agent-store` it refuses to start (exit 2, naming the option); with it, a server's
//! token reads that server's desired state (the version from DIR's store, its blob), a stop
//! is stored in PostgreSQL and shown in the desired state, and a report is shown with the
//! instance. A throwaway PostgreSQL (support/pg.rs): skipped without it, failing under CI=true.
#![cfg(feature = "db")]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::pg::Cluster;

const ADMIN: &str = "admin-token";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_postgresql_replica_serves_agents_with_an_agent_store() {
    let Some(pg) = Cluster::start() else { return };
    let url = pg.create_db("agents_serve").await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog");
    let store_dir = dir.path().join("store");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(catalog.join("meta")).unwrap();
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("serve.sh"), "#!/bin/sh\nexec sleep 1000\n").unwrap();
    let store = portcullis_admin::versions::Store::new(&store_dir);
    let version = store.build("web", &tree, Some("web-1")).unwrap().id;
    std::fs::write(
        catalog.join("inventory.yaml"),
        format!(
            "locations:\n  l1: {{ ip-labels: {{ www: [203.0.113.1] }} }}\n\
             servers:\n  a: {{ kind: app, location: l1, address: 127.0.0.1 }}\n\
             instances:\n  - {{ type: web, server: a, version: {version} }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        catalog.join("meta/web.yaml"),
        "type: web\nrun: { command: [/bin/sh, \"${release}/serve.sh\", \"${config}\"] }\n",
    )
    .unwrap();
    let admin = env!("CARGO_BIN_EXE_portcullis-admin");
    let out = Command::new(admin)
        .args(["catalog", "import"])
        .arg(&catalog)
        .args(["--state", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tokens = dir.path().join("agents.tokens");
    std::fs::write(&tokens, "a token-of-a\n").unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    let serve = |extra: &[&std::ffi::OsStr], port: u16| {
        let mut c = Command::new(admin);
        c.args(["serve", "--state", &url, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--agent-tokens")
            .arg(&tokens)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let out = serve(&[], port).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--agent-store"), "{stderr}");

    let _replica = Killed(
        serve(&["--agent-store".as_ref(), store_dir.as_os_str()], port)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let desired = format!("{base}/v1/servers/a/desired");
    let start = Instant::now();
    let d: portcullis_agent_proto::Desired = loop {
        match client()
            .get(&desired)
            .bearer_auth("token-of-a")
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => break r.json().await.unwrap(),
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the replica did not serve {desired}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let release = d.instances[0].release.clone().unwrap();
    assert_eq!(release.id, version);
    let blob = format!("{base}/v1/blobs/{}", release.files[0].sha256);
    let r = client().get(&blob).bearer_auth("token-of-a").send().await;
    assert_eq!(r.unwrap().status(), 200);

    // A stop and a report, both kept in PostgreSQL.
    let r = client()
        .post(format!("{base}/v1/instances/web.a.1/stop"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(&desired)
        .bearer_auth("token-of-a")
        .send()
        .await;
    let d: portcullis_agent_proto::Desired = r.unwrap().json().await.unwrap();
    assert_eq!(
        d.instances[0].run_state,
        portcullis_agent_proto::RunState::Stopped
    );
    let report = portcullis_agent_proto::Observed {
        at: 42,
        ..Default::default()
    };
    let r = client()
        .put(format!("{base}/v1/servers/a/observed"))
        .bearer_auth("token-of-a")
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let c = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: (String,) =
        sqlx::query_as("SELECT report FROM portcullis_agent_observed WHERE server = 'a'")
            .fetch_one(&c)
            .await
            .unwrap();
    assert!(stored.0.contains("\"at\":42"), "{}", stored.0);
    let run: (String,) =
        sqlx::query_as("SELECT state FROM portcullis_agent_run WHERE instance = 'web.a.1'")
            .fetch_one(&c)
            .await
            .unwrap();
    assert_eq!(run.0, "stopped");
}
