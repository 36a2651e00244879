//! A gateway and its ADMINs, every one a real process: `portcullis-admin serve` replicas sharing
//! one throwaway PostgreSQL (or one ADMIN on a directory catalog), and the `portcullis` daemon
//! with the nft backend, all inside one network namespace (PostgreSQL stays outside; the
//! replicas reach it over its Unix socket). Shared by `tests/replicas.rs` (a replica killed
//! under the daemon) and `benches/replica_costs.rs` (POST on one replica → rule in the kernel
//! through the other).
//!
//! The binaries are other packages' (cargo hands a package only its own `CARGO_BIN_EXE_*`), so
//! they are found beside this target: `cargo test --workspace` builds them; alone, build them
//! first (see [`binary`]).

#![allow(dead_code)] // the test and the bench each use part of it

use crate::common::lab::in_netns;
use crate::common::{self, Netns};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "replicas-token";

/// The example catalog's instance the scenarios drain and undrain (a pgw with a real server).
pub const INSTANCE: &str = "pgw.app1.1";

/// The built binary `name`: `$env` if set, else beside this test or bench in its profile
/// directory (`target/debug/deps/replicas-…` → `target/debug/NAME`). Panics, saying how to
/// build it, when it is missing: a scenario that cannot run must not pass.
pub fn binary(name: &str, env: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(name)));
    match beside {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "no `{name}` beside this target ({beside:?}): `cargo test --workspace` builds it; \
             alone, run `cargo build -p {package}` (with --release for the bench) first, or set {env}"
        ),
    }
}

pub fn admin_binary() -> PathBuf {
    binary(
        "portcullis-admin",
        "PORTCULLIS_ADMIN_BIN",
        "portcullis-admin",
    )
}

pub fn gateway_binary() -> PathBuf {
    binary("portcullis", "PORTCULLIS_BIN", "portcullis")
}

/// `portcullis-admin ARGS…` on the host, checked.
pub fn admin_cli(args: &[&str]) {
    let out = Command::new(admin_binary())
        .args(args)
        .output()
        .expect("run portcullis-admin");
    assert!(
        out.status.success(),
        "portcullis-admin {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A blocking HTTP client whose sockets live in namespace `ns` (its connection thread is
/// spawned there, and a socket belongs to the namespace of the thread that creates it).
pub fn client(ns: &str) -> reqwest::blocking::Client {
    in_netns(ns, || {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client")
    })
}

/// One `portcullis-admin serve` process in the namespace; SIGKILLed on drop.
pub struct Admin {
    child: Child,
    pub base: String,
    log: PathBuf,
}

impl Admin {
    /// A replica of the catalog in PostgreSQL database `state` (a `postgres://` URL).
    pub fn replica(ns: &Netns, state: &str, port: u16, dir: &Path) -> Admin {
        Admin::start(
            ns,
            &["--state", state],
            port,
            dir,
            &format!("replica-{port}"),
        )
    }

    /// The single-machine ADMIN on the directory catalog `catalog`.
    pub fn directory(ns: &Netns, catalog: &Path, port: u16, dir: &Path) -> Admin {
        let catalog = catalog.to_str().expect("utf-8 temp path");
        Admin::start(ns, &["--catalog", catalog], port, dir, "directory")
    }

    fn start(ns: &Netns, state: &[&str], port: u16, dir: &Path, name: &str) -> Admin {
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).expect("token file");
        let log = dir.join(format!("{name}.log"));
        let listen = format!("127.0.0.1:{port}");
        // `ip netns exec` execs the program: the child's pid is ADMIN's own, for SIGKILL.
        let child = ns
            .command(&admin_binary().to_string_lossy())
            .arg("serve")
            .args(state)
            .args(["--listen", &listen, "--token-file"])
            .arg(&token)
            // The followers' fallback look at the head row: NOTIFY is what wakes them.
            .args(["--reload-interval", "5s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("portcullis-admin serve");
        Admin {
            child,
            base: format!("http://{listen}"),
            log,
        }
    }

    /// Waits (bounded) until it answers.
    pub fn ready(&self, http: &reqwest::blocking::Client) {
        let up = common::wait_until(60, || {
            let r = http.get(format!("{}/v1/status", self.base)).send().ok()?;
            r.status().is_success().then_some(())
        });
        assert!(
            up.is_some(),
            "{} never answered:\n{}",
            self.base,
            self.log()
        );
    }

    pub fn export_url(&self) -> String {
        format!("{}/v1/export.csv", self.base)
    }

    /// `POST /v1/instances/ID/ACTION`, checked.
    pub fn post(&self, http: &reqwest::blocking::Client, id: &str, action: &str) {
        let r = http
            .post(format!("{}/v1/instances/{id}/{action}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .unwrap_or_else(|e| panic!("{action} {id} on {}: {e}", self.base));
        let status = r.status();
        assert!(
            status.is_success(),
            "{action} {id} on {}: {status}: {}",
            self.base,
            r.text().unwrap_or_default()
        );
    }

    /// SIGKILL: no goodbye to the held long-polls; the kernel closes the sockets.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log:\n{}", self.base, self.log());
        }
    }
}

/// The gateway daemon (nft backend, on the namespace's `lo`) polling `sources` in turn.
pub struct Gateway {
    child: Child,
    pub state: PathBuf,
    ns: String,
}

impl Gateway {
    pub fn start(ns: &Netns, sources: &[&str], request_timeout: &str) -> Gateway {
        let state = common::tmp_dir("replicas-gw");
        let mut cmd = ns.command(&gateway_binary().to_string_lossy());
        cmd.args(["run", "--backend", "nft", "--external-iface", "lo"]);
        for s in sources {
            cmd.args(["--source", s]);
        }
        let child = cmd
            .args(["--interval", "1s", "--long-poll", "30s"])
            .args(["--request-timeout", request_timeout, "--state-dir"])
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.join("daemon.log")).expect("log file"))
            .spawn()
            .expect("portcullis run");
        let gw = Gateway {
            child,
            state,
            ns: ns.name.clone(),
        };
        // The journal line comes first, the status snapshot right after it.
        let started = common::wait_until(60, || {
            (gw.journal_lines() >= 1 && gw.source().is_some()).then_some(())
        });
        assert!(started.is_some(), "the daemon never applied an export");
        gw
    }

    pub fn journal_lines(&self) -> usize {
        std::fs::read_to_string(self.state.join("journal.jsonl")).map_or(0, |t| t.lines().count())
    }

    /// The daemon's own time for its last apply (parse, diff, nft), from its journal.
    pub fn last_apply(&self) -> Duration {
        std::fs::read_to_string(self.state.join("journal.jsonl"))
            .ok()
            .and_then(|t| {
                let last = t.lines().last()?.to_owned();
                serde_json::from_str::<serde_json::Value>(&last).ok()
            })
            .and_then(|v| v["duration_ms"].as_f64())
            .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms / 1000.0))
    }

    /// The replica the daemon's next poll asks (status.json's `source`).
    pub fn source(&self) -> Option<String> {
        Some(self.status()?["source"].as_str()?.to_owned())
    }

    /// The daemon's status snapshot (status.json, rewritten atomically after every step).
    pub fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.state.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The kernel's table, as `nft` lists it in the namespace.
    pub fn listing(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "list", "table", "inet"])
            .arg("portcullis")
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft list table: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits every millisecond (the tests' 50 ms steps are too coarse to time with) until the
    /// journal has more than `lines` lines; the time it took since `t0`.
    pub fn applied_after(&self, lines: usize, t0: Instant) -> Duration {
        while self.journal_lines() <= lines {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no apply within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        t0.elapsed()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        common::terminate(&mut self.child);
        if std::thread::panicking() {
            eprintln!("--- daemon log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A namespace with its loopback up.
pub fn namespace(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    ns
}
