//! Man pages (one per subcommand, as git does) and bash, zsh and fish completions for the
//! gateway, generated from the same clap definitions (`portcullis::cli::Cli`) the binary parses
//! with, so the packaged documentation can never disagree with the flags. Run at packaging
//! time by `scripts/package` (`portcullis-assets DIR`); a crate of its own so that clap_mangen
//! and clap_complete are not linked into the runtime binary.

#![forbid(unsafe_code)]

use clap::CommandFactory;
use clap_complete::Shell;
use portcullis::cli::Cli;
use std::path::Path;

/// The name the pages and completions are written for: the installed command.
const COMMAND: &str = "portcullis";

/// Writes `DIR/man/*.1` and `DIR/completions/{portcullis.bash,_portcullis,portcullis.fish}`;
/// returns how many files it wrote.
pub fn generate(dir: &Path) -> std::io::Result<usize> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    // portcullis.1, portcullis-run.1, …: hidden subcommands and `help` get none.
    let mut pages = vec![(COMMAND.to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let name = format!("{COMMAND}-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().display_name(name)));
    }
    for (name, page) in pages {
        let mut file = std::fs::File::create(man.join(format!("{name}.1")))?;
        clap_mangen::Man::new(page).render(&mut file)?;
        written += 1;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, COMMAND, &completions)?;
        written += 1;
    }
    Ok(written)
}
