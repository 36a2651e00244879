//! The netops command line: the pipeline commands (`check`, `render`, `diff`), the kernel-facing
//! ones (`apply --once`, `confirm`, `flush`, `diff --live`), the daemon (`run`) and what talks
//! to it (`status`, `log`, `promote`, `demote`), and `sync-config` (conntrackd's configuration). Each subcommand returns
//! `Result<Exit, CliError>`; [`run`] hands errors to [`error::report`], the one place that
//! prints them and picks the exit code.

mod apply;
mod confirm;
pub mod error;
mod explain;
mod input;
mod inspect;
mod live;
mod pipeline;
mod run;
mod sync_config;

use crate::daemon::config::{Role, DEFAULT_STATE_DIR};
use clap::{Parser, Subcommand, ValueEnum};
use error::{CliError, Exit};
use pipeline::{Color, Format, TableArgs};
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
    /// Which service answers at VIP:PORT, how its hash buckets are shared among its real
    /// servers, and (with --from) which bucket, real server and ADMIN instance a client
    /// reaches on the nft backend. Exit 0, or 1 when nothing answers there.
    Explain {
        /// The address and port a client connects to: `192.0.2.10:80`, `[2001:db8::1]:443`.
        target: std::net::SocketAddr,
        /// Export CSV: a file, `-` for standard input, or an http(s):// or file:// URL.
        #[arg(long)]
        source: PathBuf,
        /// The client's address.
        #[arg(long, value_name = "CLIENT_IP")]
        from: Option<std::net::IpAddr>,
        /// The client's source port: services that are neither persistent nor source-hashed
        /// choose per connection, from address and port.
        #[arg(long, value_name = "PORT", requires = "from")]
        from_port: Option<u16>,
        /// Only the TCP or the UDP service.
        #[arg(long, value_parser = ["tcp", "udp"])]
        proto: Option<String>,
        #[arg(long)]
        json: bool,
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
    /// 2 rejected input, 1 apply failure. A table stamped with the last-known-good export's
    /// digest gets only the difference; otherwise the live table is read: one that already
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
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// IPVS backend: take over IPVS services the export names that portcullis did not
        /// create (e.g. after losing the state file), instead of refusing.
        #[arg(long)]
        adopt_ipvs: bool,
        /// Read the live table back and repair it whole, even when its stamp says it is what
        /// the last-known-good export rendered (which makes the apply send only the change).
        #[arg(long)]
        read_back: bool,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Keep what a waiting `apply --once --confirm-within` applied.
    Confirm {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Remove everything portcullis put in the kernel: its nftables table and the IPVS
    /// services listed in `<state-dir>/ipvs-owned.json`; nothing else.
    Flush {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// What the daemon is doing: role, source, last poll and apply, counts, last error; and
    /// with a `[sync]` section, conntrackd's link, caches and traffic.
    Status {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Configuration file, for its `[sync]` section (default
        /// /etc/portcullis/portcullis.toml, which may be absent).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The journal of changes the daemon applied (or refused), newest last.
    Log {
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make this gateway active: the daemon applies the last-known-good export at once.
    Promote {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Make this gateway standby: the daemon keeps polling and caching, and stops applying.
    Demote {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Print the conntrackd configuration for the `[sync]` section of the gateway's TOML
    /// (connection-state sync with the other gateway; nft backend).
    SyncConfig {
        /// Configuration file (default /etc/portcullis/portcullis.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write it here (atomically) instead of standard output,
        /// e.g. /etc/conntrackd/conntrackd.conf.
        #[arg(long, short)]
        output: Option<PathBuf>,
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

pub fn run(cli: Cli) -> ExitCode {
    let code = match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => error::report(&e),
    };
    ExitCode::from(code)
}

fn dispatch(command: Command) -> Result<Exit, CliError> {
    match command {
        Command::Check { file, json } => pipeline::check(&file, json),
        Command::Render {
            source,
            format,
            json,
            incremental_from,
            table,
        } => pipeline::render(
            &source,
            if json { Format::Json } else { format },
            incremental_from.as_deref(),
            &table.options()?,
        ),
        Command::Diff {
            files,
            live,
            json,
            color,
            table,
        } => match (live, files.as_slice()) {
            (false, [old, new]) => pipeline::diff(old, new, json, color),
            (true, [export]) => live::diff_live(export, &table.options()?, json),
            (false, _) => Err(CliError::Usage("diff takes OLD and NEW (or --live EXPORT)")),
            (true, _) => Err(CliError::Usage("diff --live takes one export")),
        },
        Command::Synth { rows } => pipeline::synth(rows),
        Command::Explain {
            target,
            source,
            from,
            from_port,
            proto,
            json,
        } => explain::explain(&explain::Args {
            target,
            source: &source,
            from,
            from_port,
            proto: proto.as_deref(),
            json,
        }),
        Command::Apply {
            once: _,
            source,
            dry_run,
            force,
            confirm_within,
            state_dir,
            adopt_ipvs,
            read_back,
            table,
        } => apply::apply_once(apply::ApplyOnce {
            source: &source,
            opts: table.options()?,
            dry_run,
            force,
            confirm_within,
            state_dir: &state_dir,
            adopt_ipvs,
            read_back,
        }),
        Command::Confirm { state_dir } => apply::confirm(&state_dir),
        Command::Flush { state_dir } => live::flush(&state_dir),
        Command::Run(args) => run::run(&args),
        Command::SyncConfig { config, output } => {
            sync_config::sync_config(config.as_deref(), output.as_deref())
        }
        Command::Status {
            state_dir,
            config,
            json,
        } => inspect::status(&state_dir, json, config.as_deref()),
        Command::Promote { state_dir } => inspect::set_role(&state_dir, Role::Active),
        Command::Demote { state_dir } => inspect::set_role(&state_dir, Role::Standby),
        Command::Log { n, state_dir, json } => inspect::log(&state_dir, n, json),
    }
}
