//! The gateway side of the ADMIN fault soak (tests/admin_faults.rs): the real daemon
//! (`portcullis run --config …`) in its own network namespace, polling a [`FaultAdmin`] on
//! that namespace's loopback, and the probes the soak asserts with — the `nft list table`
//! text, `/healthz`, the failure counters in `/metrics`, `status.json` and the journal.

use super::fault_admin::FaultAdmin;
use super::lab::in_netns;
use super::Netns;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const MAX_BODY: usize = 1 << 20;
/// The good exports: `BASE + version` services, so each recovery changes the table.
pub const BASE: usize = 200;

pub fn good(version: usize) -> Vec<u8> {
    portcullis_export::to_string(&portcullis::synth::rows_with_services(BASE + version))
        .expect("valid")
        .into_bytes()
}

pub fn etag(version: usize) -> String {
    format!("\"g{version}\"")
}

/// An HTTP GET from inside the namespace: (status, body).
pub fn get(ns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    in_netns(ns, move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            c,
            "GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        c.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            status,
            text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
        ))
    })
}

pub struct Gateway {
    pub ns: Netns,
    pub dir: PathBuf,
    pub admin: FaultAdmin,
    pub metrics_port: u16,
    daemon: Option<Child>,
    starts: usize,
}

impl Gateway {
    pub fn new(tag: &str) -> Gateway {
        let ns = Netns::new(tag);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        let dir = super::tmp_dir(&format!("faults-{tag}"));
        let admin = FaultAdmin::start(&ns.name, good(0), &etag(0), 2 * MAX_BODY);
        let metrics_port = in_netns(&ns.name, || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        });
        Gateway {
            ns,
            dir,
            admin,
            metrics_port,
            daemon: None,
            starts: 0,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Writes the config file the daemon reads at start and on SIGHUP.
    pub fn configure(&self, source: &str, ca_file: Option<&Path>, state: &Path, role: &str) {
        let tls = ca_file.map_or(String::new(), |ca| {
            format!("[tls]\nca_file = \"{}\"\n", ca.display())
        });
        let text = format!(
            "source = \"{source}\"\ninterval = \"200ms\"\nlong_poll = \"0s\"\n\
             request_timeout = \"1s\"\nmax_body_bytes = {MAX_BODY}\nstate_dir = \"{}\"\n\
             role = \"{role}\"\nmetrics = \"127.0.0.1:{}\"\n\
             [interfaces]\nexternal = [\"lo\"]\n{tls}",
            state.display(),
            self.metrics_port
        );
        std::fs::write(self.dir.join("portcullis.toml"), text).expect("config");
    }

    pub fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("daemon-{}.log", self.starts)))
            .expect("log file");
        let child = self
            .ns
            // option_env!: tests/common is also compiled into the demo crate's test, which has
            // no portcullis binary of its own (and never starts a gateway).
            .command(option_env!("CARGO_BIN_EXE_portcullis").unwrap_or("portcullis"))
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("portcullis.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("portcullis run");
        self.daemon = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let status = super::terminate(&mut child);
            assert!(status.success(), "clean exit on SIGTERM: {status}");
        }
    }

    pub fn reload(&self) {
        let pid = self.daemon.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .is_ok_and(|s| s.success()));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("daemon-{}.log", self.starts)))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn alive(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `nft list table inet portcullis`, verbatim; `None` when there is no table.
    pub fn table(&self) -> Option<String> {
        let out = self
            .ns
            .command("nft")
            .args(["list", "table", "inet", "portcullis"])
            .output()
            .expect("nft");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn healthz(&self) -> Option<u16> {
        get(&self.ns.name, self.metrics_port, "/healthz").map(|(status, _)| status)
    }

    /// `portcullis_polls_total` by outcome: failed, rejected, refused.
    pub fn failures(&self) -> [u64; 3] {
        let text = get(&self.ns.name, self.metrics_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        ["failed", "rejected", "refused"].map(|outcome| {
            let prefix = format!("portcullis_polls_total{{outcome=\"{outcome}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        })
    }

    pub fn status_etag(&self, state: &Path) -> Option<String> {
        let text = std::fs::read_to_string(state.join("status.json")).ok()?;
        let status: serde_json::Value = serde_json::from_str(&text).ok()?;
        status["etag"].as_str().map(str::to_owned)
    }

    /// The `failed` counter of `status.json`.
    pub fn status_failed(&self, state: &Path) -> u64 {
        std::fs::read_to_string(state.join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["failed"].as_u64())
            .unwrap_or(0)
    }

    pub fn journal_count(&self, state: &Path, result: &str) -> usize {
        std::fs::read_to_string(state.join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"result\":\"{result}\"")))
            .count()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
