//! The latest status of each delivery, one record per (endpoint, event) in the compacted
//! `<prefix>.state.delivery-status`, keyed `<endpoint id>/<webhook id>`, JSON:
//!
//! ```json
//! {"endpoint_id": "ep_…", "webhook_id": "evt_…", "event_type": "…", "status": "retrying",
//!  "attempts": 2, "last_status_code": 503, "next_attempt_at": "…", "updated_at": "…",
//!  "event_topic": "sluice.events.payments", "event_partition": 3, "event_offset": 42}
//! ```
//!
//! The `event_*` fields name where the event was read: `sluice deliveries resend|recover`
//! read it back from there to rebuild the task (records written before they existed lack
//! them, and cannot be resent).

use serde::{Deserialize, Serialize};
use sluice_stream::Output;

use crate::task::EventPosition;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// A 2xx answer.
    Delivered,
    /// Failed so far; the next attempt is scheduled.
    Retrying,
    /// Waiting without an attempt: the endpoint's breaker is open or its limits are full.
    Parked,
    /// The schedule ran out (or the request can never be sent): dead-lettered.
    Failed,
    /// The endpoint answered 410 Gone and was disabled.
    Gone,
    /// The endpoint was disabled (or deleted) when the event came: nothing was sent.
    EndpointDisabled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Parked => "parked",
            Self::Failed => "failed",
            Self::Gone => "gone",
            Self::EndpointDisabled => "endpoint_disabled",
        }
    }

    /// The statuses `sluice deliveries recover` sends again: nothing (more) will be tried.
    pub fn is_recoverable(self) -> bool {
        matches!(self, Self::Failed | Self::Gone | Self::EndpointDisabled)
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!("`{s}` is not a delivery status (delivered, retrying, parked, failed, gone, endpoint_disabled)")
        })
    }
}

/// One status record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub endpoint_id: String,
    pub webhook_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<jiff::Timestamp>,
    pub updated_at: jiff::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_offset: Option<i64>,
}

impl StatusRecord {
    /// The key of (endpoint, event) on the status topic.
    pub fn key(endpoint_id: &str, webhook_id: &str) -> String {
        format!("{endpoint_id}/{webhook_id}")
    }

    /// Where the event was read, when the record says.
    pub fn event_position(&self) -> Option<EventPosition> {
        Some(EventPosition {
            topic: self.event_topic.clone()?,
            partition: self.event_partition?,
            offset: self.event_offset?,
        })
    }

    /// Records `position` as where the event was read.
    pub fn at(mut self, position: &EventPosition) -> Self {
        self.event_topic = Some(position.topic.clone());
        self.event_partition = Some(position.partition);
        self.event_offset = Some(position.offset);
        self
    }

    pub fn output(&self, topic: &str) -> Output {
        Output {
            topic: topic.to_string(),
            partition: None,
            key: Some(Self::key(&self.endpoint_id, &self.webhook_id).into_bytes()),
            value: Some(serde_json::to_vec(self).expect("status records serialise")),
            headers: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_keyed_by_endpoint_and_event() {
        let r = StatusRecord {
            endpoint_id: "ep_1".into(),
            webhook_id: "evt_1".into(),
            event_type: "a.B".into(),
            status: DeliveryStatus::EndpointDisabled,
            attempts: 0,
            last_status_code: None,
            next_attempt_at: None,
            updated_at: jiff::Timestamp::UNIX_EPOCH,
            event_topic: None,
            event_partition: None,
            event_offset: None,
        }
        .at(&EventPosition {
            topic: "sluice.events.payments".into(),
            partition: 2,
            offset: 9,
        });
        let out = r.output("sluice.state.delivery-status");
        assert_eq!(out.key.as_deref(), Some(&b"ep_1/evt_1"[..]));
        let json: serde_json::Value =
            serde_json::from_slice(out.value.as_deref().unwrap()).unwrap();
        assert_eq!(json["status"], "endpoint_disabled");
        assert_eq!(json["updated_at"], "1970-01-01T00:00:00Z");
        assert!(json.get("last_status_code").is_none());
        let back: StatusRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.event_position().unwrap().offset, 9);
        assert_eq!(
            "endpoint_disabled".parse(),
            Ok(DeliveryStatus::EndpointDisabled)
        );
        assert!("nope"
            .parse::<DeliveryStatus>()
            .unwrap_err()
            .contains("`nope`"));
    }
}
