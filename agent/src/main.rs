//! `portcullis-agent run --admin URL --server NAME --root DIR`: the host side of ADMIN.
//!
//! Pull model, like the gateway: one task long-polls the server's desired state and caches it
//! on disk; one converges the host to the last desired state it has (the cached one when ADMIN
//! is down) and hands what it observes to a third, which reports it. Stopping the agent leaves
//! the services running; the next agent adopts them (by their pid files, or as the systemd
//! units that are active).

#![forbid(unsafe_code)]

mod client;
mod converge;
mod error;
mod host;
mod probe;
mod process;
mod supervise;
mod systemd;

use clap::{Parser, Subcommand, ValueEnum};
use client::{Admin, Poll};
use error::AgentError;
use portcullis_agent_proto::{Desired, Observed};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "portcullis-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Converge this host to ADMIN's desired state for it, and report what it observes.
    Run(RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Supervisor {
    /// The agent runs and restarts the processes itself.
    Process,
    /// systemd runs each instance as a generated unit (`portcullis-instance-<id>.service`).
    Systemd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// ADMIN's base URL, e.g. https://admin.example:8443
    #[arg(long)]
    admin: String,
    /// This host's server name in the inventory.
    #[arg(long)]
    server: String,
    /// Where releases and instances live.
    #[arg(long)]
    root: PathBuf,
    /// File holding this server's token (`serve --agent-tokens` on ADMIN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Who runs the instances.
    #[arg(long, value_enum, default_value = "process")]
    supervisor: Supervisor,
    /// Where `--supervisor systemd` writes the instances' units.
    #[arg(long, default_value = "/run/systemd/system")]
    unit_dir: PathBuf,
    /// How long ADMIN may hold a desired-state poll.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// How long a new version has to pass its tests before it is rolled back.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    test_deadline: Duration,
}

/// `<root>/desired.json`: what the agent converges to while ADMIN cannot be reached.
#[derive(Clone, Serialize, Deserialize)]
struct Cached {
    etag: String,
    desired: Desired,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Run(args) = Cli::parse().command;
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis-agent: starting the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-agent: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn read_token(path: &std::path::Path) -> Result<String, AgentError> {
    let text = std::fs::read_to_string(path).map_err(error::io(path))?;
    match text.trim() {
        "" => Err(AgentError::Refused(format!(
            "{}: empty token file",
            path.display()
        ))),
        t => Ok(t.to_owned()),
    }
}

async fn run(args: RunArgs) -> Result<(), AgentError> {
    match args.supervisor {
        Supervisor::Process => run_with(args, supervise::Processes).await,
        Supervisor::Systemd => {
            let units = systemd::Units::new(args.unit_dir.clone());
            units.check()?;
            run_with(args, units).await
        }
    }
}

async fn run_with<S: supervise::Supervisor>(
    args: RunArgs,
    supervisor: S,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&args.root).map_err(error::io(&args.root))?;
    let root = std::fs::canonicalize(&args.root).map_err(error::io(&args.root))?;
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let host = host::Host { root: root.clone() };
    let cached: Option<Cached> = host.read_json(&root.join("desired.json"));
    let (desired_tx, mut desired_rx) = watch::channel(cached);
    let (report_tx, report_rx) = watch::channel::<Option<Observed>>(None);

    let poller = Admin::new(&args.admin, &args.server, token.clone())?;
    let wait = args.wait;
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            let etag = desired_tx.borrow().as_ref().map(|c| c.etag.clone());
            let asked = tokio::time::Instant::now();
            match poller.desired(etag.as_deref(), wait).await {
                Ok(Poll::Changed { desired, etag }) => {
                    let cached = Cached { etag, desired };
                    let cache = host::Host { root: root.clone() };
                    if let Err(e) = cache.write_json(&root.join("desired.json"), &cached) {
                        tracing::warn!(%e, "caching the desired state");
                    }
                    desired_tx.send_replace(Some(cached));
                    delay = Duration::from_millis(200);
                }
                Ok(Poll::Unchanged) => {
                    delay = Duration::from_millis(200);
                    // Answered at once rather than held (ADMIN at its long-poll limit): do not
                    // come straight back.
                    if asked.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(%e, "ADMIN unreachable; keeping the last desired state");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    });

    let reporter = Admin::new(&args.admin, &args.server, token.clone())?;
    tokio::spawn(report_loop(reporter, report_rx));

    let admin = Admin::new(&args.admin, &args.server, token)?;
    let mut agent = converge::Agent::new(host, admin, args.test_deadline, supervisor);
    tracing::info!(server = %args.server, root = %args.root.display(), "agent running");
    let mut stop = Box::pin(shutdown());
    loop {
        let current = desired_rx.borrow_and_update().clone();
        if let Some(c) = &current {
            agent.converge(&c.desired).await;
        }
        let observed = agent.observed(
            current.as_ref().map(|c| &c.desired),
            current.as_ref().map(|c| c.etag.as_str()),
        );
        report_tx.send_replace(Some(observed));
        tokio::select! {
            _ = desired_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = &mut stop => {
                tracing::info!("agent stopping; the instances keep running");
                return Ok(());
            }
        }
    }
}

/// Sends the latest observation when it changed (the timestamp aside), and every 10 s anyway,
/// on its own task so an unreachable ADMIN never slows supervision down.
async fn report_loop(admin: Admin, mut rx: watch::Receiver<Option<Observed>>) {
    let mut last: Option<Observed> = None;
    let mut sent_at = tokio::time::Instant::now();
    loop {
        let latest = rx.borrow_and_update().clone();
        if let Some(mut o) = latest {
            let at = o.at;
            o.at = 0;
            let changed = last.as_ref() != Some(&o);
            if changed || sent_at.elapsed() >= Duration::from_secs(10) {
                let mut report = o.clone();
                report.at = at;
                match admin.report(&report).await {
                    Ok(()) => {
                        last = Some(o);
                        sent_at = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(%e, "report not delivered");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
