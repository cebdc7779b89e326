//! Each endpoint's health as the dispatcher sees it, and what changes in it lead to:
//! the operational events (`delivery.failing`, `delivery.recovered`, `delivery.exhausted`,
//! `endpoint.disabled`) and the automatic disable of an endpoint that has failed
//! continuously for `disable_after` (no success since its first failure).
//!
//! Kept in memory by each dispatcher instance, for the endpoints it owns (tasks are keyed by
//! endpoint id): a restart, or a rebalance moving the endpoint, starts its clock again, so
//! an endpoint is disabled at the earliest `disable_after` after the failures began and at
//! the latest that long after the last restart.
//!
//! The events themselves are Avro events of the catalog ([`super::ops_events`]).

use std::collections::HashMap;
use std::time::Duration;

/// How one attempt went, for health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// What an outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Failing from now on.
    StartedFailing,
    /// A success after failing since then.
    Recovered { since: jiff::Timestamp },
    /// Failing since then, for at least `disable_after`: disable it.
    FailedTooLong { since: jiff::Timestamp },
    /// Still failing since then, or still healthy.
    Unchanged { since: Option<jiff::Timestamp> },
}

/// When each endpoint began failing (absent: healthy).
#[derive(Debug)]
pub struct Health {
    disable_after: Duration,
    failing_since: HashMap<String, jiff::Timestamp>,
}

impl Health {
    pub fn new(disable_after: Duration) -> Self {
        Self {
            disable_after,
            failing_since: HashMap::new(),
        }
    }

    /// Records `outcome` of an attempt to `endpoint_id` at `now`.
    pub fn observe(&mut self, endpoint_id: &str, outcome: Outcome, now: jiff::Timestamp) -> Change {
        match (outcome, self.failing_since.get(endpoint_id).copied()) {
            (Outcome::Success, None) => Change::Unchanged { since: None },
            (Outcome::Success, Some(since)) => {
                self.failing_since.remove(endpoint_id);
                Change::Recovered { since }
            }
            (Outcome::Failure, None) => {
                self.failing_since.insert(endpoint_id.to_string(), now);
                Change::StartedFailing
            }
            (Outcome::Failure, Some(since)) => {
                let failing_for = now.duration_since(since);
                if failing_for
                    >= jiff::SignedDuration::try_from(self.disable_after)
                        .unwrap_or(jiff::SignedDuration::MAX)
                {
                    // Disabled: a later enable starts a fresh clock.
                    self.failing_since.remove(endpoint_id);
                    Change::FailedTooLong { since }
                } else {
                    Change::Unchanged { since: Some(since) }
                }
            }
        }
    }

    /// Forgets `endpoint_id` (disabled by a 410).
    pub fn forget(&mut self, endpoint_id: &str) {
        self.failing_since.remove(endpoint_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn failing_recovered_and_disabled_after_continuous_failure() {
        let mut h = Health::new(Duration::from_secs(60));
        assert_eq!(
            h.observe("a", Outcome::Success, at(0)),
            Change::Unchanged { since: None }
        );
        assert_eq!(
            h.observe("a", Outcome::Failure, at(1)),
            Change::StartedFailing
        );
        assert_eq!(
            h.observe("a", Outcome::Failure, at(30)),
            Change::Unchanged { since: Some(at(1)) }
        );
        // Another endpoint's failures are its own.
        assert_eq!(
            h.observe("b", Outcome::Failure, at(30)),
            Change::StartedFailing
        );
        assert_eq!(
            h.observe("a", Outcome::Success, at(40)),
            Change::Recovered { since: at(1) }
        );
        // The clock starts again at the next failure.
        assert_eq!(
            h.observe("a", Outcome::Failure, at(50)),
            Change::StartedFailing
        );
        assert_eq!(
            h.observe("a", Outcome::Failure, at(100)),
            Change::Unchanged {
                since: Some(at(50))
            }
        );
        assert_eq!(
            h.observe("a", Outcome::Failure, at(110)),
            Change::FailedTooLong { since: at(50) }
        );
        assert_eq!(
            h.observe("b", Outcome::Failure, at(90)),
            Change::FailedTooLong { since: at(30) }
        );
    }
}
