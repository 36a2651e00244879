//! The host-agent endpoints on a real ADMIN over loopback: per-server tokens (a server's token
//! reads only its own desired state and blobs), the desired state with its ETag and long-poll
//! woken by a stop, blobs, and a report shown with the instance.

use portcullis_admin::serve::{self, AdminState, AgentHub, Options};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "admin-token";
const TOKEN_A: &str = "token-of-a";
const TOKEN_B: &str = "token-of-b";

struct Setup {
    _dir: tempfile::TempDir,
    url: String,
    version: String,
    server: serve::RunningServer,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog");
    let state_dir = dir.path().join("state");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(catalog.join("meta")).unwrap();
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("serve.sh"), "#!/bin/sh\nexec sleep 1000\n").unwrap();
    let store = portcullis_admin::versions::Store::new(&state_dir);
    let version = store.build("web", &tree, Some("web-1")).unwrap().id;
    std::fs::write(
        catalog.join("inventory.yaml"),
        format!(
            "locations:\n  l1: {{ ip-labels: {{ www: [203.0.113.1] }} }}\n\
             servers:\n  a: {{ kind: app, location: l1, address: 127.0.0.1 }}\n  \
             b: {{ kind: app, location: l1, address: 127.0.0.2 }}\n\
             instances:\n  - {{ type: web, server: a, version: {version} }}\n  - {{ type: web, server: b }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        catalog.join("meta/web.yaml"),
        "type: web\nrun: { command: [/bin/sh, \"${release}/serve.sh\", \"${config}\"] }\n",
    )
    .unwrap();
    let hub = AgentHub::open(
        &state_dir,
        vec![("a".into(), TOKEN_A.into()), ("b".into(), TOKEN_B.into())],
    )
    .unwrap();
    let options = Options {
        token: Some(ADMIN.into()),
        agents: Some(Arc::new(hub)),
        ..Options::default()
    };
    let state = AdminState::open(&catalog, options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state, listener).unwrap();
    Setup {
        url: server.url(),
        _dir: dir,
        version,
        server,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = client().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn a_servers_token_reads_only_its_own_desired_state_and_blobs() {
    let s = setup().await;
    let desired_a = format!("{}/v1/servers/a/desired", s.url);
    let desired_b = format!("{}/v1/servers/b/desired", s.url);
    assert_eq!(get(&desired_a, None).await.status(), 401);
    assert_eq!(get(&desired_a, Some("wrong")).await.status(), 401);
    assert_eq!(get(&desired_a, Some(TOKEN_B)).await.status(), 403);
    assert_eq!(get(&desired_b, Some(TOKEN_A)).await.status(), 403);
    assert_eq!(get(&desired_b, Some(TOKEN_B)).await.status(), 200);
    assert_eq!(get(&desired_a, Some(ADMIN)).await.status(), 200);
    let r = get(&desired_a, Some(TOKEN_A)).await;
    assert_eq!(r.status(), 200);
    let d: portcullis_agent_proto::Desired = r.json().await.unwrap();
    let release = d.instances[0].release.clone().unwrap();
    assert_eq!(release.id, s.version);
    assert!(release.is_consistent());
    assert_eq!(
        d.instances[0].run.as_ref().unwrap().command,
        ["/bin/sh", "${release}/serve.sh", "${config}"]
    );
    // The blob of a's version: a's token may read it, b's may not (b runs no version).
    let blob = format!("{}/v1/blobs/{}", s.url, release.files[0].sha256);
    let r = get(&blob, Some(TOKEN_A)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        b"#!/bin/sh\nexec sleep 1000\n"
    );
    assert_eq!(get(&blob, Some(TOKEN_B)).await.status(), 403);
    assert_eq!(get(&blob, Some(ADMIN)).await.status(), 200);
    let bad = format!("{}/v1/blobs/..%2F..%2Fetc", s.url);
    assert_eq!(get(&bad, Some(ADMIN)).await.status(), 400);
    // b cannot report for a.
    let put = |server: &str, token: &str| {
        client()
            .put(format!("{}/v1/servers/{server}/observed", s.url))
            .bearer_auth(token)
            .json(&portcullis_agent_proto::Observed::default())
            .send()
    };
    assert_eq!(put("a", TOKEN_B).await.unwrap().status(), 403);
    assert_eq!(put("b", TOKEN_B).await.unwrap().status(), 204);
    // Agent tokens do not change instances.
    let stop = |token: &str| {
        client()
            .post(format!("{}/v1/instances/web.a.1/stop", s.url))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(stop(TOKEN_A).await.unwrap().status(), 401);
    assert_eq!(stop(ADMIN).await.unwrap().status(), 200);
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_held_desired_poll_returns_when_the_instance_is_stopped_and_reports_show_up() {
    let s = setup().await;
    let url = format!("{}/v1/servers/a/desired", s.url);
    let r = get(&url, Some(TOKEN_A)).await;
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let same = client()
        .get(&url)
        .bearer_auth(TOKEN_A)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 304);
    let poll = tokio::spawn({
        let (url, etag) = (url.clone(), etag.clone());
        async move {
            client()
                .get(format!("{url}?wait=30s"))
                .bearer_auth(TOKEN_A)
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !poll.is_finished(),
        "the poll must be held while nothing changes"
    );
    let r = client()
        .post(format!("{}/v1/instances/web.a.1/stop", s.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = poll.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    let d: portcullis_agent_proto::Desired = r.json().await.unwrap();
    assert_eq!(
        d.instances[0].run_state,
        portcullis_agent_proto::RunState::Stopped
    );
    let report = portcullis_agent_proto::Observed {
        at: 7,
        desired_etag: None,
        instances: vec![portcullis_agent_proto::ObservedInstance {
            id: "web.a.1".into(),
            version: Some(s.version.clone()),
            state: portcullis_agent_proto::ProcessState::Stopped,
            pid: None,
            since: 5,
            restarts: 0,
            last_exit: Some("signal 15".into()),
            tests: Vec::new(),
            last_change: None,
        }],
    };
    let r = client()
        .put(format!("{}/v1/servers/a/observed", s.url))
        .bearer_auth(TOKEN_A)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let v: serde_json::Value = get(&format!("{}/v1/instances/web.a.1", s.url), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["run_state"], "stopped");
    assert_eq!(v["observed"]["state"], "stopped");
    assert_eq!(v["observed"]["version"], s.version.as_str());
    assert_eq!(v["observed"]["last_exit"], "signal 15");
    s.server.stop().await.unwrap();
}
