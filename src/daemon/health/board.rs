//! What the checker knows, shared between the probe tasks (which write), the daemon (which
//! overlays the down targets and journals the transitions) and the metrics listener (which
//! serves `GET /health` and the per-target metrics). One mutex, held for a map update: a
//! probe result costs microseconds under it, and 10k targets every 2 s is 5k updates a second.

use super::state::Health;
use crate::model::health::Target;
use crate::model::{RealKey, ServiceKey};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Transitions kept for the daemon to journal; past this (a daemon that stopped draining
/// them) the oldest go, so a flapping fleet cannot grow the daemon's memory.
const MAX_PENDING_TRANSITIONS: usize = 10_000;

/// One target's record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetState {
    #[serde(flatten)]
    pub health: Health,
    /// Unix seconds of the last transition (0: up since the target was added).
    pub since_unix: u64,
    pub probes: u64,
    /// Probes that failed, whether or not they were enough to take the target down: what a
    /// lossy path costs shows here long before it causes a transition.
    pub failures: u64,
    pub transitions: u64,
    pub last_latency_ms: Option<f64>,
    /// Why the last probe failed; `None` when it passed.
    pub last_error: Option<String>,
}

/// A target went down or came back.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    pub target: Target,
    pub up: bool,
    pub time_unix: u64,
    /// The failure that took it down (the last of `fall`), or `None` for a recovery.
    pub error: Option<String>,
}

/// What the last health apply did to the data plane, for `GET /health` and `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OverlayView {
    pub held_down: Vec<HeldDown>,
    pub fail_open: Vec<ServiceKey>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeldDown {
    pub service: ServiceKey,
    pub real: RealKey,
}

/// A target's record and its series: the labels and the latency gauge looked up once, when
/// the target is added, rather than formatted and hashed again by every probe.
struct Record {
    state: TargetState,
    labels: TargetLabels,
    latency: Gauge<f64, AtomicU64>,
}

#[derive(Default)]
struct Inner {
    /// A hash map: every probe's result looks its target up (5,000 a second at 10k targets
    /// every 2 s), and in a B-tree that was a cache miss per level (`perf`: most of
    /// `record`'s time); the few readers that list targets sort them.
    targets: HashMap<Target, Record>,
    pending: Vec<Transition>,
    overlay: OverlayView,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub endpoint: String,
    pub probe: String,
}

impl TargetLabels {
    fn of(t: &Target) -> Self {
        let probe = match &t.probe {
            crate::model::health::Probe::Tcp => "tcp".to_owned(),
            crate::model::health::Probe::Http {
                path,
                status,
                host: None,
            } => format!("http:{path}:{status}"),
            crate::model::health::Probe::Http {
                path,
                status,
                host: Some(host),
            } => format!("http:{path}:{status}@{host}"),
        };
        TargetLabels {
            endpoint: t.endpoint.to_string(),
            probe,
        }
    }
}

/// Per-target Prometheus series, registered once by [`crate::daemon::metrics::Metrics`].
#[derive(Clone, Default)]
pub struct TargetMetrics {
    pub up: Family<TargetLabels, Gauge>,
    pub latency_seconds: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    pub transitions: Family<TargetLabels, Counter>,
}

#[derive(Default)]
pub struct Board {
    inner: Mutex<Inner>,
    pub metrics: TargetMetrics,
}

/// The JSON `GET /health` answers.
#[derive(Serialize)]
pub struct BoardView {
    pub targets: Vec<TargetEntry>,
    #[serde(flatten)]
    pub overlay: OverlayView,
}

#[derive(Serialize)]
pub struct TargetEntry {
    pub target: Target,
    #[serde(flatten)]
    pub state: TargetState,
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it left a map, not a broken invariant: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the records of `wanted` (new ones start up) and forgets the others.
    pub fn retain(&self, wanted: &BTreeSet<Target>) {
        let mut inner = self.lock();
        inner.targets.retain(|t, record| {
            let keep = wanted.contains(t);
            if !keep {
                self.metrics.up.remove(&record.labels);
                self.metrics.latency_seconds.remove(&record.labels);
                self.metrics.transitions.remove(&record.labels);
            }
            keep
        });
        for t in wanted {
            if !inner.targets.contains_key(t) {
                let labels = TargetLabels::of(t);
                self.metrics.up.get_or_create(&labels).set(1);
                let latency = self.metrics.latency_seconds.get_or_create(&labels).clone();
                let record = Record {
                    state: TargetState::default(),
                    labels,
                    latency,
                };
                inner.targets.insert(t.clone(), record);
            }
        }
    }

    /// Takes one probe result; true when the target changed state.
    pub fn record(
        &self,
        target: &Target,
        result: Result<(), &super::probe::ProbeError>,
        latency: Duration,
        rise: u32,
        fall: u32,
        now_unix: u64,
    ) -> bool {
        let mut inner = self.lock();
        let Some(record) = inner.targets.get_mut(target) else {
            // Dropped by a new export while this probe ran.
            return false;
        };
        record.latency.set(latency.as_secs_f64());
        let state = &mut record.state;
        state.probes += 1;
        state.failures += u64::from(result.is_err());
        state.last_latency_ms = Some(latency.as_secs_f64() * 1000.0);
        let flipped = state.health.observe(result.is_ok(), rise, fall);
        // Kept as text: it is shown (status, /health), never acted on.
        state.last_error = result.err().map(ToString::to_string);
        let Some(up) = flipped else {
            return false;
        };
        state.transitions += 1;
        state.since_unix = now_unix;
        let transition = Transition {
            target: target.clone(),
            up,
            time_unix: now_unix,
            error: state.last_error.clone(),
        };
        self.metrics
            .up
            .get_or_create(&record.labels)
            .set(i64::from(up));
        self.metrics.transitions.get_or_create(&record.labels).inc();
        if inner.pending.len() >= MAX_PENDING_TRANSITIONS {
            inner.pending.remove(0);
        }
        inner.pending.push(transition);
        true
    }

    /// The targets on the board.
    pub fn targets(&self) -> BTreeSet<Target> {
        self.lock().targets.keys().cloned().collect()
    }

    /// The targets currently down.
    pub fn down(&self) -> BTreeSet<Target> {
        self.lock()
            .targets
            .iter()
            .filter(|(_, r)| !r.state.health.is_up())
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The transitions since the last call, oldest first.
    pub fn take_transitions(&self) -> Vec<Transition> {
        std::mem::take(&mut self.lock().pending)
    }

    pub fn set_overlay(&self, overlay: OverlayView) {
        self.lock().overlay = overlay;
    }

    pub fn overlay(&self) -> OverlayView {
        self.lock().overlay.clone()
    }

    /// Every target's record, in the targets' order.
    pub fn view(&self) -> BoardView {
        let inner = self.lock();
        let mut targets: Vec<TargetEntry> = inner
            .targets
            .iter()
            .map(|(t, r)| TargetEntry {
                target: t.clone(),
                state: r.state.clone(),
            })
            .collect();
        let overlay = inner.overlay.clone();
        drop(inner); // (sorted outside the lock the probes wait on)
        targets.sort_by(|a, b| a.target.cmp(&b.target));
        BoardView { targets, overlay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::health::Probe;

    fn t(port: u16) -> Target {
        Target {
            endpoint: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
            probe: Probe::Tcp,
        }
    }

    fn refused() -> super::super::probe::ProbeError {
        super::super::probe::ProbeError::Connect(std::io::ErrorKind::ConnectionRefused.into())
    }

    #[test]
    fn the_view_lists_targets_in_order() {
        let board = Board::default();
        let ports = [9, 80, 3, 443, 22, 8080, 1];
        board.retain(&ports.iter().map(|p| t(*p)).collect());
        let listed: Vec<Target> = board.view().targets.into_iter().map(|e| e.target).collect();
        let mut sorted: Vec<Target> = ports.iter().map(|p| t(*p)).collect();
        sorted.sort();
        assert_eq!(listed, sorted);
    }

    #[test]
    fn records_transitions_once_and_forgets_dropped_targets() {
        let board = Board::default();
        board.retain(&[t(1), t(2)].into());
        let ms = Duration::from_millis(3);
        assert!(!board.record(&t(1), Err(&refused()), ms, 2, 2, 10));
        assert!(board.record(&t(1), Err(&refused()), ms, 2, 2, 11));
        assert!(!board.record(&t(1), Err(&refused()), ms, 2, 2, 12));
        assert_eq!(board.down(), [t(1)].into());
        let transitions = board.take_transitions();
        assert_eq!(transitions.len(), 1);
        assert_eq!(
            (
                transitions[0].up,
                transitions[0].time_unix,
                transitions[0].error.as_deref()
            ),
            (false, 11, Some("connect: connection refused"))
        );
        assert!(board.take_transitions().is_empty());
        // A result for a target no longer wanted is ignored.
        board.retain(&[t(2)].into());
        assert!(!board.record(&t(1), Ok(()), ms, 1, 1, 13));
        assert!(board.down().is_empty());
        let view = board.view();
        assert_eq!(view.targets.len(), 1);
        let json = serde_json::to_string(&view).expect("json");
        assert!(json.contains("\"up\":true"), "{json}");
    }
}
