//! Metrics of webhook delivery, by endpoint id, besides the outbound client's own (attempts
//! by verdict, attempt latency, breaker state: `sluice_outbound_*`). Label values are
//! bounded: settlements come from a typed enum, endpoint ids from the endpoint table.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    /// Tasks settled, by endpoint and settlement (`delivered`, `retrying`, …).
    pub settled: IntCounterVec,
    /// Tasks waiting in memory for their endpoint, by endpoint.
    pub backlog: IntGaugeVec,
    /// Event keys of `per_key` endpoints held behind a task waiting in a retry tier.
    pub held_keys: IntGauge,
}

impl DeliveryMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            settled: IntCounterVec::new(
                Opts::new(
                    "sluice_delivery_settled_total",
                    "Webhook delivery tasks settled, by endpoint and settlement.",
                ),
                &["endpoint", "settlement"],
            )?,
            backlog: IntGaugeVec::new(
                Opts::new(
                    "sluice_delivery_backlog",
                    "Webhook delivery tasks waiting in memory for their endpoint.",
                ),
                &["endpoint"],
            )?,
            held_keys: IntGauge::new(
                "sluice_delivery_held_keys",
                "Event keys of per_key endpoints whose later deliveries wait behind one in a retry tier.",
            )?,
        };
        registry.register(Box::new(m.settled.clone()))?;
        registry.register(Box::new(m.backlog.clone()))?;
        registry.register(Box::new(m.held_keys.clone()))?;
        Ok(m)
    }
}
