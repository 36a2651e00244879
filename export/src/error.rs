//! Located validation errors. Every error names a line (1-based, as an editor counts, comment
//! lines included) and, when one field is at fault, its column (1-based CSV field position) and
//! column name, so an operator can jump straight to the cell.

use serde::Serialize;
use std::fmt;

/// At most this many errors are collected; past it the file is hopeless anyway and the
/// rest would only drown the first, most useful messages.
pub const MAX_ERRORS: usize = 100;

/// Longest text an error quotes from the input. A value is at most an address, a name or a
/// port range; quoting more only helps a hostile or broken export fill logs and memory (a
/// 60 MiB one-line export once produced a 125 MB log line).
pub const MAX_QUOTED_CHARS: usize = 64;
/// Longest message kept, whatever produced it: the net under [`MAX_QUOTED_CHARS`].
const MAX_MESSAGE_BYTES: usize = 512;

/// Input text quoted in an error: `"…"` as Rust debug-quotes it, cut after
/// [`MAX_QUOTED_CHARS`] characters with the whole length said.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(MAX_QUOTED_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes in all)", &self.0[..cut], self.0.len()),
        }
    }
}

/// `message` cut to [`MAX_MESSAGE_BYTES`] at a character boundary.
fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (cut)");
    }
    message
}

/// What kind of rule an input broke. Stable names (`kebab-case` in JSON) for tests and tooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    InvalidUtf8,
    BadVersion,
    Csv,
    MissingHeader,
    UnknownColumn,
    DuplicateColumn,
    MissingColumn,
    FieldCount,
    Whitespace,
    BadValue,
    RangeWithoutFwmark,
    RangeWithRport,
    PortRemapNeedsNat,
    FamilyMismatch,
    ServiceMismatch,
    RealServerMismatch,
    DuplicateRealServer,
    MissingRealServer,
    FwmarkProtoMismatch,
    FrontendOverlap,
}

/// The CSV column (field position) an error points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    /// 1-based position of the field in its record.
    pub index: usize,
    /// Header name of the column.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportError {
    pub line: u64,
    pub column: Option<Column>,
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(c) = &self.column {
            write!(f, ", column {} ({})", c.index, c.name)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one input (capped at [`MAX_ERRORS`]), sorted by position.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportErrors {
    pub errors: Vec<ExportError>,
    /// True when more errors existed than were kept.
    pub truncated: bool,
}

impl ExportErrors {
    pub(crate) fn push(&mut self, mut e: ExportError) {
        if self.errors.len() < MAX_ERRORS {
            e.message = bounded(e.message);
            self.errors.push(e);
        } else {
            self.truncated = true;
        }
    }
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
    pub fn len(&self) -> usize {
        self.errors.len()
    }
    pub(crate) fn is_full(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }
    pub(crate) fn sorted(mut self) -> Self {
        self.errors
            .sort_by_key(|e| (e.line, e.column.as_ref().map_or(0, |c| c.index)));
        self
    }
}

impl fmt::Display for ExportErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        if self.truncated {
            write!(
                f,
                "\n(more errors not shown; the first {MAX_ERRORS} are listed)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ExportErrors {}
