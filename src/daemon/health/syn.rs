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
//! This module is the socket: SYNs go out in batches (`sendmmsg`) and answers come in in
//! batches (`recvmmsg`), one system call for all the probes due in one tick of the sweep
//! (`super::sweep`, which schedules the probes and matches the answers).
//!
//! The source ports are reserved by binding ordinary TCP sockets to them (never listening),
//! so the kernel gives them to no connection of its own and answers their SYN-ACKs with a
//! reset. They are the table's [`PROBE_PORTS`], whose probes and answers skip conntrack
//! (the rules are in `render::nft::layout`); a port another program holds is left out, and
//! with none of them free the prober takes ephemeral ports, whose probes are tracked as
//! before. Each probe has its own random sequence number; an answer must acknowledge it.

use super::syn_packet::{self, Reply, TCP_HEADER};
use crate::render::nft::PROBE_PORTS;
use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders,
    SockaddrIn,
};
use nix::sys::time::TimeSpec;
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// Ephemeral source ports reserved when none of [`PROBE_PORTS`] is free. A target is probed
/// from the next port each time, so that a new SYN never meets what is left of the last
/// probe's half-open connection on the server.
const FALLBACK_PORTS: usize = 32;
/// Room for answers arriving in a burst (the socket sees only SYN-ACKs and RSTs: see
/// [`answers_only`]).
const RECEIVE_BUFFER: usize = 4 << 20;
/// Messages per `sendmmsg` / `recvmmsg` call.
const BATCH: usize = 64;
/// Bytes read of each answer: the IP header (at most 60) and the TCP header's first 20 are
/// all the parser looks at; the rest is cut.
const ANSWER_BYTES: usize = 96;

/// One SYN to send: the segment and where to.
#[derive(Clone, Copy, Debug)]
pub struct Syn {
    pub to: SocketAddrV4,
    pub segment: [u8; TCP_HEADER],
}

/// An answer and when it arrived: the kernel's receive time, so that a latency does not
/// depend on when the sweep got round to reading it (once per tick of its grid).
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub reply: Reply,
    pub at: Instant,
}

/// The raw socket of the half-open prober and its reserved source ports.
pub struct SynSocket {
    raw: AsyncFd<Socket>,
    ports: Vec<u16>,
    source: Option<Ipv4Addr>,
    /// Held, never used: they keep the source ports ours.
    _reserved: Vec<Socket>,
}

impl SynSocket {
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
        setsockopt(&raw, sockopt::ReceiveTimestampns, &true)?;
        if let Some(a) = source {
            // A raw socket's bound address is the source of what it sends.
            raw.bind(&SocketAddr::from((a, 0)).into())?;
        }
        let bound = source.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let mut reserved = Vec::new();
        let mut taken = Vec::new();
        for port in PROBE_PORTS.0..=PROBE_PORTS.1 {
            match reserve(bound, port) {
                Ok(s) => reserved.push(s),
                Err(e) => taken.push(format!("{port} ({e})")),
            }
        }
        if !taken.is_empty() {
            tracing::warn!(
                "health: probe ports in use by another program, left out: {}",
                taken.join(", ")
            );
        }
        if reserved.is_empty() {
            for _ in 0..FALLBACK_PORTS {
                reserved.push(reserve(bound, 0)?);
            }
        }
        let ports = reserved
            .iter()
            .map(|s| {
                s.local_addr()?
                    .as_socket()
                    .map(|a| a.port())
                    .ok_or_else(|| io::Error::other("reserved socket has no port"))
            })
            .collect::<io::Result<Vec<u16>>>()?;
        // SAFETY: `Socket` owns its descriptor; it stays open and the same until the AsyncFd
        // drops the socket with it. (tokio made registration `unsafe` for borrowed fds.)
        #[allow(unsafe_code)]
        let raw = unsafe { AsyncFd::register(raw)? };
        Ok(SynSocket {
            raw,
            ports,
            source,
            _reserved: reserved,
        })
    }

    /// The reserved source ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The address the kernel will write as the source of a packet to `dst`: the checksum
    /// covers it. The configured source, else the routing table's choice (asked through an
    /// unconnected-then-connected UDP socket, which sends nothing).
    pub fn source_for(&self, dst: Ipv4Addr) -> io::Result<Ipv4Addr> {
        if let Some(a) = self.source {
            return Ok(a);
        }
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect((dst, 9))?;
        match socket.local_addr()? {
            SocketAddr::V4(a) => Ok(*a.ip()),
            SocketAddr::V6(_) => Err(io::ErrorKind::AddrNotAvailable.into()),
        }
    }

    /// Sends what it can of `syns`, in order, a batch per system call, and removes what was
    /// sent or failed. Returns the ones that failed, with why; what is left in `syns` found
    /// the socket's buffer full and waits for the next call.
    pub fn send(&self, syns: &mut Vec<Syn>) -> Vec<(Syn, io::Error)> {
        let mut failed = Vec::new();
        let mut done = 0;
        while done < syns.len() {
            let batch = &syns[done..syns.len().min(done + BATCH)];
            match send_batch(self.raw.get_ref(), batch) {
                Ok(0) => break, // (not for a non-empty batch; never spin on it)
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The first of the batch failed (a later one would have ended the batch
                // early, and fails again on its own).
                Err(e) => {
                    failed.push((syns[done], e));
                    done += 1;
                }
            }
        }
        syns.drain(..done);
        failed
    }

    /// Waits until answers can be read.
    pub async fn readable(&self) -> io::Result<()> {
        self.raw.readable().await.map(|_| ())
    }

    /// Reads every answer waiting, a batch per system call, into `arrivals`; returns when
    /// the socket is empty.
    pub async fn receive(&self, arrivals: &mut Vec<Arrival>) -> io::Result<()> {
        let mut buffers = vec![[0u8; ANSWER_BYTES]; BATCH];
        // The kernel stamps answers with the wall clock; the sweep's clock is monotonic.
        let clocks = (Instant::now(), SystemTime::now());
        loop {
            // Ready at once when answers wait; when none do, there is nothing to read.
            let ready = tokio::select! {
                biased;
                ready = self.raw.readable() => Some(ready?),
                () = std::future::ready(()) => None,
            };
            let Some(mut ready) = ready else {
                return Ok(());
            };
            // Read until the kernel says the socket is empty (that answer is what clears
            // tokio's readiness, so `readable` waits again), or a batch comes back short: the
            // socket was emptied, and asking again only to hear so would be a second system
            // call every tick. The readiness left set costs one empty read, at the next
            // tick or the next `readable`.
            match ready.try_io(|raw| receive_batch(raw.get_ref(), &mut buffers)) {
                Ok(Ok(received)) => {
                    let short = received.len() < BATCH;
                    for (buffer, (len, stamp)) in buffers.iter().zip(received) {
                        if let Some(reply) = buffer.get(..len).and_then(syn_packet::parse_ipv4) {
                            let at = stamp.map_or(clocks.0, |s| monotonic(s, clocks));
                            arrivals.push(Arrival { reply, at });
                        }
                    }
                    if short {
                        return Ok(());
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => return Ok(()),
            }
        }
    }
}

/// A TCP socket bound to `port` (0: the kernel picks), never listening: it keeps the port
/// from every other socket.
fn reserve(address: Ipv4Addr, port: u16) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SocketAddr::from((address, port)).into())?;
    Ok(s)
}

/// One `sendmmsg`: the number of SYNs the kernel took (at least one), or the error of the
/// first. (The headers are made per call, a few a tick: nix's `MultiHeaders` holds raw
/// pointers, so the sweep's future could not keep one across an await and stay `Send`.)
fn send_batch(raw: &Socket, syns: &[Syn]) -> io::Result<usize> {
    let slices: Vec<[IoSlice<'_>; 1]> = syns.iter().map(|s| [IoSlice::new(&s.segment)]).collect();
    // A raw socket's port is the protocol's business: the address's port is ignored.
    let addresses: Vec<Option<SockaddrIn>> = syns
        .iter()
        .map(|s| Some(SockaddrIn::from(SocketAddrV4::new(*s.to.ip(), 0))))
        .collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(syns.len(), None);
    let sent = sendmmsg(
        raw.as_raw_fd(),
        &mut headers,
        &slices,
        &addresses,
        [],
        MsgFlags::MSG_DONTWAIT,
    )?;
    Ok(sent.count())
}

/// The instant of a wall-clock `stamp`, by its age on the wall clock when `clocks` were
/// read (a stamp from the future, the wall clock stepped back, is taken as then).
fn monotonic(stamp: TimeSpec, (instant, wall): (Instant, SystemTime)) -> Instant {
    let (Ok(secs), Ok(nanos)) = (
        u64::try_from(stamp.tv_sec()),
        u32::try_from(stamp.tv_nsec()),
    ) else {
        return instant;
    };
    let age = wall
        .duration_since(UNIX_EPOCH + Duration::new(secs, nanos))
        .unwrap_or_default();
    instant.checked_sub(age).unwrap_or(instant)
}

/// One `recvmmsg`: each answer's length (cut at `ANSWER_BYTES`) and receive time.
fn receive_batch(
    raw: &Socket,
    buffers: &mut [[u8; ANSWER_BYTES]],
) -> io::Result<Vec<(usize, Option<TimeSpec>)>> {
    let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
        .iter_mut()
        .map(|b| [IoSliceMut::new(&mut b[..])])
        .collect();
    let mut headers =
        MultiHeaders::<SockaddrIn>::preallocate(slices.len(), Some(nix::cmsg_space!(TimeSpec)));
    let received = recvmmsg(
        raw.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    Ok(received
        .map(|m| {
            let stamp = m.cmsgs().ok().and_then(|mut c| {
                c.find_map(|c| match c {
                    ControlMessageOwned::ScmTimestampns(t) => Some(t),
                    _ => None,
                })
            });
            (m.bytes.min(ANSWER_BYTES), stamp)
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(t: SystemTime) -> TimeSpec {
        TimeSpec::from_duration(t.duration_since(UNIX_EPOCH).expect("after 1970"))
    }

    #[test]
    fn receive_times_map_onto_the_monotonic_clock_by_their_age() {
        let clocks = (Instant::now(), SystemTime::now());
        let ms = Duration::from_millis;
        let five_ago = stamp(clocks.1 - ms(5));
        assert_eq!(monotonic(five_ago, clocks), clocks.0 - ms(5));
        // The wall clock stepped back: a stamp "from the future" is taken as the read.
        let ahead = stamp(clocks.1 + ms(500));
        assert_eq!(monotonic(ahead, clocks), clocks.0);
    }
}
