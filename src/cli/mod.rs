//! The netops command line: `check`, `render`, `diff` (and, as the product grows, the daemon
//! and the kernel-facing commands). Reads files, calls the pure pipeline, prints, and maps
//! outcomes to exit codes that scripts can rely on.

mod apply;
mod confirm;
mod input;
mod inspect;
mod run;

use crate::diff::{StateDiff, Style};
use crate::model::DesiredState;
use crate::render::ipvsadm;
use crate::render::nft::{self, BasePolicy, Ifname, RenderOptions};
use clap::{Parser, Subcommand, ValueEnum};
use input::{load_export, Loaded};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Gateway daemon and netops tool: ADMIN export CSV → nftables and IPVS"
)]
pub struct Cli {
    /// Log format on stderr: plain text (journald-friendly) or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Validate an export. Exit 0 valid, 2 invalid (every error on stderr, located).
    Check {
        /// Export CSV: a file, `-` for standard input, or an http(s):// or file:// URL.
        file: PathBuf,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print what would be applied for an export: nft script, ipvsadm-save text, or JSON.
    Render {
        /// Export CSV: a file, `-` for standard input, or an http(s):// or file:// URL.
        #[arg(long)]
        source: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Nft)]
        format: Format,
        /// Same as `--format json`.
        #[arg(long)]
        json: bool,
        /// Render the incremental nft transaction that turns this older export into --source,
        /// instead of the full table.
        #[arg(long, value_name = "OLD.csv")]
        incremental_from: Option<PathBuf>,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Compare two exports. Exit 0 no change, 1 changes, 2 error (like diff(1)).
    ///
    /// With `--live EXPORT` (root): what applying EXPORT would change in the kernel's table as
    /// it is now — the check to run before touching anything.
    Diff {
        /// `OLD NEW`, or with `--live` just the export.
        #[arg(required = true, num_args = 1..=2)]
        files: Vec<PathBuf>,
        /// Compare the export with the live kernel table instead of another export.
        #[arg(long)]
        live: bool,
        /// Print the diff as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
        /// With `--live`: the backend, interfaces and policy the table was rendered for.
        #[command(flatten)]
        table: TableArgs,
    },
    /// Apply one export to the kernel and exit (root). Exit 0 applied or nothing to do,
    /// 2 rejected input, 1 apply failure. Reads the live table first: a table that already
    /// matches is left alone, anything else is regenerated whole in one transaction.
    Apply {
        /// Apply once and exit (the only mode of `apply`; `portcullis run` is the daemon).
        #[arg(long)]
        once: bool,
        /// Export CSV: a file, `-` for standard input, or an http(s):// or file:// URL.
        #[arg(long)]
        source: PathBuf,
        /// Show what would change and check it with `nft -c`, but change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply even if the export withdraws more than half of the services the
        /// last-known-good export has (or all of them).
        #[arg(long)]
        force: bool,
        /// Roll back unless `portcullis confirm` follows within this time (e.g. `30s`), as
        /// iptables-apply does. A lost SSH session does not stop the clock.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        confirm_within: Option<std::time::Duration>,
        /// The daemon's state directory: last-known-good export (the guard's baseline and the
        /// rollback target), journal, and which IPVS services portcullis owns
        /// (`ipvs-owned.json`).
        #[arg(long, default_value = "/var/lib/portcullis")]
        state_dir: PathBuf,
        /// IPVS backend: take over IPVS services the export names that portcullis did not
        /// create (e.g. after losing the state file), instead of refusing.
        #[arg(long)]
        adopt_ipvs: bool,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Keep what a waiting `apply --once --confirm-within` applied.
    Confirm {
        #[arg(long, default_value = "/var/lib/portcullis")]
        state_dir: PathBuf,
    },
    /// Remove everything portcullis put in the kernel: its nftables table and the IPVS
    /// services listed in `<state-dir>/ipvs-owned.json`; nothing else.
    Flush {
        #[arg(long, default_value = "/var/lib/portcullis")]
        state_dir: PathBuf,
    },
    /// What the daemon is doing: role, source, last poll and apply, counts, last error.
    Status {
        #[arg(long, default_value = "/var/lib/portcullis")]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The journal of changes the daemon applied (or refused), newest last.
    Log {
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        #[arg(long, default_value = "/var/lib/portcullis")]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make this gateway active: the daemon applies the last-known-good export at once.
    Promote {
        #[arg(long, default_value = "/var/lib/portcullis")]
        state_dir: PathBuf,
    },
    /// Make this gateway standby: the daemon keeps polling and caching, and stops applying.
    Demote {
        #[arg(long, default_value = "/var/lib/portcullis")]
        state_dir: PathBuf,
    },
    /// The gateway daemon: poll ADMIN's export and keep the kernel in step (root).
    Run(Box<run::RunArgs>),
    /// Write a synthetic export of N rows (benchmarks and load tests).
    #[command(hide = true)]
    Synth {
        #[arg(long)]
        rows: usize,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Nft,
    Ipvsadm,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BackendArg {
    Ipvs,
    Nft,
}

impl From<BackendArg> for nft::Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Ipvs => nft::Backend::Ipvs,
            BackendArg::Nft => nft::Backend::Nft,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// Exit codes shared by the subcommands.
const OK: u8 = 0;
const CHANGES: u8 = 1;
const FAILED: u8 = 1;
const INVALID: u8 = 2;

pub fn run(cli: Cli) -> ExitCode {
    let code = match cli.command {
        Command::Check { file, json } => check(&file, json),
        Command::Render {
            source,
            format,
            json,
            incremental_from,
            table,
        } => match table.options() {
            Ok(opts) => render(
                &source,
                if json { Format::Json } else { format },
                incremental_from.as_deref(),
                &opts,
            ),
            Err(msg) => {
                eprintln!("portcullis: {msg}");
                INVALID
            }
        },
        Command::Diff {
            files,
            live,
            json,
            color,
            table,
        } => match (live, files.as_slice()) {
            (false, [old, new]) => diff(old, new, json, color),
            (true, [export]) => match table.options() {
                Ok(opts) => apply::diff_live(export, &opts, json),
                Err(msg) => {
                    eprintln!("portcullis: {msg}");
                    INVALID
                }
            },
            (false, _) => {
                eprintln!("portcullis: diff takes OLD and NEW (or --live EXPORT)");
                INVALID
            }
            (true, _) => {
                eprintln!("portcullis: diff --live takes one export");
                INVALID
            }
        },
        Command::Synth { rows } => synth(rows),
        Command::Apply {
            once: _,
            source,
            dry_run,
            force,
            confirm_within,
            state_dir,
            adopt_ipvs,
            table,
        } => match table.options() {
            Ok(opts) => apply::apply_once(apply::ApplyOnce {
                source: &source,
                opts,
                dry_run,
                force,
                confirm_within,
                state_dir: &state_dir,
                adopt_ipvs,
            }),
            Err(msg) => {
                eprintln!("portcullis: {msg}");
                INVALID
            }
        },
        Command::Confirm { state_dir } => apply::confirm(&state_dir),
        Command::Flush { state_dir } => apply::flush(&state_dir),
        Command::Run(args) => run::run(&args),
        Command::Status { state_dir, json } => inspect::status(&state_dir, json),
        Command::Promote { state_dir } => {
            inspect::set_role(&state_dir, crate::daemon::config::Role::Active)
        }
        Command::Demote { state_dir } => {
            inspect::set_role(&state_dir, crate::daemon::config::Role::Standby)
        }
        Command::Log { n, state_dir, json } => inspect::log(&state_dir, n, json),
    };
    ExitCode::from(code)
}

fn print_json(value: &impl serde::Serialize) -> u8 {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            println!("{s}");
            OK
        }
        Err(e) => {
            eprintln!("portcullis: cannot encode JSON: {e}");
            INVALID
        }
    }
}

fn check(file: &std::path::Path, json: bool) -> u8 {
    match load_export(file) {
        Loaded::Valid(export) => {
            let state = DesiredState::from_export(&export);
            if json {
                print_json(&serde_json::json!({
                    "valid": true,
                    "version": export.version.to_string(),
                    "rows": export.records.len(),
                    "services": state.services.len(),
                    "real_servers": state.real_server_count(),
                    "warnings": export.warnings,
                }));
            } else {
                println!(
                    "{}: valid: {} rows, {} virtual services, {} real servers",
                    file.display(),
                    export.records.len(),
                    state.services.len(),
                    state.real_server_count()
                );
            }
            OK
        }
        Loaded::Invalid(errors) => {
            if json {
                print_json(
                    &serde_json::json!({ "valid": false, "errors": errors.errors, "truncated": errors.truncated }),
                );
            }
            input::report(file, &errors);
            INVALID
        }
        Loaded::Unreadable(msg) => {
            eprintln!("portcullis: {msg}");
            INVALID
        }
    }
}

pub(crate) fn load_state(file: &std::path::Path) -> Result<DesiredState, u8> {
    match load_export(file) {
        Loaded::Valid(export) => Ok(DesiredState::from_export(&export)),
        Loaded::Invalid(errors) => {
            input::report(file, &errors);
            Err(INVALID)
        }
        Loaded::Unreadable(msg) => {
            eprintln!("portcullis: {msg}");
            Err(INVALID)
        }
    }
}

/// How the table is rendered on this host, for the commands that render or read it.
#[derive(clap::Args)]
pub struct TableArgs {
    /// Which data plane balances: IPVS (the table marks and filters) or nftables alone.
    #[arg(long, value_enum, default_value_t = BackendArg::Nft)]
    backend: BackendArg,
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
    fn options(&self) -> Result<RenderOptions, String> {
        render_options(
            self.policy.as_deref(),
            &self.external_ifaces,
            &self.internal_ifaces,
            self.backend.into(),
        )
    }
}

pub(crate) fn render_options(
    policy: Option<&std::path::Path>,
    external: &[String],
    internal: &[String],
    backend: nft::Backend,
) -> Result<RenderOptions, String> {
    let (text, origin) = match policy {
        Some(p) => (
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read policy {}: {e}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            nft::DEFAULT_POLICY.to_owned(),
            "built-in rules/base.nft".to_owned(),
        ),
    };
    let policy = BasePolicy::parse(&text).map_err(|e| format!("{origin}: {e}"))?;
    let names = |list: &[String], flag: &str| {
        list.iter()
            .map(|s| Ifname::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{flag}: {e}"))
    };
    Ok(RenderOptions {
        backend,
        external_interfaces: names(external, "--external-iface")?,
        internal_interfaces: names(internal, "--internal-iface")?,
        policy,
    })
}

fn render(
    source: &std::path::Path,
    format: Format,
    incremental_from: Option<&std::path::Path>,
    opts: &RenderOptions,
) -> u8 {
    let state = match load_state(source) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(old) = incremental_from {
        if format != Format::Nft {
            eprintln!("portcullis: --incremental-from renders nft transactions only");
            return INVALID;
        }
        let old = match load_state(old) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let tx = nft::incremental(
            &StateDiff::between(&old, &state),
            &old,
            &state,
            opts.backend,
        );
        if tx.is_empty() {
            println!("# no nftables changes");
        } else {
            print!("{}", tx.to_nft());
        }
        return OK;
    }
    match format {
        Format::Nft => print!("{}", nft::full_ruleset(&state, opts).to_nft()),
        Format::Ipvsadm => print!("{}", ipvsadm::ipvsadm_save(&state)),
        Format::Json => return print_json(&state),
    }
    OK
}

fn diff(old: &std::path::Path, new: &std::path::Path, json: bool, color: Color) -> u8 {
    let (a, b) = match (load_state(old), load_state(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let d = StateDiff::between(&a, &b);
    if json {
        if print_json(&serde_json::json!({ "summary": d.summary(), "changes": d.changes })) != OK {
            return INVALID;
        }
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
    if d.is_empty() {
        OK
    } else {
        CHANGES
    }
}

fn synth(rows: usize) -> u8 {
    match portcullis_export::write(&crate::synth::rows(rows), std::io::stdout().lock()) {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("portcullis: {e}");
            INVALID
        }
    }
}
