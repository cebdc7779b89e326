//! Each endpoint's health as the dispatcher sees it, and what changes in it lead to:
//! the operational events (`delivery.failing`, `delivery.recovered`, `delivery.exhausted`,
//! `endpoint.disabled`) and the automatic disable of an endpoint that has failed
//! continuously for `disable_after` (no success since its first failure).
//!
//! Kept by each dispatcher instance for the endpoints it owns (tasks are keyed by endpoint
//! id). Where the topology declares `<prefix>.state.delivery-health` (compacted, partitioned
//! like the tasks), each change of an endpoint's clock is written there ([`HealthRecord`])
//! with the attempt's settlement and read back when partitions are assigned, so the clock
//! survives restarts and rebalances: the endpoint is disabled `disable_after` after its
//! failures began. Without the topic the clock is in memory only, and a restart or a
//! rebalance starts it again.
//!
//! The events themselves are Avro events of the catalog ([`super::ops_events`]).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// An endpoint's clock in the health topic, keyed by its id; a tombstone when it is healthy
/// (or disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthRecord {
    pub failing_since: jiff::Timestamp,
}

impl Change {
    /// What the health topic should say of the endpoint after this change: `Some(Some(_))`
    /// failing since then, `Some(None)` nothing (a tombstone), `None` unchanged.
    pub fn record(self, now: jiff::Timestamp) -> Option<Option<HealthRecord>> {
        match self {
            Change::StartedFailing => Some(Some(HealthRecord { failing_since: now })),
            Change::Recovered { .. } | Change::FailedTooLong { .. } => Some(None),
            Change::Unchanged { .. } => None,
        }
    }
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

    /// Forgets `endpoint_id` (disabled by a 410); whether it was failing.
    pub fn forget(&mut self, endpoint_id: &str) -> bool {
        self.failing_since.remove(endpoint_id).is_some()
    }

    /// Replaces every clock with `restored` (those of the owned partitions, read back).
    pub fn load(&mut self, restored: impl IntoIterator<Item = (String, HealthRecord)>) {
        self.failing_since = restored
            .into_iter()
            .map(|(endpoint, r)| (endpoint, r.failing_since))
            .collect();
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

    #[test]
    fn a_restored_clock_keeps_counting_from_the_first_failure() {
        let mut h = Health::new(Duration::from_secs(60));
        let change = h.observe("a", Outcome::Failure, at(0));
        let written = change.record(at(0)).unwrap().unwrap();
        assert_eq!(written.failing_since, at(0));
        let json = serde_json::to_vec(&written).unwrap();

        // A new owner reads the record back: 60 s after the first failure, not after it
        // took over, the endpoint has failed too long.
        let mut next = Health::new(Duration::from_secs(60));
        next.load([("a".to_string(), serde_json::from_slice(&json).unwrap())]);
        assert_eq!(
            next.observe("a", Outcome::Failure, at(45)),
            Change::Unchanged { since: Some(at(0)) }
        );
        let change = next.observe("a", Outcome::Failure, at(61));
        assert_eq!(change, Change::FailedTooLong { since: at(0) });
        assert_eq!(change.record(at(61)), Some(None), "a tombstone");
        assert_eq!(Change::Unchanged { since: None }.record(at(61)), None);
        assert!(serde_json::from_slice::<HealthRecord>(
            br#"{"failing_since":"2026-12-06T00:00:00Z","x":1}"#
        )
        .is_err());
    }
}
