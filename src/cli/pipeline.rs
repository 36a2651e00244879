//! The commands that run the pure pipeline and touch nothing: `check`, `render`, `diff` of two
//! exports, and the hidden `synth`. Also how the table's render options come from flags.

use super::error::{CliError, Exit, OptionsError, CHANGES, OK};
use super::input::{display_name, load_export, load_state};
use crate::diff::{StateDiff, Style};
use crate::model::DesiredState;
use crate::render::ipvsadm;
use crate::render::nft::{self, Backend, BasePolicy, Ifname, RenderOptions};
use clap::ValueEnum;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Nft,
    Ipvsadm,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// How the table is rendered on this host, for the commands that render or read it.
#[derive(clap::Args)]
pub struct TableArgs {
    /// Which data plane balances: IPVS (the table marks and filters) or nftables alone.
    #[arg(long, value_enum, default_value_t = Backend::Nft)]
    backend: Backend,
    /// Static base policy to plug in (default: the rules/base.nft built into the binary).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Interface facing clients (repeatable): unaccepted new inbound traffic on it is dropped.
    #[arg(long = "external-iface", value_name = "IFNAME")]
    external_ifaces: Vec<String>,
    /// Interface facing the real servers (repeatable): translated traffic may only leave
    /// through these. None given: through any.
    #[arg(long = "internal-iface", value_name = "IFNAME")]
    internal_ifaces: Vec<String>,
}

impl TableArgs {
    pub fn options(&self) -> Result<RenderOptions, OptionsError> {
        render_options(
            self.policy.as_deref(),
            &self.external_ifaces,
            &self.internal_ifaces,
            self.backend,
        )
    }
}

pub(crate) fn render_options(
    policy: Option<&Path>,
    external: &[String],
    internal: &[String],
    backend: Backend,
) -> Result<RenderOptions, OptionsError> {
    let (text, origin) = match policy {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|source| OptionsError::ReadPolicy {
                path: p.to_owned(),
                source,
            })?,
            p.display().to_string(),
        ),
        None => (
            nft::DEFAULT_POLICY.to_owned(),
            "built-in rules/base.nft".to_owned(),
        ),
    };
    let policy =
        BasePolicy::parse(&text).map_err(|source| OptionsError::Policy { origin, source })?;
    let names = |list: &[String], flag: &'static str| {
        list.iter()
            .map(|s| Ifname::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| OptionsError::Interface { flag, source })
    };
    Ok(RenderOptions {
        backend,
        external_interfaces: names(external, "--external-iface")?,
        internal_interfaces: names(internal, "--internal-iface")?,
        policy,
    })
}

pub fn print_json(value: &impl serde::Serialize) -> Result<Exit, CliError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::io("cannot encode JSON")(std::io::Error::other(e)))?;
    text.push('\n');
    emit(&text)
}

/// Writes `text` to standard output. A reader that went away (`portcullis status | head -1`)
/// ends the command quietly, as ripgrep does: Rust ignores SIGPIPE, so the write fails with
/// EPIPE, and `println!` would panic on it.
pub fn emit(text: &str) -> Result<Exit, CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(OK),
        Err(e) => Err(CliError::io("cannot write to standard output")(e)),
    }
}

pub fn check(file: &Path, json: bool) -> Result<Exit, CliError> {
    let export = match load_export(file) {
        Ok(export) => export,
        Err(CliError::Rejected { name, errors }) => {
            if json {
                print_json(&serde_json::json!({
                    "valid": false, "errors": errors.errors, "truncated": errors.truncated
                }))?;
            }
            return Err(CliError::Rejected { name, errors });
        }
        Err(other) => return Err(other),
    };
    let state = DesiredState::from_export(&export);
    if json {
        return print_json(&serde_json::json!({
            "valid": true,
            "version": export.version.to_string(),
            "rows": export.records.len(),
            "services": state.services.len(),
            "real_servers": state.real_server_count(),
            "warnings": export.warnings,
        }));
    }
    println!(
        "{}: valid: {} rows, {} virtual services, {} real servers",
        display_name(file),
        export.records.len(),
        state.services.len(),
        state.real_server_count()
    );
    Ok(OK)
}

pub fn render(
    source: &Path,
    format: Format,
    incremental_from: Option<&Path>,
    opts: &RenderOptions,
) -> Result<Exit, CliError> {
    let state = load_state(source)?;
    if let Some(old) = incremental_from {
        if format != Format::Nft {
            return Err(CliError::Usage(
                "--incremental-from renders nft transactions only",
            ));
        }
        let old = load_state(old)?;
        let Some(tx) = nft::incremental_between(&old, &state, opts.backend) else {
            println!("# bucket pattern ids collide: the change regenerates the table whole");
            print!("{}", nft::full_ruleset(&state, opts).to_nft());
            return Ok(OK);
        };
        if tx.is_empty() {
            println!("# no nftables changes");
        } else {
            print!("{}", tx.to_nft());
        }
        return Ok(OK);
    }
    match format {
        Format::Nft => print!("{}", nft::full_ruleset(&state, opts).to_nft()),
        Format::Ipvsadm => print!("{}", ipvsadm::ipvsadm_save(&state)),
        Format::Json => return print_json(&state),
    }
    Ok(OK)
}

pub fn diff(old: &Path, new: &Path, json: bool, color: Color) -> Result<Exit, CliError> {
    let (a, b) = (load_state(old)?, load_state(new)?);
    let d = StateDiff::between(&a, &b);
    if json {
        print_json(&serde_json::json!({ "summary": d.summary(), "changes": d.changes }))?;
    } else {
        let style = match color {
            Color::Always => Style::Color,
            Color::Never => Style::Plain,
            Color::Auto if std::io::stdout().is_terminal() => Style::Color,
            Color::Auto => Style::Plain,
        };
        print!("{}", d.to_human(style));
        if !d.is_empty() {
            println!("{}", d.summary());
        }
    }
    Ok(if d.is_empty() { OK } else { CHANGES })
}

pub fn synth(rows: usize) -> Result<Exit, CliError> {
    portcullis_export::write(&crate::synth::rows(rows), std::io::stdout().lock())
        .map_err(|e| CliError::io("cannot write the export")(std::io::Error::other(e)))?;
    Ok(OK)
}
