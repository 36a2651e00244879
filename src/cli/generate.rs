//! `portcullis generate DIR`: man pages (one per subcommand, as git does) and bash, zsh and
//! fish completions, generated from the same clap definitions the binary parses with, so the
//! packaged documentation can never disagree with the flags. Run by `scripts/package`.

use super::error::{FAILED, OK};
use super::Cli;
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::Path;

pub fn generate(dir: &Path) -> u8 {
    match write_all(dir) {
        Ok(n) => {
            println!("wrote {n} files under {}", dir.display());
            OK
        }
        Err(e) => {
            eprintln!("portcullis: generate: {e}");
            FAILED
        }
    }
}

fn write_all(dir: &Path) -> std::io::Result<usize> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    // portcullis.1, portcullis-run.1, …: hidden subcommands and `help` get none.
    let mut pages = vec![("portcullis".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let name = format!("portcullis-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().display_name(name)));
    }
    for (name, page) in pages {
        let mut file = std::fs::File::create(man.join(format!("{name}.1")))?;
        clap_mangen::Man::new(page).render(&mut file)?;
        written += 1;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "portcullis", &completions)?;
        written += 1;
    }
    Ok(written)
}
