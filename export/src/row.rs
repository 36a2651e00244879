//! The typed shape of one export row, its columns, and the identity of the virtual service it
//! belongs to.

use crate::check::Check;
use crate::fields::{InstanceId, Method, PortRange, Proto, Scheduler, ServiceType};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// One real server behind one external frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRow {
    pub service: ServiceType,
    pub instance: InstanceId,
    pub proto: Proto,
    pub vip: IpAddr,
    pub vport: PortRange,
    /// Rows sharing a fwmark form one IPVS fwmark service across all their frontends.
    pub fwmark: Option<u32>,
    pub rip: IpAddr,
    /// `None`: the real server listens on the port the client connected to.
    pub rport: Option<u16>,
    /// 0 drains: no new connections, existing ones continue.
    pub weight: u16,
    pub scheduler: Scheduler,
    pub method: Method,
    /// Persistence timeout in seconds.
    pub persistence: Option<u32>,
    /// How the gateway probes this real server (format 1.1); `None`: the gateway's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

impl ExportRow {
    /// The virtual service this row belongs to: its fwmark when set, else (proto, vip, vport).
    /// Rows with a port range always carry a fwmark (validation enforces it), so `vport.first`
    /// is the whole port for address services.
    pub fn service_key(&self) -> ServiceKey {
        match self.fwmark {
            Some(mark) => ServiceKey::Fwmark { mark },
            None => ServiceKey::Addr {
                proto: self.proto,
                vip: self.vip,
                port: self.vport.first,
            },
        }
    }

    /// The port the real server receives traffic on; `None` keeps the client's port (fwmark
    /// services without `rport`).
    pub fn effective_rport(&self) -> Option<u16> {
        match (self.rport, self.fwmark) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => Some(self.vport.first),
        }
    }
}

/// A parsed row and the source line it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    pub line: u64,
    pub row: ExportRow,
}

/// Identity of a virtual service (an IPVS service, or one load-balancing chain in nftables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ServiceKey {
    Fwmark {
        mark: u32,
    },
    Addr {
        proto: Proto,
        vip: IpAddr,
        port: u16,
    },
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Fwmark { mark } => write!(f, "fwmark {mark}"),
            ServiceKey::Addr { proto, vip, port } => {
                write!(f, "{proto} {}", SocketText(*vip, Some(*port)))
            }
        }
    }
}

/// `addr:port` with IPv6 in brackets, or the bare address when there is no port.
pub struct SocketText(pub IpAddr, pub Option<u16>);

impl fmt::Display for SocketText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
            (a, Some(p)) => write!(f, "{a}:{p}"),
            (a, None) => write!(f, "{a}"),
        }
    }
}

/// The columns of format version 1, in their canonical (written) order. `check` (1.1) is
/// optional: a file without it means "the gateway's default" for every row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Col {
    Service,
    Instance,
    Proto,
    Vip,
    Vport,
    Fwmark,
    Rip,
    Rport,
    Weight,
    Scheduler,
    Method,
    Persistence,
    Check,
}

/// How many columns format 1 knows.
pub(crate) const COLUMNS: usize = 13;

impl Col {
    pub const ALL: [Col; COLUMNS] = [
        Col::Service,
        Col::Instance,
        Col::Proto,
        Col::Vip,
        Col::Vport,
        Col::Fwmark,
        Col::Rip,
        Col::Rport,
        Col::Weight,
        Col::Scheduler,
        Col::Method,
        Col::Persistence,
        Col::Check,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Col::Service => "service",
            Col::Instance => "instance",
            Col::Proto => "proto",
            Col::Vip => "vip",
            Col::Vport => "vport",
            Col::Fwmark => "fwmark",
            Col::Rip => "rip",
            Col::Rport => "rport",
            Col::Weight => "weight",
            Col::Scheduler => "scheduler",
            Col::Method => "method",
            Col::Persistence => "persistence",
            Col::Check => "check",
        }
    }
    /// Whether a header must name this column. Columns added by a minor version are
    /// optional, so files written for an older reader stay valid.
    pub fn is_required(self) -> bool {
        self != Col::Check
    }
    /// The format version that introduced the column: a writer declares the newest one
    /// among the columns it writes.
    pub fn since(self) -> crate::FormatVersion {
        match self {
            Col::Check => crate::FormatVersion { major: 1, minor: 1 },
            _ => crate::FormatVersion { major: 1, minor: 0 },
        }
    }
    /// The required columns, as a header would name them.
    pub(crate) fn required_names() -> String {
        let names: Vec<&str> = Col::ALL
            .into_iter()
            .filter(|c| c.is_required())
            .map(Col::name)
            .collect();
        names.join(",")
    }
    /// Every column this reader knows, the optional ones in brackets.
    pub(crate) fn known_names() -> String {
        let optional: Vec<&str> = Col::ALL
            .into_iter()
            .filter(|c| !c.is_required())
            .map(Col::name)
            .collect();
        format!("{} [,{}]", Col::required_names(), optional.join(","))
    }
    pub fn from_name(name: &str) -> Option<Col> {
        Col::ALL.into_iter().find(|c| c.name() == name)
    }
    fn slot(self) -> usize {
        self as usize
    }
}

/// Where each known column sits in a file's header (1-based field positions; 0: an
/// optional column the file does not have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    positions: [usize; COLUMNS],
}

impl Layout {
    /// The order [`crate::write`] produces.
    pub fn canonical() -> Self {
        Layout {
            positions: std::array::from_fn(|i| i + 1),
        }
    }
    pub(crate) fn from_positions(positions: [usize; COLUMNS]) -> Self {
        Layout { positions }
    }
    /// 0-based field index of `col` in a record; `None` for an optional column the file
    /// does not have.
    pub(crate) fn index(&self, col: Col) -> Option<usize> {
        self.positions[col.slot()].checked_sub(1)
    }
    pub fn column(&self, col: Col) -> crate::error::Column {
        crate::error::Column {
            index: self.positions[col.slot()],
            name: col.name().to_owned(),
        }
    }
}
