//! The half-open sweep's bookkeeping (see [`super::sweep`]): which target is probed when,
//! from which port with which sequence number, what an answer or a deadline means, and the
//! source each target's SYNs leave from. No I/O: `sweep` does that, and the tests here drive
//! this with made-up instants and answers.

use super::probe::ProbeError;
use super::sweep::takes;
use super::syn_packet::{Answer, Reply};
use super::tick::on_grid;
use super::HealthConfig;
use crate::model::health::Target;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::time::Instant;

/// The sweep's grid: what is due is done in one go every `TICK`. Twice the probe thread's
/// grid (`super::tick::TICK`): at 5,000 probes a second, 100 passes of ~50 SYNs cost more
/// than 50 passes of ~100 (system calls, and wake-ups that are each a hypervisor exit on a
/// VM: benches/health_checker.sh, core 0 not idle 10.0–11.6 % against 9.5–9.8 %). Answers
/// carry their own arrival time (`SO_TIMESTAMPNS`), so latencies stay exact.
pub const TICK: Duration = Duration::from_millis(20);

/// SYNs one probe may send, spaced evenly over its timeout (as the connect probe's attempts:
/// one lost packet must not fail a probe).
const ATTEMPTS: u32 = 3;
/// How long a looked-up source address is trusted before the routing table is asked again.
const ROUTE_TTL: Duration = Duration::from_secs(30);

/// One target's record.
struct Slot {
    target: Target,
    /// When the slot next needs attention: its next probe, resend or deadline. The wheel may
    /// hold older instants of this slot too; only the one equal to this counts.
    wake: Instant,
    probe: Option<InFlight>,
    /// The source address the kernel writes on packets to this target, and when it was
    /// looked up: kept here, where the SYN is made, rather than in a map of its own.
    source: Option<(Ipv4Addr, Instant)>,
}

#[derive(Clone, Copy)]
struct InFlight {
    port: u16,
    seq: u32,
    started: Instant,
    sent: u32,
}

/// A SYN the schedule wants sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub to: SocketAddrV4,
    pub port: u16,
    pub seq: u32,
    /// The source it leaves from, when one was looked up less than `ROUTE_TTL` ago (else
    /// the caller asks the routing table and tells [`Schedule::set_source`]).
    pub source: Option<Ipv4Addr>,
}

/// A probe that ended.
#[derive(Debug)]
pub struct Ended {
    pub target: Target,
    pub result: Result<(), ProbeError>,
    pub latency: Duration,
}

/// The sweep's bookkeeping: which target is probed when, from which port with which
/// sequence number, and what an answer or a deadline means. No I/O.
pub struct Schedule {
    interval: Duration,
    timeout: Duration,
    max_in_flight: usize,
    ports: Vec<u16>,
    slots: HashMap<SocketAddrV4, Slot>,
    /// The targets due at each tick of the grid. A bucket per tick rather than a heap of
    /// single instants: 5,000 probes a second are ~100 a tick, taken in one go (a binary
    /// heap's pops were a third of the sweep's user time in `perf`, cache misses in a heap
    /// of 20k entries).
    wheel: BTreeMap<Instant, Vec<SocketAddrV4>>,
    in_flight: usize,
    next_port: usize,
    seeds: RandomState,
    probes: u64,
    jitter: u64,
}

impl Schedule {
    pub fn new(settings: &HealthConfig, ports: Vec<u16>) -> Self {
        let seeds = RandomState::new();
        Schedule {
            interval: settings.interval,
            timeout: settings.timeout,
            max_in_flight: settings.max_concurrent.max(1),
            ports,
            slots: HashMap::new(),
            wheel: BTreeMap::new(),
            in_flight: 0,
            next_port: 0,
            jitter: seeds.hash_one("jitter") | 1,
            seeds,
            probes: 0,
        }
    }

    /// Probes exactly the sweep's share of `wanted` from now on; a new target's first probe
    /// comes within one interval (spread, so targets added together do not probe in step).
    pub fn set_targets(&mut self, wanted: &BTreeSet<Target>, now: Instant) {
        let mut in_flight = self.in_flight;
        self.slots.retain(|_, slot| {
            let keep = wanted.contains(&slot.target);
            in_flight -= usize::from(!keep && slot.probe.is_some());
            keep
        });
        self.in_flight = in_flight;
        for t in wanted.iter().filter(|t| takes(t)) {
            let SocketAddr::V4(dst) = t.endpoint else {
                continue;
            };
            if self.slots.contains_key(&dst) {
                continue;
            }
            let first = self.interval.mul_f64(self.share());
            self.slots.insert(
                dst,
                Slot {
                    target: t.clone(),
                    wake: now,
                    probe: None,
                    source: None,
                },
            );
            self.wake(dst, now + first);
        }
    }

    pub fn targets(&self) -> usize {
        self.slots.len()
    }

    /// The next tick something may be due at, if any target is probed (a tick whose every
    /// entry was superseded wakes the sweep for nothing, once).
    pub fn next_wake(&self) -> Option<Instant> {
        self.wheel.keys().next().copied()
    }

    /// Takes an answer that arrived at `arrived` and was read at `now`: the probe it answers
    /// ends, its latency up to `arrived` (a stale or forged answer, one acknowledging another
    /// sequence number or arriving at another port, is ignored).
    pub fn answer(&mut self, reply: Reply, arrived: Instant, now: Instant) -> Option<Ended> {
        let slot = self.slots.get(&reply.from)?;
        let probe = slot.probe?;
        if probe.port != reply.to_port || probe.seq.wrapping_add(1) != reply.ack {
            return None;
        }
        let result = match reply.answer {
            Answer::Listening => Ok(()),
            Answer::Refused => Err(ProbeError::Connect(io::ErrorKind::ConnectionRefused.into())),
        };
        self.end(reply.from, probe, result, arrived.min(now), now)
    }

    /// The source looked up at `now` for packets to `to`.
    pub fn set_source(&mut self, to: SocketAddrV4, source: Ipv4Addr, now: Instant) {
        if let Some(slot) = self.slots.get_mut(&to) {
            slot.source = Some((source, now));
        }
    }

    /// A SYN could not be sent: its probe fails with why (and the source is looked up
    /// again next time: the route may have changed).
    pub fn failed(&mut self, to: SocketAddrV4, error: io::Error, now: Instant) -> Option<Ended> {
        let slot = self.slots.get_mut(&to)?;
        slot.source = None;
        let probe = slot.probe?;
        self.end(to, probe, Err(ProbeError::Connect(error)), now, now)
    }

    /// Everything due at `now`: SYNs to send (first ones and resends) into `syns`, probes
    /// past their deadline into `ended`.
    pub fn due(&mut self, now: Instant, syns: &mut Vec<Wanted>, ended: &mut Vec<Ended>) {
        // Everything scheduled lies after `now` (`wake` rounds up to the grid past it), so
        // the buckets taken here do not grow meanwhile.
        while let Some(bucket) = self.wheel.first_entry() {
            if *bucket.key() > now {
                break;
            }
            let (at, due) = bucket.remove_entry();
            for dst in due {
                self.take_due(dst, at, now, syns, ended);
            }
        }
    }

    fn take_due(
        &mut self,
        dst: SocketAddrV4,
        at: Instant,
        now: Instant,
        syns: &mut Vec<Wanted>,
        ended: &mut Vec<Ended>,
    ) {
        let Some(slot) = self.slots.get_mut(&dst) else {
            return; // the target went
        };
        if slot.wake != at {
            return; // superseded: the slot was rescheduled since
        }
        match slot.probe {
            Some(p) if now >= p.started + self.timeout => {
                // No answer: perhaps the route (and with it the source) changed.
                slot.source = None;
                let timeout = Err(ProbeError::Timeout(self.timeout));
                ended.extend(self.end(dst, p, timeout, now, now));
            }
            Some(mut p) => {
                // Resend: the same port and sequence number, so a late answer to an
                // earlier SYN still counts.
                p.sent += 1;
                slot.probe = Some(p);
                let next = if p.sent >= ATTEMPTS {
                    p.started + self.timeout
                } else {
                    p.started + self.timeout / ATTEMPTS * p.sent
                };
                syns.push(Wanted {
                    to: dst,
                    port: p.port,
                    seq: p.seq,
                    source: fresh(slot.source, now),
                });
                self.wake(dst, next);
            }
            None if self.in_flight >= self.max_in_flight => self.wake(dst, now + TICK),
            None => {
                let port = self.ports[self.next_port % self.ports.len()];
                self.next_port = self.next_port.wrapping_add(1);
                self.probes += 1;
                let seq = self.seeds.hash_one((dst, self.probes)) as u32;
                slot.probe = Some(InFlight {
                    port,
                    seq,
                    started: now,
                    sent: 1,
                });
                self.in_flight += 1;
                syns.push(Wanted {
                    to: dst,
                    port,
                    seq,
                    source: fresh(slot.source, now),
                });
                self.wake(dst, now + self.timeout / ATTEMPTS);
            }
        }
    }

    /// Ends the probe of `dst` with `result`, known at `known`, and schedules its next one
    /// in one interval from `now`, ±10 %.
    fn end(
        &mut self,
        dst: SocketAddrV4,
        probe: InFlight,
        result: Result<(), ProbeError>,
        known: Instant,
        now: Instant,
    ) -> Option<Ended> {
        let slot = self.slots.get_mut(&dst)?;
        slot.probe = None;
        let target = slot.target.clone();
        self.in_flight -= 1;
        let jitter = self.interval.mul_f64(0.2 * self.share());
        let pause = (self.interval + jitter).saturating_sub(self.interval / 10);
        self.wake(dst, now + pause.max(TICK));
        Some(Ended {
            target,
            result,
            latency: known.saturating_duration_since(probe.started),
        })
    }

    fn wake(&mut self, dst: SocketAddrV4, at: Instant) {
        let at = on_grid(at, TICK);
        if let Some(slot) = self.slots.get_mut(&dst) {
            slot.wake = at;
            self.wheel.entry(at).or_default().push(dst);
        }
    }

    /// A share in [0, 1) for jitter (xorshift64*: spread, not secrecy; sequence numbers
    /// come from the keyed hash).
    fn share(&mut self) -> f64 {
        self.jitter ^= self.jitter >> 12;
        self.jitter ^= self.jitter << 25;
        self.jitter ^= self.jitter >> 27;
        (self.jitter.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A cached source, if it is recent enough to trust.
fn fresh(source: Option<(Ipv4Addr, Instant)>, now: Instant) -> Option<Ipv4Addr> {
    source
        .filter(|(_, at)| now.saturating_duration_since(*at) < ROUTE_TTL)
        .map(|(src, _)| src)
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
