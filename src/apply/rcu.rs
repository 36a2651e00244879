//! Expedited RCU grace periods, so that an nft change is not charged a grace period.
//!
//! nf_tables frees what a commit deleted (elements, the old stamp chain) only after an RCU
//! grace period, on a work queue; and the release of an nfnetlink socket waits for that work
//! to finish (`nft_rcv_nl_event` → `nf_tables_trans_destroy_flush_work`, Linux 6.x). So every
//! `nft` run that deletes anything waits out a grace period as it exits. Measured on the
//! 2-core benchmark machine (kernel 6.18, nft 1.0.6), one drain against a 100k-row table:
//! 16 ms median with normal grace periods, 3 ms with expedited ones — the wait was most of a
//! change. Expedited grace periods interrupt the other CPUs instead of waiting for them to
//! pass a quiescent state on their own: a cost per grace period that a gateway changing its
//! rules a few times a second does not notice, and that a latency-critical host may refuse
//! (`expedite_rcu = false`). The switch is host-wide; `/sys/kernel/rcu_normal = 1` overrides it.

use std::io;
use std::path::Path;

/// The kernel's switch (also the boot parameter `rcupdate.rcu_expedited=1`).
pub const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// What [`expedite`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expedited {
    /// Someone (a boot parameter, an earlier run) had turned it on.
    AlreadyOn,
    /// It was off; now it is on, for the whole host, until reboot or someone writes 0.
    TurnedOn,
}

/// Turns expedited grace periods on through `switch` (normally [`RCU_EXPEDITED`]).
pub fn expedite(switch: &Path) -> io::Result<Expedited> {
    let now = std::fs::read_to_string(switch)?;
    if now.trim() != "0" {
        return Ok(Expedited::AlreadyOn);
    }
    std::fs::write(switch, "1")?;
    Ok(Expedited::TurnedOn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_the_switch_on_once_and_leaves_it_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let switch = dir.path().join("rcu_expedited");
        std::fs::write(&switch, "0\n").expect("write");
        assert_eq!(expedite(&switch).expect("expedite"), Expedited::TurnedOn);
        assert_eq!(std::fs::read_to_string(&switch).expect("read").trim(), "1");
        assert_eq!(expedite(&switch).expect("expedite"), Expedited::AlreadyOn);
    }

    #[test]
    fn a_missing_switch_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(expedite(&dir.path().join("absent")).is_err());
    }
}
