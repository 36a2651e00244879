//! The kick's two sockets: a raw IPv4 socket that sends whole datagrams (`IPPROTO_RAW`
//! implies `IP_HDRINCL`: the probes carry an endpoint's peer as their source) with the
//! [`KICK_MARK`], and an `AF_PACKET` socket that captures the endpoints' answers as they
//! arrive, before conntrack and NAT touch them. Plus the pacer that bounds the send rate.

use super::packet;
use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Everything the kick sends carries [`KICK_MARK`]; the `output_notrack` chain of our table
/// exempts it from conntrack. Tracked, a probe spoofing the client towards the server
/// would match no entry (the entry's reply tuple runs the other way): conntrack would refuse
/// it as a new mid-stream connection with `nf_conntrack_tcp_loose=0`, and with the default
/// start an entry whose reply tuple clashes with the real connection's.
pub use crate::render::nft::KICK_MARK;
/// `ETH_P_IP`: the capture sees IPv4 arriving on any interface; a packet socket bound to
/// one protocol never sees what this host sends.
const ETH_P_IP: u16 = 0x0800;
/// Room for a burst of answers: two per connection, 40-60 bytes each plus overhead.
const CAPTURE_BUFFER: usize = 16 << 20;
const SEND_BUFFER: usize = 4 << 20;

pub struct Sender {
    raw: Socket,
    pacer: Pacer,
    pub errors: u64,
    pub last_error: Option<io::Error>,
}

impl Sender {
    pub fn open(packets_per_second: u32) -> io::Result<Sender> {
        let raw = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        raw.set_mark(KICK_MARK)?;
        raw.set_send_buffer_size(SEND_BUFFER)?;
        Ok(Sender {
            raw,
            pacer: Pacer::new(packets_per_second),
            errors: 0,
            last_error: None,
        })
    }

    /// Sends one datagram to `dst`, paced; a refusal (no route, a full queue) is counted,
    /// not fatal: the other connections still get theirs. Returns whether it went.
    pub fn send(&mut self, datagram: &[u8], dst: Ipv4Addr) -> bool {
        self.pacer.wait();
        // A raw socket ignores the port.
        let to = SockAddr::from(SocketAddr::from((dst, 0)));
        match self.raw.send_to(datagram, &to) {
            Ok(_) => true,
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(e);
                false
            }
        }
    }
}

/// Spreads sends evenly at `rate` per second: the kick of 100k connections must not flood
/// the links the gateway just took over, nor its own CPU.
struct Pacer {
    rate: u32,
    start: Instant,
    sent: u64,
}

impl Pacer {
    fn new(rate: u32) -> Pacer {
        Pacer {
            rate: rate.max(1),
            start: Instant::now(),
            sent: 0,
        }
    }

    fn wait(&mut self) {
        self.sent += 1;
        let due = Duration::from_secs_f64(self.sent as f64 / f64::from(self.rate));
        let elapsed = self.start.elapsed();
        // Sleeping per packet would cost more than sending: catch up in 1 ms steps.
        if due > elapsed + Duration::from_millis(1) {
            std::thread::sleep(due - elapsed);
        }
    }
}

pub struct Capture {
    socket: Socket,
    buf: Vec<u8>,
    /// The socket's mode, switched only when a call needs the other one.
    blocking: bool,
}

impl Capture {
    pub fn open() -> io::Result<Capture> {
        let protocol = Protocol::from(i32::from(ETH_P_IP.to_be()));
        // SOCK_DGRAM: the link-layer header is removed, the data starts at the IP header.
        let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(protocol))?;
        socket.attach_filter(&pure_acks())?;
        socket.set_recv_buffer_size(CAPTURE_BUFFER)?;
        socket.set_nonblocking(true)?;
        let mut capture = Capture {
            socket,
            buf: vec![0; 256],
            blocking: false,
        };
        // What arrived between creating the socket and attaching the filter.
        while capture.next(Duration::ZERO)?.is_some() {}
        Ok(capture)
    }

    /// The next captured pure ACK, waiting up to `wait` (zero: only what is queued).
    pub fn next(&mut self, wait: Duration) -> io::Result<Option<packet::Segment>> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() == self.blocking {
                self.blocking = !left.is_zero();
                self.socket.set_nonblocking(!self.blocking)?;
            }
            if self.blocking {
                self.socket.set_read_timeout(Some(left))?;
            }
            match (&self.socket).read(&mut self.buf) {
                Ok(n) => {
                    if let Some(segment) = self.buf.get(..n).and_then(packet::parse_ack) {
                        return Ok(Some(segment));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Classic BPF for the capture: IPv4 TCP, not a later fragment, ACK without SYN, FIN or RST,
/// and no data (total length = IP header + TCP header) — the shape of a duplicate ACK. Keeps
/// the gateway's forwarded data traffic out of the socket.
fn pure_acks() -> Vec<SockFilter> {
    use crate::apply::bpf::*;
    // Jumps are relative to the next instruction; DROP and KEEP are the last two.
    vec![
        SockFilter::new(LDB_ABS, 0, 0, 0), // 0: version and header length
        SockFilter::new(AND, 0, 0, 0xf0),  // 1
        SockFilter::new(JEQ, 0, 16, 0x40), // 2: not IPv4: drop
        SockFilter::new(LDB_ABS, 0, 0, 9), // 3: protocol
        SockFilter::new(JEQ, 0, 14, 6),    // 4: not TCP: drop
        SockFilter::new(LDH_ABS, 0, 0, 6), // 5: flags and fragment offset
        SockFilter::new(JSET, 12, 0, 0x1fff), // 6: a later fragment: drop
        SockFilter::new(LDX_MSH, 0, 0, 0), // 7: X = IP header length
        SockFilter::new(LDB_IND, 0, 0, 13), // 8: TCP flags
        SockFilter::new(AND, 0, 0, 0x17),  // 9: FIN SYN RST ACK
        SockFilter::new(JEQ, 0, 8, 0x10),  // 10: not ACK alone: drop
        SockFilter::new(LDB_IND, 0, 0, 12), // 11: data offset << 4
        SockFilter::new(AND, 0, 0, 0xf0),  // 12
        SockFilter::new(RSH, 0, 0, 2),     // 13: A = TCP header length
        SockFilter::new(ADD_X, 0, 0, 0),   // 14: A = both headers
        SockFilter::new(ST, 0, 0, 0),      // 15: M[0] = A
        SockFilter::new(LDH_ABS, 0, 0, 2), // 16: IP total length
        SockFilter::new(LDX_MEM, 0, 0, 0), // 17: X = M[0]
        SockFilter::new(JEQ_X, 1, 0, 0),   // 18: no data: keep
        SockFilter::new(RET, 0, 0, 0),     // 19: drop
        SockFilter::new(RET, 0, 0, 128),   // 20: keep the headers
    ]
}
