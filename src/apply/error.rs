//! Typed errors from the nft tool: its `file:line:column` diagnostics, parsed, with the line
//! of our script they point at, so a rejected transaction says exactly what nft disliked.

use std::fmt;

/// One diagnostic nft printed, e.g. `/dev/stdin:10:27-30: Error: syntax error, …`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftDiagnostic {
    pub line: usize,
    /// 1-based first and last column of the offending text.
    pub columns: (usize, usize),
    pub message: String,
    /// The script line it points at (empty if out of range).
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nft ran and refused the transaction; nothing was changed (one batch is all-or-nothing).
    #[error("nft rejected the transaction:\n{}", render(.diagnostics, .stderr))]
    Rejected {
        diagnostics: Vec<NftDiagnostic>,
        stderr: String,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// nft's output could not be understood (read-back).
    #[error("unexpected output from nft: {0}")]
    Output(String),
    /// The in-memory twin refused an operation (unit tests).
    #[error("twin refused {0}")]
    Twin(#[from] super::table::TransactionRefused),
    /// A refusal a unit test injected into the twin.
    #[error("twin refused (injected): {0}")]
    Injected(String),
}

fn render(diagnostics: &[NftDiagnostic], stderr: &str) -> String {
    if diagnostics.is_empty() {
        return stderr.trim_end().to_owned();
    }
    diagnostics
        .iter()
        .map(|d| {
            format!(
                "line {}:{}-{}: {}\n    {}",
                d.line, d.columns.0, d.columns.1, d.message, d.source
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for NftDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}:{}-{}: {}",
            self.line, self.columns.0, self.columns.1, self.message
        )
    }
}

/// Picks nft's `NAME:LINE:FIRST-LAST: Error: MESSAGE` lines out of its stderr (the two lines
/// after each, an echo of the source and a caret marker, are skipped).
pub fn parse_diagnostics(stderr: &str, script: &str) -> Vec<NftDiagnostic> {
    let lines: Vec<&str> = script.lines().collect();
    stderr
        .lines()
        .filter_map(|l| {
            let (location, message) = l.split_once(": Error: ")?;
            let mut parts = location.rsplitn(3, ':');
            let cols = parts.next()?;
            let line: usize = parts.next()?.parse().ok()?;
            let (first, last) = match cols.split_once('-') {
                Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                None => {
                    let c = cols.parse().ok()?;
                    (c, c)
                }
            };
            Some(NftDiagnostic {
                line,
                columns: (first, last),
                message: message.to_owned(),
                source: lines
                    .get(line.wrapping_sub(1))
                    .map_or_else(String::new, |s| (*s).to_owned()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nft_error_lines() {
        let stderr = "/dev/stdin:2:27-30: Error: syntax error, unexpected mark, expecting string\n\
                      add chain inet portcullis mark { }\n                          ^^^^\n\
                      /dev/stdin:3:5: Error: Could not process rule: No such file or directory\n";
        let script = "add table inet portcullis\nadd chain inet portcullis mark { }\nadd rule x\n";
        let d = parse_diagnostics(stderr, script);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].line, 2);
        assert_eq!(d[0].columns, (27, 30));
        assert_eq!(d[0].source, "add chain inet portcullis mark { }");
        assert!(d[0].message.starts_with("syntax error"));
        assert_eq!(d[1].columns, (5, 5));
        assert_eq!(d[1].source, "add rule x");
    }
}
