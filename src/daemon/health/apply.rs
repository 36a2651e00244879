//! The daemon's side of health checks: a transition is logged and journaled, and on the
//! active node the overlay of the export in force is applied through the syncer's ordinary
//! incremental path (one weight change is one small transaction, or one IPVS edit).

use super::board::Transition;
use super::HealthPatch;
use crate::apply::{Conntrack, Firewall};
use crate::apply::{SyncError, SyncOutcome};
use crate::daemon::config::Role;
use crate::daemon::core::{unix_now, Daemon};
use crate::daemon::journal::Entry;
use crate::daemon::step::Step;
use crate::daemon::step::StepError;
use crate::model::health::Overlaid;
use std::time::Instant;

/// The journal line of one transition.
pub fn transition_entry(t: &Transition) -> Entry {
    let detail = match (&t.error, t.up) {
        (_, true) => format!("{} up", t.target),
        (Some(e), false) => format!("{} down: {e}", t.target),
        (None, false) => format!("{} down", t.target),
    };
    Entry {
        time_unix: t.time_unix,
        etag: None,
        result: "health".to_owned(),
        detail,
        summary: None,
        duration_ms: 0.0,
    }
}

impl<F: Firewall, C: Conntrack> Daemon<F, C> {
    /// What the event loop calls when the checker reports a change (and after a poll when a
    /// health apply failed): journal the transitions, then bring the data plane to the
    /// export in force overlaid with what is down now. `None` when nothing was applied.
    pub fn on_health_change(&mut self) -> Option<Step> {
        for t in self.health.board().take_transitions() {
            match (&t.error, t.up) {
                (_, true) => tracing::info!(target = %t.target, "health: real server up"),
                (error, false) => {
                    tracing::warn!(target = %t.target, error = error.as_deref().unwrap_or("-"), "health: real server down")
                }
            }
            if let Err(e) = self.journal.append(&transition_entry(&t)) {
                tracing::error!(error = %e, "could not write the journal");
            }
        }
        self.health.retry = false;
        if self.config.role != Role::Active {
            return None;
        }
        let started = Instant::now();
        let applied = match self.health.transition() {
            // The usual case: only the services the transition touches.
            Some(patch) if self.syncer.applied().is_some() => self.apply_transition(patch),
            // No overlay known to be in the kernel: the whole state.
            _ => self.apply_overlay()?,
        };
        let step = match applied {
            Ok(Ok(None)) => {
                self.write_status();
                return None;
            }
            Ok(Ok(Some(outcome))) => {
                self.counters.last_apply_unix = Some(unix_now());
                Step::Applied(outcome)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "health: apply failed; retried after the next poll");
                self.health.retry = true;
                Step::Failed(e.into())
            }
            Err(busy) => {
                tracing::warn!(error = %busy, "health: apply deferred; retried after the next poll");
                self.health.retry = true;
                Step::Failed(busy)
            }
        };
        let took = started.elapsed();
        // Not a poll: the poll counters stay as they are; the apply is timed like any other.
        if let Step::Applied(outcome) = &step {
            self.metrics.apply_seconds.observe(took.as_secs_f64());
            tracing::info!(ms = took.as_millis(), ?outcome, "health: overlay applied");
        }
        self.record(&step, self.etag.clone(), took);
        self.write_status();
        Some(step)
    }

    /// Syncs the services a transition changes; `None` inside when nothing changed.
    fn apply_transition(&mut self, patch: HealthPatch) -> HealthApply {
        if patch.services.is_empty() {
            self.health.note_transition(patch);
            return Ok(Ok(None));
        }
        let services = patch
            .services
            .iter()
            .map(|(key, svc, _)| (*key, svc.clone()))
            .collect();
        match self.locked(|syncer| syncer.sync_services(services))? {
            Some(Ok(outcome)) => {
                self.health.note_transition(patch);
                Ok(Ok((outcome != SyncOutcome::Unchanged).then_some(outcome)))
            }
            Some(Err(e)) => Ok(Err(e)),
            // The syncer has nothing applied (it was checked just before): sync it whole.
            None => self.apply_overlay().unwrap_or(Ok(Ok(None))),
        }
    }

    /// Syncs the export in force overlaid with what is down now, whole. `None` without an
    /// export.
    fn apply_overlay(&mut self) -> Option<HealthApply> {
        let Overlaid {
            state,
            held_down,
            fail_open,
            down,
        } = self.health.current()?;
        if self.syncer.applied() == Some(&state) {
            self.health.note_applied(&held_down, &fail_open, down);
            return Some(Ok(Ok(None)));
        }
        Some(self.locked(|syncer| syncer.sync(state)).map(|result| {
            result.map(|outcome| {
                self.health.note_applied(&held_down, &fail_open, down);
                Some(outcome)
            })
        }))
    }
}

/// A health apply: busy (another apply holds the lock), failed, or what was applied
/// (`None`: nothing needed to be).
type HealthApply = Result<Result<Option<SyncOutcome>, SyncError>, StepError>;

#[cfg(test)]
#[path = "apply_tests.rs"]
mod daemon_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::health::{Probe, Target};

    #[test]
    fn transitions_are_journaled_with_their_reason() {
        let target = Target {
            endpoint: "10.0.0.1:80".parse().expect("addr"),
            probe: Probe::Http {
                path: "/health".into(),
                status: 200,
                host: None,
            },
        };
        let down = transition_entry(&Transition {
            target: target.clone(),
            up: false,
            time_unix: 5,
            error: Some("HTTP status 500, expected 200".into()),
        });
        assert_eq!(down.result, "health");
        assert_eq!(
            down.detail,
            "http 10.0.0.1:80/health (expects 200) down: HTTP status 500, expected 200"
        );
        let up = transition_entry(&Transition {
            target,
            up: true,
            time_unix: 6,
            error: None,
        });
        assert!(up.detail.ends_with(" up"), "{}", up.detail);
    }
}
