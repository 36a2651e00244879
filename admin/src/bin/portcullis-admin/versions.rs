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

#[derive(clap::Args)]
pub struct DeployArgs {
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
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    test_timeout: Duration,
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
    let catalog = crate::catalog::load(&a.catalog)?;
    let roots = a.roots.clone().unwrap_or_else(|| a.state.join("roots"));
    let mut deployer = Deployer::new(&a.state, &roots);
    deployer.test_deadline = a.test_timeout;
    let rt = crate::current_thread_runtime()?;
    let r = rt.block_on(deployer.deploy(&catalog, &a.instance, action, a.to.as_deref()))?;
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
