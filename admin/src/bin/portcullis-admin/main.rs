//! `portcullis-admin`: the ADMIN companion's command line. One module per family of
//! subcommands — the catalog (`check`, `export`, `config`), `serve`, versions (`version …`,
//! `install`, `upgrade`, `downgrade`) and `db` — each a function returning an
//! [`Outcome`](error::Outcome) or a typed [`CliError`]. [`main`] is the one place that prints a
//! failure (`portcullis-admin: …`) and turns either into the exit code: 0 success, 1 a failure
//! that was rolled back (or an unknown instance in `config`), 2 refused or bad input
//! (docs/versions-and-db.md lists them per command).

#![forbid(unsafe_code)]

mod catalog;
mod ctl;
#[cfg(feature = "db")]
mod db;
mod error;
mod serve;
#[cfg(feature = "db")]
mod shared;
mod versions;

use clap::{Parser, Subcommand};
use error::CliError;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "portcullis-admin",
    version,
    about = "portcullis ADMIN service: service catalog, combined configurations and the export"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a catalog: exit 0 when valid, 2 with every error (file:line:column: key) on stderr.
    Check(catalog::CheckArgs),
    /// Print the export CSV the gateways fetch.
    Export(catalog::ExportArgs),
    /// Print the combined configuration of one instance (YAML, or JSON with --json).
    Config(catalog::ConfigArgs),
    /// Serve the catalog over HTTP (see docs/admin-api.yaml).
    Serve(serve::ServeArgs),
    /// The version store: build, list, show, rm, gc (docs/versions-and-db.md).
    Version(versions::VersionArgs),
    /// Install a version into an instance that has none, through ADMIN and the server's agent
    /// (waits for its report); --local: on this host.
    Install(versions::DeployArgs),
    /// Switch an instance (or --type, one at a time) to another version through ADMIN and the
    /// agent; a failing test switches it back (exit 1). --local: on this host.
    Upgrade(versions::DeployArgs),
    /// Like upgrade; without --to, back to the version before the current one.
    Downgrade(versions::DeployArgs),
    /// The operator's client over a running ADMIN's REST API (list, create, move, drain…).
    Ctl(ctl::CtlArgs),
    /// Database patching: status and patch runs (docs/versions-and-db.md).
    #[cfg(feature = "db")]
    Db(db::DbArgs),
    /// Move a directory catalog into or out of PostgreSQL (`serve --state postgres://…`).
    #[cfg(feature = "db")]
    Catalog(shared::CatalogArgs),
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Check(a) => catalog::check(a),
        Command::Export(a) => catalog::export(a),
        Command::Config(a) => catalog::config(a),
        Command::Serve(a) => serve::serve(a),
        Command::Ctl(a) => ctl::ctl(a)
            .map(|()| error::Outcome::Done)
            .map_err(CliError::Ctl),
        Command::Version(a) => versions::version(a),
        Command::Install(a) => versions::deploy(portcullis_admin::versions::Action::Install, a),
        Command::Upgrade(a) => versions::deploy(portcullis_admin::versions::Action::Upgrade, a),
        Command::Downgrade(a) => versions::deploy(portcullis_admin::versions::Action::Downgrade, a),
        #[cfg(feature = "db")]
        Command::Db(a) => db::db(a),
        #[cfg(feature = "db")]
        Command::Catalog(a) => shared::catalog(a),
    };
    match outcome {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            e.print();
            ExitCode::from(e.exit_code())
        }
    }
}

/// The runtime of the one-shot async commands (deploys, DB runs): one thread is plenty.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}
