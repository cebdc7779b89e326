//! The relay's Prometheus metrics, per lane.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct RelayMetrics {
    /// Rows published as their event, exactly once.
    pub relayed: IntCounterVec,
    /// Rows sent to the DLQ instead (not their schema, not routed).
    pub dead_lettered: IntCounterVec,
    /// Rows of the lane not yet relayed, as of the last look.
    pub waiting: IntGaugeVec,
    /// Age of the oldest of those rows, in seconds.
    pub oldest_age: IntGaugeVec,
    /// Rows held behind a gap in their aggregate's sequence.
    pub held: IntGaugeVec,
    /// Gaps that lasted longer than `gap_report_ms`.
    pub gaps: IntCounterVec,
    /// Aggregates whose last sequence the lane keeps in memory.
    pub aggregates_in_memory: IntGaugeVec,
    /// Aggregates looked up in `<table>_relayed` (forgotten, then seen again).
    pub lookups: IntCounterVec,
    /// Lanes this relay owns.
    pub lanes_owned: IntGauge,
}

impl RelayMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["lane"]);
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["lane"]);
        let m = Self {
            relayed: counter(
                "sluice_outbox_relayed_total",
                "Outbox rows published to Kafka as their event, per lane",
            )?,
            dead_lettered: counter(
                "sluice_outbox_dead_lettered_total",
                "Outbox rows sent to the outbox DLQ, per lane",
            )?,
            waiting: gauge(
                "sluice_outbox_rows_waiting",
                "Outbox rows not yet relayed, per lane",
            )?,
            oldest_age: gauge(
                "sluice_outbox_oldest_unrelayed_seconds",
                "Age of the oldest outbox row not yet relayed, per lane",
            )?,
            held: gauge(
                "sluice_outbox_held_rows",
                "Outbox rows waiting for a missing sequence of their aggregate, per lane",
            )?,
            gaps: counter(
                "sluice_outbox_sequence_gaps_total",
                "Gaps in an aggregate's sequence waited on longer than the bound, per lane",
            )?,
            aggregates_in_memory: gauge(
                "sluice_outbox_aggregates_in_memory",
                "Aggregates whose last relayed sequence the lane keeps in memory, per lane",
            )?,
            lookups: counter(
                "sluice_outbox_aggregate_lookups_total",
                "Aggregates the lane had forgotten, looked up in PostgreSQL when they had new rows, per lane",
            )?,
            lanes_owned: IntGauge::new(
                "sluice_outbox_lanes_owned",
                "Outbox lanes this relay owns",
            )?,
        };
        registry.register(Box::new(m.relayed.clone()))?;
        registry.register(Box::new(m.dead_lettered.clone()))?;
        registry.register(Box::new(m.waiting.clone()))?;
        registry.register(Box::new(m.oldest_age.clone()))?;
        registry.register(Box::new(m.held.clone()))?;
        registry.register(Box::new(m.gaps.clone()))?;
        registry.register(Box::new(m.aggregates_in_memory.clone()))?;
        registry.register(Box::new(m.lookups.clone()))?;
        registry.register(Box::new(m.lanes_owned.clone()))?;
        Ok(m)
    }
}
