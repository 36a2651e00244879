//! Real-server health checks (`[health]`): the daemon probes the real servers the export (or
//! the configured default) asks it to, and a server that fails `fall` probes in a row is taken
//! out of rotation — weight 0 in the state handed to the syncer, a drain on either backend —
//! until it passes `rise` in a row. See `crate::model::health` for the overlay and why it is
//! one; docs/operations.md#health-checks for the operator's view.
//!
//! - [`state`]: the rise/fall state machine (pure);
//! - [`probe`]: one TCP or HTTP probe, with its deadline and optional source address;
//! - [`syn`] (with [`syn_packet`]): TCP checks as half-open handshakes from a raw socket,
//!   sent and read in batches;
//! - [`sweep`]: the one task that makes every half-open check, with [`schedule`], its
//!   bookkeeping (what is due when, which answer ends which probe);
//! - [`checker`]: which target goes where (the sweep, or a task of its own that connects);
//! - [`board`]: what they found, shared with the metrics listener (`GET /health`);
//! - [`apply`]: the daemon's side — a transition is journaled and applied through the same
//!   incremental sync as an export.

pub mod apply;
pub mod board;
pub mod checker;
pub mod probe;
pub mod probe_thread;
pub mod schedule;
pub mod state;
pub mod sweep;
pub mod syn;
pub mod syn_packet;
pub mod tick;

use crate::model::health::{
    by_target, overlay, overlay_changes, targets, ByTarget, ExportedChecks, Overlaid,
    ServiceOverlay, Target, TargetMap,
};
use crate::model::VirtualService;
use crate::model::{DesiredState, RealKey, ServiceKey};
use board::{Board, HeldDown, OverlayView};
use checker::Checker;
use portcullis_export::Check;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The `[health]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The check of rows whose `check` column is empty, for TCP services: `none` (the
    /// default: nothing is probed unless the export asks), `tcp` or `http:PATH:STATUS[@HOST]`.
    pub default: Check,
    /// Time between two probes of one target (each ±10 %).
    #[serde(with = "super::config::duration")]
    pub interval: Duration,
    /// Deadline of one probe: connect, request and status line.
    #[serde(with = "super::config::duration")]
    pub timeout: Duration,
    /// Passed probes in a row that bring a down server back.
    pub rise: u32,
    /// Failed probes in a row that take a server out.
    pub fall: u32,
    /// Address probes are sent from (the gateway's internal side); the routing table
    /// chooses when absent or of the other address family.
    pub source: Option<IpAddr>,
    /// Probes in flight at once, at most: connecting probes (each holds a socket for up to
    /// `timeout`) and the sweep's half-open ones are each bounded by it.
    pub max_concurrent: usize,
    /// How `tcp` checks reach a server: `syn`, a half-open handshake from a raw socket (a
    /// quarter of the kernel's work of a connection; IPv6 targets and a gateway without
    /// CAP_NET_RAW connect instead), or `connect`, a full connection closed with a reset.
    pub tcp_probe: TcpProbe,
}

/// See [`HealthConfig::tcp_probe`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TcpProbe {
    #[default]
    Syn,
    Connect,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            default: Check::Disabled,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            source: None,
            max_concurrent: 256,
            tcp_probe: TcpProbe::Syn,
        }
    }
}

impl HealthConfig {
    /// What serde cannot check: `(key, expected)` of the first bad value.
    pub fn invalid(&self) -> Option<(&'static str, &'static str)> {
        if self.interval < Duration::from_millis(100) {
            return Some(("health.interval", "at least 100ms"));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Some(("health.timeout", "more than 0s and at most health.interval"));
        }
        if self.rise == 0 || self.fall == 0 {
            return Some(("health.rise/fall", "at least 1"));
        }
        if self.max_concurrent == 0 {
            return Some(("health.max_concurrent", "at least 1"));
        }
        None
    }
}

/// The daemon's health state: the exported state it overlays, the targets derived from it,
/// and the checker probing them.
pub struct HealthMonitor {
    default: Check,
    checker: Checker,
    /// The last export taken (applied on an active node, cached on a standby).
    exported: Option<(DesiredState, ExportedChecks)>,
    targets: TargetMap,
    by_target: ByTarget,
    /// The down set of the overlay the data plane holds; `None` until one is applied (or
    /// after an export is taken without applying it).
    applied_down: Option<BTreeSet<Target>>,
    /// Real servers held down in what the data plane holds, per service.
    held: BTreeMap<ServiceKey, Vec<RealKey>>,
    /// Services last seen failing open, so the warning is said once per change.
    fail_open: BTreeSet<ServiceKey>,
    /// A health apply failed: retried after the next poll.
    pub(super) retry: bool,
}

impl HealthMonitor {
    pub fn new(config: &HealthConfig, board: Arc<Board>) -> Self {
        HealthMonitor {
            default: config.default.clone(),
            checker: Checker::new(config.clone(), board),
            exported: None,
            targets: TargetMap::new(),
            by_target: ByTarget::new(),
            applied_down: None,
            held: BTreeMap::new(),
            fail_open: BTreeSet::new(),
            retry: false,
        }
    }

    pub fn board(&self) -> &Arc<Board> {
        self.checker.board()
    }

    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.checker.changed()
    }

    fn default_check(&self) -> Option<&Check> {
        Some(&self.default).filter(|c| **c != Check::Disabled)
    }

    /// The targets of an export and the state to apply for it given what is down now.
    pub fn prepare(&self, state: &DesiredState, checks: &ExportedChecks) -> (TargetMap, Overlaid) {
        let targets = targets(state, checks, self.default_check());
        let overlaid = overlay(state, &targets, &self.checker.board().down());
        (targets, overlaid)
    }

    /// Takes an export as the one in force: its targets are probed from now on.
    pub fn commit(&mut self, state: DesiredState, checks: ExportedChecks, targets: TargetMap) {
        let wanted: BTreeSet<Target> = targets.values().cloned().collect();
        self.checker.set_targets(&wanted);
        self.by_target = by_target(&targets);
        self.targets = targets;
        self.exported = Some((state, checks));
        self.applied_down = None;
    }

    /// The state to apply now: the export in force, overlaid with what is down.
    pub fn current(&self) -> Option<Overlaid> {
        let (state, _) = self.exported.as_ref()?;
        Some(overlay(state, &self.targets, &self.checker.board().down()))
    }

    /// The services a health transition changes since the overlay the data plane holds,
    /// each overlaid anew: O(the targets that changed). `None` when no overlay is known to
    /// be applied: the whole state is synced instead ([`HealthMonitor::current`]).
    pub fn transition(&self) -> Option<HealthPatch> {
        let (state, _) = self.exported.as_ref()?;
        let before = self.applied_down.as_ref()?;
        let down = self.checker.board().down();
        let services = overlay_changes(state, &self.by_target, before, &down);
        Some(HealthPatch { services, down })
    }

    /// Records an applied transition (see [`HealthMonitor::note_applied`]).
    pub fn note_transition(&mut self, patch: HealthPatch) {
        let mut fail_open = self.fail_open.clone();
        for (key, _, effect) in &patch.services {
            self.held.remove(key);
            fail_open.remove(key);
            match effect {
                ServiceOverlay::Exported => {}
                ServiceOverlay::HeldDown(reals) => {
                    self.held.insert(*key, reals.clone());
                }
                ServiceOverlay::FailOpen => {
                    fail_open.insert(*key);
                }
            }
        }
        self.publish(fail_open, patch.down);
    }

    /// Records what an applied overlay did, for `/health` and `status`; a service that
    /// starts or stops failing open is logged loudly, once.
    pub fn note_applied(
        &mut self,
        held_down: &[(ServiceKey, RealKey)],
        fail_open: &[ServiceKey],
        down: BTreeSet<Target>,
    ) {
        self.held.clear();
        for (key, real) in held_down {
            self.held.entry(*key).or_default().push(*real);
        }
        self.publish(fail_open.iter().copied().collect(), down);
    }

    fn publish(&mut self, now: BTreeSet<ServiceKey>, down: BTreeSet<Target>) {
        for key in now.difference(&self.fail_open) {
            tracing::error!(service = %key, "health: every real server of the service is down; failing open, all kept in rotation");
        }
        for key in self.fail_open.difference(&now) {
            tracing::warn!(service = %key, "health: the service no longer fails open");
        }
        self.checker.board().set_overlay(OverlayView {
            held_down: self
                .held
                .iter()
                .flat_map(|(service, reals)| {
                    reals.iter().map(|real| HeldDown {
                        service: *service,
                        real: *real,
                    })
                })
                .collect(),
            fail_open: now.iter().copied().collect(),
        });
        self.fail_open = now;
        self.applied_down = Some(down);
    }

    /// New `[health]` settings: tasks restart with them, the default may change the targets.
    pub fn reconfigure(&mut self, config: &HealthConfig) {
        self.default = config.default.clone();
        self.checker.reconfigure(config.clone());
        if let Some((state, checks)) = self.exported.take() {
            let targets = targets(&state, &checks, self.default_check());
            self.commit(state, checks, targets);
        }
    }

    pub fn probed(&self) -> usize {
        self.checker.targets()
    }
}

/// A health transition: the services it changes (each whole, as the data plane should hold
/// it, with what the overlay did to it) and the down set it was computed from.
#[derive(Clone, Debug)]
pub struct HealthPatch {
    pub services: Vec<(ServiceKey, VirtualService, ServiceOverlay)>,
    pub down: BTreeSet<Target>,
}
