//! The real [`Firewall`]: hands rendered transactions to `nft -f FILE` (one batch = one kernel
//! transaction), checks with `nft -c`, reads back with `nft -j list table inet portcullis`.
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
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs nft, optionally through a prefix such as `ip netns exec NS` (tests, benchmarks).
#[derive(Clone, Debug)]
pub struct NftCli {
    command: Vec<String>,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli {
            command: vec!["nft".into()],
        }
    }
}

impl NftCli {
    /// nft inside network namespace `ns` (as created by `ip netns add`).
    pub fn in_netns(ns: &str) -> Self {
        NftCli {
            command: ["ip", "netns", "exec", ns, "nft"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn run(&self, args: &[&str]) -> Result<(bool, String, String), NftError> {
        let out = Command::new(&self.command[0])
            .args(&self.command[1..])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| NftError::Spawn {
                program: self.command.join(" "),
                source,
            })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs one transaction. The script goes to nft as a complete file, never through a pipe:
    /// if portcullis dies while writing a pipe, nft reads end-of-file and applies whatever
    /// prefix it got — for a full regeneration, a table without its elements. A file is either
    /// not handed over yet (nothing happens) or complete.
    fn batch(&self, check: bool, tx: &Transaction) -> Result<(), NftError> {
        if tx.is_empty() {
            return Ok(());
        }
        let script = tx.to_nft();
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-{}-{}.nft",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, &script).map_err(|source| NftError::Spawn {
            program: format!("writing {}", path.display()),
            source,
        })?;
        let file = path.to_string_lossy().into_owned();
        let args: Vec<&str> = if check {
            vec!["-c", "-f", &file]
        } else {
            vec!["-f", &file]
        };
        let result = self.run(&args);
        let _ = std::fs::remove_file(&path);
        let (ok, _, stderr) = result?;
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
}
