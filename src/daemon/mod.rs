//! The long-running gateway (`portcullis run`), built from parts that are each tested alone:
//!
//! - [`config`]: the TOML configuration, overridable flag by flag;
//! - [`cache`]: the last-known-good export in the state directory (atomic, checksummed);
//!
//! Refusing exports that withdraw too much at once is [`crate::apply::Guard`], enforced by
//! the syncer.
//!
//! The polling loop that ties them to [`crate::apply::Syncer`] is the next step (issue 5).

pub mod cache;
pub mod config;
