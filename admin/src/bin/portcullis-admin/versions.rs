//! The version store (`version build|list|show|rm|gc`) and deploys (`install`, `upgrade`,
//! `downgrade`) — see docs/versions-and-db.md.

use crate::error::{CliError, Outcome};
use portcullis_admin::versions::{Action, DeployReport, Deployer, Store};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_STATE: &str = "/var/lib/portcullis-admin";

#[derive(clap::Args)]
pub struct VersionArgs {
    /// ADMIN's state directory (the version store and instance records).
    #[arg(long, global = true, default_value = DEFAULT_STATE)]
    state: PathBuf,
    #[command(subcommand)]
    command: VersionCommand,
}

#[derive(clap::Subcommand)]
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

/// `install|upgrade|downgrade`. By default a client of a running ADMIN (as `ctl deploy`): it
/// sets the instance's version there and waits for the agent's report. `--local` is the
/// older mode for a server without an agent: it materialises the release on this host.
#[derive(clap::Args)]
pub struct DeployArgs {
    /// The instance (or --type).
    #[arg(required_unless_present = "type_name", conflicts_with = "type_name")]
    instance: Option<String>,
    /// Every instance of TYPE, one at a time, stopping at the first that does not succeed.
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "local")]
    type_name: Option<String>,
    /// The version id (required for install and upgrade).
    #[arg(long)]
    to: Option<String>,
    /// ADMIN's base URL [default: $PORTCULLIS_ADMIN_URL, else http://127.0.0.1:8080].
    #[arg(long, conflicts_with = "local")]
    url: Option<String>,
    /// File holding the bearer token [default: $PORTCULLIS_ADMIN_TOKEN].
    #[arg(long, conflicts_with = "local")]
    token_file: Option<PathBuf>,
    /// How long ADMIN waits for the agent's report (per instance), e.g. 60s [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "local")]
    timeout: Option<Duration>,
    /// Materialise on THIS host, without ADMIN or an agent (servers without an agent): needs
    /// --catalog; nothing restarts the service.
    #[arg(long, requires = "catalog")]
    local: bool,
    /// --local: the catalog directory.
    #[arg(long, requires = "local")]
    catalog: Option<PathBuf>,
    /// --local: ADMIN's state directory (the version store and instance records)
    /// [default: /var/lib/portcullis-admin].
    #[arg(long, requires = "local")]
    state: Option<PathBuf>,
    /// --local: where instance roots live (<ROOTS>/<instance id>); default <STATE>/roots.
    #[arg(long, requires = "local")]
    roots: Option<PathBuf>,
    /// --local: how long the type's tests are retried after the switch [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, requires = "local")]
    test_timeout: Option<Duration>,
    #[arg(long)]
    json: bool,
}

pub fn version(a: VersionArgs) -> Result<Outcome, CliError> {
    let store = Store::new(&a.state);
    match a.command {
        VersionCommand::Build {
            type_name,
            dir,
            label,
            json,
        } => build(&store, &type_name, &dir, label.as_deref(), json)?,
        VersionCommand::List { type_name, json } => list(&store, type_name.as_deref(), json)?,
        VersionCommand::Show { id } => {
            let m = store.manifest(&id)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        }
        VersionCommand::Rm { id } => remove(&store, &a.state, &id)?,
        VersionCommand::Gc => {
            let (n, bytes) = store.gc()?;
            eprintln!("removed {n} blobs ({bytes} bytes)");
        }
    }
    Ok(Outcome::Done)
}

fn build(
    store: &Store,
    type_name: &str,
    dir: &Path,
    label: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let r = store.build(type_name, dir, label)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(());
    }
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
    Ok(())
}

fn list(store: &Store, type_name: Option<&str>, json: bool) -> Result<(), CliError> {
    let list = store.list(type_name)?;
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|m| {
                serde_json::json!({ "id": m.id, "type": m.type_name, "label": m.label,
                    "files": m.files.len(), "bytes": m.total_size() })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    for m in list {
        println!(
            "{}\t{}\t{} files\t{} bytes",
            m.id,
            m.type_name,
            m.files.len(),
            m.total_size()
        );
    }
    Ok(())
}

/// Removes a version unless an instance runs it or could be downgraded to it.
fn remove(store: &Store, state: &Path, id: &str) -> Result<(), CliError> {
    let deployer = Deployer::new(state, &state.join("roots"));
    let users: Vec<String> = deployer
        .versions_in_use()?
        .into_iter()
        .filter(|(_, v)| v == id)
        .map(|(instance, _)| instance)
        .collect();
    if !users.is_empty() {
        return Err(CliError::VersionInUse {
            id: id.to_owned(),
            users,
        });
    }
    Ok(store.remove(id)?)
}

pub fn deploy(action: Action, a: DeployArgs) -> Result<Outcome, CliError> {
    if !a.local {
        return remote(action, a);
    }
    let (Some(dir), Some(instance)) = (&a.catalog, &a.instance) else {
        // clap enforces both (--local requires --catalog, --type conflicts with --local).
        return Err(CliError::Ctl(crate::ctl::CtlError::Usage(
            "--local needs an instance and --catalog".into(),
        )));
    };
    let catalog = crate::catalog::load(dir)?;
    let state = a
        .state
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE));
    let roots = a.roots.clone().unwrap_or_else(|| state.join("roots"));
    let mut deployer = Deployer::new(&state, &roots);
    deployer.test_deadline = a.test_timeout.unwrap_or(Duration::from_secs(30));
    let rt = crate::current_thread_runtime()?;
    let r = rt.block_on(deployer.deploy(&catalog, instance, action, a.to.as_deref()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        print_deploy(&r);
    }
    Ok(if r.outcome == "rolled-back" {
        Outcome::RolledBack
    } else {
        Outcome::Done
    })
}

/// Through a running ADMIN. Exit codes as the local mode's: 0 done or unchanged, 1 the change
/// did not take (rolled back, failed, no report in time, ADMIN unreachable), 2 refused before
/// anything changed (bad usage or token, unknown instance or version, a deploy under way).
fn remote(action: Action, a: DeployArgs) -> Result<Outcome, CliError> {
    use crate::ctl::CtlError;
    let name = match action {
        Action::Install => "install",
        Action::Upgrade => "upgrade",
        Action::Downgrade => "downgrade",
    };
    let target = crate::ctl::Remote {
        url: a.url,
        token_file: a.token_file,
        json: a.json,
        wait: a.timeout.unwrap_or(Duration::from_secs(60)),
    };
    match crate::ctl::deploy(target, name, a.instance, a.type_name, a.to) {
        Ok(()) => Ok(Outcome::Done),
        // 422 rolled back or failed, 504 no report in time: the change was tried.
        Err(e @ CtlError::Refused { status, .. })
            if (400..500).contains(&status) && status != 422 =>
        {
            Err(CliError::DeployRefused(e))
        }
        Err(e) => Err(CliError::Ctl(e)),
    }
}

fn print_deploy(r: &DeployReport) {
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
