//! `serve`: the catalog over HTTP(S) until SIGINT or SIGTERM, with the version endpoints when
//! a state directory is given.

use crate::error::{CliError, Outcome};
use portcullis_admin::{serve, versions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The catalog directory (the single-machine default). Not with `--state postgres://…`.
    #[arg(long)]
    catalog: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// File holding the bearer token — or several, one `NAME TOKEN` per line, each named in
    /// the audit log; without it, mutations are refused.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The audit log of inventory changes (JSON lines); default <CATALOG>/audit.jsonl.
    #[arg(long)]
    audit_log: Option<PathBuf>,
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
    /// `postgres://…`: serve the catalog kept in that PostgreSQL database, shared by every
    /// replica given the same URL (load it with `catalog import`). A directory: ADMIN's state
    /// directory, enabling the version endpoints (store and deploys).
    #[arg(long)]
    state: Option<String>,
    /// Where instance roots live (<ROOTS>/<instance id>); default <STATE>/roots.
    #[arg(long, requires = "state")]
    roots: Option<PathBuf>,
    /// Host agents' tokens, `SERVER TOKEN` per line: each lets one server's portcullis-agent
    /// read that server's desired state and write its report (agents need --state).
    #[arg(long, requires = "state")]
    agent_tokens: Option<PathBuf>,
    /// With `--state postgres://…` and `--agent-tokens`: a state directory whose version store
    /// serves the agents' blobs (every replica needs the versions placed on servers). The
    /// agents' run states and reports are kept in PostgreSQL, shared by the replicas.
    #[arg(long, requires = "agent_tokens")]
    agent_store: Option<PathBuf>,
}

pub fn serve(a: ServeArgs) -> Result<Outcome, CliError> {
    init_logging();
    let options = options(&a)?;
    let rt = tokio::runtime::Runtime::new().map_err(CliError::Runtime)?;
    rt.block_on(async move {
        let (state, source) = match (&a.catalog, shared_url(&a)) {
            (None, Some(url)) => {
                let agents = shared_agents(&a, url).await?;
                let options = serve::Options { agents, ..options };
                (open_shared(url, options).await?, "postgresql".to_owned())
            }
            (Some(dir), None) => {
                let state =
                    serve::AdminState::open(dir, options).map_err(|errors| CliError::Catalog {
                        dir: dir.clone(),
                        errors,
                    })?;
                (state, dir.display().to_string())
            }
            _ => return Err(CliError::CatalogOrSharedState),
        };
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .map_err(|source| CliError::Listen {
                addr: a.listen,
                source,
            })?;
        tracing::info!(listen = %a.listen, catalog = %source, "serving");
        serve::run(state, listener, shutdown_signal())
            .await
            .map_err(CliError::Serve)
    })?;
    Ok(Outcome::Done)
}

/// `--state` when it names a PostgreSQL database.
fn shared_url(a: &ServeArgs) -> Option<&str> {
    a.state.as_deref().filter(|s| is_state_url(s))
}

fn is_state_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

#[cfg(feature = "db")]
async fn open_shared(url: &str, options: serve::Options) -> Result<serve::AdminState, CliError> {
    serve::AdminState::open_shared(url, options)
        .await
        .map_err(CliError::from)
}

/// The agents' hub of a replica: run states and reports in PostgreSQL, blobs from
/// `--agent-store`.
#[cfg(feature = "db")]
async fn shared_agents(
    a: &ServeArgs,
    url: &str,
) -> Result<Option<std::sync::Arc<serve::AgentHub>>, CliError> {
    let Some(tokens) = &a.agent_tokens else {
        return Ok(None);
    };
    let store = a.agent_store.as_ref().ok_or(CliError::AgentStoreNeeded)?;
    let tokens = serve::read_tokens(tokens).map_err(CliError::Agents)?;
    serve::AgentHub::open_shared(url, store, tokens)
        .await
        .map(Some)
        .map_err(CliError::Agents)
}

#[cfg(not(feature = "db"))]
async fn shared_agents(
    _: &ServeArgs,
    _: &str,
) -> Result<Option<std::sync::Arc<serve::AgentHub>>, CliError> {
    Ok(None)
}

#[cfg(not(feature = "db"))]
async fn open_shared(_: &str, _: serve::Options) -> Result<serve::AdminState, CliError> {
    Err(CliError::NoSharedState)
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
    let (token, tokens) = match &a.token_file {
        None => (None, Vec::new()),
        Some(path) => read_tokens(path)?,
    };
    Ok(serve::Options {
        token,
        tokens,
        audit_log: a.audit_log.clone(),
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
        // With a state directory, agents' run states and reports live there; with PostgreSQL
        // (`shared_agents`), in the database.
        agents: match a.state.as_ref().filter(|s| !is_state_url(s)) {
            Some(state) => {
                let tokens = match &a.agent_tokens {
                    Some(path) => serve::read_tokens(path).map_err(CliError::Agents)?,
                    None => Vec::new(),
                };
                let hub =
                    serve::AgentHub::open(Path::new(state), tokens).map_err(CliError::Agents)?;
                Some(std::sync::Arc::new(hub))
            }
            None => None,
        },
        versions: a.state.as_ref().filter(|s| !is_state_url(s)).map(|state| {
            let state = Path::new(state);
            let roots = a.roots.clone().unwrap_or_else(|| state.join("roots"));
            versions::Deployer::new(state, &roots)
        }),
        ..serve::Options::default()
    })
}

/// The token file: one bare token (the audit log calls it `token`), or lines `NAME TOKEN`
/// (blank lines and `#` comments skipped) naming each operator's or script's token. An empty
/// file is refused rather than turning into a token anyone can send.
/// A token file's contents: the single bare token, or the named ones as (name, token).
type Tokens = (Option<String>, Vec<(String, String)>);

fn read_tokens(path: &Path) -> Result<Tokens, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match lines.as_slice() {
        [] => Err(CliError::EmptyTokenFile(path.to_owned())),
        [(_, single)] if !single.contains(char::is_whitespace) => {
            Ok((Some((*single).to_owned()), Vec::new()))
        }
        named => {
            let mut tokens = Vec::new();
            for (line, l) in named {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let [name, token] = fields.as_slice() else {
                    return Err(CliError::BadTokenLine {
                        path: path.to_owned(),
                        line: *line,
                    });
                };
                tokens.push(((*name).to_owned(), (*token).to_owned()));
            }
            Ok((None, tokens))
        }
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

#[cfg(test)]
mod tests {
    use super::read_tokens;
    use crate::error::CliError;

    fn tokens(text: &str) -> Result<super::Tokens, CliError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        read_tokens(&path)
    }

    #[test]
    fn one_bare_token_or_named_lines() {
        assert_eq!(
            tokens(" s3cret \n").unwrap(),
            (Some("s3cret".into()), vec![])
        );
        let (single, named) = tokens("# who\nalice a-token\n\nci   c-token\n").unwrap();
        assert_eq!(single, None);
        assert_eq!(
            named,
            [
                ("alice".into(), "a-token".into()),
                ("ci".into(), "c-token".into())
            ]
        );
        assert!(matches!(
            tokens("  \n# nothing\n"),
            Err(CliError::EmptyTokenFile(_))
        ));
        assert!(matches!(
            tokens("alice a-token\nbare\n"),
            Err(CliError::BadTokenLine { line: 2, .. })
        ));
    }
}
