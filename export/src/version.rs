//! The format version directive: an optional first line `# portcullis-export MAJOR.MINOR`.
//!
//! Why a directive and not a column: it must be readable before the header is understood, and
//! it keeps version-less files (hand-written, older writers) valid as 1.0. The contract:
//! - same major, minor ≤ ours: every column must be known (a typo is an error, not ignored);
//! - same major, newer minor: the writer added optional columns we do not know yet; they are
//!   ignored with a warning, so a newer ADMIN can roll out before every gateway is upgraded;
//! - another major: rejected, meaning changed incompatibly.

use crate::error::{ErrorKind, ExportError, ExportErrors};
use serde::Serialize;
use std::fmt;

const DIRECTIVE: &str = "# portcullis-export";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FormatVersion {
    pub major: u32,
    pub minor: u32,
}

impl FormatVersion {
    /// The version this crate reads and writes.
    pub const CURRENT: FormatVersion = FormatVersion { major: 1, minor: 1 };
    /// The first version: what a file without a directive is.
    pub const FIRST: FormatVersion = FormatVersion { major: 1, minor: 0 };

    pub(crate) fn ignores_unknown_columns(self) -> bool {
        self.major == Self::CURRENT.major && self.minor > Self::CURRENT.minor
    }

    /// The line [`crate::write`] puts first for a file of this version.
    pub fn directive(self) -> String {
        format!("{DIRECTIVE} {self}")
    }

    /// Reads the directive from the first line, if it is one.
    pub(crate) fn from_directive(text: &str) -> Result<FormatVersion, ExportErrors> {
        let first = text.lines().next().unwrap_or("");
        let Some(rest) = first.strip_prefix(DIRECTIVE) else {
            return Ok(Self::FIRST);
        };
        let fail = |message: String| {
            let mut errors = ExportErrors::default();
            errors.push(ExportError {
                line: 1,
                column: None,
                kind: ErrorKind::BadVersion,
                message,
            });
            errors
        };
        let value = rest.trim();
        let parsed = match value.split_once('.') {
            Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
            None => value.parse().ok().map(|a| (a, 0)),
        };
        let Some((major, minor)) = parsed.filter(|_| rest.starts_with(' ')) else {
            return Err(fail(format!(
                "expected `{DIRECTIVE} MAJOR.MINOR` (e.g. `{}`), found {}",
                Self::CURRENT.directive(),
                crate::error::Quoted(first)
            )));
        };
        let version = FormatVersion { major, minor };
        if major != Self::CURRENT.major {
            return Err(fail(format!(
                "expected format version {}.x, found {version}: this gateway must be upgraded to read it",
                Self::CURRENT.major
            )));
        }
        Ok(version)
    }
}

impl fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_is_optional_and_checked() {
        assert_eq!(
            FormatVersion::from_directive("service,instance\n"),
            Ok(FormatVersion::FIRST)
        );
        assert_eq!(
            FormatVersion::from_directive("# any comment\n"),
            Ok(FormatVersion::FIRST)
        );
        assert_eq!(
            FormatVersion::from_directive("# portcullis-export 1.3\n"),
            Ok(FormatVersion { major: 1, minor: 3 })
        );
        assert_eq!(
            FormatVersion::from_directive("# portcullis-export 1\n"),
            Ok(FormatVersion::FIRST)
        );
        for bad in [
            "# portcullis-export 2.0",
            "# portcullis-export one",
            "# portcullis-export",
            "# portcullis-export1.0",
        ] {
            let e = FormatVersion::from_directive(bad).unwrap_err();
            assert_eq!(e.errors[0].kind, ErrorKind::BadVersion, "{bad}");
            assert_eq!(e.errors[0].line, 1);
        }
        assert!(FormatVersion { major: 1, minor: 2 }.ignores_unknown_columns());
        assert!(!FormatVersion::CURRENT.ignores_unknown_columns());
        assert!(!FormatVersion::FIRST.ignores_unknown_columns());
    }
}
