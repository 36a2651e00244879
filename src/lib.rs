//! portcullis, the gateway: export CSV → model → diff → render → apply.
//!
//! - [`portcullis_export`] parses and validates the export (shared with ADMIN);
//! - [`model`] groups rows into the desired virtual services;
//! - [`diff`] computes what changes between two states;
//! - [`render`] turns a state or a diff into nftables transactions and ipvsadm text;
//! - `cli` is the netops command line on top;
//! - [`durable`] is the one way state files are written (atomic, fsynced).
//!
//! Model, diff and render do no I/O; only the CLI (and later `apply`) touches files or the
//! kernel.

pub mod apply;
pub mod cli;
pub mod daemon;
pub mod diff;
pub mod durable;
pub mod model;
pub mod render;
pub mod synth;
