//! `portcullis-assets DIR`: writes the gateway's man pages and shell completions under DIR
//! (`man/`, `completions/`) for `scripts/package`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next().map(PathBuf::from), args.next()) else {
        eprintln!("usage: portcullis-assets DIR");
        return ExitCode::from(2);
    };
    match portcullis_assets::generate(&dir) {
        Ok(n) => {
            println!("wrote {n} files under {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis-assets: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
