//! The long-running gateway (`portcullis run`), built from parts that are each tested alone:
//!
//! - [`config`]: the TOML configuration, overridable flag by flag;
//! - [`cache`]: the last-known-good export in the state directory (atomic, checksummed);
//!
//! Refusing exports that withdraw too much at once is [`crate::apply::Guard`], enforced by
//! the syncer.
//!
//! - [`fetch`]: conditional GET of the export;
//! - [`poll`]: the cycle that ties them to [`crate::apply::Syncer`];
//! - [`journal`]: the change journal and status snapshot netops read;
//! - [`role`]: active/standby as asked by `promote` and `demote`.

pub mod cache;
pub mod config;
pub mod fetch;
pub mod journal;
pub mod metrics;
pub mod poll;
pub mod role;
