//! Metrics of a processing loop. Labels are bounded: group and topic names come from the
//! topology, error classes from handler code.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct LoopMetrics {
    /// Records handled, by outcome: `ok`, `retried`, `dead_lettered`.
    pub records: IntCounterVec,
    pub retries: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub handler_seconds: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub transactions: IntCounterVec,
    pub paused_partitions: IntGaugeVec,
    /// Keys with a record in the retry path, under per-key ordering.
    pub held_keys: IntGaugeVec,
}

impl LoopMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            records: IntCounterVec::new(
                Opts::new(
                    "sluice_consumer_records_total",
                    "Records handled, by outcome (ok, retried, dead_lettered).",
                ),
                &["group", "topic", "outcome"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "sluice_consumer_retries_total",
                    "Records sent to a retry tier, by tier.",
                ),
                &["group", "topic", "tier"],
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "sluice_consumer_dead_letters_total",
                    "Records sent to the dead-letter topic, by error class.",
                ),
                &["group", "topic", "error_class"],
            )?,
            handler_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_consumer_handler_seconds",
                    "Time spent in the handler per record.",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
                ]),
                &["group"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new(
                    "sluice_consumer_in_flight_records",
                    "Records taken from Kafka and not yet committed.",
                ),
                &["group"],
            )?,
            transactions: IntCounterVec::new(
                Opts::new(
                    "sluice_consumer_batches_total",
                    "Batches finished, by outcome (committed, aborted).",
                ),
                &["group", "outcome"],
            )?,
            paused_partitions: IntGaugeVec::new(
                Opts::new(
                    "sluice_consumer_paused_partitions",
                    "Retry-tier partitions paused until their next record is due.",
                ),
                &["group"],
            )?,
            held_keys: IntGaugeVec::new(
                Opts::new(
                    "sluice_consumer_held_keys",
                    "Keys whose later records wait behind one in the retry path (per-key ordering).",
                ),
                &["group"],
            )?,
        };
        registry.register(Box::new(m.records.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.handler_seconds.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.transactions.clone()))?;
        registry.register(Box::new(m.paused_partitions.clone()))?;
        registry.register(Box::new(m.held_keys.clone()))?;
        Ok(m)
    }
}
