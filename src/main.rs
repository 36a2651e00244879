//! `portcullis`: entry point. Logging goes to stderr (filter with `PORTCULLIS_LOG`, e.g.
//! `PORTCULLIS_LOG=debug`); everything else is in the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Plain text for journald and log files; colour only for a person at a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    portcullis::cli::run(portcullis::cli::Cli::parse())
}
