//! Real ADMIN, real agents, real processes, on loopback: three "servers" (127.0.0.1-3, each with
//! its own root and its own `portcullis-agent` process) run a small python HTTP service built as
//! a version. Installed everywhere and healthy; stopped via REST and gone; started and restarted; a
//! broken version rolls back on its instance only; an upgrade restarts with a new pid; a killed
//! and restarted agent restarts nothing; with ADMIN down, a crashed service is restarted from
//! the cached desired state and a version changed meanwhile is installed once ADMIN returns; a
//! removed instance is uninstalled.
//!
//! Loopback rather than network namespaces: the agent only talks HTTP to ADMIN and its
//! service, so separate addresses and roots exercise the same paths at a fraction of the setup.

use portcullis_admin::serve::{self, AdminState, AgentHub, Options};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "admin-secret";
const SERVERS: [(&str, &str); 3] = [("a", "127.0.0.1"), ("b", "127.0.0.2"), ("c", "127.0.0.3")];

fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => panic!("python3 is needed for the test service (apt-get install python3)"),
    }
}

/// A version of the `web` service: `server.py` answering /health with `status`, or (`broken`)
/// exiting at once.
fn tree(base: &Path, tag: &str, broken: bool, status: u16) -> PathBuf {
    let d = base.join(format!("tree-{tag}"));
    std::fs::create_dir_all(&d).unwrap();
    let script = if broken {
        "import sys\nsys.exit(3)\n".to_owned()
    } else {
        format!(
            "import http.server, json, os, sys\n\
             host, port, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n\
             json.load(open(config))\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       body = ('{tag} %d' % os.getpid()).encode()\n\
             \x20       self.send_response({status} if self.path == '/health' else 404)\n\
             \x20       self.send_header('content-length', str(len(body)))\n\
             \x20       self.end_headers()\n\
             \x20       self.wfile.write(body)\n\
             \x20   def log_message(self, *a):\n\
             \x20       pass\n\
             http.server.HTTPServer((host, port), H).serve_forever()\n"
        )
    };
    std::fs::write(d.join("server.py"), script).unwrap();
    std::fs::set_permissions(d.join("server.py"), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn free_port() -> u16 {
    // Free on 127.0.0.1; the other loopback addresses are unused by anything else here.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn inventory(catalog: &Path, versions: &[(&str, &str)]) {
    let mut text =
        String::from("locations:\n  l1: { ip-labels: { www: [203.0.113.1] } }\nservers:\n");
    for (name, addr) in SERVERS {
        text.push_str(&format!(
            "  {name}: {{ kind: app, location: l1, address: {addr} }}\n"
        ));
    }
    text.push_str("instances:\n");
    for (server, version) in versions {
        text.push_str(&format!(
            "  - {{ type: web, server: {server}, version: {version} }}\n"
        ));
    }
    std::fs::write(catalog.join("inventory.yaml"), text).unwrap();
}

/// Kills what the test started, whatever happens.
struct Cleanup {
    agents: Vec<Child>,
    roots: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        // The services outlive their agents by design: end them by their pid files.
        for root in &self.roots {
            for e in std::fs::read_dir(root.join("instances"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let Ok(text) = std::fs::read_to_string(e.path().join("agent.json")) else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                if let Some(pid) = v["process"]["pid"].as_i64() {
                    kill_group(pid as i32);
                }
            }
        }
    }
}

fn kill_group(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

fn spawn_agent(url: &str, server: &str, root: &Path, token_file: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_portcullis-agent"))
        .args([
            "run",
            "--admin",
            url,
            "--server",
            server,
            "--wait",
            "5s",
            "--test-deadline",
            "10s",
        ])
        .arg("--root")
        .arg(root)
        .arg("--token-file")
        .arg(token_file)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(root.with_extension("log")).unwrap())
        .spawn()
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn instance(url: &str, id: &str) -> Value {
    client()
        .get(format!("{url}/v1/instances/{id}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap_or_default())
        .unwrap()
}

/// Polls the instance until `ok` holds for its JSON (ADMIN's view: the agent's report).
async fn until(url: &str, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = instance(url, id).await;
        if ok(&v) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{id}: waited 60 s for {what}; last seen: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(url: &str, path: &str) {
    let r = client()
        .post(format!("{url}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "POST {path}");
}

async fn health(addr: &str, port: u16) -> Option<String> {
    let r = client()
        .get(format!("http://{addr}:{port}/health"))
        .send()
        .await
        .ok()?;
    (r.status() == 200).then_some(())?;
    r.text().await.ok()
}

/// A freshly started process needs a moment to listen: the body of its first healthy answer.
async fn healthy(addr: &str, port: u16) -> String {
    let start = Instant::now();
    loop {
        if let Some(body) = health(addr, port).await {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{addr}:{port} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn running(version: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| {
        v["observed"]["state"] == "running"
            && v["observed"]["version"] == version
            && v["observed"]["pid"].is_u64()
    }
}

fn pid(v: &Value) -> i32 {
    v["observed"]["pid"].as_u64().unwrap() as i32
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

async fn start_admin(
    catalog: &Path,
    state: &Path,
    tokens: &[(String, String)],
    addr: std::net::SocketAddr,
) -> serve::RunningServer {
    let hub = AgentHub::open(state, tokens.to_vec()).unwrap();
    let options = Options {
        token: Some(ADMIN_TOKEN.into()),
        agents: Some(Arc::new(hub)),
        reload_interval: Duration::from_millis(100),
        ..Options::default()
    };
    let st = AdminState::open(catalog, options).unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    serve::spawn(st, listener).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_install_run_stop_roll_back_and_survive_restarts() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog");
    let state = dir.path().join("state");
    std::fs::create_dir_all(catalog.join("meta")).unwrap();
    let port = free_port();
    let store = portcullis_admin::versions::Store::new(&state);
    let v1 = store
        .build("web", &tree(dir.path(), "v1", false, 200), Some("web-1"))
        .unwrap()
        .id;
    let v2 = store
        .build("web", &tree(dir.path(), "v2", false, 200), Some("web-2"))
        .unwrap()
        .id;
    let unhealthy = store
        .build(
            "web",
            &tree(dir.path(), "sick", false, 503),
            Some("web-sick"),
        )
        .unwrap()
        .id;
    let broken = store
        .build(
            "web",
            &tree(dir.path(), "broken", true, 200),
            Some("web-broken"),
        )
        .unwrap()
        .id;
    std::fs::write(
        catalog.join("meta/web.yaml"),
        format!(
            "type: web\ninstall: {{ mkdir: [data] }}\nuninstall: [\"${{instance-dir}}/data\"]\n\
             config: {{ greeting: \"hello from ${{id}}\" }}\n\
             run:\n  command: [{python}, \"${{release}}/server.py\", \"${{host-ip}}\", {port}, \"${{config}}\"]\n  \
             stop-timeout: 5s\n\
             tests:\n  - {{ name: health, http: /health, port: {port}, expect: 200 }}\n"
        ),
    )
    .unwrap();
    inventory(&catalog, &[("a", &v1), ("b", &v1), ("c", &v1)]);
    let tokens: Vec<(String, String)> = SERVERS
        .iter()
        .map(|(s, _)| (s.to_string(), format!("token-{s}")))
        .collect();
    let admin = start_admin(&catalog, &state, &tokens, "127.0.0.1:0".parse().unwrap()).await;
    let url = admin.url();
    let admin_addr = admin.addr();
    let mut cleanup = Cleanup {
        agents: Vec::new(),
        roots: Vec::new(),
    };
    let mut token_files = Vec::new();
    for (server, _) in SERVERS {
        let root = dir.path().join(format!("root-{server}"));
        let token_file = dir.path().join(format!("token-{server}"));
        std::fs::write(&token_file, format!("token-{server}\n")).unwrap();
        cleanup.roots.push(root.clone());
        cleanup
            .agents
            .push(spawn_agent(&url, server, &root, &token_file));
        token_files.push(token_file);
    }

    // Installed on every server, running, and answering its health test.
    let mut pids = Vec::new();
    for (server, addr) in SERVERS {
        let id = format!("web.{server}.1");
        let v = until(&url, &id, "v1 running", running(&v1)).await;
        assert_eq!(v["observed"]["tests"][0]["ok"], true, "{v:#}");
        assert_eq!(v["observed"]["last_change"]["outcome"], "ok");
        let body = healthy(addr, port).await;
        assert_eq!(body, format!("v1 {}", pid(&v)));
        pids.push(pid(&v));
    }
    let root_a = &cleanup.roots[0];
    let config: Value = serde_json::from_slice(
        &std::fs::read(root_a.join("instances/web.a.1/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["greeting"], "hello from web.a.1");
    assert!(root_a.join("instances/web.a.1/data").is_dir());

    // Stop via REST: the process is gone within 2 s (the held long-poll returns at once).
    let stopped_at = Instant::now();
    post(&url, "/v1/instances/web.a.1/stop").await;
    while alive(pids[0]) && stopped_at.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_after = stopped_at.elapsed();
    assert!(!alive(pids[0]), "web.a.1 still running 2 s after stop");
    eprintln!("stop via REST -> process gone: {gone_after:?}");
    until(&url, "web.a.1", "stopped", |v| {
        v["observed"]["state"] == "stopped"
    })
    .await;
    assert!(health("127.0.0.1", port).await.is_none());
    // Start: back, as a new process.
    post(&url, "/v1/instances/web.a.1/start").await;
    let v = until(&url, "web.a.1", "running again", |v| {
        running(&v1)(v) && pid(v) != pids[0]
    })
    .await;
    pids[0] = pid(&v);
    assert_eq!(healthy("127.0.0.1", port).await, format!("v1 {}", pids[0]));
    // Restart: once, with a new pid. (The restarted agent below must not repeat it.)
    post(&url, "/v1/instances/web.a.1/restart").await;
    let v = until(&url, "web.a.1", "restarted", |v| {
        running(&v1)(v) && pid(v) != pids[0]
    })
    .await;
    assert!(!alive(pids[0]));
    pids[0] = pid(&v);

    // A broken version on b only: it exits at once, b goes back to v1; a and c untouched.
    inventory(&catalog, &[("a", &v1), ("b", &broken), ("c", &v1)]);
    let v = until(&url, "web.b.1", "rolled back", |v| {
        v["observed"]["last_change"]["outcome"] == "rolled-back" && running(&v1)(v)
    })
    .await;
    assert_eq!(v["observed"]["last_change"]["to"], broken.as_str());
    assert!(
        v["observed"]["last_change"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("exit"),
        "{v:#}"
    );
    pids[1] = pid(&v);
    assert_eq!(healthy("127.0.0.2", port).await, format!("v1 {}", pids[1]));
    for (i, server) in [(0, "a"), (2, "c")] {
        let v = instance(&url, &format!("web.{server}.1")).await;
        assert_eq!(pid(&v), pids[i], "web.{server}.1 was restarted");
    }

    // A version that runs but fails its health test (503) on a: rolled back after the test
    // deadline, to v1 again; b and c untouched.
    inventory(&catalog, &[("a", &unhealthy), ("b", &broken), ("c", &v1)]);
    let v = until(&url, "web.a.1", "sick version rolled back", |v| {
        v["observed"]["last_change"]["to"] == unhealthy.as_str()
            && v["observed"]["last_change"]["outcome"] == "rolled-back"
            && running(&v1)(v)
    })
    .await;
    assert!(
        v["observed"]["last_change"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("HTTP 503"),
        "{v:#}"
    );
    assert_eq!(v["observed"]["tests"][0]["ok"], false);
    pids[0] = pid(&v);
    assert_eq!(healthy("127.0.0.1", port).await, format!("v1 {}", pids[0]));
    assert_eq!(pid(&instance(&url, "web.c.1").await), pids[2]);

    // An upgrade of c: restarted on v2 with a new pid, tested against the new process.
    let upgrade_started = Instant::now();
    inventory(&catalog, &[("a", &unhealthy), ("b", &broken), ("c", &v2)]);
    let v = until(&url, "web.c.1", "v2 running", |v| {
        running(&v2)(v) && v["observed"]["last_change"]["to"] == v2.as_str()
    })
    .await;
    // A measurement, not an assertion: inventory edit -> reload -> long-poll -> fetch, switch,
    // restart, health test -> report -> ADMIN.
    eprintln!(
        "upgrade of web.c.1 observed after {:?}",
        upgrade_started.elapsed()
    );
    assert_ne!(pid(&v), pids[2]);
    assert_eq!(v["observed"]["last_change"]["outcome"], "ok");
    assert!(healthy("127.0.0.3", port).await.starts_with("v2 "));
    pids[2] = pid(&v);

    // The agent of a killed and restarted: the service keeps its pid.
    let mut old = std::mem::replace(
        &mut cleanup.agents[0],
        Command::new("true").spawn().unwrap(),
    );
    old.kill().unwrap();
    old.wait().unwrap();
    let _ = cleanup.agents[0].wait();
    let before = instance(&url, "web.a.1").await["observed"]["reported_at"]
        .as_u64()
        .unwrap();
    cleanup.agents[0] = spawn_agent(&url, "a", &cleanup.roots[0], &token_files[0]);
    // A fresh report (the first of the new agent), still naming the same process.
    let v = until(&url, "web.a.1", "a report from the new agent", |v| {
        v["observed"]["reported_at"].as_u64() > Some(before + 1) && v["observed"]["restarts"] == 0
    })
    .await;
    assert_eq!(pid(&v), pids[0], "the restarted agent restarted web.a.1");
    assert!(alive(pids[0]));

    // ADMIN down: a crashed service is restarted from the cached desired state.
    admin.stop().await.unwrap();
    kill_group(pids[1]);
    let start = Instant::now();
    let answered = loop {
        if let Some(body) = health("127.0.0.2", port).await {
            if body != format!("v1 {}", pids[1]) {
                break body;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "web.b.1 not restarted while ADMIN is down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answered.starts_with("v1 "));
    // ADMIN back on the same address: the agents report again.
    let admin = start_admin(&catalog, &state, &tokens, admin_addr).await;
    let v = until(&url, "web.b.1", "the restart reported", |v| {
        v["observed"]["restarts"].as_u64() >= Some(1) && running(&v1)(v)
    })
    .await;
    assert_ne!(pid(&v), pids[1]);

    // ADMIN down again while b's version is changed (as if killed mid-rollout): b keeps
    // serving v1, and converges to v2 once ADMIN is back.
    admin.stop().await.unwrap();
    inventory(&catalog, &[("a", &unhealthy), ("b", &v2), ("c", &v2)]);
    assert!(healthy("127.0.0.2", port).await.starts_with("v1 "));
    let admin = start_admin(&catalog, &state, &tokens, admin_addr).await;
    until(&url, "web.b.1", "v2 after ADMIN returned", running(&v2)).await;
    assert!(healthy("127.0.0.2", port).await.starts_with("v2 "));

    // c removed from the inventory: its process ends and its directory (and data) go.
    let c_pid = pids[2];
    inventory(&catalog, &[("a", &unhealthy), ("b", &v2)]);
    let root_c = cleanup.roots[2].join("instances/web.c.1");
    let start = Instant::now();
    while (root_c.exists() || alive(c_pid)) && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!root_c.exists(), "web.c.1 not uninstalled");
    assert!(!alive(c_pid));
    admin.stop().await.unwrap();
}
