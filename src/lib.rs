//! portcullis, the gateway: export CSV → model → diff → render → apply.
//!
//! - [`portcullis_export`] parses and validates the export (shared with ADMIN);
//! - [`model`] groups rows into the desired virtual services;
//! - [`diff`] computes what changes between two states;
//! - [`render`] turns a state or a diff into nftables transactions and ipvsadm text;
//! - [`apply`] is the only part that talks to the kernel (nft, IPVS and conntrack netlink),
//!   each behind a narrow trait with an in-memory twin;
//! - [`daemon`] is `portcullis run`: poll, validate, guard, sync, record;
//! - [`cli`] is the netops command line on top, and the one place that prints errors.
//! - [`durable`] is the one way state files are written (atomic, fsynced).
//!
//! Model, diff and render do no I/O. Two `unsafe` calls are allowed where they stand —
//! glibc's `malloc_trim` in the daemon's step, and registering the health prober's raw
//! socket (which it owns) with tokio — everything else is denied it.

#![deny(unsafe_code)]

pub mod apply;
pub mod cli;
pub mod daemon;
pub mod diff;
pub mod durable;
pub mod model;
pub mod render;
pub mod synth;

/// A fresh directory for a unit test, created exclusively under an unpredictable name in the
/// shared temp directory: the tests run as root, and a name another user can predict (and
/// pre-create, or point a symlink at) would let them steer what root writes.
#[cfg(test)]
pub(crate) fn test_dir(tag: &str) -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("pc-{tag}-"))
        .tempdir()
        .expect("a temp dir")
        .keep()
}
