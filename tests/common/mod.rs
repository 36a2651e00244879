//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod fault_admin;
pub mod gateway;
pub mod lab;
pub mod stub_admin;

use portcullis::model::DesiredState;
use portcullis::render::nft::{Backend, BasePolicy, Ifname, RenderOptions, DEFAULT_POLICY};
use std::path::PathBuf;
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn load_state(rel: &str) -> DesiredState {
    let bytes = std::fs::read(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let export = portcullis_export::parse(&bytes).unwrap_or_else(|e| panic!("{rel}:\n{e}"));
    DesiredState::from_export(&export)
}

pub fn render_options(backend: Backend, ifaces: &[&str]) -> RenderOptions {
    RenderOptions {
        backend,
        external_interfaces: ifaces
            .iter()
            .map(|i| Ifname::parse(i).expect("test ifname"))
            .collect(),
        internal_interfaces: Vec::new(),
        policy: BasePolicy::parse(DEFAULT_POLICY).expect("shipped policy parses"),
    }
}

/// Whether `tool` (from Debian package `package`) can run; like [`require_nft`], a missing
/// tool fails the test under `CI=true` and skips it, loudly, elsewhere.
pub fn require_tool(tool: &str, package: &str) -> bool {
    if Command::new(tool).arg("version").output().is_ok() {
        return true;
    }
    let problem = format!("needs `{tool}` (Debian package {package}); scripts/test installs it");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test {problem}; it must run in CI")
    }
    eprintln!("SKIPPED: this test {problem}.");
    false
}

/// Tests that need root and the `nft` tool. Outside CI they are skipped with a loud message;
/// with `CI=true` a missing prerequisite fails the test, so CI can never pass by skipping.
pub fn require_nft() -> bool {
    let problem = if !is_root() {
        Some("needs root (CAP_NET_ADMIN) to create a network namespace".to_owned())
    } else if Command::new("nft").arg("--version").output().is_err() {
        Some("needs the `nft` tool (Debian package nftables); scripts/test installs it".to_owned())
    } else if Command::new("unshare").arg("--version").output().is_err() {
        Some("needs `unshare` (util-linux)".to_owned())
    } else {
        None
    };
    match problem {
        None => true,
        Some(p) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("this test {p}; it must run in CI")
        }
        Some(p) => {
            eprintln!("SKIPPED: this test {p}. Run scripts/test (as root) to run it.");
            false
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a shell script in a fresh, empty network namespace that disappears with the process,
/// so nothing the test does can touch the host's ruleset. Returns (success, stderr).
pub fn in_fresh_netns(script: &str) -> (bool, String) {
    let out = Command::new("unshare")
        .args(["--net", "sh", "-ec", script])
        .output()
        .expect("run unshare");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A named network namespace for one test, deleted when dropped (also when the test fails).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `tag` makes the name unique within a test; the process id across concurrent runs.
    pub fn new(tag: &str) -> Netns {
        let name = format!("pc{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    /// `program args…` to be run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a command inside the namespace; panics with its stderr when it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "in {}: {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Polls `probe` every 50 ms for up to `seconds`; the first `Some` it returns, or `None`.
pub fn wait_until<T>(seconds: u64, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A fresh directory for a test, created exclusively under an unpredictable name in the
/// shared temp directory: these tests run as root, and a name another user can predict (and
/// pre-create, or point a symlink at) would let them steer what root writes.
pub fn tmp_dir(tag: &str) -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("pc-{tag}-"))
        .tempdir()
        .expect("a temp dir")
        .keep()
}

/// Sends SIGTERM to `child` and returns how it exited.
pub fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().expect("wait for the child")
}
