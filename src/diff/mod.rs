//! The typed difference between two desired states: what a sync has to change. Pure data.
//!
//! Computing a diff is a merge-walk over two ordered maps (linear in the state, no kernel
//! involved); what it produces is proportional to the change, and that is all the incremental
//! renderers look at.

mod compute;
mod print;

use crate::model::{Frontend, RealKey, RealServer, ServiceKey, ServiceParams, VirtualService};
use portcullis_export::{Proto, ServiceType};
use serde::Serialize;

pub use print::Style;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateDiff {
    /// One entry per service that differs, ordered by service key.
    pub changes: Vec<ServiceChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ServiceChange {
    Added {
        key: ServiceKey,
        service: VirtualService,
    },
    Removed {
        key: ServiceKey,
        service: VirtualService,
    },
    /// Same key, but an identity the kernel cannot change in place (an fwmark service that
    /// moved to another protocol or address family): delete, then add.
    Replaced {
        key: ServiceKey,
        old: VirtualService,
        new: VirtualService,
    },
    Modified(ServiceUpdate),
}

/// In-place changes to one service. Empty vectors and `None` mean "unchanged".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceUpdate {
    pub key: ServiceKey,
    /// Unchanged by definition (a protocol change is a replacement); carried for renderers.
    pub proto: Proto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Change<ServiceType>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Change<ServiceParams>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frontends_added: Vec<Frontend>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frontends_removed: Vec<Frontend>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reals_added: Vec<RealEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reals_removed: Vec<RealEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reals_changed: Vec<RealUpdate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change<T> {
    pub old: T,
    pub new: T,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RealEntry {
    pub key: RealKey,
    pub server: RealServer,
}

/// A real server whose weight (or instance label) changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RealUpdate {
    pub key: RealKey,
    pub old: RealServer,
    pub new: RealServer,
}

/// Counts for logs and the summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DiffSummary {
    pub services_added: usize,
    pub services_removed: usize,
    pub services_changed: usize,
    pub reals_added: usize,
    pub reals_removed: usize,
    pub reals_changed: usize,
}

impl StateDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn summary(&self) -> DiffSummary {
        let mut s = DiffSummary::default();
        for c in &self.changes {
            match c {
                ServiceChange::Added { service, .. } => {
                    s.services_added += 1;
                    s.reals_added += service.reals.len();
                }
                ServiceChange::Removed { service, .. } => {
                    s.services_removed += 1;
                    s.reals_removed += service.reals.len();
                }
                ServiceChange::Replaced { old, new, .. } => {
                    s.services_changed += 1;
                    s.reals_removed += old.reals.len();
                    s.reals_added += new.reals.len();
                }
                ServiceChange::Modified(u) => {
                    s.services_changed += 1;
                    s.reals_added += u.reals_added.len();
                    s.reals_removed += u.reals_removed.len();
                    s.reals_changed += u.reals_changed.len();
                }
            }
        }
        s
    }
}

impl ServiceChange {
    pub fn key(&self) -> &ServiceKey {
        match self {
            ServiceChange::Added { key, .. }
            | ServiceChange::Removed { key, .. }
            | ServiceChange::Replaced { key, .. } => key,
            ServiceChange::Modified(u) => &u.key,
        }
    }
}

impl std::fmt::Display for DiffSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "services +{} -{} ~{}, real servers +{} -{} ~{}",
            self.services_added,
            self.services_removed,
            self.services_changed,
            self.reals_added,
            self.reals_removed,
            self.reals_changed
        )
    }
}
