//! `portcullis-admin`: the ADMIN companion's command line — check a catalog, print its export
//! or an instance's combined configuration, or serve them over HTTP.

use clap::{Parser, Subcommand};
use portcullis_admin::{config, serve, Catalog};
use std::net::SocketAddr;
use std::path::PathBuf;
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
    Check {
        dir: PathBuf,
        /// Errors as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the export CSV the gateways fetch.
    Export { dir: PathBuf },
    /// Print the combined configuration of one instance (YAML, or JSON with --json).
    Config {
        dir: PathBuf,
        #[arg(value_name = "TYPE")]
        type_name: String,
        server: String,
        index: u32,
        #[arg(long)]
        json: bool,
    },
    /// Serve the catalog over HTTP (see docs/admin-api.yaml).
    Serve {
        #[arg(long)]
        catalog: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// File holding the bearer token; without it, mutations are refused.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Require the token for reads too (the export, configs, listings).
        #[arg(long)]
        auth_reads: bool,
        /// How often the catalog files are checked for changes, e.g. 1s, 500ms.
        #[arg(long, default_value = "1s")]
        reload_interval: String,
        /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by these PEM CA certificates.
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
}

fn load(dir: &std::path::Path) -> Result<Catalog, ExitCode> {
    Catalog::load(dir).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run(cli: Cli) -> Result<(), ExitCode> {
    match cli.command {
        Command::Check { dir, json } => match Catalog::load(&dir) {
            Ok(c) => {
                if json {
                    println!("{{\"valid\":true,\"errors\":[]}}");
                } else {
                    eprintln!(
                        "{}: valid ({} types, {} instances)",
                        dir.display(),
                        c.metas.len(),
                        c.inventory.instances.len()
                    );
                }
                Ok(())
            }
            Err(e) => {
                if json {
                    let v = serde_json::json!({ "valid": false, "errors": e });
                    println!("{v}");
                } else {
                    eprintln!("{e}");
                }
                Err(ExitCode::from(2))
            }
        },
        Command::Export { dir } => {
            let c = load(&dir)?;
            match portcullis_admin::export::csv(&c) {
                Ok(text) => {
                    print!("{text}");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{e}");
                    Err(ExitCode::from(2))
                }
            }
        }
        Command::Config {
            dir,
            type_name,
            server,
            index,
            json,
        } => {
            let c = load(&dir)?;
            let id = format!("{type_name}.{server}.{index}");
            let Some(idx) = c.instance_index(&id) else {
                eprintln!("no instance {id} in {}", dir.display());
                return Err(ExitCode::from(1));
            };
            match config::combined(&c, idx) {
                Ok(v) if json => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    Ok(())
                }
                Ok(v) => {
                    print!("{}", v.to_yaml());
                    Ok(())
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    Err(ExitCode::from(2))
                }
            }
        }
        Command::Serve {
            catalog,
            listen,
            token_file,
            auth_reads,
            reload_interval,
            tls_cert,
            tls_key,
            tls_client_ca,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let interval = match serve::parse_duration(&reload_interval) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    eprintln!("--reload-interval: expected a duration such as 1s or 500ms");
                    return Err(ExitCode::from(2));
                }
            };
            let token = match token_file {
                None => None,
                Some(f) => match std::fs::read_to_string(&f) {
                    Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
                    Ok(_) => {
                        eprintln!("{}: empty token file", f.display());
                        return Err(ExitCode::from(2));
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", f.display());
                        return Err(ExitCode::from(2));
                    }
                },
            };
            let options = serve::Options {
                token,
                auth_reads,
                reload_interval: interval,
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert, key)| serve::tls::TlsFiles {
                        cert,
                        key,
                        client_ca: tls_client_ca,
                    }),
                ..serve::Options::default()
            };
            let rt = tokio::runtime::Runtime::new().map_err(|e| {
                eprintln!("starting the runtime: {e}");
                ExitCode::FAILURE
            })?;
            rt.block_on(async move {
                let state = serve::AdminState::open(&catalog, options).map_err(|e| {
                    eprintln!("{e}");
                    ExitCode::from(2)
                })?;
                let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                    eprintln!("listening on {listen}: {e}");
                    ExitCode::FAILURE
                })?;
                tracing::info!(%listen, catalog = %catalog.display(), "serving");
                serve::run(state, listener, shutdown_signal())
                    .await
                    .map_err(|e| {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    })
            })
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
