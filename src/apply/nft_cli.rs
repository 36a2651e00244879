//! The real [`Firewall`]: hands rendered transactions to `nft -f /dev/stdin` (one batch = one
//! kernel transaction), checks with `nft -c`, reads back with `nft -j list table inet portcullis`.
//!
//! Why the `nft` text interface and not the `nftables` crate's JSON: measured here, JSON was
//! ~2× slower for 10k rules, lost nft's error text, and could not express some of the maps we
//! use on nft 1.0.6 (see docs/design.md). The JSON *listing* is used for read-back, where it
//! is the stable, parseable form.

use super::error::{parse_diagnostics, NftError};
use super::readback::parse_table;
use super::table::TableState;
use super::Firewall;
use crate::render::nft::transaction::{FAMILY, TABLE};
use crate::render::nft::Transaction;
use std::fs::File;
use std::io::{Seek, Write};
use std::process::{Command, Stdio};

/// Runs nft, in this process's network namespace or in a named one (tests, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct NftCli {
    /// `ip netns add`'s name of the namespace nft runs in, if not this process's.
    netns: Option<String>,
}

/// The program, found on PATH.
const NFT: &str = "nft";

impl NftCli {
    /// nft inside network namespace `ns` (as created by `ip netns add`). Each run is spawned
    /// from a short-lived thread that entered `ns` (a child inherits its thread's namespace),
    /// not through `ip netns exec`: that costs a second program and a mount namespace with
    /// /sys remounted, 3–4 ms per run on the benchmark machine, which the daemon — running in
    /// its namespace — never pays, so benchmarks through it overstated every sync.
    pub fn in_netns(ns: &str) -> Self {
        NftCli {
            netns: Some(ns.to_owned()),
        }
    }

    fn run(&self, args: &[&str]) -> Result<(bool, String, String), NftError> {
        self.run_with_input(args, Stdio::null())
    }

    fn run_with_input(
        &self,
        args: &[&str],
        stdin: Stdio,
    ) -> Result<(bool, String, String), NftError> {
        let mut command = Command::new(NFT);
        command.args(args).stdin(stdin);
        let spawned = match &self.netns {
            None => command.output(),
            Some(ns) => in_netns(ns, move || command.output()),
        };
        let out = spawned.map_err(|source| NftError::Spawn {
            program: self.program(),
            source,
        })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn program(&self) -> String {
        match &self.netns {
            None => NFT.to_owned(),
            Some(ns) => format!("{NFT} (in network namespace {ns})"),
        }
    }

    /// Runs one transaction. nft must get the complete script or nothing, never a pipe: if
    /// portcullis dies while writing a pipe, nft reads end-of-file and applies whatever prefix
    /// it got — for a full regeneration, a table without its elements. So the script is
    /// written whole into an anonymous in-memory file first, then that file, rewound, is
    /// nft's standard input (`-f /dev/stdin`: nft reads it to the end before parsing, and its
    /// diagnostics name `/dev/stdin:LINE:COL`). The file has no name in any directory, so
    /// no other user can create, replace or read it, and a killed apply leaves nothing behind.
    fn batch(&self, check: bool, tx: &Transaction) -> Result<(), NftError> {
        if tx.is_empty() {
            return Ok(());
        }
        let script = tx.to_nft();
        let input = script_file(&script).map_err(|source| NftError::Spawn {
            program: "an in-memory file for the nft script".into(),
            source,
        })?;
        let args: &[&str] = if check {
            &["-c", "-f", "/dev/stdin"]
        } else {
            &["-f", "/dev/stdin"]
        };
        let (ok, _, stderr) = self.run_with_input(args, Stdio::from(input))?;
        if ok {
            Ok(())
        } else {
            Err(NftError::Rejected {
                diagnostics: parse_diagnostics(&stderr, &script),
                stderr,
            })
        }
    }

    /// Deletes our table if it exists: everything portcullis put in nftables, nothing else.
    /// `false` when there was none.
    pub fn delete_table(&self) -> Result<bool, NftError> {
        if self.read_table()?.is_none() {
            return Ok(false);
        }
        let (ok, _, stderr) = self.run(&["delete", "table", FAMILY, TABLE])?;
        if ok {
            Ok(true)
        } else {
            Err(NftError::Rejected {
                diagnostics: Vec::new(),
                stderr,
            })
        }
    }

    fn read_table(&self) -> Result<Option<TableState>, NftError> {
        let (ok, stdout, stderr) = self.run(&["-j", "list", "table", FAMILY, TABLE])?;
        if ok {
            return parse_table(&stdout).map(Some);
        }
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        Err(NftError::Rejected {
            diagnostics: Vec::new(),
            stderr,
        })
    }
}

impl Firewall for NftCli {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.batch(false, tx)
    }
    fn check(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.batch(true, tx)
    }
    fn read_table(&mut self) -> Result<Option<TableState>, NftError> {
        NftCli::read_table(self)
    }
    fn delete_table(&mut self) -> Result<bool, NftError> {
        NftCli::delete_table(self)
    }
    fn has_chain(&mut self, name: &str) -> Result<bool, NftError> {
        // `list chains` of the family, not `list chain … NAME`: nft 1.0.6 fetches the whole
        // table, elements included, to list one chain (3.8 s at 100k rows); the chain list
        // alone takes milliseconds. Other tables' chains are in the answer and ignored.
        let (ok, stdout, stderr) = self.run(&["-j", "list", "chains", FAMILY])?;
        if !ok {
            return Err(NftError::Rejected {
                diagnostics: Vec::new(),
                stderr,
            });
        }
        Ok(super::readback::chain_names(&stdout, TABLE)?
            .iter()
            .any(|c| c == name))
    }
}

/// `script` in an anonymous memory file (memfd), complete and rewound: a file only this
/// process (and the child it is handed to) holds. Closed on exec except where it becomes
/// the child's standard input.
fn script_file(script: &str) -> std::io::Result<File> {
    let fd = rustix::fs::memfd_create("portcullis-nft-script", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = File::from(fd);
    file.write_all(script.as_bytes())?;
    file.rewind()?;
    Ok(file)
}

/// `f` on a thread that entered network namespace `ns` (setns changes only the calling
/// thread; what it spawns inherits the namespace).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("the setns thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_script_file_is_complete_rewound_and_nameless() {
        let script = "add table inet portcullis\n".repeat(10_000);
        let mut file = script_file(&script).expect("memfd");
        let mut back = String::new();
        file.read_to_string(&mut back).expect("read");
        assert_eq!(back, script, "read from the start, to the end");
        // A memfd lives in no directory: /proc shows `/memfd:NAME (deleted)`.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("readlink");
        assert!(
            target.to_string_lossy().starts_with("/memfd:"),
            "{}",
            target.display()
        );
    }
}
