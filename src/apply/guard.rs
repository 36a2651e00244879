//! Safety guard: an export that would withdraw more than a configured share of the virtual
//! services (or every one of them) is refused, because that is far more often ADMIN or its
//! database being wrong than an operator meaning it. `--force` (or the config) overrides.

use crate::model::DesiredState;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Guard {
    /// Largest share (0..=1) of the applied virtual services one export may remove.
    pub max_removed_share: f64,
    /// Whether an export may remove every virtual service.
    pub allow_remove_all: bool,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            max_removed_share: 0.5,
            allow_remove_all: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuardRefusal {
    pub removed: usize,
    pub applied: usize,
    pub reason: String,
}

impl fmt::Display for GuardRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused: the export would remove {} of {} virtual services ({}); use --force if that is intended",
            self.removed, self.applied, self.reason
        )
    }
}

impl std::error::Error for GuardRefusal {}

impl Guard {
    pub fn check(&self, applied: &DesiredState, new: &DesiredState) -> Result<(), GuardRefusal> {
        let removed = applied
            .services
            .keys()
            .filter(|k| !new.services.contains_key(*k))
            .count();
        self.check_removal(applied.services.len(), removed)
    }

    /// [`Guard::check`] from the counts: `removed` of the `total` applied services go. For
    /// a caller that has the diff already (the sync path), where counting again would cost
    /// a lookup per service of a 100k-row export on every change.
    pub fn check_removal(&self, total: usize, removed: usize) -> Result<(), GuardRefusal> {
        if total == 0 {
            return Ok(());
        }
        let refuse = |reason: String| {
            Err(GuardRefusal {
                removed,
                applied: total,
                reason,
            })
        };
        if removed == total && !self.allow_remove_all {
            return refuse("all of them; allow_remove_all is off".into());
        }
        let share = removed as f64 / total as f64;
        if share > self.max_removed_share {
            return refuse(format!(
                "{:.0} % is over the {:.0} % limit",
                share * 100.0,
                self.max_removed_share * 100.0
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(n: usize) -> DesiredState {
        DesiredState::from_rows(&crate::synth::rows_with_services(n))
    }

    #[test]
    fn refuses_large_and_total_withdrawals() {
        let g = Guard::default();
        assert!(g.check(&state(10), &state(10)).is_ok());
        assert!(
            g.check(&state(10), &state(5)).is_ok(),
            "exactly 50 % is allowed"
        );
        let e = g.check(&state(10), &state(4)).expect_err("60 % removed");
        assert_eq!((e.removed, e.applied), (6, 10));
        assert!(g.check(&state(10), &DesiredState::default()).is_err());
        assert!(
            g.check(&DesiredState::default(), &state(3)).is_ok(),
            "nothing applied yet"
        );
        let lax = Guard {
            max_removed_share: 1.0,
            allow_remove_all: true,
        };
        assert!(lax.check(&state(10), &DesiredState::default()).is_ok());
        let no_total = Guard {
            max_removed_share: 1.0,
            allow_remove_all: false,
        };
        assert!(no_total.check(&state(1), &DesiredState::default()).is_err());
    }
}
