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
    /// Where a batch's time goes, by [`Phase`].
    pub phase_seconds: HistogramVec,
    /// How long a batch's oldest record waited, from its producer's timestamp to the batch.
    pub pickup_delay_seconds: HistogramVec,
}

/// Buckets for per-batch times: a hop's latency budget is a few milliseconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The phases of a batch, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The handler over the batch's records (outputs may be produced meanwhile).
    Handle,
    /// Until every output is acknowledged.
    Produce,
    /// The input offsets: sent to the transaction, or committed (at-least-once).
    Offsets,
    /// The transaction's commit (exactly-once only).
    Commit,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Handle, Phase::Produce, Phase::Offsets, Phase::Commit];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Handle => "handle",
            Phase::Produce => "produce",
            Phase::Offsets => "offsets",
            Phase::Commit => "commit",
        }
    }
}

impl LoopMetrics {
    /// Records the time since `started` as `phase` of a batch of `group`.
    pub fn phase(&self, group: &str, phase: Phase, started: std::time::Instant) {
        self.phase_seconds
            .with_label_values(&[group, phase.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }

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
            phase_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_consumer_batch_phase_seconds",
                    "Time per batch in each phase: handle, produce (outputs acknowledged), offsets (sent to the transaction or committed), commit (the transaction).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["group", "phase"],
            )?,
            pickup_delay_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_consumer_pickup_delay_seconds",
                    "Time from the timestamp of a batch's oldest record to the batch being taken: the producer's commit, the fetch and the wait for the loop.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
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
        registry.register(Box::new(m.phase_seconds.clone()))?;
        registry.register(Box::new(m.pickup_delay_seconds.clone()))?;
        Ok(m)
    }
}
