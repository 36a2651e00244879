//! `portcullis-admin` as a library: the service catalog (meta-configurations and inventory),
//! the combined configuration of an instance, the export CSV derived from the gateway
//! sections, and the HTTP server that publishes them.
//!
//! Other crates build on [`Catalog`] (versions and DB patching) and embed the server
//! ([`serve::router`], [`serve::AdminState`]) — the gateway's `portcullis demo` runs one
//! in-process. This crate never depends on the gateway, only on `portcullis-export`.

pub mod catalog;
pub mod config;
pub mod error;
pub mod export;
pub mod inventory;
pub mod meta;
mod read;
pub mod serve;
pub mod synth;
pub mod value;
pub mod yaml;

pub use catalog::{Catalog, Sources};
pub use error::{CatalogError, CatalogErrors, ErrorKind};
pub use inventory::State;
pub use value::Value;
