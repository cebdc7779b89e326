//! The latest status of each delivery, one record per (endpoint, event) in the compacted
//! `<prefix>.state.delivery-status`, keyed `<endpoint id>/<webhook id>`, JSON:
//!
//! ```json
//! {"endpoint_id": "ep_…", "webhook_id": "evt_…", "event_type": "…", "status": "retrying",
//!  "attempts": 2, "last_status_code": 503, "next_attempt_at": "…", "updated_at": "…"}
//! ```

use serde::Serialize;
use sluice_stream::Output;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// One status record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

impl StatusRecord {
    /// The key of (endpoint, event) on the status topic.
    pub fn key(endpoint_id: &str, webhook_id: &str) -> String {
        format!("{endpoint_id}/{webhook_id}")
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
        };
        let out = r.output("sluice.state.delivery-status");
        assert_eq!(out.key.as_deref(), Some(&b"ep_1/evt_1"[..]));
        let json: serde_json::Value =
            serde_json::from_slice(out.value.as_deref().unwrap()).unwrap();
        assert_eq!(json["status"], "endpoint_disabled");
        assert_eq!(json["updated_at"], "1970-01-01T00:00:00Z");
        assert!(json.get("last_status_code").is_none());
    }
}
