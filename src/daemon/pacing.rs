//! When the next poll goes: at once after a long-polled answer (the server held the request
//! until something changed), the configured interval otherwise, and after failures an
//! exponential backoff capped at a minute, with up to 10 % jitter so a fleet does not poll in
//! step. Pure: the step tells it what the last fetch was, the loop asks it how long to wait.

use super::fetch::{FetchError, Fetched};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest wait after repeated failures (unless the interval itself is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Failures beyond this many in a row do not double the wait again.
const MAX_DOUBLINGS: u32 = 6;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pacing {
    /// The next request can follow at once: the server long-polls and will hold it until
    /// something changes.
    poll_at_once: bool,
    /// New exports fetched one after the other, without a 304 between them.
    news_in_a_row: u32,
}

impl Pacing {
    /// Takes note of what the last fetch returned. After a new export from a server not
    /// known to long-poll, one request goes at once (to find out); a server that ignores
    /// ETags thus gets the poll interval, never a busy loop.
    pub fn after_fetch(&mut self, fetched: &Result<Fetched, FetchError>, long_poll_asked: bool) {
        self.poll_at_once = match fetched {
            Ok(Fetched::NotModified { long_polled }) => {
                self.news_in_a_row = 0;
                *long_polled
            }
            Ok(Fetched::New { long_polled, .. }) => {
                self.news_in_a_row = self.news_in_a_row.saturating_add(1);
                long_poll_asked && (*long_polled || self.news_in_a_row <= 1)
            }
            Err(_) => {
                self.news_in_a_row = 0;
                false
            }
        };
    }

    /// How long to wait before the next poll, given the interval and the failures in a row.
    pub fn next_delay(&self, interval: Duration, consecutive_failures: u32) -> Duration {
        let n = consecutive_failures.min(MAX_DOUBLINGS);
        if n == 0 && self.poll_at_once {
            return Duration::ZERO;
        }
        let delay = (interval * 2u32.pow(n)).min(MAX_BACKOFF.max(interval));
        delay + delay.mul_f64(jitter_share())
    }
}

/// A share in [0, 0.1): cheap and different from host to host and poll to poll, which is all
/// jitter needs (no randomness crate for this).
fn jitter_share() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn within_jitter(got: Duration, base: Duration) -> bool {
        got >= base && got < base + base / 10 + Duration::from_nanos(1)
    }

    #[test]
    fn backs_off_exponentially_up_to_a_minute() {
        let p = Pacing::default();
        assert!(within_jitter(p.next_delay(3 * SECOND, 0), 3 * SECOND));
        assert!(within_jitter(p.next_delay(3 * SECOND, 1), 6 * SECOND));
        assert!(within_jitter(p.next_delay(3 * SECOND, 4), 48 * SECOND));
        assert!(within_jitter(p.next_delay(3 * SECOND, 5), 60 * SECOND));
        assert!(within_jitter(p.next_delay(3 * SECOND, 100), 60 * SECOND));
        // An interval longer than the cap is never shortened by failing.
        assert!(within_jitter(p.next_delay(90 * SECOND, 3), 90 * SECOND));
    }

    #[test]
    fn long_polled_answers_go_again_at_once_and_ignored_etags_do_not_spin() {
        let mut p = Pacing::default();
        p.after_fetch(&Ok(Fetched::NotModified { long_polled: true }), true);
        assert_eq!(p.next_delay(3 * SECOND, 0), Duration::ZERO);
        // A failure in a row always waits.
        assert!(p.next_delay(3 * SECOND, 1) >= 6 * SECOND);

        // A server that answers every request with a new export and no long-poll: one
        // request at once to find out, then the interval.
        let new = || {
            Ok(Fetched::New {
                body: Vec::new(),
                etag: None,
                long_polled: false,
            })
        };
        let mut p = Pacing::default();
        p.after_fetch(&new(), true);
        assert_eq!(p.next_delay(3 * SECOND, 0), Duration::ZERO);
        p.after_fetch(&new(), true);
        assert!(within_jitter(p.next_delay(3 * SECOND, 0), 3 * SECOND));

        // Long-polling switched off: never at once.
        let mut p = Pacing::default();
        p.after_fetch(&new(), false);
        assert!(within_jitter(p.next_delay(3 * SECOND, 0), 3 * SECOND));

        p.after_fetch(&Err(FetchError::Status(503)), true);
        assert!(within_jitter(p.next_delay(3 * SECOND, 0), 3 * SECOND));
    }
}
