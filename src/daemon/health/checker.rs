//! The probes' scheduling: IPv4 `tcp` checks go to the half-open sweep ([`super::sweep`],
//! one task for all of them) when `tcp_probe = "syn"` and the raw socket opens; every other
//! target gets a tokio task of its own, which connects. Both keep a jittered schedule per
//! target (targets added together do not probe in step, and neither do the two gateways of
//! a pair) and at most `max_concurrent` probes in flight (the tasks share a semaphore, the
//! sweep counts its own). Results go to the [`Board`]; a transition wakes the daemon through
//! a [`Notify`], which coalesces: a burst of transitions costs one apply. Everything runs on
//! a thread of its own ([`ProbeThread`]), started with the first targets.

use super::board::Board;
use super::probe::probe;
use super::probe_thread::ProbeThread;
use super::sweep::{self, SweepHandle};
use super::syn::SynSocket;
use super::tick::on_tick;
use super::{HealthConfig, TcpProbe};
use crate::model::health::Target;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;

pub struct Checker {
    board: Arc<Board>,
    changed: Arc<Notify>,
    settings: Arc<HealthConfig>,
    semaphore: Arc<Semaphore>,
    tasks: BTreeMap<Target, AbortHandle>,
    /// The half-open sweep of `tcp` checks, started with the first such target (its socket
    /// needs the probe thread's runtime); `Err` once opening the socket failed, so it is
    /// tried and warned about once per configuration.
    sweep: Option<Result<SweepHandle, ()>>,
    /// Where the probe tasks run; `Err` once starting it failed (the daemon's runtime then
    /// runs them).
    thread: Option<Result<ProbeThread, ()>>,
}

impl Checker {
    pub fn new(settings: HealthConfig, board: Arc<Board>) -> Self {
        Checker {
            semaphore: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            settings: Arc::new(settings),
            board,
            changed: Arc::new(Notify::new()),
            tasks: BTreeMap::new(),
            sweep: None,
            thread: None,
        }
    }

    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }

    /// Resolves when a target changed state since the last time it resolved.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Probes exactly `wanted` from now on: new targets join the sweep or get a task (and
    /// start up), dropped ones leave, the others keep their schedule and their state.
    pub fn set_targets(&mut self, wanted: &BTreeSet<Target>) {
        self.board.retain(wanted);
        // No runtime (and no probe thread started) just to drop every target.
        let runtime = if wanted.is_empty() {
            None
        } else {
            self.runtime()
        };
        if runtime.is_none() && !wanted.is_empty() {
            tracing::error!("health checks need the async runtime; not probing");
        }
        let sweeping = runtime.as_ref().is_some_and(|runtime| {
            let _entered = runtime.enter();
            self.sweep(wanted)
        });
        if let Some(Ok(sweep)) = &mut self.sweep {
            sweep.set_targets(wanted);
        }
        let by_task = |t: &Target| wanted.contains(t) && !(sweeping && sweep::takes(t));
        self.tasks.retain(|t, task| {
            let keep = by_task(t);
            if !keep {
                task.abort();
            }
            keep
        });
        let Some(runtime) = runtime else {
            return;
        };
        for t in wanted.iter().filter(|t| by_task(t)) {
            if self.tasks.contains_key(t) {
                continue;
            }
            let task = runtime.spawn(probe_loop(
                t.clone(),
                self.settings.clone(),
                self.semaphore.clone(),
                self.board.clone(),
                self.changed.clone(),
            ));
            self.tasks.insert(t.clone(), task.abort_handle());
        }
    }

    /// The probe thread's runtime, started now if need be; the current one if it cannot start.
    fn runtime(&mut self) -> Option<tokio::runtime::Handle> {
        let thread = self.thread.get_or_insert_with(|| {
            ProbeThread::start().map_err(|e| {
                tracing::warn!("health: no probe thread ({e}): probing on the daemon's runtime");
            })
        });
        match thread {
            Ok(t) => Some(t.handle().clone()),
            Err(()) => tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Whether the half-open sweep probes its share of `wanted`: started now if
    /// `tcp_probe = "syn"` and a target is one of its (in the runtime entered).
    fn sweep(&mut self, wanted: &BTreeSet<Target>) -> bool {
        if self.settings.tcp_probe != TcpProbe::Syn {
            return false;
        }
        if self.sweep.is_none() && wanted.iter().any(sweep::takes) {
            self.sweep = Some(match SynSocket::open(self.settings.source) {
                Ok(socket) => Ok(SweepHandle::start(
                    socket,
                    self.settings.clone(),
                    self.board.clone(),
                    self.changed.clone(),
                )),
                Err(e) => {
                    tracing::warn!(
                        "health: no half-open tcp checks ({e}; they need CAP_NET_RAW): connecting instead"
                    );
                    Err(())
                }
            });
        }
        matches!(self.sweep, Some(Ok(_)))
    }

    /// New settings: every task restarts with them (states are kept).
    pub fn reconfigure(&mut self, settings: HealthConfig) {
        if *self.settings == settings {
            return;
        }
        let targets = self.board.targets();
        self.stop();
        self.semaphore = Arc::new(Semaphore::new(settings.max_concurrent.max(1)));
        self.settings = Arc::new(settings);
        self.set_targets(&targets);
    }

    fn stop(&mut self) {
        for (_, task) in std::mem::take(&mut self.tasks) {
            task.abort();
        }
        self.sweep = None;
    }

    pub fn targets(&self) -> usize {
        let swept = match &self.sweep {
            Some(Ok(sweep)) => sweep.targets(),
            _ => 0,
        };
        self.tasks.len() + swept
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A share in [0, 1), different for every call (std's per-instance random hash keys).
fn random_share() -> f64 {
    (RandomState::new().hash_one(Instant::now()) >> 11) as f64 / (1u64 << 53) as f64
}

async fn probe_loop(
    target: Target,
    settings: Arc<HealthConfig>,
    semaphore: Arc<Semaphore>,
    board: Arc<Board>,
    changed: Arc<Notify>,
) {
    // Spread first probes over one interval, then ±10 % each round; always on the probe
    // thread's grid (`tick`), so that probes due together start in one wake-up.
    let after = |pause: Duration| on_tick(tokio::time::Instant::now() + pause);
    tokio::time::sleep_until(after(settings.interval.mul_f64(random_share()))).await;
    loop {
        let result = {
            let Ok(_permit) = semaphore.acquire().await else {
                return;
            };
            let started = Instant::now();
            let result = probe(&target, settings.timeout, settings.source).await;
            (result, started.elapsed())
        };
        let (result, latency) = result;
        let now = super::super::core::unix_now();
        let flipped = board.record(
            &target,
            result.as_ref().map(|_| ()),
            latency,
            settings.rise,
            settings.fall,
            now,
        );
        if flipped {
            changed.notify_one();
        }
        let jitter = settings.interval.mul_f64(0.2 * random_share());
        let pause = (settings.interval + jitter).saturating_sub(settings.interval / 10);
        tokio::time::sleep_until(after(pause.max(Duration::from_millis(10)))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::health::Probe;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_closed_port_goes_down_and_an_open_one_stays_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let open = Target {
            endpoint: listener.local_addr().expect("addr"),
            probe: Probe::Tcp,
        };
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            Target {
                endpoint: l.local_addr().expect("addr"),
                probe: Probe::Tcp,
            }
        };
        let settings = HealthConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 2,
            ..HealthConfig::default()
        };
        let mut checker = Checker::new(settings, Arc::new(Board::default()));
        checker.set_targets(&[open.clone(), closed.clone()].into());
        let changed = checker.changed();
        tokio::time::timeout(Duration::from_secs(10), changed.notified())
            .await
            .expect("a transition within 10 s");
        assert_eq!(checker.board().down(), [closed.clone()].into());
        let t = checker.board().take_transitions();
        assert_eq!(t.len(), 1);
        assert!(!t[0].up && t[0].target == closed);
        assert!(t[0].error.as_deref().is_some_and(|e| e.contains("connect")));
        checker.set_targets(&[open].into());
        assert_eq!(checker.targets(), 1);
        assert!(checker.board().down().is_empty());
    }
}
