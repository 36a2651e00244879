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
/// Linux answers at most one out-of-window segment per socket in this time
/// (`net.ipv4.tcp_invalid_ratelimit`, default 500 ms).
const INVALID_RATELIMIT: Duration = Duration::from_millis(500);

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
/// It has data in flight — and may be backing off — if its own answer shows its `snd_nxt`
/// beyond that; without its own answer, assume it has. Not `!=`: while data flows (a planned
/// failover) the two answers are taken at different moments, and a peer's `rcv_nxt` already
/// past the `snd_nxt` of an earlier answer means nothing waits.
pub fn plan(conn: &Conn, client: Option<Segment>, server: Option<Segment>) -> Vec<Icmp> {
    let mut out = Vec::new();
    if let Some(s) = server {
        if client.is_none_or(|c| seq_after(c.seq, s.ack)) {
            out.push(Icmp {
                to_client: true,
                quoted: (conn.client, conn.vip),
                seq: s.ack,
            });
        }
    }
    if let Some(c) = client {
        if server.is_none_or(|s| seq_after(s.seq, c.ack)) {
            out.push(Icmp {
                to_client: false,
                quoted: (conn.server, conn.server_peer),
                seq: c.ack,
            });
        }
    }
    out
}

/// `a` later than `b` in sequence space (RFC 1982 arithmetic, as the kernel's `after()`).
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
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

    /// Probes the endpoints of every connection not done yet whose answer is missing (all of
    /// them when `client` and `server` are set: round 1), with sequence number `seqs[i]`.
    fn probe_round(
        &mut self,
        capture: &mut Capture,
        sender: &mut Sender,
        seqs: &[u32],
        client: bool,
        server: bool,
    ) -> Result<(), KickError> {
        for (i, (c, &seq)) in self.conns.iter().zip(seqs).enumerate() {
            let Some(a) = self.answers.get(i) else {
                continue;
            };
            if a.done {
                continue;
            }
            let ack = seq.rotate_left(16);
            let ask_client = client || a.client.is_none();
            let ask_server = server || a.server.is_none();
            for (ask, from, to) in [
                (ask_client, c.vip, c.client),
                (ask_server, c.server_peer, c.server),
            ] {
                if ask && sender.send(&packet::probe(from, to, seq, ack), *to.ip()) {
                    self.report.probes_sent += 1;
                }
            }
            if i % DRAIN_EVERY == DRAIN_EVERY - 1 {
                while self.drain(capture, sender, Duration::ZERO)? {}
            }
        }
        Ok(())
    }

    /// Reads answers until every connection has both, or `deadline`.
    fn collect(
        &mut self,
        capture: &mut Capture,
        sender: &mut Sender,
        deadline: Instant,
    ) -> Result<(), KickError> {
        while self.waiting > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.drain(capture, sender, left)?;
        }
        Ok(())
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

/// Kicks `conns` (see the module documentation); blocks for the probes, at most twice
/// `answer_wait` more for the answers, and the ICMP messages.
pub fn kick(conns: &[Conn], opts: &Options) -> Result<Report, KickError> {
    let start = Instant::now();
    // Open before the first probe, or the first answers go by unseen.
    let mut capture = Capture::open().map_err(KickError::Capture)?;
    let mut sender = Sender::open(opts.packets_per_second).map_err(KickError::Sender)?;
    let mut kick = Kick::new(conns, opts.icmp_copies);
    let seeds = RandomState::new();
    let seqs: Vec<u32> = conns
        .iter()
        .enumerate()
        .map(|(i, c)| seeds.hash_one((i, c)) as u32)
        .collect();
    // Round 1: one probe per endpoint. Its sequence number falls inside the receive window
    // (and draws no answer) with a chance of window / 2^32.
    kick.probe_round(&mut capture, &mut sender, &seqs, true, true)?;
    let last_probe = Instant::now();
    kick.collect(&mut capture, &mut sender, last_probe + opts.answer_wait)?;
    // Round 2, for the endpoints still silent: 2^31 further on, so outside any window; also
    // a second chance for an answer that was lost (the node's VIPs were just added, and a
    // neighbour may still send to the old node). After the 500 ms per-socket limit on such
    // answers (`tcp_invalid_ratelimit`), counted from the last probe of round 1.
    if kick.waiting > 0 {
        // Still acting on the answers that come meanwhile.
        kick.collect(&mut capture, &mut sender, last_probe + INVALID_RATELIMIT)?;
        let further: Vec<u32> = seqs.iter().map(|x| x.wrapping_add(1 << 31)).collect();
        kick.probe_round(&mut capture, &mut sender, &further, false, false)?;
        kick.collect(&mut capture, &mut sender, Instant::now() + opts.answer_wait)?;
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

    #[test]
    fn a_peer_already_past_an_earlier_answer_means_nothing_waits() {
        let c = conn();
        // The server answered at snd_nxt 500; the client's later answer has received 520
        // (echoes kept flowing): nothing of the server's waits. Across the wrap too.
        let server = seg(c.server, c.server_peer, 500, 1000);
        let client = seg(c.client, c.vip, 1000, 520);
        assert_eq!(plan(&c, Some(client), Some(server)), []);
        let server = seg(c.server, c.server_peer, u32::MAX - 5, 1000);
        let client = seg(c.client, c.vip, 1000, 14);
        assert_eq!(plan(&c, Some(client), Some(server)), []);
        let client = seg(c.client, c.vip, 1000, u32::MAX - 9);
        assert_eq!(
            plan(&c, Some(client), Some(server)).len(),
            1,
            "4 bytes of the server's in flight across the wrap"
        );
    }
}
