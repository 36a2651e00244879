//! The catalog commands: `check` (validate), `export` (the CSV the gateways fetch) and
//! `config` (one instance's combined configuration).

use crate::error::{CliError, Outcome};
use portcullis_admin::{config, Catalog};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct CheckArgs {
    dir: PathBuf,
    /// Errors as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    dir: PathBuf,
    /// Only this location's rows (what its gateway pair fetches with `?location=`).
    #[arg(long)]
    location: Option<String>,
}

#[derive(clap::Args)]
pub struct ConfigArgs {
    dir: PathBuf,
    #[arg(value_name = "TYPE")]
    type_name: String,
    server: String,
    index: u32,
    #[arg(long)]
    json: bool,
}

/// Loads the catalog in `dir`, every error located.
pub fn load(dir: &Path) -> Result<Catalog, CliError> {
    Catalog::load(dir).map_err(|errors| CliError::Catalog {
        dir: dir.to_owned(),
        errors,
    })
}

pub fn check(a: CheckArgs) -> Result<Outcome, CliError> {
    match (load(&a.dir), a.json) {
        (Ok(_), true) => {
            println!("{{\"valid\":true,\"errors\":[]}}");
            Ok(Outcome::Done)
        }
        (Ok(c), false) => {
            eprintln!(
                "{}: valid ({} types, {} instances)",
                a.dir.display(),
                c.metas.len(),
                c.inventory.instances.len()
            );
            Ok(Outcome::Done)
        }
        // With --json the errors are the report (stdout), not a failure of the command.
        (Err(CliError::Catalog { errors, .. }), true) => {
            println!(
                "{}",
                serde_json::json!({ "valid": false, "errors": errors })
            );
            Ok(Outcome::Refused)
        }
        (Err(e), _) => Err(e),
    }
}

pub fn export(a: ExportArgs) -> Result<Outcome, CliError> {
    let c = load(&a.dir)?;
    let csv = portcullis_admin::export::csv_of(&c, a.location.as_deref()).map_err(|e| match e {
        portcullis_admin::export::ExportError::Write(e) => CliError::Export(e),
        refused => CliError::ExportRefused(refused.to_string()),
    })?;
    print!("{csv}");
    Ok(Outcome::Done)
}

pub fn config(a: ConfigArgs) -> Result<Outcome, CliError> {
    let c = load(&a.dir)?;
    let id = format!("{}.{}.{}", a.type_name, a.server, a.index);
    let Some(idx) = c.instance_index(&id) else {
        return Err(CliError::NoInstance { id, dir: a.dir });
    };
    let v = config::combined(&c, idx).map_err(|errors| CliError::Config {
        id: id.clone(),
        errors,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", v.to_yaml());
    }
    Ok(Outcome::Done)
}
