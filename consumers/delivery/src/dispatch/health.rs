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
//! Operational events are JSON records of `<prefix>.deliveries.events`, keyed by endpoint
//! id, with CloudEvents headers (`ce_id`, `ce_type`, `ce_source`, `ce_time`,
//! `content-type: application/json`):
//!
//! ```json
//! {"type": "delivery.failing", "endpoint_id": "ep_…", "webhook_id": "evt_…",
//!  "status_code": 503, "failing_since": "…", "time": "…"}
//! ```

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sluice_stream::Output;

/// What happened to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OpsEventType {
    /// The first failure after a success (or since this instance took the endpoint).
    #[serde(rename = "delivery.failing")]
    Failing,
    /// The first success after failures.
    #[serde(rename = "delivery.recovered")]
    Recovered,
    /// A delivery's schedule ran out: dead-lettered.
    #[serde(rename = "delivery.exhausted")]
    Exhausted,
    /// The endpoint was disabled: it answered 410 Gone, or failed for `disable_after`.
    #[serde(rename = "endpoint.disabled")]
    Disabled,
}

impl OpsEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failing => "delivery.failing",
            Self::Recovered => "delivery.recovered",
            Self::Exhausted => "delivery.exhausted",
            Self::Disabled => "endpoint.disabled",
        }
    }
}

/// One operational event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpsEvent {
    #[serde(rename = "type")]
    pub event_type: OpsEventType,
    pub endpoint_id: String,
    /// The delivery that caused it.
    pub webhook_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// When the endpoint started failing, for `failing`, `disabled` and `recovered`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<jiff::Timestamp>,
    /// Why, for `endpoint.disabled`: `gone` or `failing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub time: jiff::Timestamp,
}

impl OpsEvent {
    pub fn output(&self, topic: &str) -> Output {
        let id = uuid::Uuid::new_v4().to_string();
        Output {
            topic: topic.to_string(),
            partition: None,
            key: Some(self.endpoint_id.clone().into_bytes()),
            value: Some(serde_json::to_vec(self).expect("operational events serialise")),
            headers: vec![
                ("ce_id".into(), id.into_bytes()),
                (
                    "ce_type".into(),
                    format!("sluice.{}", self.event_type.as_str()).into_bytes(),
                ),
                ("ce_source".into(), b"sluice/deliver".to_vec()),
                ("ce_time".into(), self.time.to_string().into_bytes()),
                ("content-type".into(), b"application/json".to_vec()),
            ],
        }
    }
}

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

    #[test]
    fn an_event_carries_cloudevents_headers() {
        let e = OpsEvent {
            event_type: OpsEventType::Failing,
            endpoint_id: "ep_1".into(),
            webhook_id: "evt_1".into(),
            status_code: Some(503),
            failing_since: Some(at(0)),
            reason: None,
            time: at(0),
        };
        let out = e.output("sluice.deliveries.events");
        let header = |k: &str| {
            out.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("ce_type"), Some(b"sluice.delivery.failing".to_vec()));
        let json: serde_json::Value =
            serde_json::from_slice(out.value.as_deref().unwrap()).unwrap();
        assert_eq!(json["type"], "delivery.failing");
        assert_eq!(json["status_code"], 503);
        assert!(json.get("reason").is_none());
    }
}
