//! TCP checks as half-open handshakes: the prober sends a SYN from one raw socket and reads
//! the answer off it — SYN-ACK, something listens; RST, refused — and the kernel, which knows
//! no connection for that SYN-ACK, resets it, so the server forgets it at once.
//!
//! Why: a full `connect()` per probe costs a socket, a port, an epoll registration and the
//! kernel's whole connection setup and teardown on the gateway; at 10k servers every 2 s
//! that was ~24 % of a core in the kernel alone, a bare epoll loop included
//! (benches/health_checker.sh). A check learns the same from the SYN-ACK: that a socket
//! listens and the path to it works. This is what half-open scanners do; the gateway needs
//! CAP_NET_RAW, which its unit grants. HTTP checks and IPv6 targets still connect.
//!
//! The source ports are reserved by binding ordinary TCP sockets to them (never listening),
//! so the kernel gives them to no connection of its own and answers their SYN-ACKs with a
//! reset. Each probe has its own random sequence number; an answer must acknowledge it.

use super::syn_packet::{self, Answer, Reply};
use super::tick::on_tick;
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// Reserved source ports: a target is probed from one of them at a time, so this many
/// probes of one endpoint could overlap (one is the rule: a target's probes are sequential).
const PORTS: usize = 32;
/// SYNs one probe may send, spaced evenly over its timeout (as the connect probe's attempts:
/// one lost packet must not fail a probe).
const ATTEMPTS: u32 = 3;
/// How long a looked-up source address is trusted before the routing table is asked again.
const ROUTE_TTL: Duration = Duration::from_secs(30);
/// Room for answers arriving in a burst (the socket sees only SYN-ACKs and RSTs: see
/// [`answers_only`]).
const RECEIVE_BUFFER: usize = 4 << 20;

/// Why a SYN probe was not made; the caller connects instead.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("IPv6 targets are probed by connecting")]
    Ipv6,
    #[error("every reserved source port is in use for {0}")]
    PortsBusy(SocketAddr),
    #[error("no route to {0}: {1}")]
    Route(Ipv4Addr, #[source] io::Error),
    #[error("send: {0}")]
    Send(#[source] io::Error),
}

type Key = (SocketAddrV4, u16);

struct Pending {
    ack: u32,
    done: oneshot::Sender<Answer>,
}

struct Shared {
    raw: AsyncFd<Socket>,
    ports: Vec<u16>,
    source: Option<Ipv4Addr>,
    pending: Mutex<HashMap<Key, Pending>>,
    routes: Mutex<HashMap<Ipv4Addr, (Ipv4Addr, Instant)>>,
    next_port: AtomicUsize,
    seeds: RandomState,
}

/// The half-open prober of one daemon: its raw socket, reserved ports and the task reading
/// answers (stopped when the prober is dropped).
pub struct SynProber {
    shared: Arc<Shared>,
    /// Held, never used: they keep the source ports ours.
    _reserved: Vec<Socket>,
    reader: AbortHandle,
}

impl SynProber {
    /// Opens the raw socket and reserves the ports; fails without CAP_NET_RAW. `source`, if
    /// IPv4, is the address probes leave from. Needs the tokio runtime.
    pub fn open(source: Option<IpAddr>) -> io::Result<Self> {
        let source = match source {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        };
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
        raw.set_nonblocking(true)?;
        raw.attach_filter(&answers_only())?;
        raw.set_recv_buffer_size(RECEIVE_BUFFER)?;
        if let Some(a) = source {
            // A raw socket's bound address is the source of what it sends.
            raw.bind(&SocketAddr::from((a, 0)).into())?;
        }
        let mut reserved = Vec::with_capacity(PORTS);
        let mut ports = Vec::with_capacity(PORTS);
        for _ in 0..PORTS {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            s.bind(&SocketAddr::from((source.unwrap_or(Ipv4Addr::UNSPECIFIED), 0)).into())?;
            let port = s
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .ok_or_else(|| io::Error::other("reserved socket has no port"))?;
            ports.push(port);
            reserved.push(s);
        }
        // SAFETY: `Socket` owns its descriptor; it stays open and the same until the AsyncFd
        // drops the socket with it. (tokio made registration `unsafe` for borrowed fds.)
        #[allow(unsafe_code)]
        let raw = unsafe { AsyncFd::register(raw)? };
        let shared = Arc::new(Shared {
            raw,
            ports,
            source,
            pending: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            next_port: AtomicUsize::new(0),
            seeds: RandomState::new(),
        });
        let reader = tokio::spawn(read_answers(shared.clone())).abort_handle();
        Ok(SynProber {
            shared,
            _reserved: reserved,
            reader,
        })
    }

    /// Probes `endpoint`: resolves with the first answer, resending the SYN every
    /// `timeout / ATTEMPTS` meanwhile. Never resolves without an answer: the caller's
    /// deadline ends it (dropping the future forgets the probe).
    pub async fn check(
        &self,
        endpoint: SocketAddr,
        timeout: Duration,
    ) -> Result<Answer, Unavailable> {
        let dst = syn_packet::v4(endpoint).ok_or(Unavailable::Ipv6)?;
        let src = self.shared.source_for(*dst.ip())?;
        let seq = self.shared.seeds.hash_one((dst, Instant::now())) as u32;
        let (port, answered) = self.shared.register(dst, seq)?;
        let _forget = Forget {
            shared: &self.shared,
            key: (dst, port),
        };
        let segment = syn_packet::syn(src, port, dst, seq);
        let mut answered = std::pin::pin!(answered);
        let spacing = timeout / ATTEMPTS;
        for attempt in 1..=ATTEMPTS {
            if let Err(e) = self.shared.send(&segment, dst).await {
                self.shared.forget_route(*dst.ip());
                return Err(Unavailable::Send(e));
            }
            let wait = if attempt == ATTEMPTS {
                timeout
            } else {
                spacing
            };
            if let Ok(answer) = tokio::time::timeout(wait, &mut answered).await {
                // A closed channel means the prober is going away: no answer, like a timeout.
                return match answer {
                    Ok(answer) => Ok(answer),
                    Err(_) => std::future::pending().await,
                };
            }
        }
        // No answer to any attempt: perhaps the route (and with it the source) changed.
        self.shared.forget_route(*dst.ip());
        std::future::pending().await
    }
}

impl Drop for SynProber {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Removes a probe's pending entry however the probe ends (answer, deadline, abort).
struct Forget<'a> {
    shared: &'a Shared,
    key: Key,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.lock_pending().remove(&self.key);
    }
}

impl Shared {
    fn lock_pending(&self) -> MutexGuard<'_, HashMap<Key, Pending>> {
        // A panic while holding the map leaves it consistent (single inserts and removes).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a free source port for `dst` and registers the probe's expected answer.
    fn register(
        &self,
        dst: SocketAddrV4,
        seq: u32,
    ) -> Result<(u16, oneshot::Receiver<Answer>), Unavailable> {
        let (done, answered) = oneshot::channel();
        let mut pending = self.lock_pending();
        let start = self.next_port.fetch_add(1, Ordering::Relaxed);
        let port = (0..self.ports.len())
            .map(|i| self.ports[(start + i) % self.ports.len()])
            .find(|&p| !pending.contains_key(&(dst, p)))
            .ok_or(Unavailable::PortsBusy(SocketAddr::V4(dst)))?;
        pending.insert(
            (dst, port),
            Pending {
                ack: seq.wrapping_add(1),
                done,
            },
        );
        Ok((port, answered))
    }

    /// The address the kernel will write as the source of a packet to `dst`: the checksum
    /// covers it. The configured source, else the routing table's choice (asked through an
    /// unconnected-then-connected UDP socket, which sends nothing), cached for a while.
    fn source_for(&self, dst: Ipv4Addr) -> Result<Ipv4Addr, Unavailable> {
        if let Some(a) = self.source {
            return Ok(a);
        }
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((src, at)) = routes.get(&dst) {
            if at.elapsed() < ROUTE_TTL {
                return Ok(*src);
            }
        }
        let asked = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|u| u.connect((dst, 9)).map(|()| u))
            .and_then(|u| u.local_addr());
        match asked {
            Ok(SocketAddr::V4(a)) => {
                routes.insert(dst, (*a.ip(), Instant::now()));
                Ok(*a.ip())
            }
            Ok(SocketAddr::V6(_)) => Err(Unavailable::Ipv6),
            Err(e) => Err(Unavailable::Route(dst, e)),
        }
    }

    fn forget_route(&self, dst: Ipv4Addr) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&dst);
    }

    async fn send(&self, segment: &[u8], dst: SocketAddrV4) -> io::Result<()> {
        // A raw socket's port is the protocol's business: the address's port is ignored.
        let to = SocketAddr::from((*dst.ip(), 0)).into();
        loop {
            let mut ready = self.raw.writable().await?;
            match ready.try_io(|raw| raw.get_ref().send_to(segment, &to)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    fn deliver(&self, reply: Reply) {
        let mut pending = self.lock_pending();
        let key = (reply.from, reply.to_port);
        if pending.get(&key).is_some_and(|p| p.ack == reply.ack) {
            if let Some(p) = pending.remove(&key) {
                // The probe may have just given up: then nobody listens, which is fine.
                let _ = p.done.send(reply.answer);
            }
        }
    }
}

async fn read_answers(shared: Arc<Shared>) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok(mut ready) = shared.raw.readable().await else {
            tracing::error!("health: the raw socket failed; tcp probes time out");
            return;
        };
        // The first answer wakes this task; it reads at the next tick of the probe thread's
        // grid, with the answers that came meanwhile (`super::tick`).
        tokio::time::sleep_until(on_tick(tokio::time::Instant::now())).await;
        loop {
            let read = ready.try_io(|raw| {
                let mut socket: &Socket = raw.get_ref();
                socket.read(&mut buf)
            });
            match read {
                Ok(Ok(n)) => {
                    if let Some(reply) = syn_packet::parse_ipv4(&buf[..n]) {
                        shared.deliver(reply);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!("health: reading the raw socket: {e}");
                    break;
                }
                Err(_would_block) => break,
            }
        }
    }
}

/// A classic BPF program for the raw socket: keep TCP segments with SYN+ACK, or RST+ACK, set
/// (answers to a SYN), drop everything else. Without it the socket would get a copy of every
/// TCP segment the gateway itself receives (ADMIN's export, the metrics listener).
fn answers_only() -> Vec<SockFilter> {
    use crate::apply::bpf::{AND, JEQ, LDB_ABS, LDB_IND, LDX_MSH, RET};
    vec![
        SockFilter::new(LDB_ABS, 0, 0, 9),  // IP protocol
        SockFilter::new(JEQ, 0, 7, 6),      // not TCP: drop
        SockFilter::new(LDX_MSH, 0, 0, 0),  // X = IP header length
        SockFilter::new(LDB_IND, 0, 0, 13), // TCP flags
        SockFilter::new(AND, 0, 0, 0x16),   // SYN | RST | ACK
        SockFilter::new(JEQ, 2, 0, 0x12),   // SYN+ACK: keep
        SockFilter::new(JEQ, 1, 0, 0x14),   // RST+ACK: keep
        SockFilter::new(RET, 0, 0, 0),      // else drop
        SockFilter::new(RET, 0, 0, 0xffff), // keep
        SockFilter::new(RET, 0, 0, 0),      // (not TCP) drop
    ]
}
