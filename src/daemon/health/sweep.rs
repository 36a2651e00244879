//! The half-open sweep: every IPv4 `tcp` target is probed by one task, through one
//! [`SynSocket`], on a grid of its own (`schedule::TICK`, 20 ms). Each tick it reads every
//! answer that came (one `recvmmsg` per 64, each answer stamped with its arrival by the
//! kernel), decides what is due — first SYNs, resends, deadlines — and sends all the SYNs of
//! the tick in one `sendmmsg`. At scale it wakes once a tick and never for an answer.
//!
//! Why one task and not one per target, as connecting probes have: at 10k targets every 2 s,
//! a task per probe meant 5,000 tasks woken a second, each with its own timers, channel and
//! two system calls (`perf` on benches/health_checker.sh: a third of the checker's time in
//! user space and system-call entry). The sweep keeps one record per target and one wheel of
//! instants, and makes a few system calls per tick whatever the number of targets.
//!
//! [`Schedule`] (`super::schedule`) is the bookkeeping, with no I/O; this is the task.

use super::board::Board;
use super::schedule::{Ended, Schedule, TICK};
use super::syn::{Syn, SynSocket};
use super::syn_packet;
use super::tick::on_grid;
use super::HealthConfig;
use crate::model::health::{Probe, Target};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The sweep's targets: IPv4 endpoints with a `tcp` check.
pub fn takes(target: &Target) -> bool {
    target.probe == Probe::Tcp && target.endpoint.is_ipv4()
}

/// The running sweep: its targets are set through it; dropping it stops the task.
pub struct SweepHandle {
    wanted: Arc<Mutex<BTreeSet<Target>>>,
    changed: Arc<Notify>,
    count: usize,
    task: AbortHandle,
}

impl SweepHandle {
    /// Starts the sweep on the current runtime (the probe thread's), which `socket` must be
    /// registered with.
    pub fn start(
        socket: SynSocket,
        settings: Arc<HealthConfig>,
        board: Arc<Board>,
        transitions: Arc<Notify>,
    ) -> Self {
        let wanted = Arc::new(Mutex::new(BTreeSet::new()));
        let changed = Arc::new(Notify::new());
        let sweep = Sweep {
            schedule: Schedule::new(&settings, socket.ports().to_vec()),
            socket,
            settings,
            board,
            transitions,
            wanted: wanted.clone(),
            changed: changed.clone(),
        };
        let task = tokio::spawn(sweep.run()).abort_handle();
        SweepHandle {
            wanted,
            changed,
            count: 0,
            task,
        }
    }

    /// Probes exactly the sweep's share of `wanted` (see [`takes`]) from now on.
    pub fn set_targets(&mut self, wanted: &BTreeSet<Target>) {
        let mine: BTreeSet<Target> = wanted.iter().filter(|t| takes(t)).cloned().collect();
        self.count = mine.len();
        *self.wanted.lock().unwrap_or_else(|e| e.into_inner()) = mine;
        self.changed.notify_one();
    }

    pub fn targets(&self) -> usize {
        self.count
    }
}

impl Drop for SweepHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Sweep {
    schedule: Schedule,
    socket: SynSocket,
    settings: Arc<HealthConfig>,
    board: Arc<Board>,
    transitions: Arc<Notify>,
    wanted: Arc<Mutex<BTreeSet<Target>>>,
    changed: Arc<Notify>,
}

impl Sweep {
    async fn run(mut self) {
        let mut arrivals = Vec::new();
        let mut wanted = Vec::new();
        let mut outbox: Vec<Syn> = Vec::new();
        let mut ended = Vec::new();
        let mut retarget = true;
        loop {
            // Sleep until something is due or the targets change…
            let soon = Instant::now() + TICK;
            let next = match (self.schedule.next_wake(), outbox.is_empty()) {
                (next, true) => next,
                // …or, with SYNs the socket could not take, the next tick.
                (next, false) => Some(next.map_or(soon, |n| n.min(soon))),
            };
            // …or an answer comes, unless the next tick is due anyway: at scale there is
            // always something due, and waking for the first answer of a tick only to sleep
            // until the tick was a second wake-up every tick (a hypervisor exit on a VM).
            let wait_for_answers = next.is_none_or(|at| at > soon);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let on_the_grid = tokio::select! {
                () = self.changed.notified() => {
                    retarget = true;
                    false
                }
                ready = self.socket.readable(), if wait_for_answers => {
                    if let Err(e) = ready {
                        tracing::error!("health: the raw socket failed ({e}); tcp probes stop");
                        return;
                    }
                    false
                }
                () = sleep => true,
            };
            // …then do everything on a tick of the grid, with what came meanwhile. Woken by
            // the schedule, it is one already (just past it: timers fire late, never early,
            // and rounding up again would be a second wake-up for each tick's work).
            if !on_the_grid {
                tokio::time::sleep_until(on_grid(Instant::now(), TICK)).await;
            }
            let now = Instant::now();
            if std::mem::take(&mut retarget) {
                let targets = self
                    .wanted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                self.schedule.set_targets(&targets, now);
            }
            if let Err(e) = self.socket.receive(&mut arrivals).await {
                tracing::warn!("health: reading the raw socket: {e}");
            }
            for arrival in arrivals.drain(..) {
                ended.extend(self.schedule.answer(arrival.reply, arrival.at, now));
            }
            self.schedule.due(now, &mut wanted, &mut ended);
            for w in wanted.drain(..) {
                let source = match w.source {
                    Some(src) => Ok(src),
                    None => self.socket.source_for(*w.to.ip()).inspect(|src| {
                        self.schedule.set_source(w.to, *src, now);
                    }),
                };
                match source {
                    Ok(src) => outbox.push(Syn {
                        to: w.to,
                        segment: syn_packet::syn(src, w.port, w.to, w.seq),
                    }),
                    Err(e) => ended.extend(self.schedule.failed(w.to, e, now)),
                }
            }
            for (syn, e) in self.socket.send(&mut outbox) {
                ended.extend(self.schedule.failed(syn.to, e, now));
            }
            self.record(&mut ended);
        }
    }

    fn record(&mut self, ended: &mut Vec<Ended>) {
        let now_unix = super::super::core::unix_now();
        let mut flipped = false;
        for e in ended.drain(..) {
            flipped |= self.board.record(
                &e.target,
                e.result.as_ref().map(|_| ()),
                e.latency,
                self.settings.rise,
                self.settings.fall,
                now_unix,
            );
        }
        if flipped {
            self.transitions.notify_one();
        }
    }
}
