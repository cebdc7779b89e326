//! Gateway metrics, registered in the process registry that the admin server exposes on
//! `/metrics`.
//!
//! Label values are bounded: `source` is a configured source name or `unknown`, `outcome` and
//! `reason` are error codes from a fixed set, `event_type` is a routed type or `unknown`.
//! A request path never becomes a label value.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Label for requests that match no configured source / routed event type.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub body_bytes: HistogramVec,
    pub verification_failures: IntCounterVec,
    pub publish_requests: IntCounterVec,
    pub publish_duration: HistogramVec,
    pub endpoints_requests: IntCounterVec,
}

impl GatewayMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "sluice_gateway_requests_total",
                    "Webhook requests by source and outcome (accepted or an error code).",
                ),
                &["source", "outcome"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_gateway_request_duration_seconds",
                    "Time from request to answer, including the Kafka acknowledgement.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["source"],
            )?,
            body_bytes: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_gateway_body_bytes",
                    "Size of webhook bodies that were read in full.",
                )
                .buckets(prometheus::exponential_buckets(256.0, 4.0, 8)?),
                &["source"],
            )?,
            verification_failures: IntCounterVec::new(
                Opts::new(
                    "sluice_gateway_verification_failures_total",
                    "Webhook signature verification failures by source and reason code.",
                ),
                &["source", "reason"],
            )?,
            publish_requests: IntCounterVec::new(
                Opts::new(
                    "sluice_publish_requests_total",
                    "Publish API requests by event type and outcome.",
                ),
                &["event_type", "outcome"],
            )?,
            publish_duration: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_publish_request_duration_seconds",
                    "Publish API time from request to answer, including the Kafka acknowledgement.",
                ),
                &["event_type"],
            )?,
            endpoints_requests: IntCounterVec::new(
                Opts::new(
                    "sluice_endpoints_requests_total",
                    "Endpoints API requests by operation (create, list, show, update, delete, disable, enable, rotate_secret, unknown) and outcome (ok or an error code).",
                ),
                &["operation", "outcome"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.body_bytes.clone()))?;
        registry.register(Box::new(m.verification_failures.clone()))?;
        registry.register(Box::new(m.publish_requests.clone()))?;
        registry.register(Box::new(m.publish_duration.clone()))?;
        registry.register(Box::new(m.endpoints_requests.clone()))?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_the_documented_names() {
        let registry = Registry::new();
        let m = GatewayMetrics::register(&registry).unwrap();
        m.requests.with_label_values(&["stripe", "accepted"]).inc();
        m.duration.with_label_values(&["stripe"]).observe(0.01);
        m.body_bytes.with_label_values(&["stripe"]).observe(100.0);
        m.verification_failures
            .with_label_values(&["stripe", "invalid_signature"])
            .inc();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for n in [
            "sluice_gateway_requests_total",
            "sluice_gateway_request_duration_seconds",
            "sluice_gateway_body_bytes",
            "sluice_gateway_verification_failures_total",
        ] {
            assert!(names.contains(&n.to_string()), "{names:?}");
        }
        assert!(
            GatewayMetrics::register(&registry).is_err(),
            "double registration is an error"
        );
    }
}
