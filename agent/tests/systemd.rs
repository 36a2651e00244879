//! `--supervisor systemd` against a real systemd: a private system manager (systemd 252 as PID 1
//! of its own pid, mount and cgroup namespaces: `systemd-manager.sh`), a real ADMIN, and the
//! agent run inside the manager's namespaces (where `systemctl` and `/run/systemd/system` are
//! the manager's). A python service with awkward arguments and environment is installed as a
//! unit and answers; stop via REST → the unit inactive and the process gone; start → back;
//! systemd restarts a killed process itself; a killed and restarted agent adopts the unit
//! (same MainPID); a removed instance loses its unit.

mod support;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// The manager and what it leaves behind, whatever happens.
struct Manager {
    script: Child,
    /// systemd's pid here (outside its namespaces).
    pid: u32,
    dir: PathBuf,
    agent: Option<Child>,
    agent_log: Option<PathBuf>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the agent and systemd thought, for the failure's report.
            let status = self
                .nsenter()
                .args(["systemctl", "status", "--no-pager", "--all"])
                .output();
            if let Ok(o) = status {
                eprintln!("systemctl status:\n{}", String::from_utf8_lossy(&o.stdout));
            }
            if let Some(log) = &self.agent_log {
                eprintln!(
                    "agent log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        if let Some(a) = &mut self.agent {
            kill_agent(a);
        }
        // PID 1 of the namespace: everything in it dies with it.
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        let _ = self.script.kill();
        let _ = self.script.wait();
        if let Ok(cg) = std::fs::read_to_string(self.dir.join("cgroup")) {
            remove_cgroup(Path::new(cg.trim()));
        }
    }
}

/// Empty cgroups go with rmdir, deepest first, once their processes are gone.
fn remove_cgroup(cg: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let _ = Command::new("find")
            .arg(cg)
            .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
            .stderr(Stdio::null())
            .status();
        if !cg.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("left behind: {}", cg.display());
}

fn prerequisites() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let problem = if !root {
        Some("needs root (namespaces and a cgroup for a private systemd)".to_owned())
    } else if !Path::new("/lib/systemd/systemd").exists()
        || Command::new("systemctl").arg("--version").output().is_err()
    {
        Some(
            "needs systemd and systemctl (Debian package systemd); scripts/test installs it".into(),
        )
    } else if Command::new("nsenter").arg("--version").output().is_err() {
        Some("needs nsenter and unshare (util-linux)".into())
    } else {
        None
    };
    runs_here(problem)
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_manager(dir: &Path) -> Manager {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/systemd-manager.sh");
    let child = Command::new(script)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("manager.log")).unwrap())
        .spawn()
        .unwrap();
    let script_pid = child.id();
    let mut m = Manager {
        script: child,
        pid: 0,
        dir: dir.to_owned(),
        agent: None,
        agent_log: None,
    };
    let started = Instant::now();
    // The script execs unshare, which forks systemd. If the script ends first (no cgroup v2
    // to write, no namespaces), say why.
    let log = dir.join("manager.log");
    m.pid = loop {
        if let Some(p) = children(script_pid)
            .into_iter()
            .find(|p| comm(*p) == "systemd")
        {
            break p;
        }
        if let Ok(Some(status)) = m.script.try_wait() {
            panic!(
                "the private systemd did not start ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited 10 s for the private systemd"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_for("systemd to answer", Duration::from_secs(10), || {
        let out = m.systemctl(&["is-system-running"]);
        (out.trim() == "running").then_some(())
    });
    eprintln!("private systemd ready after {:?}", started.elapsed());
    m
}

impl Manager {
    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-p", "--"]);
        c
    }

    /// `systemctl ARGS` against this manager; stdout (stderr goes to the test's output).
    fn systemctl(&self, args: &[&str]) -> String {
        let out = self.nsenter().arg("systemctl").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.systemctl(&["show", "-p", property, "--value", unit])
            .trim()
            .to_owned()
    }

    fn spawn_agent(&mut self, url: &str, root: &Path, token_file: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.with_extension("log"))
            .unwrap();
        let child = self
            .nsenter()
            .arg(env!("CARGO_BIN_EXE_portcullis-agent"))
            .args(["run", "--admin", url, "--server", "a", "--wait", "5s"])
            .args(["--test-deadline", "10s", "--supervisor", "systemd"])
            .arg("--root")
            .arg(root)
            .arg("--token-file")
            .arg(token_file)
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        self.agent_log = Some(root.with_extension("log"));
    }
}

/// nsenter forks the agent (a new pid namespace needs a fork): kill the agent itself, then
/// nsenter, which returns when its child is gone.
fn kill_agent(nsenter: &mut Child) {
    for p in children(nsenter.id()) {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    let _ = nsenter.kill();
    let _ = nsenter.wait();
}

/// The service: records its argv and environment, answers /health with its pid.
fn service_tree(base: &Path) -> PathBuf {
    let d = base.join("tree-sd");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("server.py"),
        "import http.server, json, os, sys\n\
         port, seen = int(sys.argv[1]), sys.argv[2]\n\
         json.dump({'argv': sys.argv[3:], 'env': os.environ.get('AWKWARD'), 'cwd': os.getcwd()}, open(seen, 'w'))\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       body = str(os.getpid()).encode()\n\
         \x20       self.send_response(200 if self.path == '/health' else 404)\n\
         \x20       self.send_header('content-length', str(len(body)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()\n",
    )
    .unwrap();
    std::fs::set_permissions(d.join("server.py"), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

const UNIT: &str = "portcullis-instance-web.a.1.service";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_run_as_systemd_units_and_an_agent_restart_adopts_them() {
    if !prerequisites() {
        return;
    }
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let mut m = start_manager(dir.path());
    let catalog = dir.path().join("catalog");
    let state = dir.path().join("state");
    std::fs::create_dir_all(catalog.join("meta")).unwrap();
    let port = free_port();
    let store = portcullis_admin::versions::Store::new(&state);
    let v1 = store
        .build("web", &service_tree(dir.path()), Some("web-1"))
        .unwrap()
        .id;
    let broken_tree = dir.path().join("tree-broken");
    std::fs::create_dir_all(&broken_tree).unwrap();
    std::fs::write(broken_tree.join("server.py"), "import sys\nsys.exit(3)\n").unwrap();
    let broken = store
        .build("web", &broken_tree, Some("web-broken"))
        .unwrap()
        .id;
    // Arguments systemd's ExecStart= syntax would otherwise split, expand or unescape.
    std::fs::write(
        catalog.join("meta/web.yaml"),
        format!(
            "type: web\n\
             run:\n  command: [{python}, \"${{release}}/server.py\", {port}, \"${{instance-dir}}/seen.json\", \
             \"two words\", \"$HOME\", \"100%\", \"%n\", \"say \\\"hi\\\"\", \"back\\\\slash\", \";\", \"\"]\n  \
             env: {{ AWKWARD: \"a \\\"b\\\" $c 50% \\\\\" }}\n  \
             stop-timeout: 5s\n\
             tests:\n  - {{ name: health, http: /health, port: {port}, expect: 200 }}\n"
        ),
    )
    .unwrap();
    inventory(&catalog, &[("a", &v1)]);
    let tokens = vec![("a".to_string(), "token-a".to_string())];
    let admin = start_admin(&catalog, &state, &tokens, "127.0.0.1:0".parse().unwrap()).await;
    let url = admin.url();
    let root = dir.path().join("root-a");
    let token_file = dir.path().join("token-a");
    std::fs::write(&token_file, "token-a\n").unwrap();
    m.spawn_agent(&url, &root, &token_file);

    // Installed as a unit, running, answering, with its arguments intact.
    let v = until(&url, "web.a.1", "v1 running", running(&v1)).await;
    let main_pid = m.show(UNIT, "MainPID");
    assert_eq!(
        main_pid,
        pid(&v).to_string(),
        "the report shows systemd's MainPID"
    );
    assert_eq!(healthy("127.0.0.1", port).await, main_pid);
    let seen: Value =
        serde_json::from_slice(&std::fs::read(root.join("instances/web.a.1/seen.json")).unwrap())
            .unwrap();
    assert_eq!(
        seen["argv"],
        serde_json::json!([
            "two words",
            "$HOME",
            "100%",
            "%n",
            "say \"hi\"",
            "back\\slash",
            ";",
            ""
        ])
    );
    assert_eq!(seen["env"], "a \"b\" $c 50% \\");
    assert_eq!(
        seen["cwd"].as_str().map(PathBuf::from),
        Some(root.join("instances/web.a.1"))
    );
    assert_eq!(m.show(UNIT, "Restart"), "on-failure");

    // Stop via REST: the unit inactive, the service gone.
    post(&url, "/v1/instances/web.a.1/stop").await;
    until(&url, "web.a.1", "stopped", |v| {
        v["observed"]["state"] == "stopped"
    })
    .await;
    assert_eq!(m.show(UNIT, "ActiveState"), "inactive");
    assert!(health("127.0.0.1", port).await.is_none());

    // Start: back, as a new process.
    post(&url, "/v1/instances/web.a.1/start").await;
    let v = until(&url, "web.a.1", "running again", |v| {
        running(&v1)(v) && pid(v).to_string() != main_pid
    })
    .await;
    let main_pid = pid(&v).to_string();
    assert_eq!(m.show(UNIT, "MainPID"), main_pid);
    assert_eq!(healthy("127.0.0.1", port).await, main_pid);

    // Killed behind everyone's back: systemd restarts it (Restart=on-failure), not the agent.
    m.systemctl(&["kill", "--kill-who=main", "-s", "KILL", UNIT]);
    let v = until(&url, "web.a.1", "restarted by systemd", |v| {
        running(&v1)(v) && pid(v).to_string() != main_pid && v["observed"]["restarts"] == 1
    })
    .await;
    let main_pid = pid(&v).to_string();
    assert_eq!(m.show(UNIT, "NRestarts"), "1");
    assert_eq!(healthy("127.0.0.1", port).await, main_pid);

    // The agent killed and started again: it adopts the unit, nothing restarts.
    if let Some(mut a) = m.agent.take() {
        kill_agent(&mut a);
    }
    let before = instance(&url, "web.a.1").await["observed"]["reported_at"].as_u64();
    // Reports carry whole seconds: start the new agent in a later one, so its first report is
    // told apart from the old agent's last without waiting for the 10 s re-report.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok()
    };
    while now() <= before {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.spawn_agent(&url, &root, &token_file);
    let v = until(&url, "web.a.1", "a report of the new agent", |v| {
        v["observed"]["reported_at"].as_u64() > before && running(&v1)(v)
    })
    .await;
    assert_eq!(pid(&v).to_string(), main_pid);
    assert_eq!(m.show(UNIT, "MainPID"), main_pid);
    assert_eq!(m.show(UNIT, "NRestarts"), "1");
    let log = std::fs::read_to_string(root.with_extension("log")).unwrap();
    assert!(log.contains("adopted running instance"), "{log}");

    // A version that exits at once: systemd is restarting it when its tests run, which fails
    // them at once, and the instance is back on v1 as a unit again.
    inventory(&catalog, &[("a", &broken)]);
    let v = until(&url, "web.a.1", "broken version rolled back", |v| {
        v["observed"]["last_change"]["to"] == broken.as_str()
            && v["observed"]["last_change"]["outcome"] == "rolled-back"
            && running(&v1)(v)
    })
    .await;
    let why = v["observed"]["last_change"]["error"].as_str().unwrap_or("");
    assert!(why.contains("exit status 3"), "{v:#}");
    let main_pid = pid(&v).to_string();
    assert_eq!(m.show(UNIT, "MainPID"), main_pid);
    assert_eq!(healthy("127.0.0.1", port).await, main_pid);

    // Removed from the inventory (moved to b, which has no agent here): stopped, its unit
    // gone from systemd, then its directory (uninstall comes after the unit).
    inventory(&catalog, &[("b", &v1)]);
    let unit_file = format!("/run/systemd/system/{UNIT}");
    let instance_dir = root.join("instances/web.a.1");
    let start = Instant::now();
    while m.show(UNIT, "LoadState") != "not-found" || instance_dir.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{UNIT} still loaded or {} still there",
            instance_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = m
        .nsenter()
        .args(["test", "-e", &unit_file])
        .status()
        .unwrap();
    assert!(!listed.success(), "{unit_file} still there");
    assert!(health("127.0.0.1", port).await.is_none());
}
