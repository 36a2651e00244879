//! `portcullis`: entry point. Logging goes to stderr (filter with `PORTCULLIS_LOG`, e.g.
//! `PORTCULLIS_LOG=debug`), as text or, with `--log-format json`, JSON lines; everything else
//! is in the library. The daemon logs at `info` by default (each apply: what changed, how
//! long, which export), the one-shot commands at `warn` (they print their own results).

#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = portcullis::cli::Cli::parse();
    let default = match cli.command {
        portcullis::cli::Command::Run(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        // One JSON object per line, for log shippers.
        portcullis::cli::LogFormat::Json => logs.json().init(),
        // Plain text for journald and log files; colour only for a person at a terminal.
        portcullis::cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    portcullis::cli::run(cli)
}
