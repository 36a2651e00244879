//! The rise/fall state machine of one target, as keepalived and HAProxy count: a server that
//! is up goes down after `fall` failed probes in a row, one that is down comes back after
//! `rise` passed probes in a row; a probe agreeing with the current state resets the count.
//! Pure, so every edge is a unit test.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    up: bool,
    /// Probes in a row that disagreed with `up`.
    streak: u32,
}

/// Every target starts up: a new real server (or a restarted gateway) serves at once, as
/// without checks, and a dead one is out after `fall` probes.
impl Default for Health {
    fn default() -> Self {
        Health {
            up: true,
            streak: 0,
        }
    }
}

impl Health {
    pub fn is_up(self) -> bool {
        self.up
    }

    /// Takes one probe result; returns the new state when it flips.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed == self.up {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        let needed = if self.up { fall } else { rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = passed;
        self.streak = 0;
        Some(self.up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(results: &[bool], rise: u32, fall: u32) -> Vec<Option<bool>> {
        let mut h = Health::default();
        results.iter().map(|&r| h.observe(r, rise, fall)).collect()
    }

    #[test]
    fn falls_after_fall_failures_in_a_row_and_rises_after_rise_passes() {
        assert_eq!(
            run(&[false, false, false, true, true], 2, 3),
            [None, None, Some(false), None, Some(true)]
        );
    }

    #[test]
    fn a_pass_between_failures_resets_the_count() {
        // fall = 2: fail, pass, fail never reaches two in a row.
        assert_eq!(run(&[false, true, false, true, false], 2, 2), [None; 5]);
        // Down, then rise = 3 broken by a failure: starts counting again.
        assert_eq!(
            run(&[false, true, true, false, true, true, true], 3, 1),
            [Some(false), None, None, None, None, None, Some(true)]
        );
    }

    #[test]
    fn one_probe_suffices_with_rise_and_fall_of_one_or_zero() {
        assert_eq!(
            run(&[false, true, false], 1, 1),
            [Some(false), Some(true), Some(false)]
        );
        assert_eq!(run(&[false, true], 0, 0), [Some(false), Some(true)]);
    }

    #[test]
    fn agreeing_probes_change_nothing() {
        let mut h = Health::default();
        for _ in 0..10 {
            assert_eq!(h.observe(true, 2, 2), None);
        }
        assert!(h.is_up());
    }
}
