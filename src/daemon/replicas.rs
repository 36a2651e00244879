//! Several ADMIN replicas behind `source` (they share one catalog, see docs/catalog.md): the
//! fetcher asks the replica in use; one that does not answer (no connection, a timeout, a 5xx)
//! hands the next attempt to the next replica, and the daemon stays on whichever answers.
//! A 304, a 4xx, an oversized or rejected export are answers: they say something about the
//! export, not about the replica's availability, and another replica would say the same.
//! Pure: the step tells it what the last fetch was, the fetch asks it where to go.

use super::fetch::{FetchError, Fetched};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replicas {
    count: usize,
    current: usize,
    /// Just switched: the next fetch goes without `If-None-Match` once. Replicas share a
    /// catalog and may number ETags alike, but nothing promises it; a 304 from the new one
    /// for an ETag another minted could hide a change.
    unconditional: bool,
    /// Replicas that did not answer, in a row (reset by any answer).
    unanswered_in_a_row: u32,
}

/// Whether a fetch result says the replica is unavailable (rather than answering).
pub fn unavailable(fetched: &Result<Fetched, FetchError>) -> bool {
    match fetched {
        Ok(_) => false,
        Err(FetchError::Request(_) | FetchError::File { .. }) => true,
        Err(FetchError::Status(code)) => *code >= 500,
        Err(FetchError::TooLarge(_) | FetchError::Setup(_)) => false,
    }
}

impl Replicas {
    /// `count` replicas (at least one is assumed), starting with the first.
    pub fn new(count: usize) -> Replicas {
        Replicas {
            count: count.max(1),
            current: 0,
            unconditional: false,
            unanswered_in_a_row: 0,
        }
    }

    /// The replica the next fetch goes to (an index into the configured `source` list).
    pub fn current(&self) -> usize {
        self.current
    }

    /// Whether the next fetch must ignore the ETag it holds (see the field).
    pub fn unconditional(&self) -> bool {
        self.unconditional
    }

    /// Takes note of what the current replica returned; `Some(next)` when the next fetch
    /// goes to another replica.
    pub fn after_fetch(&mut self, fetched: &Result<Fetched, FetchError>) -> Option<usize> {
        if !unavailable(fetched) {
            self.unanswered_in_a_row = 0;
            self.unconditional = false;
            return None;
        }
        self.unanswered_in_a_row = self.unanswered_in_a_row.saturating_add(1);
        if self.count == 1 {
            return None;
        }
        self.current = (self.current + 1) % self.count;
        self.unconditional = true;
        Some(self.current)
    }

    /// The failures in a row the backoff should count: trying the next replica is not
    /// backing off, so a replica that does not answer costs one interval, and each whole
    /// round of replicas that did not answer counts as one failure. Failures that are not a
    /// replica's (applying failed) count one each, as with a single source.
    pub fn failures_for_backoff(&self, consecutive_failures: u32) -> u32 {
        let unanswered = self.unanswered_in_a_row.min(consecutive_failures);
        let rounds = unanswered / u32::try_from(self.count).unwrap_or(u32::MAX);
        consecutive_failures - unanswered + rounds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<Fetched, FetchError> {
        Err(FetchError::Request("connection refused".into()))
    }

    fn not_modified() -> Result<Fetched, FetchError> {
        Ok(Fetched::NotModified { long_polled: false })
    }

    #[test]
    fn what_counts_as_a_replica_not_answering() {
        assert!(unavailable(&refused()));
        assert!(unavailable(&Err(FetchError::Status(503))));
        assert!(unavailable(&Err(FetchError::Status(500))));
        assert!(!unavailable(&not_modified()));
        assert!(!unavailable(&Err(FetchError::Status(401))));
        assert!(!unavailable(&Err(FetchError::Status(404))));
        assert!(!unavailable(&Err(FetchError::TooLarge(10))));
        // A rejected export is a 200 with a body the step refuses: an answer.
        assert!(!unavailable(&Ok(Fetched::New {
            body: b"garbage".to_vec(),
            etag: None,
            long_polled: false,
        })));
    }

    #[test]
    fn moves_on_when_the_replica_does_not_answer_and_stays_on_one_that_does() {
        let mut r = Replicas::new(3);
        assert_eq!((r.current(), r.unconditional()), (0, false));
        assert_eq!(r.after_fetch(&not_modified()), None);
        assert_eq!(
            r.after_fetch(&Err(FetchError::Status(404))),
            None,
            "an answer"
        );
        assert_eq!(r.current(), 0);
        assert_eq!(r.after_fetch(&refused()), Some(1));
        assert!(
            r.unconditional(),
            "the first fetch from a new replica ignores the ETag"
        );
        assert_eq!(r.after_fetch(&Err(FetchError::Status(502))), Some(2));
        assert_eq!(r.after_fetch(&refused()), Some(0), "round and round");
        assert_eq!(r.after_fetch(&refused()), Some(1));
        assert_eq!(r.after_fetch(&not_modified()), None);
        assert_eq!((r.current(), r.unconditional()), (1, false), "sticky");
        assert_eq!(r.after_fetch(&not_modified()), None);
        assert_eq!(r.current(), 1);
    }

    #[test]
    fn a_single_source_never_switches_nor_drops_its_etag() {
        let mut r = Replicas::new(1);
        assert_eq!(r.after_fetch(&refused()), None);
        assert_eq!((r.current(), r.unconditional()), (0, false));
        assert_eq!(r.failures_for_backoff(1), 1);
        assert_eq!(r.after_fetch(&refused()), None);
        assert_eq!(r.failures_for_backoff(2), 2, "as before replicas existed");
    }

    #[test]
    fn backoff_counts_whole_rounds_of_replicas_not_answering() {
        let mut r = Replicas::new(2);
        r.after_fetch(&refused());
        assert_eq!(
            r.failures_for_backoff(1),
            0,
            "the next replica goes after the interval"
        );
        r.after_fetch(&refused());
        assert_eq!(r.failures_for_backoff(2), 1, "both down: back off");
        r.after_fetch(&refused());
        r.after_fetch(&refused());
        assert_eq!(r.failures_for_backoff(4), 2);
        // An answer ends the round; failures to apply then count one each.
        r.after_fetch(&not_modified());
        assert_eq!(r.failures_for_backoff(3), 3);
    }
}
