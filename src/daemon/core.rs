//! The daemon's state: what it applies with (the [`Syncer`]), where it keeps its files, what
//! it last fetched, and its counters. The jobs that act on it live beside this file, one each:
//! [`super::step`] (one poll and what follows), [`super::pacing`] (when the next poll goes),
//! [`super::record`] (metrics, journal, status), [`super::reload`] (SIGHUP) and
//! [`super::event_loop`] (signals, control socket, timers).

use super::cache::StateDir;
use super::config::Config;
use super::fetch::{FetchError, Fetcher};
use super::journal::{Counters, Journal};
use super::metrics::Metrics;
use super::pacing::Pacing;
use crate::apply::{Conntrack, Firewall, Syncer};
use crate::render::nft::RenderOptions;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The daemon could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("export source: {0}")]
    Fetcher(#[from] FetchError),
}

pub struct Daemon<F, C> {
    pub config: Config,
    pub(super) fetcher: Fetcher,
    /// Which ADMIN replica of `source` the next fetch asks.
    pub(super) replicas: super::replicas::Replicas,
    pub(super) state_dir: StateDir,
    pub(super) journal: Journal,
    pub syncer: Syncer<F, C>,
    /// The ETag of the export last fetched (applied, cached, or rejected).
    pub(super) etag: Option<String>,
    pub(super) last_poll: Option<u64>,
    /// Whether the export behind `etag` is the one in force (false after it was rejected or
    /// refused: a 304 for it must not count as "rules are current").
    pub(super) etag_in_force: bool,
    pub(super) pacing: Pacing,
    /// The last-known-good export's state, as the guard's baseline while nothing is applied
    /// (a restart, a standby); loaded from the cache on first use, dropped once the syncer
    /// holds an applied state (which is then the baseline).
    pub(super) baseline: Baseline,
    pub(super) status_written: Option<Instant>,
    pub counters: Counters,
    pub metrics: Metrics,
    /// `ipvs` backend with a `[sync]` link: the connection sync threads, per role.
    pub sync_threads: Option<super::sync_threads::SyncThreads>,
    /// Real-server health checks and the export they overlay.
    pub(super) health: super::health::HealthMonitor,
    /// The failover kick started by the last promotion, while it waits for the VIPs.
    pub(super) kick: Option<tokio::task::AbortHandle>,
}

/// The guard's baseline when the syncer has none.
#[derive(Debug)]
pub(super) enum Baseline {
    NotLoaded,
    /// No usable last-known-good export: nothing to guard against.
    Nothing,
    Loaded(Box<crate::model::DesiredState>),
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<F: Firewall, C: Conntrack> Daemon<F, C> {
    pub fn new(
        config: Config,
        firewall: F,
        conntrack: C,
        opts: RenderOptions,
    ) -> Result<Self, DaemonError> {
        let fetcher = Fetcher::from_config(&config)?;
        let mut syncer = Syncer::new(firewall, conntrack, opts);
        syncer.set_guard(Some(config.guards));
        // The sync metrics follow the [sync] of the start; a reload does not move them.
        let metrics = Metrics::new(config.sync.as_ref().map(|s| s.socket.clone()));
        let health = super::health::HealthMonitor::new(&config.health, metrics.health.clone());
        let replicas = super::replicas::Replicas::new(fetcher.replica_count());
        metrics.source_in_use(fetcher.source(replicas.current()));
        Ok(Daemon {
            state_dir: StateDir::new(&config.state_dir),
            journal: Journal::new(&config.state_dir),
            config,
            fetcher,
            replicas,
            syncer,
            etag: None,
            last_poll: None,
            etag_in_force: false,
            pacing: Pacing::default(),
            baseline: Baseline::NotLoaded,
            status_written: None,
            counters: Counters::default(),
            metrics,
            sync_threads: None,
            health,
            kick: None,
        })
    }
}
