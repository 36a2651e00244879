//! The long-running gateway (`portcullis run`), one job per file:
//!
//! - [`config`]: the TOML configuration, overridable flag by flag;
//! - [`fetch`]: conditional GET (and long-poll) of the export;
//! - [`cache`]: the last-known-good export in the state directory (durable, checksummed);
//! - [`core`]: the daemon's state ([`Daemon`]);
//! - [`step`]: one poll and what follows — validate, guard (in [`crate::apply::Syncer`]),
//!   sync, save — plus start-up, role switches and the drift audit;
//! - [`pacing`]: when the next poll goes (long-poll, interval, backoff with jitter);
//! - [`record`]: metrics, the change journal and the status snapshot ([`journal`],
//!   [`metrics`], served within the bounds of [`listener`]);
//! - [`reload`]: taking a new configuration on SIGHUP;
//! - [`health`]: real-server health checks, overlaid on the export;
//! - [`event_loop`]: the loop tying signals, the control socket and timers together;
//! - [`control`]: the state-directory lock and the control socket `promote`/`demote` use;
//!   [`role`]: the role file they write;
//! - [`sync_threads`]: the IPVS connection sync thread of the role (`ipvs` backend);
//! - [`kick`]: after a promotion, the failover kick of the synchronised connections.

pub mod cache;
pub mod config;
pub mod conntrackd;
pub mod control;
pub mod core;
pub mod event_loop;
pub mod fetch;
pub mod health;
pub mod journal;
pub mod kick;
pub mod listener;
pub mod metrics;
pub mod pacing;
pub mod record;
pub mod reload;
pub mod replicas;
pub mod role;
pub mod sources;
pub mod step;
pub mod sync_threads;

pub use self::core::{Daemon, DaemonError};
pub use journal::Counters;
pub use reload::ReloadError;
pub use step::{NoStart, Step, StepError};

#[cfg(test)]
mod step_tests;
