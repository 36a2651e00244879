//! Catalog errors: every one names a file (relative to the catalog), a line and column, the key
//! path inside that file, and a stable kind, so `check` output points an operator at the fix and
//! tests can assert the location of each kind of mistake.

use serde::Serialize;
use std::fmt;

/// What rule a catalog broke. The kebab-case name is stable (`check --json`, `/v1/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// A file could not be read.
    Io,
    /// Not YAML.
    Syntax,
    DuplicateKey,
    UnknownKey,
    MissingKey,
    /// A value of the wrong type or out of range.
    BadValue,
    /// A server, location or type that does not exist.
    UnknownReference,
    /// Two instances of a `unique` type.
    Unique,
    /// The same (type, server, index) twice.
    DuplicateIndex,
    /// Two gateway frontends claiming the same protocol, address and port.
    PortCollision,
    UnknownIpLabel,
    /// One fwmark used by two gateway entries.
    FwmarkReused,
    /// A `depends` type without instances.
    DependencyMissing,
    DependencyCycle,
    UnknownVariable,
    /// Two instances of one exported type on one server (same real address and port).
    RealServerCollision,
    /// An install link (`db`, `archive`) the instance's server cannot satisfy.
    Placement,
    /// The derived export was refused by `portcullis-export` (should not happen: the catalog
    /// rules above are meant to catch every such case first).
    ExportRejected,
}

impl ErrorKind {
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CatalogError {
    /// Path relative to the catalog directory, e.g. `meta/pgw.yaml`.
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Key path inside the file, e.g. `instances[3].index` or `gateway[0].ports`.
    pub key: String,
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {} [{}]", self.message, self.kind.name())
    }
}

/// Every error found, in file then line order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CatalogErrors(pub Vec<CatalogError>);

impl CatalogErrors {
    pub fn sorted(mut v: Vec<CatalogError>) -> Self {
        v.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        v.dedup();
        CatalogErrors(v)
    }
    pub fn kinds(&self) -> Vec<ErrorKind> {
        self.0.iter().map(|e| e.kind).collect()
    }
}

impl fmt::Display for CatalogErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        write!(f, "catalog rejected: {} error(s)", self.0.len())
    }
}

impl std::error::Error for CatalogErrors {}
