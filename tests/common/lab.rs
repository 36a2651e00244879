//! A little network in namespaces: a client, a gateway and backends joined by veth pairs,
//! with small TCP and UDP servers in the backends that answer with their own name. All
//! addresses live inside the namespaces this creates; nothing leaves them.
//!
//! client (203.0.113.2) ── gw (203.0.113.1; VIPs 192.0.2.10, .11 on g0) ── bN (10.200.N.2)

use super::Netns;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub const VIP1: &str = "192.0.2.10";
pub const VIP2: &str = "192.0.2.11";
/// Ports every backend serves, TCP and UDP.
pub const SERVED_PORTS: [u16; 5] = [8080, 20000, 20005, 20010, 20011];

pub struct Lab {
    pub client: Netns,
    pub gw: Netns,
    pub backends: Vec<Netns>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

/// Runs `f` on a thread that has entered namespace `ns` (setns affects only that thread).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

impl Lab {
    pub fn new(tag: &str, backends: usize) -> Lab {
        let client = Netns::new(&format!("{tag}-c"));
        let gw = Netns::new(&format!("{tag}-g"));
        let backends: Vec<Netns> = (1..=backends)
            .map(|i| Netns::new(&format!("{tag}-b{i}")))
            .collect();
        gw.exec(&[
            "ip",
            "link",
            "add",
            "g0",
            "type",
            "veth",
            "peer",
            "name",
            "c0",
            "netns",
            &client.name,
        ]);
        gw.exec(&["ip", "addr", "add", "203.0.113.1/24", "dev", "g0"]);
        for vip in [VIP1, VIP2] {
            gw.exec(&["ip", "addr", "add", &format!("{vip}/32"), "dev", "g0"]);
        }
        gw.exec(&["ip", "link", "set", "g0", "up"]);
        gw.exec(&["ip", "link", "set", "lo", "up"]);
        gw.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        client.exec(&["ip", "addr", "add", "203.0.113.2/24", "dev", "c0"]);
        client.exec(&["ip", "link", "set", "c0", "up"]);
        client.exec(&["ip", "link", "set", "lo", "up"]);
        client.exec(&["ip", "route", "add", "192.0.2.0/24", "via", "203.0.113.1"]);
        for (i, b) in backends.iter().enumerate() {
            let n = i + 1;
            let g_if = format!("e{n}");
            gw.exec(&[
                "ip", "link", "add", &g_if, "type", "veth", "peer", "name", "eth0", "netns",
                &b.name,
            ]);
            gw.exec(&[
                "ip",
                "addr",
                "add",
                &format!("10.200.{n}.1/24"),
                "dev",
                &g_if,
            ]);
            gw.exec(&["ip", "link", "set", &g_if, "up"]);
            b.exec(&[
                "ip",
                "addr",
                "add",
                &format!("10.200.{n}.2/24"),
                "dev",
                "eth0",
            ]);
            b.exec(&["ip", "link", "set", "eth0", "up"]);
            b.exec(&["ip", "link", "set", "lo", "up"]);
            b.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.200.{n}.1"),
            ]);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut lab = Lab {
            client,
            gw,
            backends,
            stop,
            servers: Vec::new(),
        };
        for i in 0..lab.backends.len() {
            lab.start_servers(i);
        }
        lab
    }

    /// Address of backend `n` (1-based) as the gateway reaches it.
    pub fn backend_ip(n: usize) -> String {
        format!("10.200.{n}.2")
    }

    fn start_servers(&mut self, i: usize) {
        let name = format!("b{}", i + 1);
        let ns = self.backends[i].name.clone();
        let stop = self.stop.clone();
        // Bind in the namespace, then serve from threads that stay there.
        let (tcp, udp): (Vec<TcpListener>, Vec<UdpSocket>) = in_netns(&ns, || {
            let tcp = SERVED_PORTS
                .iter()
                .map(|p| TcpListener::bind(("0.0.0.0", *p)).expect("bind tcp"))
                .collect();
            let udp = SERVED_PORTS
                .iter()
                .map(|p| UdpSocket::bind(("0.0.0.0", *p)).expect("bind udp"))
                .collect();
            (tcp, udp)
        });
        for listener in tcp {
            // Blocking accept (a polling loop would cap the connection rate the benchmark
            // measures). These threads are not joined: they end with the process.
            let name = name.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let name = name.clone();
                    std::thread::spawn(move || serve_lines(conn, &name));
                }
            });
        }
        for sock in udp {
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let (name, stop) = (name.clone(), stop.clone());
            self.servers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(name.as_bytes(), peer);
                    }
                }
            }));
        }
    }

    /// One TCP connection from the client: the name of the backend that answered, or None.
    pub fn tcp_ask(&self, vip: &str, port: u16) -> Option<String> {
        let addr: SocketAddr = format!("{vip}:{port}").parse().expect("addr");
        in_netns(&self.client.name, move || {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()?;
            ask_line(&mut conn)
        })
    }

    /// Opens a TCP connection from the client that stays open; ask on it with [`ask_line`].
    pub fn tcp_open(&self, vip: &str, port: u16) -> Option<TcpStream> {
        let addr: SocketAddr = format!("{vip}:{port}").parse().expect("addr");
        in_netns(&self.client.name, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()
        })
    }

    /// A UDP socket in the client namespace (one flow = one socket).
    pub fn udp_socket(&self) -> UdpSocket {
        in_netns(&self.client.name, || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.set_read_timeout(Some(Duration::from_millis(700)))
                .expect("timeout");
            s
        })
    }
}

/// Sends one line on a connection and returns the reply line.
pub fn ask_line(conn: &mut TcpStream) -> Option<String> {
    conn.set_read_timeout(Some(Duration::from_millis(700)))
        .ok()?;
    conn.write_all(b"who\n").ok()?;
    let mut line = String::new();
    BufReader::new(conn.try_clone().ok()?)
        .read_line(&mut line)
        .ok()?;
    let name = line.trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// One UDP request/reply on a flow.
pub fn udp_ask(sock: &UdpSocket, vip: &str, port: u16) -> Option<String> {
    sock.send_to(b"who", (vip, port)).ok()?;
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn serve_lines(conn: TcpStream, name: &str) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        if line.is_err() || out.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
    }
}
