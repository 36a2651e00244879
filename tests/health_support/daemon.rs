//! The daemon of the health-check suites (`tests/health*.rs`): `portcullis run` in a lab's
//! gateway namespace on an export of one checked service, read through its metrics listener,
//! status file, journal and log.

use crate::common::gateway::get;
use crate::common::lab::{in_netns, Lab, VIP1};
use crate::common::{terminate, tmp_dir};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Stdio};

/// `portcullis run` in the lab's gateway namespace with health checks on, and what it shows.
pub struct Daemon {
    child: Child,
    pub dir: PathBuf,
    pub ns: String,
    pub metrics_port: u16,
}

impl Daemon {
    /// Starts the daemon on an export of one service, VIP1:80 → `backends` backends on
    /// `port`, every row checked by `check`, with `[health]` interval, fall and timeout.
    pub fn start(
        lab: &Lab,
        backends: usize,
        port: u16,
        check: &str,
        interval_s: u64,
        fall: u64,
        timeout: &str,
    ) -> Daemon {
        let dir = tmp_dir("health");
        let rows: String = (1..=backends)
            .map(|n| {
                format!(
                    "web,web.b{n},tcp,{VIP1},80,,{},{port},1,rr,nat,,{check}\n",
                    Lab::backend_ip(n)
                )
            })
            .collect();
        let export = format!(
            "# portcullis-export 1.1\nservice,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence,check\n{rows}"
        );
        std::fs::write(dir.join("export.csv"), export).expect("export");
        let metrics_port = in_netns(&lab.gw.name, || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        });
        let config = format!(
            "source = \"file://{}\"\ninterval = \"500ms\"\nlong_poll = \"0s\"\n\
             state_dir = \"{}\"\nrole = \"active\"\nmetrics = \"127.0.0.1:{metrics_port}\"\n\
             [interfaces]\nexternal = [\"g0\"]\n\
             [health]\ninterval = \"{interval_s}s\"\ntimeout = \"{timeout}\"\nrise = 2\nfall = {fall}\n",
            dir.join("export.csv").display(),
            dir.join("state").display(),
        );
        std::fs::write(dir.join("portcullis.toml"), config).expect("config");
        let log = std::fs::File::create(dir.join("daemon.log")).expect("log");
        let child = lab
            .gw
            .command(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(dir.join("portcullis.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("portcullis run");
        Daemon {
            child,
            dir,
            ns: lab.gw.name.clone(),
            metrics_port,
        }
    }

    /// A GET on the daemon's metrics listener: the body of a 200.
    pub fn get(&self, path: &str) -> String {
        match get(&self.ns, self.metrics_port, path) {
            Some((200, body)) => body,
            other => panic!("GET {path}: {other:?}"),
        }
    }

    /// `portcullis status` as an operator reads it.
    pub fn status_text(&self) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["status", "--state-dir"])
            .arg(self.dir.join("state"))
            .output()
            .expect("portcullis status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
        std::fs::read_to_string(self.dir.join("state/status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn journal(&self) -> String {
        std::fs::read_to_string(self.dir.join("state/journal.jsonl")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = terminate(&mut self.child);
    }
}
