//! The export CSV contract between ADMIN (which writes it) and the gateway (which reads it).
//!
//! This crate is the one definition of the format (see `docs/export-format.md`): the columns,
//! the value types, the cross-row rules that make a set of rows expressible as IPVS and
//! nftables state, and the only reader and writer. It depends on nothing else of portcullis.
//!
//! ```
//! let text = "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence\n\
//!             web,web.1,tcp,192.0.2.10,443,,10.0.0.11,8443,100,wlc,nat,\n";
//! let export = portcullis_export::parse(text.as_bytes()).expect("valid");
//! assert_eq!(export.records[0].row.rport, Some(8443));
//! let written = portcullis_export::to_string(&export.rows()).expect("still valid");
//! assert_eq!(portcullis_export::parse(written.as_bytes()).unwrap().rows(), export.rows());
//! ```

#![forbid(unsafe_code)]

mod check;
mod error;
mod fields;
mod parse;
mod row;
mod validate;
mod version;
mod write;

pub use check::{Check, MAX_CHECK_PATH};
pub use error::{Column, ErrorKind, ExportError, ExportErrors, MAX_ERRORS};
pub use fields::{InstanceId, Method, PortRange, Proto, Scheduler, ServiceType, MAX_PERSISTENCE};
pub use parse::parse;
pub use row::{Col, ExportRow, Layout, Record, ServiceKey, SocketText};
pub use validate::validate_rows;
pub use version::FormatVersion;
pub use write::{to_string, write, WriteError};

/// A fully validated export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// The version the file declared (1.0 when it had no directive).
    pub version: FormatVersion,
    /// Rows in file order, with their source lines.
    pub records: Vec<Record>,
    /// Things accepted but worth telling an operator (columns of a newer minor version).
    pub warnings: Vec<ExportError>,
    /// Indices into `records` ordered by (service key, line), from validation.
    service_order: Vec<u32>,
}

impl Export {
    /// The rows without their source lines.
    pub fn rows(&self) -> Vec<ExportRow> {
        self.records.iter().map(|r| r.row.clone()).collect()
    }

    /// The records grouped by virtual service: ordered by [`ServiceKey`], and by line within
    /// a service. Free (validation already sorted them).
    pub fn by_service(&self) -> impl Iterator<Item = &Record> + '_ {
        self.service_order
            .iter()
            .map(|&i| &self.records[i as usize])
    }
}
