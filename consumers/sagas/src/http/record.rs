//! What an instance remembers of its HTTP calls, for operators (`sluice saga show`, the
//! demo's summary): a call that took effect is summarised in its step's result (under
//! [`CALL_KEY`]); one that failed the step, in the failure's reason. Never a secret: the
//! participant wrote both with the URL's secrets already redacted.

use std::fmt;

use serde_json::Value as Json;

use super::call::CALL_KEY;
use crate::instance::Instance;

/// One call as the instance recorded it.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordedCall {
    /// It took effect: the step (or compensation) succeeded.
    Settled(Box<SettledCall>),
    /// It failed the step; `reason` reads `POST [redacted]/v1/charges → 422 (attempt 1,
    /// 12 ms): permanent failure`.
    Failed { step: String, reason: String },
}

/// A call that took effect, from the summary in its step's result.
#[derive(Debug, Clone, PartialEq)]
pub struct SettledCall {
    pub step: String,
    /// `action` or `compensation`.
    pub kind: &'static str,
    pub method: String,
    pub url: String,
    pub upstream: String,
    pub status: Json,
    pub latency_ms: Json,
    pub attempts: Json,
}

/// Every HTTP call `instance` recorded, actions first, then compensations, then the failure.
pub fn recorded_calls(instance: &Instance) -> Vec<RecordedCall> {
    let settled = instance
        .completed
        .iter()
        .map(|d| ("action", d))
        .chain(instance.compensated.iter().map(|d| ("compensation", d)));
    let mut calls: Vec<RecordedCall> = settled
        .filter_map(|(kind, done)| {
            let mut result: Json = serde_json::from_str(done.result.as_deref()?).ok()?;
            let call = result.get_mut(CALL_KEY).map(Json::take)?;
            let text = |k: &str| call[k].as_str().unwrap_or("?").to_string();
            Some(RecordedCall::Settled(Box::new(SettledCall {
                step: done.step.clone(),
                kind,
                method: text("method"),
                url: text("url"),
                upstream: text("upstream"),
                status: call["status"].clone(),
                latency_ms: call["latency_ms"].clone(),
                attempts: call["attempts"].clone(),
            })))
        })
        .collect();
    if let Some(f) = &instance.failure {
        if is_call_summary(&f.reason) {
            calls.push(RecordedCall::Failed {
                step: f.step.clone().unwrap_or_default(),
                reason: f.reason.clone(),
            });
        }
    }
    calls
}

/// Whether a failure reason is the participant's summary of a call (`METHOD url → …`).
fn is_call_summary(reason: &str) -> bool {
    let method = reason.split(' ').next().unwrap_or_default();
    ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) && reason.contains(" → ")
}

impl fmt::Display for RecordedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordedCall::Settled(c) => write!(
                f,
                "{:<20} {:<13} {} {}  status {}  {} ms  attempt {}  upstream {}",
                c.step, c.kind, c.method, c.url, c.status, c.latency_ms, c.attempts, c.upstream
            ),
            RecordedCall::Failed { step, reason } => {
                write!(f, "{step:<20} {:<13} {reason}", "failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_summary_is_told_from_other_reasons() {
        assert!(is_call_summary(
            "POST [redacted]/v1/charges → 422 (attempt 1, 12 ms): permanent failure"
        ));
        assert!(!is_call_summary("out of stock"));
        assert!(!is_call_summary("POST office closed"));
    }
}
