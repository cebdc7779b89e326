//! Metrics of outbound attempts, labelled by endpoint id. Label values are bounded: verdicts
//! and reasons come from typed enums (status codes by class), endpoint ids from the sender's
//! own configuration. Series grow with the endpoints that were actually sent to, a handful
//! each; a series exists only once its endpoint has seen that outcome.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct OutboundMetrics {
    /// Attempts made, by endpoint, verdict and failure reason (`none` when delivered/gone).
    pub attempts: IntCounterVec,
    /// Attempt latency, by endpoint.
    pub latency_seconds: HistogramVec,
    /// Attempts the endpoint's breaker or limits did not let start, by reason.
    pub not_admitted: IntCounterVec,
    /// Time admitted attempts waited for an endpoint's limits, by endpoint and limit
    /// (`rate_limited`, `busy`); only attempts that waited.
    pub limit_wait_seconds: HistogramVec,
    /// Breaker state by endpoint: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// Breaker state changes, by endpoint and new state.
    pub breaker_transitions: IntCounterVec,
}

impl OutboundMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            attempts: IntCounterVec::new(
                Opts::new(
                    "sluice_outbound_attempts_total",
                    "Outbound HTTP attempts, by endpoint, verdict and failure reason.",
                ),
                &["endpoint", "verdict", "reason"],
            )?,
            latency_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_outbound_attempt_seconds",
                    "Time from sending an outbound attempt to its verdict.",
                )
                .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0]),
                &["endpoint"],
            )?,
            not_admitted: IntCounterVec::new(
                Opts::new(
                    "sluice_outbound_not_admitted_total",
                    "Outbound attempts held back by an endpoint's breaker or limits, by reason.",
                ),
                &["endpoint", "reason"],
            )?,
            limit_wait_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_outbound_limit_wait_seconds",
                    "Time an outbound attempt waited for its endpoint's rate limit or a free in-flight slot before it started.",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                &["endpoint", "reason"],
            )?,
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "sluice_outbound_breaker_state",
                    "Circuit breaker state per endpoint: 0 closed, 1 half-open, 2 open.",
                ),
                &["endpoint"],
            )?,
            breaker_transitions: IntCounterVec::new(
                Opts::new(
                    "sluice_outbound_breaker_transitions_total",
                    "Circuit breaker state changes, by endpoint and the state entered.",
                ),
                &["endpoint", "state"],
            )?,
        };
        registry.register(Box::new(m.attempts.clone()))?;
        registry.register(Box::new(m.latency_seconds.clone()))?;
        registry.register(Box::new(m.not_admitted.clone()))?;
        registry.register(Box::new(m.limit_wait_seconds.clone()))?;
        registry.register(Box::new(m.breaker_state.clone()))?;
        registry.register(Box::new(m.breaker_transitions.clone()))?;
        Ok(m)
    }
}
