//! Forgetting connections to real servers that were removed. DNAT decisions live in conntrack
//! entries, so without this a UDP flow (which never ends by itself) would keep going to a
//! dead backend. Drained servers (weight 0) keep their entries: that is what draining means.

use crate::model::RealKey;
use portcullis_export::Proto;
use std::net::IpAddr;
use std::process::Command;

/// Connections of one removed real server through one frontend address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConntrackFlush {
    pub proto: Proto,
    pub vip: IpAddr,
    pub real: RealKey,
}

pub trait Conntrack {
    /// Deletes matching entries; returns how many were deleted (best effort).
    fn flush(&mut self, entries: &[ConntrackFlush]) -> Result<usize, String>;
}

/// The `conntrack` tool (Debian package conntrack).
#[derive(Clone, Debug)]
pub struct ConntrackCli {
    command: Vec<String>,
}

impl Default for ConntrackCli {
    fn default() -> Self {
        ConntrackCli {
            command: vec!["conntrack".into()],
        }
    }
}

impl ConntrackCli {
    pub fn in_netns(ns: &str) -> Self {
        ConntrackCli {
            command: ["ip", "netns", "exec", ns, "conntrack"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl Conntrack for ConntrackCli {
    fn flush(&mut self, entries: &[ConntrackFlush]) -> Result<usize, String> {
        let mut deleted = 0;
        for e in entries {
            let mut cmd = Command::new(&self.command[0]);
            cmd.args(&self.command[1..]).args([
                "-D",
                "-p",
                e.proto.as_str(),
                "--orig-dst",
                &e.vip.to_string(),
                "--reply-src",
                &e.real.addr.to_string(),
            ]);
            if let Some(port) = e.real.port {
                cmd.args(["--reply-port-src", &port.to_string()]);
            }
            let out = cmd
                .output()
                .map_err(|err| format!("cannot run conntrack: {err}"))?;
            // conntrack exits 1 when nothing matched; it reports the count on stderr.
            let text = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && !text.contains("0 flow entries") {
                return Err(format!("conntrack -D failed: {}", text.trim()));
            }
            deleted += text
                .split_whitespace()
                .zip(text.split_whitespace().skip(1))
                .find(|(_, w)| *w == "flow")
                .and_then(|(n, _)| n.parse::<usize>().ok())
                .unwrap_or(0);
        }
        Ok(deleted)
    }
}

/// Does nothing (the IPVS backend keeps its own connection table).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoConntrack;

impl Conntrack for NoConntrack {
    fn flush(&mut self, _: &[ConntrackFlush]) -> Result<usize, String> {
        Ok(0)
    }
}

/// Records what would be flushed (unit tests).
#[derive(Clone, Debug, Default)]
pub struct RecordingConntrack {
    pub flushed: Vec<ConntrackFlush>,
}

impl Conntrack for RecordingConntrack {
    fn flush(&mut self, entries: &[ConntrackFlush]) -> Result<usize, String> {
        self.flushed.extend_from_slice(entries);
        Ok(entries.len())
    }
}
