//! What became of each record of a batch, counted once the batch is committed.
//!
//! A batch that aborts is handled again from its start, so counting records as they are
//! handled would count an aborted batch twice. Partition tasks note each record's outcome
//! here; the loop emits them, metrics and log line together, only after the commit.

use super::metrics::LoopMetrics;

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Handled; its outputs are written.
    Ok,
    /// Sent to retry tier `tier` (0-based).
    Retried { tier: usize },
    /// Sent to the dead-letter topic, with the error class it carries.
    DeadLettered { class: String },
}

impl RecordOutcome {
    /// The `outcome` label of `sluice_consumer_records_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RecordOutcome::Ok => "ok",
            RecordOutcome::Retried { .. } => "retried",
            RecordOutcome::DeadLettered { .. } => "dead_lettered",
        }
    }

    /// Every label value, to start each series at zero.
    pub const LABELS: [&'static str; 3] = ["ok", "retried", "dead_lettered"];
}

/// The outcomes of one batch (or one partition task's share of it), by original topic.
#[derive(Debug, Default)]
pub struct Outcomes(Vec<(String, RecordOutcome)>);

impl Outcomes {
    pub fn note(&mut self, topic: String, outcome: RecordOutcome) {
        self.0.push((topic, outcome));
    }

    pub fn extend(&mut self, other: Outcomes) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The batch is committed: counts every outcome and logs the batch in one line.
    pub fn committed(self, metrics: &LoopMetrics, group: &str) {
        let (mut ok, mut retried, mut dead) = (0usize, 0usize, 0usize);
        for (topic, outcome) in &self.0 {
            metrics
                .records
                .with_label_values(&[group, topic, outcome.label()])
                .inc();
            match outcome {
                RecordOutcome::Ok => ok += 1,
                RecordOutcome::Retried { tier } => {
                    retried += 1;
                    metrics
                        .retries
                        .with_label_values(&[group, topic, &tier.to_string()])
                        .inc();
                }
                RecordOutcome::DeadLettered { class } => {
                    dead += 1;
                    metrics
                        .dead_letters
                        .with_label_values(&[group, topic, class])
                        .inc();
                }
            }
        }
        tracing::debug!(group, ok, retried, dead_lettered = dead, "batch committed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> (LoopMetrics, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        (LoopMetrics::new(&registry).unwrap(), registry)
    }

    #[test]
    fn nothing_is_counted_until_the_batch_is_committed() {
        let (m, _) = metrics();
        let mut batch = Outcomes::default();
        batch.note("t".into(), RecordOutcome::Ok);
        batch.note("t".into(), RecordOutcome::Retried { tier: 1 });
        batch.note(
            "t".into(),
            RecordOutcome::DeadLettered {
                class: "InvalidJson".into(),
            },
        );
        let count = |outcome: &str| m.records.with_label_values(&["g", "t", outcome]).get();
        assert_eq!(count("ok"), 0);
        // An aborted batch is dropped uncounted; the same records come round again.
        drop(batch);
        let mut again = Outcomes::default();
        again.note("t".into(), RecordOutcome::Ok);
        again.note(
            "t".into(),
            RecordOutcome::DeadLettered {
                class: "InvalidJson".into(),
            },
        );
        again.committed(&m, "g");
        assert_eq!((count("ok"), count("dead_lettered")), (1, 1));
        assert_eq!(
            m.dead_letters
                .with_label_values(&["g", "t", "InvalidJson"])
                .get(),
            1
        );
        assert_eq!(m.retries.with_label_values(&["g", "t", "1"]).get(), 0);
    }
}
