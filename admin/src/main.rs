//! `portcullis-admin`: the ADMIN companion's command line — check a catalog, print its export
//! or an instance's combined configuration, or serve them over HTTP.

use clap::{Parser, Subcommand};
#[cfg(feature = "db")]
use portcullis_admin::db;
use portcullis_admin::versions::{self, Action, VersionError};
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
        /// ADMIN's state directory: enables the version endpoints (store and deploys).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Where instance roots live (<ROOTS>/<instance id>); default <STATE>/roots.
        #[arg(long, requires = "state")]
        roots: Option<PathBuf>,
    },
    /// The version store: build, list, show, rm, gc (docs/versions-and-db.md).
    Version {
        /// ADMIN's state directory (the version store and instance records).
        #[arg(long, global = true, default_value = DEFAULT_STATE)]
        state: PathBuf,
        #[command(subcommand)]
        command: VersionCommand,
    },
    /// Install a version into an instance that has none, then run its type's tests.
    Install(DeployArgs),
    /// Switch an instance to another version; a failing test switches it back (exit 1).
    Upgrade(DeployArgs),
    /// Like upgrade; without --to, back to the version before the current one.
    Downgrade(DeployArgs),
    /// Database patching: status and patch runs (docs/versions-and-db.md).
    #[cfg(feature = "db")]
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

const DEFAULT_STATE: &str = "/var/lib/portcullis-admin";

#[derive(Subcommand)]
enum VersionCommand {
    /// Pack every file under DIR as a version of TYPE; prints its id.
    Build {
        #[arg(value_name = "TYPE")]
        type_name: String,
        dir: PathBuf,
        /// Readable part of the id, e.g. tg-2026.11.21-1 (default: the type).
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Versions in the store, optionally of one type.
    List {
        #[arg(value_name = "TYPE")]
        type_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A version's manifest (path, mode, size, sha256 of every file).
    Show { id: String },
    /// Remove a version no instance uses (its blobs go at the next gc).
    Rm { id: String },
    /// Delete blobs no version uses.
    Gc,
}

#[derive(clap::Args)]
struct DeployArgs {
    instance: String,
    /// The version id (required for install and upgrade).
    #[arg(long)]
    to: Option<String>,
    #[arg(long)]
    catalog: PathBuf,
    /// ADMIN's state directory (the version store and instance records).
    #[arg(long, default_value = DEFAULT_STATE)]
    state: PathBuf,
    /// Where instance roots live (<ROOTS>/<instance id>); default <STATE>/roots.
    #[arg(long)]
    roots: Option<PathBuf>,
    /// How long the type's tests are retried after the switch, e.g. 30s.
    #[arg(long, default_value = "30s")]
    test_timeout: String,
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "db")]
#[derive(Subcommand)]
enum DbCommand {
    /// Applied, pending, drifted and missing patches and gaps. Exit 0 clean, 2 when a patch
    /// run would be refused or the database cannot be read.
    Status {
        #[command(flatten)]
        target: DbTarget,
    },
    /// Apply pending patches in order. Exit 0 done or nothing to do, 1 a patch failed and was
    /// rolled back, 2 refused (drift, missing file, gap, lock timeout, bad input).
    Patch {
        #[command(flatten)]
        target: DbTarget,
        /// Proceed despite these refusals: drift, missing, gap (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', value_parser = ["drift", "missing", "gap"])]
        allow: Vec<String>,
        /// How long to wait for a concurrent run to finish, e.g. 30s.
        #[arg(long, default_value = "30s")]
        lock_timeout: String,
    },
}

#[cfg(feature = "db")]
#[derive(clap::Args)]
struct DbTarget {
    #[arg(long)]
    catalog: PathBuf,
    /// An instance id (`type.server.index`); its URL is `database.url` of its combined config.
    #[arg(required_unless_present = "url", conflicts_with_all = ["type_name", "url"])]
    instance: Option<String>,
    /// The service type whose patches/<TYPE>/ to use (with --url).
    #[arg(long = "type", value_name = "TYPE", requires = "url")]
    type_name: Option<String>,
    /// postgres://… or sqlite://PATH (with --type).
    #[arg(long, requires = "type_name")]
    url: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
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
        Command::Version { state, command } => version_command(&state, command),
        Command::Install(a) => deploy_command(Action::Install, a),
        Command::Upgrade(a) => deploy_command(Action::Upgrade, a),
        Command::Downgrade(a) => deploy_command(Action::Downgrade, a),
        #[cfg(feature = "db")]
        Command::Db { command } => db_command(command),
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
            state,
            roots,
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
                versions: state.map(|s| {
                    let roots = roots.unwrap_or_else(|| s.join("roots"));
                    versions::Deployer::new(&s, &roots)
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

fn version_fail(e: VersionError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

fn version_command(state: &std::path::Path, command: VersionCommand) -> Result<(), ExitCode> {
    let store = versions::Store::new(state);
    match command {
        VersionCommand::Build {
            type_name,
            dir,
            label,
            json,
        } => {
            let r = store
                .build(&type_name, &dir, label.as_deref())
                .map_err(version_fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                println!("{}", r.id);
                eprintln!(
                    "{} files, {} bytes; {} new blobs ({} bytes){}",
                    r.files,
                    r.bytes,
                    r.new_blobs,
                    r.new_bytes,
                    if r.created {
                        ""
                    } else {
                        "; the version already existed"
                    }
                );
            }
            Ok(())
        }
        VersionCommand::List { type_name, json } => {
            let list = store.list(type_name.as_deref()).map_err(version_fail)?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|m| {
                        serde_json::json!({ "id": m.id, "type": m.type_name, "label": m.label,
                            "files": m.files.len(), "bytes": m.total_size() })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for m in list {
                    println!(
                        "{}\t{}\t{} files\t{} bytes",
                        m.id,
                        m.type_name,
                        m.files.len(),
                        m.total_size()
                    );
                }
            }
            Ok(())
        }
        VersionCommand::Show { id } => {
            let m = store.manifest(&id).map_err(version_fail)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            Ok(())
        }
        VersionCommand::Rm { id } => {
            let d = versions::Deployer::new(state, &state.join("roots"));
            let users: Vec<String> = d
                .versions_in_use()
                .map_err(version_fail)?
                .into_iter()
                .filter(|(_, v)| *v == id)
                .map(|(i, _)| i)
                .collect();
            if !users.is_empty() {
                eprintln!(
                    "{id} is in use by {} (current or downgrade target)",
                    users.join(", ")
                );
                return Err(ExitCode::from(2));
            }
            store.remove(&id).map_err(version_fail)
        }
        VersionCommand::Gc => {
            let (n, bytes) = store.gc().map_err(version_fail)?;
            eprintln!("removed {n} blobs ({bytes} bytes)");
            Ok(())
        }
    }
}

fn deploy_command(action: Action, a: DeployArgs) -> Result<(), ExitCode> {
    let c = load(&a.catalog)?;
    let roots = a.roots.clone().unwrap_or_else(|| a.state.join("roots"));
    let mut d = versions::Deployer::new(&a.state, &roots);
    d.test_deadline = serve::parse_duration(&a.test_timeout).ok_or_else(|| {
        eprintln!("--test-timeout: expected a duration such as 30s");
        ExitCode::from(2)
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("starting the runtime: {e}");
            ExitCode::FAILURE
        })?;
    let r = rt
        .block_on(d.deploy(&c, &a.instance, action, a.to.as_deref()))
        .map_err(version_fail)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        for t in &r.tests {
            println!(
                "  test {:<12} {}  {} ({} attempts)",
                t.name,
                if t.ok { "ok  " } else { "FAIL" },
                t.detail,
                t.attempts
            );
        }
        let from = r.from.as_deref().unwrap_or("nothing");
        match r.outcome.as_str() {
            "unchanged" => println!("{}: already at {}", r.instance, r.to),
            "ok" => println!("{}: {from} -> {} ({})", r.instance, r.to, r.root),
            _ => println!(
                "{}: {} failed its tests; switched back to {from}",
                r.instance, r.to
            ),
        }
    }
    if r.outcome == "rolled-back" {
        Err(ExitCode::from(1))
    } else {
        Ok(())
    }
}

#[cfg(feature = "db")]
fn db_target(t: &DbTarget) -> Result<db::Target, db::DbError> {
    match (&t.instance, &t.type_name, &t.url) {
        (Some(id), _, _) => {
            let c = Catalog::load(&t.catalog).map_err(|e| db::DbError::BadInput(e.to_string()))?;
            db::Target::instance(&c, &t.catalog, id)
        }
        (None, Some(ty), Some(url)) => db::Target::explicit(&t.catalog, ty, url),
        _ => Err(db::DbError::BadInput(
            "name an INSTANCE, or --type TYPE with --url URL".into(),
        )),
    }
}

#[cfg(feature = "db")]
fn db_command(command: DbCommand) -> Result<(), ExitCode> {
    let (target, json) = match &command {
        DbCommand::Status { target } | DbCommand::Patch { target, .. } => (target, target.json),
    };
    let fail = |e: db::DbError| {
        if json {
            println!(
                "{}",
                serde_json::json!({ "error": e.to_string(), "kind": e.kind() })
            );
        } else {
            eprintln!("{e}");
        }
        ExitCode::from(e.exit_code())
    };
    let t = db_target(target).map_err(fail)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("starting the runtime: {e}");
            ExitCode::FAILURE
        })?;
    match command {
        DbCommand::Status { .. } => {
            let r = rt.block_on(db::status(&t)).map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", db::text::status(&r));
            }
            if r.clean {
                Ok(())
            } else {
                Err(ExitCode::from(2))
            }
        }
        DbCommand::Patch {
            allow,
            lock_timeout,
            ..
        } => {
            let lock_timeout = serve::parse_duration(&lock_timeout).ok_or_else(|| {
                fail(db::DbError::BadInput(
                    "--lock-timeout: expected a duration such as 30s or 500ms".into(),
                ))
            })?;
            let opts = db::RunOptions {
                allow: db::plan::Allow {
                    drift: allow.iter().any(|a| a == "drift"),
                    missing: allow.iter().any(|a| a == "missing"),
                    gap: allow.iter().any(|a| a == "gap"),
                },
                lock_timeout,
            };
            let r = rt.block_on(db::patch(&t, opts)).map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", db::text::patch(&r));
            }
            if r.failed.is_some() {
                Err(ExitCode::from(1))
            } else {
                Ok(())
            }
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
