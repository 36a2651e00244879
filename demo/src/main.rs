//! `portcullis-demo`, the README's main job: the whole pipeline on one machine in a few
//! seconds. An ADMIN serving the bundled example catalog runs in-process on loopback; the
//! gateway daemon long-polls it and applies to the in-memory twin of the kernel (or, with
//! `--netns` as root, to a throwaway network namespace for real), printing every change as a
//! diff. A few seconds in, one instance is drained through ADMIN, put back, then taken out for
//! maintenance, so a user sees changes flow from the catalog to the rules.
//!
//! It is its own crate because it links ADMIN and the gateway together: the gateway's build
//! graph (`cargo tree -p portcullis`) stays free of ADMIN.

#![forbid(unsafe_code)]

mod catalog;
mod namespace;

use clap::Parser;
use namespace::Namespace;
use portcullis::apply::{Firewall, NftCli, NoConntrack, SyncOutcome, TwinFirewall};
use portcullis::daemon::config::{Config, Role};
use portcullis::daemon::{Daemon, Step};
use portcullis::diff::{StateDiff, Style};
use portcullis::model::DesiredState;
use portcullis::render::nft::{Backend, BasePolicy, RenderOptions, DEFAULT_POLICY};
use portcullis_admin::serve::{self, AdminState, Options};
use portcullis_admin::State;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// The instance the demo drains: the first REST entrance of the example cloud.
const INSTANCE: &str = "pgw.app1.1";

/// See the pipeline work: an in-process ADMIN serving the example catalog, the gateway daemon
/// long-polling it and applying (to an in-memory twin, or with --netns to a throwaway network
/// namespace), and an instance drained and restored through ADMIN.
#[derive(Parser)]
#[command(name = "portcullis-demo", version)]
struct Args {
    /// Apply with the real nft into a throwaway network namespace (root).
    #[arg(long)]
    netns: bool,
    /// Time between the scripted ADMIN changes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pace: Duration,
}

/// Whatever stops the demo, from either side. The gateway's and ADMIN's errors are kept as
/// their sources (boxed: the demo only prints them).
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot create the demo's working directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Catalog(#[from] catalog::WriteError),
    #[error("ADMIN: {0}")]
    Admin(BoxError),
    #[error("cannot listen on loopback: {0}")]
    Listen(std::io::Error),
    #[error("the gateway: {0}")]
    Gateway(BoxError),
    #[error("the gateway could not start: {0}")]
    Start(String),
    #[error(transparent)]
    Namespace(#[from] namespace::NamespaceError),
    #[error("the scripted ADMIN changes stopped: {0}")]
    Script(BoxError),
    #[error("the gateway applied nothing within {0:?} of an ADMIN change")]
    Stuck(Duration),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args = Args::parse();
    // The catalog and the gateway's state live in a directory created exclusively under an
    // unpredictable name (and removed at the end): the demo runs as root with --netns, and a
    // predictable name in the shared temp directory could be pre-created by another user.
    let result = tempfile::Builder::new()
        .prefix("portcullis-demo-")
        .tempdir()
        .map_err(DemoError::TempDir)
        .and_then(|dir| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(DemoError::Runtime)
                .and_then(|runtime| runtime.block_on(demo(dir.path(), &args)))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(dir: &Path, args: &Args) -> Result<(), DemoError> {
    let catalog = dir.join("catalog");
    catalog::write_example(&catalog)?;
    let admin =
        AdminState::open(&catalog, Options::default()).map_err(|e| DemoError::Admin(e.into()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Listen)?;
    let server = serve::spawn(admin.clone(), listener).map_err(|e| DemoError::Admin(e.into()))?;
    let source = format!("{}/v1/export.csv", server.url());
    say(&format!(
        "ADMIN   serving the example catalog ({}) at {source}",
        catalog.display()
    ));
    let config = Config {
        source: Some(source.into()),
        interval: Duration::from_secs(1),
        long_poll: Duration::from_secs(30),
        state_dir: dir.join("gateway"),
        role: Role::Active,
        ..Config::default()
    };
    // The gateway's defaults: nft backend, the built-in base policy, no interface filters.
    let opts = RenderOptions {
        backend: Backend::Nft,
        external_interfaces: Vec::new(),
        internal_interfaces: Vec::new(),
        policy: BasePolicy::parse(DEFAULT_POLICY).map_err(|e| DemoError::Gateway(e.into()))?,
    };
    let story = Story {
        admin,
        pace: args.pace,
    };
    let outcome = if args.netns {
        let ns = Namespace::create()?;
        say(&format!(
            "GATEWAY applying for real with nft in network namespace {}",
            ns.name
        ));
        let daemon = Daemon::new(config, NftCli::in_netns(&ns.name), NoConntrack, opts)
            .map_err(|e| DemoError::Gateway(e.into()))?;
        let outcome = story.tell(daemon).await;
        if outcome.is_ok() {
            let listing = ns.list_table()?;
            say(&format!(
                "GATEWAY the kernel's table inet portcullis: {} lines (`nft list table`), removed with the namespace",
                listing.lines().count()
            ));
        }
        outcome
    } else {
        say("GATEWAY dry run: applying to the in-memory twin of the kernel (root and --netns: a real namespace)");
        let daemon = Daemon::new(config, TwinFirewall::default(), NoConntrack, opts)
            .map_err(|e| DemoError::Gateway(e.into()))?;
        story.tell(daemon).await
    };
    let _ = server.stop().await;
    outcome
}

/// What the operator does in ADMIN, one change at a time: drain one instance, put it back,
/// take it out for maintenance, put it back.
const CHANGES: [(State, &str); 4] = [
    (State::Drained, "drained (weight 0: no new connections)"),
    (State::Production, "back in production"),
    (State::Maintenance, "in maintenance (not exported)"),
    (State::Production, "back in production"),
];

/// How long the gateway may take to apply one change: a long-poll answers at once, so this only
/// ends a demo whose gateway is stuck (its errors are printed as they come).
const APPLY_DEADLINE: Duration = Duration::from_secs(60);

/// The scripted operator and the gateway, in turn: each ADMIN change waits until the gateway
/// has applied the previous one, so the story reads in order and no intermediate export is
/// skipped, however slow the machine (the daemon applies the export as it is when it polls).
struct Story {
    admin: AdminState,
    pace: Duration,
}

impl Story {
    async fn tell<F: Firewall>(self, mut daemon: Daemon<F, NoConntrack>) -> Result<(), DemoError> {
        match daemon.start().await {
            Step::Applied(outcome) => {
                let state = daemon.syncer.applied().cloned().unwrap_or_default();
                say(&format!(
                    "GATEWAY {}: {} virtual services, {} real servers",
                    describe(&outcome),
                    state.services.len(),
                    state.real_server_count()
                ));
            }
            other => return Err(DemoError::Start(format!("{other:?}"))),
        }
        let style = if std::io::stdout().is_terminal() {
            Style::Color
        } else {
            Style::Plain
        };
        for (state, what) in CHANGES {
            tokio::time::sleep(self.pace).await;
            let change = self
                .admin
                .set_state(INSTANCE, state)
                .await
                .map_err(|e| DemoError::Script(e.into()))?;
            say(&format!(
                "ADMIN   {INSTANCE} {what}; export ETag now {}",
                change.etag
            ));
            let before = daemon.syncer.applied().cloned().unwrap_or_default();
            let outcome = tokio::time::timeout(APPLY_DEADLINE, next_apply(&mut daemon))
                .await
                .map_err(|_| DemoError::Stuck(APPLY_DEADLINE))?;
            let after = daemon.syncer.applied().cloned().unwrap_or_default();
            print_change(&before, &after, &outcome, style);
        }
        Ok(())
    }
}

/// Polls until the daemon applies something; anything else it reports is printed on the way.
async fn next_apply<F: Firewall>(daemon: &mut Daemon<F, NoConntrack>) -> SyncOutcome {
    loop {
        match daemon.poll_once().await {
            Step::Applied(outcome) => return outcome,
            Step::NotModified => {}
            other => say(&format!("GATEWAY {other:?}")),
        }
    }
}

fn describe(outcome: &SyncOutcome) -> String {
    match outcome {
        SyncOutcome::Unchanged => "nothing to change".into(),
        SyncOutcome::Adopted => "adopted the live table".into(),
        SyncOutcome::Full { .. } => "applied the export (full table)".into(),
        SyncOutcome::Incremental { operations, .. } => {
            format!("applied the change: {operations} nft operations, one transaction")
        }
    }
}

fn print_change(before: &DesiredState, after: &DesiredState, outcome: &SyncOutcome, style: Style) {
    let diff = StateDiff::between(before, after);
    say(&format!(
        "GATEWAY {} — {}",
        describe(outcome),
        diff.summary()
    ));
    for line in diff.to_human(style).lines() {
        say(&format!("        {line}"));
    }
}

/// One line on stdout; a closed pipe (`| head`) is not worth a panic.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}
