//! What the outbound layer reports: one typed event per thing that happened, emitted as a
//! log line and its metrics together so the two never disagree.

use super::attempt::Attempt;
use super::breaker::{BreakerState, Transition};
use super::limits::Waits;
use super::metrics::OutboundMetrics;
use super::sender::NotAdmitted;

/// Something that happened to an endpoint.
#[derive(Debug)]
pub enum OutboundEvent<'a> {
    /// An attempt was made.
    Attempted {
        endpoint: &'a str,
        attempt: &'a Attempt,
    },
    /// The endpoint's breaker or limits held an attempt back.
    NotAdmitted {
        endpoint: &'a str,
        refusal: &'a NotAdmitted,
    },
    /// An admitted attempt first waited for the endpoint's limits.
    Waited { endpoint: &'a str, waits: Waits },
    /// The endpoint's breaker changed state.
    BreakerChanged {
        endpoint: &'a str,
        transition: Transition,
    },
}

impl OutboundEvent<'_> {
    /// Logs the event and counts it (when there are metrics).
    pub fn emit(&self, metrics: Option<&OutboundMetrics>) {
        match self {
            OutboundEvent::Attempted { endpoint, attempt } => {
                emit_attempt(endpoint, attempt, metrics)
            }
            OutboundEvent::NotAdmitted { endpoint, refusal } => {
                tracing::debug!(endpoint, reason = refusal.as_str(), retry_in = ?refusal.retry_in(), "outbound attempt not admitted");
                if let Some(m) = metrics {
                    m.not_admitted
                        .with_label_values(&[endpoint, refusal.as_str()])
                        .inc();
                }
            }
            OutboundEvent::Waited { endpoint, waits } => emit_waits(endpoint, waits, metrics),
            OutboundEvent::BreakerChanged {
                endpoint,
                transition,
            } => emit_transition(endpoint, *transition, metrics),
        }
    }
}

fn emit_attempt(endpoint: &str, attempt: &Attempt, metrics: Option<&OutboundMetrics>) {
    let verdict = attempt.verdict.as_str();
    let reason = attempt.verdict.reason().map_or("none", |r| r.as_str());
    let latency_ms = attempt.latency.as_millis() as u64;
    match &attempt.error {
        None if attempt.verdict.is_success() => {
            tracing::debug!(
                endpoint,
                verdict,
                status = attempt.status,
                latency_ms,
                "outbound attempt"
            );
        }
        error => {
            tracing::info!(
                endpoint,
                verdict,
                reason,
                status = attempt.status,
                latency_ms,
                error = error.as_deref(),
                "outbound attempt failed"
            );
        }
    }
    if let Some(m) = metrics {
        m.attempts
            .with_label_values(&[endpoint, verdict, reason])
            .inc();
        m.latency_seconds
            .with_label_values(&[endpoint])
            .observe(attempt.latency.as_secs_f64());
        // The breaker's series exists from the endpoint's first attempt (closed, 0, until a
        // transition sets it), so a dashboard shows a healthy upstream as closed, not as no data.
        let _ = m.breaker_state.with_label_values(&[endpoint]);
    }
}

fn emit_waits(endpoint: &str, waits: &Waits, metrics: Option<&OutboundMetrics>) {
    for (reason, waited) in [("rate_limited", waits.rate_limited), ("busy", waits.busy)] {
        if waited.is_zero() {
            continue;
        }
        tracing::debug!(
            endpoint,
            reason,
            waited_ms = waited.as_millis() as u64,
            "outbound attempt waited for its limits"
        );
        if let Some(m) = metrics {
            m.limit_wait_seconds
                .with_label_values(&[endpoint, reason])
                .observe(waited.as_secs_f64());
        }
    }
}

fn emit_transition(endpoint: &str, transition: Transition, metrics: Option<&OutboundMetrics>) {
    let (from, to) = (transition.from.as_str(), transition.to.as_str());
    if transition.to == BreakerState::Open {
        tracing::warn!(endpoint, from, to, "outbound circuit opened");
    } else {
        tracing::info!(endpoint, from, to, "outbound circuit state changed");
    }
    if let Some(m) = metrics {
        m.breaker_state
            .with_label_values(&[endpoint])
            .set(transition.to.gauge_value());
        m.breaker_transitions
            .with_label_values(&[endpoint, to])
            .inc();
    }
}
