//! Servers as network namespaces: each its own network stack, joined to the root namespace (where
//! the test and ADMIN run) by a veth pair on a /30 of its own, so a server's services listen on
//! an address only it has, and it reaches ADMIN the way a real host would — over a link.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

/// The /30 links are carved out of this /16; the host's own networks are not expected in it.
const LINKS: [u8; 2] = [10, 231];
const LINK_COUNT: u16 = 1 << 14;

/// Whether the test can create network namespaces. Without root it is skipped with a loud
/// message, but under `CI=true` it fails: CI must never pass by skipping.
pub fn require_netns() -> bool {
    let problem = if !rustix::process::geteuid().is_root() {
        Some("needs root (CAP_NET_ADMIN) to create network namespaces")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("needs the `ip` tool (Debian package iproute2)")
    } else {
        None
    };
    super::runs_here(problem.map(str::to_owned))
}

/// A named network namespace with a veth link to the root namespace; dropping it ends what
/// still runs inside and deletes it (the link goes with it), also when the test panics.
pub struct Netns {
    pub name: String,
    /// The root-namespace end of the link.
    veth: String,
    /// The root namespace's address on the link: how the namespace reaches ADMIN.
    pub outside: Ipv4Addr,
    /// The namespace's own address: the server's address in the inventory.
    pub inside: Ipv4Addr,
}

impl Netns {
    /// `tag` tells the namespaces of one test apart; the process id those of concurrent runs.
    pub fn new(tag: &str) -> Netns {
        let pid = std::process::id();
        let (outside, inside) = free_link();
        let netns = Netns {
            name: format!("pc{pid}-{tag}"),
            // Interface names have at most 15 bytes.
            veth: format!("pc{pid}{tag}"),
            outside,
            inside,
        };
        assert!(netns.veth.len() <= 15, "veth name too long: {}", netns.veth);
        // From here on a failing step still deletes what the earlier ones made (Drop).
        ip(&["netns", "add", &netns.name]);
        // The peer is created inside the namespace, so its name can be the same everywhere.
        ip(&[
            "link",
            "add",
            &netns.veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ]);
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &netns.veth]);
        ip(&["link", "set", &netns.veth, "up"]);
        let inside_ip = |args: &[&str]| {
            let mut all = vec!["-n", netns.name.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside_ip(&["addr", "add", &format!("{inside}/30"), "dev", "eth0"]);
        inside_ip(&["link", "set", "eth0", "up"]);
        // Some services (and health checks) use loopback; a fresh namespace has it down.
        inside_ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// `program` to be run inside the namespace. `ip netns exec` execs it in place, so the
    /// child's pid is the program's own (killing the child kills the program, not `ip`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A namespace lives on, unnamed, while a process is in it (and so does its link): end
        // whatever the test left running there first.
        for pid in self.pids() {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `ip args…`, panicking with its stderr when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A /30 no address of the root namespace is in yet: (root side, namespace side). The search
/// starts at a slot derived from the pid (and a per-process counter) so that concurrent runs
/// start far apart; a slot in use (a concurrent run, a leftover) is skipped.
fn free_link() -> (Ipv4Addr, Ipv4Addr) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let first = (std::process::id() as u16).wrapping_mul(8);
    for _ in 0..LINK_COUNT {
        let slot = first.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % LINK_COUNT;
        let base = u32::from(Ipv4Addr::new(LINKS[0], LINKS[1], 0, 0)) + u32::from(slot) * 4;
        let outside = Ipv4Addr::from(base + 1);
        let used = Command::new("ip")
            .args(["-o", "-4", "addr", "show", "to", &format!("{outside}/30")])
            .output()
            .expect("run ip");
        if used.stdout.is_empty() {
            return (outside, Ipv4Addr::from(base + 2));
        }
    }
    panic!("no free /30 left in {}.{}.0.0/16", LINKS[0], LINKS[1])
}
