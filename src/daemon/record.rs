//! What a step leaves behind for netops: a log line per apply, Prometheus metrics, a journal
//! line for every change (or refusal) of the data plane, and the status snapshot
//! `portcullis status` reads.

use super::core::{unix_now, Daemon};
use super::journal::{Entry, Status};
use super::step::Step;
use crate::apply::{Conntrack, Firewall, SyncOutcome};
use crate::model::DesiredState;
use std::time::{Duration, Instant};

/// The metrics label of a step's outcome.
fn outcome_label(step: &Step) -> &'static str {
    match step {
        Step::Applied(SyncOutcome::Unchanged) => "unchanged",
        Step::Applied(_) => "applied",
        Step::Cached => "cached",
        Step::Rejected(_) => "rejected",
        Step::Refused(_) => "refused",
        Step::NotModified => "not_modified",
        Step::Demoted => "demoted",
        Step::Failed(_) | Step::NothingToStartFrom(_) => "failed",
    }
}

/// The journal line for a step; `None` for steps that changed nothing worth a line.
pub(super) fn journal_entry(step: &Step, etag: Option<String>, took: Duration) -> Option<Entry> {
    let (result, detail, summary) = match step {
        Step::Applied(SyncOutcome::Unchanged)
        | Step::Cached
        | Step::NotModified
        | Step::Demoted => return None,
        Step::Applied(SyncOutcome::Adopted) => ("applied", "adopted".to_owned(), None),
        Step::Applied(SyncOutcome::Full { drift }) => (
            "applied",
            format!("full ({} differences)", drift.len()),
            None,
        ),
        Step::Applied(SyncOutcome::Incremental { summary, .. }) => {
            ("applied", "incremental".to_owned(), Some(*summary))
        }
        Step::Rejected(n) => ("rejected", format!("{n} validation error(s)"), None),
        Step::Refused(why) => ("refused", why.to_string(), None),
        Step::Failed(why) => ("failed", why.to_string(), None),
        Step::NothingToStartFrom(why) => ("failed", why.to_string(), None),
    };
    Some(Entry {
        time_unix: unix_now(),
        etag,
        result: result.to_owned(),
        detail,
        summary,
        duration_ms: took.as_secs_f64() * 1000.0,
    })
}

/// An operator's journal shows every change at the default level: what changed, how long it
/// took, and which export it was.
pub(super) fn log_applied(step: &Step, etag: Option<&str>, took: Duration) {
    let Step::Applied(outcome) = step else {
        return;
    };
    let ms = took.as_millis();
    let etag = etag.unwrap_or("-");
    match outcome {
        SyncOutcome::Unchanged => tracing::debug!(etag, "export unchanged"),
        SyncOutcome::Adopted => {
            tracing::info!(etag, ms, "export applied: the live table already matched")
        }
        SyncOutcome::Full { drift } => tracing::info!(
            etag,
            ms,
            differences = drift.len(),
            "export applied: table regenerated whole"
        ),
        SyncOutcome::Incremental {
            summary,
            operations,
            conntrack_flushed,
        } => tracing::info!(
            etag,
            ms,
            operations,
            conntrack_flushed,
            "export applied: {summary}"
        ),
    }
}

impl<F: Firewall, C: Conntrack> Daemon<F, C> {
    pub(super) fn observe(&self, step: &Step, took: Duration) {
        let m = &self.metrics;
        match step {
            Step::Applied(SyncOutcome::Unchanged) => {}
            Step::Applied(_) => m.apply_seconds.observe(took.as_secs_f64()),
            Step::Refused(_) => {
                m.guard_refusals.inc();
            }
            _ => {}
        }
        m.poll(outcome_label(step));
        if matches!(step, Step::Applied(_) | Step::Cached) {
            m.synced();
        }
        if let Some(applied) = self.syncer.applied() {
            m.virtual_services.set(applied.services.len() as i64);
            m.real_servers.set(applied.real_server_count() as i64);
        }
    }

    pub(super) fn record(&mut self, step: &Step, etag: Option<String>, took: Duration) {
        let Some(entry) = journal_entry(step, etag, took) else {
            return;
        };
        if let Err(e) = self.journal.append(&entry) {
            tracing::error!(error = %e, "could not write the journal");
        }
    }

    /// The snapshot `portcullis status` shows.
    pub fn status(&self) -> Status {
        let applied = self.syncer.applied();
        Status {
            role: format!("{:?}", self.config.role).to_lowercase(),
            source: self.fetcher.source(self.replicas.current()).to_owned(),
            replicas: match self.fetcher.replica_count() {
                1 => Vec::new(),
                _ => (0..self.fetcher.replica_count())
                    .map(|i| self.fetcher.source(i).to_owned())
                    .collect(),
            },
            etag: self.etag.clone(),
            last_poll_unix: self.last_poll,
            services: applied.map_or(0, |s| s.services.len()),
            real_servers: applied.map_or(0, DesiredState::real_server_count),
            counters: self.counters.clone(),
            health: self.health_status(),
        }
    }

    fn health_status(&self) -> super::journal::HealthStatus {
        let overlay = self.health.board().overlay();
        let applied = self.syncer.applied();
        let down = overlay
            .held_down
            .iter()
            .map(|h| {
                let instance = applied
                    .and_then(|s| s.services.get(&h.service))
                    .and_then(|s| s.reals.get(&h.real))
                    .map_or_else(|| "-".to_owned(), |r| r.instance.to_string());
                format!("{} {} ({instance})", h.service, h.real)
            })
            .collect();
        super::journal::HealthStatus {
            probed: self.health.probed(),
            down,
            fail_open: overlay.fail_open.iter().map(ToString::to_string).collect(),
        }
    }

    pub(super) fn write_status(&mut self) {
        if let Err(e) = self.journal.write_status(&self.status()) {
            tracing::warn!(error = %e, "could not write the status file");
        }
        self.status_written = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::GuardRefusal;

    #[test]
    fn only_steps_that_change_or_refuse_are_journaled() {
        for quiet in [
            Step::NotModified,
            Step::Cached,
            Step::Demoted,
            Step::Applied(SyncOutcome::Unchanged),
        ] {
            assert_eq!(
                journal_entry(&quiet, None, Duration::ZERO),
                None,
                "{quiet:?}"
            );
        }
        let e = journal_entry(
            &Step::Rejected(3),
            Some("\"v2\"".into()),
            Duration::from_millis(5),
        )
        .expect("journaled");
        assert_eq!(
            (e.result.as_str(), e.detail.as_str()),
            ("rejected", "3 validation error(s)")
        );
        assert_eq!(e.etag.as_deref(), Some("\"v2\""));
        assert!((e.duration_ms - 5.0).abs() < 1e-9);
        let refusal = GuardRefusal {
            removed: 8,
            applied: 10,
            reason: "more than half".into(),
        };
        let e = journal_entry(&Step::Refused(refusal.clone()), None, Duration::ZERO)
            .expect("journaled");
        assert_eq!(
            (e.result.as_str(), e.detail),
            ("refused", refusal.to_string())
        );
        assert_eq!(outcome_label(&Step::Refused(refusal)), "refused");
    }
}
