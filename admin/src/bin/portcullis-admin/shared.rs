//! `catalog import DIR --state URL` / `catalog export DIR --state URL`: a directory catalog into
//! and out of PostgreSQL, where `serve --state URL` replicas share it. The directory stays the
//! review format: an export of an import is the same files, byte for byte.

use crate::error::{CliError, Outcome};
use portcullis_admin::pgstate::{self, PgStateError, PgStore};
use portcullis_admin::Sources;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(clap::Subcommand)]
enum CatalogCommand {
    /// Replace the catalog in PostgreSQL by DIR's inventory.yaml and meta/*.yaml (validated
    /// first; an invalid catalog writes nothing). Replicas pick it up at once.
    Import(ImportArgs),
    /// Write the catalog in PostgreSQL into DIR (inventory.yaml, meta/*.yaml).
    Export(ExportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    dir: PathBuf,
    /// postgres://USER@HOST/DB
    #[arg(long)]
    state: String,
    /// Who the audit log records as the importer.
    #[arg(long, default_value = "catalog-import")]
    identity: String,
}

#[derive(clap::Args)]
struct ExportArgs {
    dir: PathBuf,
    /// postgres://USER@HOST/DB
    #[arg(long)]
    state: String,
}

pub fn catalog(a: CatalogArgs) -> Result<Outcome, CliError> {
    let rt = crate::current_thread_runtime()?;
    rt.block_on(async move {
        match a.command {
            CatalogCommand::Import(a) => {
                let sources = Sources::read(&a.dir).map_err(|errors| CliError::Catalog {
                    dir: a.dir.clone(),
                    errors,
                })?;
                let store = PgStore::connect(&a.state).await?;
                let revision = match store.import(&sources, &a.identity).await {
                    Err(PgStateError::Invalid(errors)) => {
                        return Err(CliError::Catalog { dir: a.dir, errors })
                    }
                    other => other?,
                };
                eprintln!(
                    "{}: imported ({} meta files), revision {revision}",
                    a.dir.display(),
                    sources.metas.len()
                );
            }
            CatalogCommand::Export(a) => {
                let store = PgStore::connect(&a.state).await?;
                let stored = store.load().await?.ok_or(PgStateError::Empty)?;
                pgstate::write_dir(&a.dir, &stored.sources)?;
                eprintln!(
                    "{}: exported revision {} ({} meta files)",
                    a.dir.display(),
                    stored.revision,
                    stored.sources.metas.len()
                );
            }
        }
        Ok(Outcome::Done)
    })
}
