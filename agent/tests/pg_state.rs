//! Agents against ADMIN replicas sharing their state in PostgreSQL (`serve --state
//! postgres://…`), end to end: a throwaway PostgreSQL (admin/tests/support/pg.rs: skipped
//! without it, failing under CI=true), two replicas A and B in process on the same database
//! and one version store, the agent of server `a` pointed at A and that of `b` at B.
//!
//! Each agent gets its desired state and installs its version; each report is visible through
//! both replicas; an upgrade posted to A reaches the agent polling B, and A's verdict comes
//! from B's agent's report; a stop posted to B stops the instance whose agent polls A.

#[allow(dead_code)]
#[path = "../../admin/tests/support/pg.rs"]
mod pg;
mod support;

use portcullis_admin::serve::{self, AdminState, AgentHub, Options};
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

async fn replica(url: &str, store: &Path, tokens: &[(String, String)]) -> serve::RunningServer {
    let hub = AgentHub::open_shared(url, store, tokens.to_vec())
        .await
        .unwrap();
    let options = Options {
        token: Some(ADMIN_TOKEN.into()),
        agents: Some(hub),
        reload_interval: Duration::from_millis(500),
        ..Options::default()
    };
    let st = AdminState::open_shared(url, options).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve::spawn(st, listener).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_work_against_replicas_sharing_postgresql() {
    let Some(cluster) = pg::Cluster::start() else {
        return;
    };
    let web = WebType::new(GREETING);
    let (dir, catalog, state) = (&web.dir, web.catalog.clone(), web.state.clone());
    let v1 = web.version("v1", false, 200);
    let v2 = web.version("v2", false, 200);
    inventory(&catalog, &[("a", &v1), ("b", &v1)]);
    let url = cluster.create_db("agents").await;
    let sources = portcullis_admin::catalog::Sources::read(&catalog).unwrap();
    portcullis_admin::pgstate::PgStore::connect(&url)
        .await
        .unwrap()
        .import(&sources, "test")
        .await
        .unwrap();
    let tokens = server_tokens();
    let (ra, rb) = (
        replica(&url, &state, &tokens).await,
        replica(&url, &state, &tokens).await,
    );
    let (ua, ub) = (ra.url(), rb.url());
    let mut cleanup = Cleanup::new();
    for (server, admin) in [("a", &ua), ("b", &ub)] {
        let root = dir.path().join(format!("root-{server}"));
        let token_file = dir.path().join(format!("token-{server}"));
        std::fs::write(&token_file, format!("token-{server}\n")).unwrap();
        cleanup.roots.push(root.clone());
        cleanup
            .agents
            .push(spawn_agent(admin, server, &root, &token_file));
    }

    // Installed and reported, each report visible through both replicas.
    let mut pids = Vec::new();
    for id in ["web.a.1", "web.b.1"] {
        let on_a = until(&ua, id, "v1 running (via A)", running(&v1)).await;
        let on_b = until(&ub, id, "v1 running (via B)", |v| {
            running(&v1)(v) && pid(v) == pid(&on_a)
        })
        .await;
        assert_eq!(on_b["observed"]["tests"][0]["ok"], true, "{on_b:#}");
        pids.push(pid(&on_a));
    }

    // An upgrade posted to A: b's agent polls B, A waits for its report.
    let r = client_long()
        .post(format!(
            "{ua}/v1/instances/web.b.1/upgrade?to={v2}&wait=30s"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"outcome\":\"ok\""), "{body}");
    let v = until(&ub, "web.b.1", "v2 running (via B)", running(&v2)).await;
    assert_eq!(v["version"], v2.as_str(), "B's inventory names v2");
    assert_ne!(pid(&v), pids[1]);
    assert!(
        instance(&ua, "web.a.1").await["observed"]["pid"] == pids[0],
        "web.a.1 untouched"
    );

    // A stop posted to B: a's agent polls A; its process ends, both replicas say so.
    post(&ub, "/v1/instances/web.a.1/stop").await;
    let start = Instant::now();
    while alive(pids[0]) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "web.a.1 still runs 10 s after a stop posted to the other replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(&ua, "web.a.1", "stopped (via A)", |v| {
        v["run_state"] == "stopped" && v["observed"]["state"] == "stopped"
    })
    .await;
    until(&ub, "web.a.1", "stopped (via B)", |v| {
        v["observed"]["state"] == "stopped"
    })
    .await;
    drop(cleanup);
    drop((ra, rb));
}

fn client_long() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}
