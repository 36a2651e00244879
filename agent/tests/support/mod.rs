//! What the end-to-end host tests share: the python test service built as versions, ADMIN in
//! process, agent processes, and polling ADMIN's view of an instance.

#![allow(dead_code)]

pub mod netns;

use portcullis_admin::serve::{self, AdminState, AgentHub, Options};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "admin-secret";
pub const SERVERS: [(&str, &str); 3] = [("a", "127.0.0.1"), ("b", "127.0.0.2"), ("c", "127.0.0.3")];

pub fn python() -> String {
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
pub fn tree(base: &Path, tag: &str, broken: bool, status: u16) -> PathBuf {
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

/// The `config` of the `web` type most suites deploy: one value with `${id}` in it.
pub const GREETING: &str = "config: { greeting: \"hello from ${id}\" }\n";

/// The `web` type a suite deploys: a temporary directory with a catalog holding its
/// meta-configuration (the python service of [`tree`] on `port`, `${host-ip}`, checked by an
/// HTTP health test) and ADMIN's state directory, whose version store takes its versions.
pub struct WebType {
    pub dir: tempfile::TempDir,
    pub catalog: PathBuf,
    pub state: PathBuf,
    pub port: u16,
    store: portcullis_admin::versions::Store,
}

impl WebType {
    /// `extra`: more keys of the meta-configuration (`config`, `install`, `uninstall`), one
    /// per line.
    pub fn new(extra: &str) -> WebType {
        let python = python();
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join("catalog");
        let state = dir.path().join("state");
        std::fs::create_dir_all(catalog.join("meta")).unwrap();
        let port = free_port();
        std::fs::write(
            catalog.join("meta/web.yaml"),
            format!(
                "type: web\n{extra}\
                 run:\n  command: [{python}, \"${{release}}/server.py\", \"${{host-ip}}\", {port}, \"${{config}}\"]\n  \
                 stop-timeout: 5s\n\
                 tests:\n  - {{ name: health, http: /health, port: {port}, expect: 200 }}\n"
            ),
        )
        .unwrap();
        let store = portcullis_admin::versions::Store::new(&state);
        WebType {
            dir,
            catalog,
            state,
            port,
            store,
        }
    }

    /// A version of [`tree`] (`broken`, answering `status`) built as `web-TAG`: its id.
    pub fn version(&self, tag: &str, broken: bool, status: u16) -> String {
        self.version_of(tag, &tree(self.dir.path(), tag, broken, status))
    }

    /// The directory `tree` built as version `web-TAG`: its id.
    pub fn version_of(&self, tag: &str, tree: &Path) -> String {
        self.store
            .build("web", tree, Some(&format!("web-{tag}")))
            .unwrap()
            .id
    }
}

/// Whether a test whose prerequisites are `problem` (what it needs, `None`: all there) runs:
/// without them it is skipped with a loud message, but under `CI=true` it fails — CI must
/// never pass by skipping.
pub fn runs_here(problem: Option<String>) -> bool {
    match problem {
        None => true,
        Some(p) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("this test {p}; it must run in CI")
        }
        Some(p) => {
            eprintln!("SKIPPED: this test {p}.");
            false
        }
    }
}

pub fn free_port() -> u16 {
    // Free on 127.0.0.1; the other loopback addresses are unused by anything else here.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The inventory of [`SERVERS`] with `versions` as its (server, version) instances.
pub fn inventory(catalog: &Path, versions: &[(&str, &str)]) {
    let servers: Vec<(&str, String)> = SERVERS.iter().map(|(s, a)| (*s, a.to_string())).collect();
    inventory_at(catalog, &servers, versions)
}

/// The inventory of `servers`, (name, address), with `versions` as its (server, version) instances.
pub fn inventory_at(catalog: &Path, servers: &[(&str, String)], versions: &[(&str, &str)]) {
    let mut text =
        String::from("locations:\n  l1: { ip-labels: { www: [203.0.113.1] } }\nservers:\n");
    for (name, addr) in servers {
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
pub struct Cleanup {
    pub agents: Vec<Child>,
    pub roots: Vec<PathBuf>,
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup {
            agents: Vec::new(),
            roots: Vec::new(),
        }
    }

    /// An agent per server of [`SERVERS`] polling `url`, each with its root and its token
    /// file (`token-NAME`, as [`server_tokens`] gives ADMIN) under `dir`; the roots in order.
    pub fn spawn_agents(&mut self, url: &str, dir: &Path) -> Vec<PathBuf> {
        let mut roots = Vec::new();
        for (server, _) in SERVERS {
            let root = dir.join(format!("root-{server}"));
            let token_file = dir.join(format!("token-{server}"));
            std::fs::write(&token_file, format!("token-{server}\n")).unwrap();
            self.roots.push(root.clone());
            self.agents
                .push(spawn_agent(url, server, &root, &token_file));
            roots.push(root);
        }
        roots
    }
}

/// Each server's agent token for ADMIN: `token-NAME`.
pub fn server_tokens() -> Vec<(String, String)> {
    SERVERS
        .iter()
        .map(|(s, _)| (s.to_string(), format!("token-{s}")))
        .collect()
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

pub fn kill_group(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_portcullis-agent");

pub fn spawn_agent(url: &str, server: &str, root: &Path, token_file: &Path) -> Child {
    spawn_agent_with(Command::new(AGENT_BIN), url, server, root, token_file)
}

/// Like [`spawn_agent`], with `agent` the command that runs [`AGENT_BIN`] (e.g. inside a
/// network namespace).
pub fn spawn_agent_with(
    mut agent: Command,
    url: &str,
    server: &str,
    root: &Path,
    token_file: &Path,
) -> Child {
    agent
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

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn instance(url: &str, id: &str) -> Value {
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
pub async fn until(url: &str, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
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

pub async fn post(url: &str, path: &str) {
    let r = client()
        .post(format!("{url}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "POST {path}");
}

pub async fn health(addr: &str, port: u16) -> Option<String> {
    let r = client()
        .get(format!("http://{addr}:{port}/health"))
        .send()
        .await
        .ok()?;
    (r.status() == 200).then_some(())?;
    r.text().await.ok()
}

/// A freshly started process needs a moment to listen: the body of its first healthy answer.
pub async fn healthy(addr: &str, port: u16) -> String {
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

pub fn running(version: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| {
        v["observed"]["state"] == "running"
            && v["observed"]["version"] == version
            && v["observed"]["pid"].is_u64()
    }
}

pub fn pid(v: &Value) -> i32 {
    v["observed"]["pid"].as_u64().unwrap() as i32
}

pub fn alive(pid: i32) -> bool {
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

pub async fn start_admin(
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
