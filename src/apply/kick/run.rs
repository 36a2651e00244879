//! One kick: probe both endpoints of every connection, read their answers as they arrive,
//! and send the ICMP messages a connection needs as soon as both of its answers are in (or,
//! for those with one answer, when the wait is over).

use super::packet::{self, Segment};
use super::socket::{Capture, Sender};
use super::{Conn, KickError, Options, Report};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// Probes between two looks at the capture, so a burst of answers never fills its buffer.
const DRAIN_EVERY: usize = 64;

/// One ICMP message to send: to `quoted.0`'s host, quoting its segment to `quoted.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub to_client: bool,
    pub quoted: (SocketAddrV4, SocketAddrV4),
    /// The endpoint's `snd_una`: what its peer has received.
    pub seq: u32,
}

/// What a connection needs, from what its endpoints answered. An endpoint's `snd_una` is its
/// peer's `rcv_nxt` (the peer's answer, which went on to it, caught it up if it was behind).
/// It has data in flight — and may be backing off — unless its own answer shows its
/// `snd_nxt` already there; without its own answer, assume it has.
pub fn plan(conn: &Conn, client: Option<Segment>, server: Option<Segment>) -> Vec<Icmp> {
    let mut out = Vec::new();
    if let Some(s) = server {
        if client.is_none_or(|c| c.seq != s.ack) {
            out.push(Icmp {
                to_client: true,
                quoted: (conn.client, conn.vip),
                seq: s.ack,
            });
        }
    }
    if let Some(c) = client {
        if server.is_none_or(|s| s.seq != c.ack) {
            out.push(Icmp {
                to_client: false,
                quoted: (conn.server, conn.server_peer),
                seq: c.ack,
            });
        }
    }
    out
}

#[derive(Default)]
struct Answers {
    client: Option<Segment>,
    server: Option<Segment>,
    done: bool,
}

struct Kick<'a> {
    conns: &'a [Conn],
    answers: Vec<Answers>,
    /// An answer's (from, to) → its connection and whether the client sent it.
    index: HashMap<(SocketAddrV4, SocketAddrV4), (usize, bool)>,
    waiting: usize,
    copies: u8,
    report: Report,
}

impl<'a> Kick<'a> {
    fn new(conns: &'a [Conn], copies: u8) -> Kick<'a> {
        let mut index = HashMap::with_capacity(conns.len() * 2);
        for (i, c) in conns.iter().enumerate() {
            index.insert((c.client, c.vip), (i, true));
            index.insert((c.server, c.server_peer), (i, false));
        }
        Kick {
            conns,
            answers: conns.iter().map(|_| Answers::default()).collect(),
            index,
            waiting: conns.len(),
            copies,
            report: Report {
                connections: conns.len(),
                ..Report::default()
            },
        }
    }

    fn answer(&mut self, seg: Segment, sender: &mut Sender) {
        let Some(&(i, from_client)) = self.index.get(&(seg.from, seg.to)) else {
            return;
        };
        let Some(a) = self.answers.get_mut(i) else {
            return;
        };
        if a.done {
            return;
        }
        let slot = if from_client {
            &mut a.client
        } else {
            &mut a.server
        };
        if slot.is_none() {
            if from_client {
                self.report.client_answers += 1;
            } else {
                self.report.server_answers += 1;
            }
        }
        *slot = Some(seg);
        if a.client.is_some() && a.server.is_some() {
            self.act(i, sender);
        }
    }

    fn act(&mut self, i: usize, sender: &mut Sender) {
        let (Some(conn), Some(a)) = (self.conns.get(i), self.answers.get_mut(i)) else {
            return;
        };
        a.done = true;
        self.waiting -= 1;
        let icmps = plan(conn, a.client, a.server);
        if icmps.is_empty() && a.client.is_some() && a.server.is_some() {
            self.report.idle += 1;
        }
        for icmp in icmps {
            let (from, to) = icmp.quoted;
            let datagram =
                packet::host_unreachable(std::net::Ipv4Addr::UNSPECIFIED, from, to, icmp.seq);
            // Back to back: each undoes one backoff step, and the retransmission they
            // release is acknowledged at once, after which the rest are dropped as old.
            for _ in 0..self.copies {
                if sender.send(&datagram, *from.ip()) {
                    if icmp.to_client {
                        self.report.icmp_to_clients += 1;
                    } else {
                        self.report.icmp_to_servers += 1;
                    }
                }
            }
        }
    }

    fn drain(
        &mut self,
        capture: &mut Capture,
        sender: &mut Sender,
        wait: Duration,
    ) -> Result<bool, KickError> {
        match capture.next(wait).map_err(KickError::Read)? {
            Some(seg) => {
                self.answer(seg, sender);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Kicks `conns` (see the module documentation); blocks for the probes, at most
/// `answer_wait` more for the answers, and the ICMP messages.
pub fn kick(conns: &[Conn], opts: &Options) -> Result<Report, KickError> {
    let start = Instant::now();
    // Open before the first probe, or the first answers go by unseen.
    let mut capture = Capture::open().map_err(KickError::Capture)?;
    let mut sender = Sender::open(opts.packets_per_second).map_err(KickError::Sender)?;
    let mut kick = Kick::new(conns, opts.icmp_copies);
    let seeds = RandomState::new();
    for (i, c) in conns.iter().enumerate() {
        let x = seeds.hash_one((i, c)) as u32;
        // Two probes 2^31 apart: no receive window is that large, so one is outside it.
        for seq in [x, x.wrapping_add(1 << 31)] {
            let ack = seq.rotate_left(16);
            for (from, to) in [(c.vip, c.client), (c.server_peer, c.server)] {
                if sender.send(&packet::probe(from, to, seq, ack), *to.ip()) {
                    kick.report.probes_sent += 1;
                }
            }
        }
        if i % DRAIN_EVERY == DRAIN_EVERY - 1 {
            while kick.drain(&mut capture, &mut sender, Duration::ZERO)? {}
        }
    }
    let deadline = Instant::now() + opts.answer_wait;
    while kick.waiting > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        kick.drain(&mut capture, &mut sender, left)?;
    }
    // Connections with one answer: kick the endpoint whose snd_una it tells.
    for i in 0..conns.len() {
        let pending = kick
            .answers
            .get(i)
            .is_some_and(|a| !a.done && (a.client.is_some() || a.server.is_some()));
        if pending {
            kick.act(i, &mut sender);
        }
    }
    let mut report = kick.report;
    report.send_errors = sender.errors;
    report.last_send_error = sender.last_error.map(|e| e.to_string());
    report.elapsed = start.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().expect("socket address")
    }

    fn conn() -> Conn {
        Conn {
            client: sa("203.0.113.5:40000"),
            vip: sa("192.0.2.10:7000"),
            server: sa("10.1.0.7:7000"),
            server_peer: sa("203.0.113.5:40000"),
        }
    }

    fn seg(from: SocketAddrV4, to: SocketAddrV4, seq: u32, ack: u32) -> Segment {
        Segment { from, to, seq, ack }
    }

    #[test]
    fn an_endpoint_with_data_in_flight_is_kicked_with_its_peers_rcv_nxt() {
        let c = conn();
        // The client sent up to 1009, the server received up to 1000: 9 bytes in flight.
        // The server has nothing in flight (the client received all it sent, up to 500).
        let client = seg(c.client, c.vip, 1009, 500);
        let server = seg(c.server, c.server_peer, 500, 1000);
        assert_eq!(
            plan(&c, Some(client), Some(server)),
            [Icmp {
                to_client: true,
                quoted: (c.client, c.vip),
                seq: 1000
            }]
        );
    }

    #[test]
    fn an_idle_connection_gets_nothing_and_a_lone_answer_kicks_the_other_side() {
        let c = conn();
        let client = seg(c.client, c.vip, 1000, 500);
        let server = seg(c.server, c.server_peer, 500, 1000);
        assert_eq!(plan(&c, Some(client), Some(server)), []);
        assert_eq!(
            plan(&c, Some(client), None),
            [Icmp {
                to_client: false,
                quoted: (c.server, c.server_peer),
                seq: 500
            }],
            "without the server's answer its snd_nxt is unknown: kick it"
        );
        assert_eq!(plan(&c, None, None), []);
    }
}
