//! `portcullis-admin` as a library: the service catalog (meta-configurations and inventory),
//! the combined configuration of an instance, the export CSV derived from the gateway
//! sections, and the HTTP server that publishes them.
//!
//! Other crates build on [`Catalog`] (versions and DB patching) and embed the server
//! ([`serve::router`], [`serve::AdminState`]) — `portcullis-demo` (demo/) runs one
//! in-process. This crate never depends on the gateway, only on `portcullis-export`.
//!
//! Running an ADMIN in-process and taking an instance out of production:
//!
//! ```
//! use portcullis_admin::serve::{self, AdminState, Options};
//! use portcullis_admin::State;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
//! let dir = std::env::temp_dir().join(format!("admin-doc-{}", std::process::id()));
//! portcullis_admin::catalog::copy_files(&example, &dir)?; // state changes rewrite inventory.yaml
//! let state = AdminState::open(&dir, Options { token: Some("t0ken".into()), ..Options::default() })?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = serve::spawn(state.clone(), listener)?;
//! // Gateways poll format!("{}/v1/export.csv?wait=30s", server.url()) with If-None-Match.
//! let before = state.snapshot().etag.clone();
//! let change = state.set_state("pgw.app1.1", State::Drained).await?;
//! assert!(change.changed && change.etag != before);
//! assert_eq!(state.snapshot().etag, change.etag); // what a held long-poll now receives
//! server.stop().await?;
//! std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod catalog;
mod checks;
pub mod config;
#[cfg(feature = "db")]
pub mod db;
pub mod desired;
mod durable;
pub mod edit;
pub mod error;
pub mod export;
pub mod inventory;
pub mod meta;
#[cfg(feature = "db")]
pub mod pgstate;
mod read;
pub mod serve;
pub mod synth;
pub mod value;
pub mod versions;
pub mod yaml;

pub use catalog::{Catalog, Sources};
pub use error::{CatalogError, CatalogErrors, ErrorKind};
pub use inventory::State;
pub use value::Value;
