//! `portcullis demo`: the whole pipeline on one machine in a few seconds. An ADMIN serving the
//! bundled example catalog runs in-process on loopback; the gateway daemon long-polls it and
//! applies to the in-memory twin of the kernel (or, with `--netns` as root, to a throwaway
//! network namespace for real), printing every change as a diff. A few seconds in, one instance
//! is drained through ADMIN, put back, then taken out for maintenance, so a user sees changes
//! flow from the catalog to the rules.

use super::error::{FAILED, OK};
use crate::apply::{Firewall, NftCli, NoConntrack, SyncOutcome, TwinFirewall};
use crate::daemon::config::{Config, Role};
use crate::daemon::{Daemon, Step};
use crate::diff::{StateDiff, Style};
use crate::model::DesiredState;
use portcullis_admin::serve::{self, AdminState, Options};
use portcullis_admin::State;
use std::io::IsTerminal;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The example catalog of `admin/example-catalog`, built in so the demo runs from an
/// installed binary too. A test checks this list against the directory.
pub const EXAMPLE_CATALOG: &[(&str, &str)] = &[
    (
        "inventory.yaml",
        include_str!("../../admin/example-catalog/inventory.yaml"),
    ),
    (
        "meta/default.yaml",
        include_str!("../../admin/example-catalog/meta/default.yaml"),
    ),
    (
        "meta/logger.yaml",
        include_str!("../../admin/example-catalog/meta/logger.yaml"),
    ),
    (
        "meta/mdb.yaml",
        include_str!("../../admin/example-catalog/meta/mdb.yaml"),
    ),
    (
        "meta/pgw.yaml",
        include_str!("../../admin/example-catalog/meta/pgw.yaml"),
    ),
    (
        "meta/tg.yaml",
        include_str!("../../admin/example-catalog/meta/tg.yaml"),
    ),
];

/// The instance the demo drains: the first REST entrance of the example cloud.
const INSTANCE: &str = "pgw.app1.1";

pub struct DemoArgs {
    /// Apply into a throwaway network namespace with the real nft (root).
    pub netns: bool,
    /// Time between the scripted ADMIN changes.
    pub pace: Duration,
}

pub fn demo(args: DemoArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return FAILED;
        }
    };
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    let result = runtime.block_on(run(&dir, &args));
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("portcullis: demo: {e}");
            FAILED
        }
    }
}

async fn run(dir: &Path, args: &DemoArgs) -> Result<(), String> {
    let catalog = dir.join("catalog");
    for (name, text) in EXAMPLE_CATALOG {
        let path = catalog.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let admin = AdminState::open(&catalog, Options::default()).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let server = serve::spawn(admin.clone(), listener).map_err(|e| e.to_string())?;
    let source = format!("{}/v1/export.csv", server.url());
    say(&format!(
        "ADMIN   serving the example catalog ({}) at {source}",
        catalog.display()
    ));
    let config = Config {
        source: Some(source),
        interval: Duration::from_secs(1),
        long_poll: Duration::from_secs(30),
        state_dir: dir.join("gateway"),
        role: Role::Active,
        ..Config::default()
    };
    let opts = super::pipeline::render_options(None, &[], &[], crate::render::nft::Backend::Nft)
        .map_err(|e| e.to_string())?;
    let script = scripted_changes(admin, args.pace);
    let outcome = if args.netns {
        let ns = Namespace::create()?;
        say(&format!(
            "GATEWAY applying for real with nft in network namespace {}",
            ns.0
        ));
        let daemon = Daemon::new(config, NftCli::in_netns(&ns.0), NoConntrack, opts)
            .map_err(|e| e.to_string())?;
        let outcome = gateway(daemon, script).await;
        if outcome.is_ok() {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.0,
                    "nft",
                    "list",
                    "table",
                    "inet",
                    "portcullis",
                ])
                .output()
                .map_err(|e| e.to_string())?;
            let listing = String::from_utf8_lossy(&out.stdout);
            say(&format!(
                "GATEWAY the kernel's table inet portcullis: {} lines (`nft list table`), removed with the namespace",
                listing.lines().count()
            ));
        }
        outcome
    } else {
        say("GATEWAY dry run: applying to the in-memory twin of the kernel (root and --netns: a real namespace)");
        let daemon = Daemon::new(config, TwinFirewall::default(), NoConntrack, opts)
            .map_err(|e| e.to_string())?;
        gateway(daemon, script).await
    };
    let _ = server.stop().await;
    outcome
}

/// Runs the daemon until the scripted changes are done, printing what each poll changed.
async fn gateway<F: Firewall>(
    mut daemon: Daemon<F, NoConntrack>,
    script: tokio::task::JoinHandle<Result<(), String>>,
) -> Result<(), String> {
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
        other => return Err(format!("the gateway could not start: {other:?}")),
    }
    let style = if std::io::stdout().is_terminal() {
        Style::Color
    } else {
        Style::Plain
    };
    tokio::pin!(script);
    loop {
        let before = daemon.syncer.applied().cloned().unwrap_or_default();
        tokio::select! {
            done = &mut script => {
                return done.map_err(|e| e.to_string())?;
            }
            step = daemon.poll_once() => match step {
                Step::Applied(outcome) => {
                    let after = daemon.syncer.applied().cloned().unwrap_or_default();
                    print_change(&before, &after, &outcome, style);
                }
                Step::NotModified => {}
                other => say(&format!("GATEWAY {other:?}")),
            }
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

/// What the operator does in ADMIN: drain one instance, put it back, take it out for
/// maintenance, put it back.
fn scripted_changes(
    admin: AdminState,
    pace: Duration,
) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        for (state, what) in [
            (State::Drained, "drained (weight 0: no new connections)"),
            (State::Production, "back in production"),
            (State::Maintenance, "in maintenance (not exported)"),
            (State::Production, "back in production"),
        ] {
            tokio::time::sleep(pace).await;
            let change = admin
                .set_state(INSTANCE, state)
                .await
                .map_err(|e| e.to_string())?;
            say(&format!(
                "ADMIN   {INSTANCE} {what}; export ETag now {}",
                change.etag
            ));
        }
        // Give the last change time to arrive.
        tokio::time::sleep(pace).await;
        Ok(())
    })
}

fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// A network namespace for `--netns`, deleted on drop (also on failure).
struct Namespace(String);

impl Namespace {
    fn create() -> Result<Namespace, String> {
        let name = format!("portcullis-demo-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("cannot create a network namespace (needs root and iproute2)".into());
        }
        let _ = Command::new("ip")
            .args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
            .status();
        Ok(Namespace(name))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalog_is_the_example_directory() {
        let root =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("admin/example-catalog");
        let mut on_disk = Vec::new();
        for sub in ["", "meta"] {
            for entry in std::fs::read_dir(root.join(sub)).expect("example catalog") {
                let path = entry.expect("entry").path();
                if path.is_file() {
                    let rel = path.strip_prefix(&root).expect("prefix");
                    on_disk.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let mut built_in: Vec<String> = EXAMPLE_CATALOG
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        built_in.sort();
        assert_eq!(
            built_in, on_disk,
            "update EXAMPLE_CATALOG in src/cli/demo.rs"
        );
    }
}
