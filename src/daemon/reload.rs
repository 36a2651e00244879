//! SIGHUP: take a new configuration without a restart. Whatever can change at run time changes
//! at once (source, timeouts, TLS, token, guards, intervals, interfaces and policy — the table
//! is then regenerated); a key that needs a restart refuses the whole reload, so the daemon
//! never runs half old, half new. The role stays what promote/demote made it.

use super::config::Config;
use super::core::Daemon;
use super::fetch::{FetchError, Fetcher};
use super::step::Step;
use crate::apply::{Conntrack, Firewall};
use crate::render::nft::RenderOptions;
use std::collections::BTreeSet;
use std::time::Instant;

/// Keys fixed for the life of the process: the state directory (lock, cache, ownership),
/// the metrics listener (bound once), the backend and the IPVS drain grace (the balancer is
/// opened with them at start).
const RESTART_ONLY: [&str; 4] = ["state_dir", "metrics", "backend", "drain_grace"];

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{key} cannot change without a restart; reload refused")]
    NeedsRestart { key: String },
    #[error("export source: {0}")]
    Fetcher(#[from] FetchError),
}

/// The top-level configuration keys whose values differ, as a config file would spell them
/// (`role` aside: promote/demote own it). Compared in their TOML form so a new key can never
/// be forgotten here.
pub fn changed_keys(old: &Config, new: &Config) -> BTreeSet<String> {
    let table = |c: &Config| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        // Config always serializes to a table; an empty one would report every key changed.
        _ => toml::Table::new(),
    };
    let (a, b) = (table(old), table(new));
    a.keys()
        .chain(b.keys())
        .filter(|k| k.as_str() != "role" && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

impl<F: Firewall, C: Conntrack> Daemon<F, C> {
    /// Takes a new configuration and render options; returns the keys that changed (`policy`
    /// when the rendered policy differs, even under the same file name).
    pub fn reload(
        &mut self,
        new: Config,
        opts: RenderOptions,
    ) -> Result<BTreeSet<String>, ReloadError> {
        let mut changed = changed_keys(&self.config, &new);
        if let Some(key) = RESTART_ONLY.iter().find(|k| changed.contains(**k)) {
            return Err(ReloadError::NeedsRestart {
                key: (*key).to_owned(),
            });
        }
        // The IPVS sync threads are set up at start from [sync] (the nft backend's daemon
        // does not use it: conntrackd reads its own rendered file).
        if self.sync_threads.is_some() && changed.contains("sync") {
            return Err(ReloadError::NeedsRestart {
                key: "sync".to_owned(),
            });
        }
        let fetcher = Fetcher::from_config(&new)?;
        let render_changed = self.syncer.options() != &opts;
        if self.syncer.options().policy != opts.policy {
            changed.insert("policy".to_owned());
        }
        if self.config.source != new.source {
            // Another ADMIN may number its ETags differently: fetch the export whole, from
            // the first of the new replicas.
            self.etag = None;
            self.etag_in_force = false;
            self.replicas = super::replicas::Replicas::new(fetcher.replica_count());
            self.metrics
                .source_in_use(fetcher.source(self.replicas.current()));
        }
        self.fetcher = fetcher;
        self.syncer.set_guard(Some(new.guards));
        self.config = Config {
            role: self.config.role,
            ..new
        };
        if render_changed {
            self.syncer.set_options(opts);
            self.regenerate();
        }
        if changed.contains("health") {
            // A new default may add or drop targets; the overlay follows at once.
            self.health.reconfigure(&self.config.health);
            self.on_health_change();
        }
        self.write_status();
        Ok(changed)
    }

    /// New interfaces or policy: the applied state, rendered anew, replaces the table.
    fn regenerate(&mut self) {
        if self.config.role != super::config::Role::Active {
            return;
        }
        let Some(applied) = self.syncer.applied().cloned() else {
            return;
        };
        let started = Instant::now();
        let step = match self.locked(|syncer| syncer.reconcile(applied)) {
            Ok(Ok(outcome)) => Step::Applied(outcome),
            Ok(Err(e)) => self.failed(e.into()),
            Err(busy) => self.failed(busy),
        };
        tracing::info!(?step, "table regenerated for the new interfaces/policy");
        self.record(&step, self.etag.clone(), started.elapsed());
    }
}
