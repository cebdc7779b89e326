//! The delivery log: one record per attempt on `<prefix>.deliveries.attempts`, keyed by
//! endpoint id, JSON:
//!
//! ```json
//! {"endpoint_id": "ep_…", "webhook_id": "evt_…", "event_type": "…", "attempt": 1,
//!  "started_at": "…", "latency_ms": 12, "status_code": 503, "verdict": "retry_later",
//!  "reason": "server_error", "error": null, "response_body": "…", "response_truncated": false}
//! ```
//!
//! `response_body` is the first 64 KiB of the answer (the outbound client reads no more),
//! as text (invalid UTF-8 replaced). Request headers are not logged: they carry signatures.

use serde::{Deserialize, Serialize};
use sluice_runtime::outbound::Attempt;
use sluice_stream::Output;

use crate::task::DeliveryTask;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub endpoint_id: String,
    pub webhook_id: String,
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub started_at: jiff::Timestamp,
    pub latency_ms: u64,
    pub status_code: Option<u16>,
    /// `delivered`, `gone`, `retry_later` or `rejected`.
    pub verdict: String,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub response_body: String,
    pub response_truncated: bool,
}

impl AttemptRecord {
    /// The record of `attempt`, the `number`th attempt of `task`.
    pub fn of(task: &DeliveryTask, number: u32, attempt: &Attempt) -> Self {
        Self {
            endpoint_id: task.endpoint_id.clone(),
            webhook_id: task.webhook_id.clone(),
            event_type: task.event_type.clone(),
            attempt: number,
            started_at: jiff::Timestamp::try_from(attempt.started_at)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            latency_ms: u64::try_from(attempt.latency.as_millis()).unwrap_or(u64::MAX),
            status_code: attempt.status,
            verdict: attempt.verdict.as_str().to_string(),
            reason: attempt.verdict.reason().map(ToString::to_string),
            error: attempt.error.clone(),
            response_body: String::from_utf8_lossy(&attempt.body_prefix).into_owned(),
            response_truncated: attempt.truncated,
        }
    }

    pub fn output(&self, topic: &str) -> Output {
        Output {
            topic: topic.to_string(),
            partition: None,
            key: Some(self.endpoint_id.clone().into_bytes()),
            value: Some(serde_json::to_vec(self).expect("attempt records serialise")),
            headers: vec![(
                crate::task::header::WEBHOOK_ID.into(),
                self.webhook_id.clone().into_bytes(),
            )],
        }
    }
}
