//! `serve`: the catalog over HTTP(S) until SIGINT or SIGTERM, with the version endpoints when
//! a state directory is given.

use crate::error::{CliError, Outcome};
use portcullis_admin::{serve, versions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long)]
    catalog: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// File holding the bearer token; without it, mutations are refused.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Require the token for reads too (the export, configs, listings). Needs --token-file:
    /// without a token, reads would be served to anyone.
    #[arg(long, requires = "token_file")]
    auth_reads: bool,
    /// How often the catalog files are checked for changes, e.g. 1s, 500ms.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reload_interval: Duration,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by these PEM CA certificates.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// ADMIN's state directory: enables the version endpoints (store and deploys).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Where instance roots live (<ROOTS>/<instance id>); default <STATE>/roots.
    #[arg(long, requires = "state")]
    roots: Option<PathBuf>,
    /// Host agents' tokens, `SERVER TOKEN` per line: each lets one server's portcullis-agent
    /// read that server's desired state and write its report (agents need --state).
    #[arg(long, requires = "state")]
    agent_tokens: Option<PathBuf>,
}

pub fn serve(a: ServeArgs) -> Result<Outcome, CliError> {
    init_logging();
    let options = options(&a)?;
    let rt = tokio::runtime::Runtime::new().map_err(CliError::Runtime)?;
    rt.block_on(async move {
        let state =
            serve::AdminState::open(&a.catalog, options).map_err(|errors| CliError::Catalog {
                dir: a.catalog.clone(),
                errors,
            })?;
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .map_err(|source| CliError::Listen {
                addr: a.listen,
                source,
            })?;
        tracing::info!(listen = %a.listen, catalog = %a.catalog.display(), "serving");
        serve::run(state, listener, shutdown_signal())
            .await
            .map_err(CliError::Serve)
    })?;
    Ok(Outcome::Done)
}

/// Logs to stderr, `info` unless `RUST_LOG` says otherwise; colours only on a terminal.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn options(a: &ServeArgs) -> Result<serve::Options, CliError> {
    // A zero interval would turn the reloader into a busy loop.
    if a.reload_interval.is_zero() {
        return Err(CliError::ZeroReloadInterval);
    }
    let token = match &a.token_file {
        None => None,
        Some(path) => Some(read_token(path)?),
    };
    Ok(serve::Options {
        token,
        auth_reads: a.auth_reads,
        reload_interval: a.reload_interval,
        tls: a
            .tls_cert
            .clone()
            .zip(a.tls_key.clone())
            .map(|(cert, key)| serve::tls::TlsFiles {
                cert,
                key,
                client_ca: a.tls_client_ca.clone(),
            }),
        agents: match &a.state {
            Some(state) => {
                let tokens = match &a.agent_tokens {
                    Some(path) => serve::read_tokens(path).map_err(CliError::Agents)?,
                    None => Vec::new(),
                };
                let hub = serve::AgentHub::open(state, tokens).map_err(CliError::Agents)?;
                Some(std::sync::Arc::new(hub))
            }
            None => None,
        },
        versions: a.state.as_ref().map(|state| {
            let roots = a.roots.clone().unwrap_or_else(|| state.join("roots"));
            versions::Deployer::new(state, &roots)
        }),
        ..serve::Options::default()
    })
}

/// The bearer token, without surrounding whitespace; an empty file is refused rather than
/// turning into a token anyone can send.
fn read_token(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    match text.trim() {
        "" => Err(CliError::EmptyTokenFile(path.to_owned())),
        t => Ok(t.to_owned()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
