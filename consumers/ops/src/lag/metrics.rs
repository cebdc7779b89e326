//! Prometheus metrics of the lag exporter, under the names kafka_exporter and
//! kafka-lag-exporter made common, so existing dashboards work unchanged.
//!
//! Label values are consumer groups, topics and partitions of the cluster, so cardinality is
//! bounded by the cluster (and by `--group`); series of groups or partitions that disappear
//! are removed on the next evaluation instead of lingering with their last value.

use std::collections::HashSet;

use prometheus::core::{Atomic, AtomicF64, AtomicI64, GenericGaugeVec};
use prometheus::{Histogram, HistogramOpts, IntCounter, Opts, Registry};

use super::report::LagReport;
use super::status::Status;

/// A gauge family plus the label sets written by the last update.
struct Family<P: Atomic> {
    vec: GenericGaugeVec<P>,
    live: HashSet<Vec<String>>,
    fresh: HashSet<Vec<String>>,
}

impl<P: Atomic + 'static> Family<P> {
    fn new(
        registry: &Registry,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<Self> {
        let vec = GenericGaugeVec::<P>::new(Opts::new(name, help), labels)?;
        registry.register(Box::new(vec.clone()))?;
        Ok(Self {
            vec,
            live: HashSet::new(),
            fresh: HashSet::new(),
        })
    }

    fn set(&mut self, labels: &[&str], value: P::T) {
        self.vec.with_label_values(labels).set(value);
        self.fresh
            .insert(labels.iter().map(|s| s.to_string()).collect());
    }

    /// Removes the series the last update wrote and this one did not.
    fn finish(&mut self) {
        for stale in self.live.difference(&self.fresh) {
            let labels: Vec<&str> = stale.iter().map(String::as_str).collect();
            let _ = self.vec.remove_label_values(&labels);
        }
        self.live = std::mem::take(&mut self.fresh);
    }
}

/// The exporter's metrics; see the README's metrics table.
pub struct LagMetrics {
    lag: Family<AtomicI64>,
    lag_sum: Family<AtomicI64>,
    current_offset: Family<AtomicI64>,
    topic_current: Family<AtomicI64>,
    topic_oldest: Family<AtomicI64>,
    members: Family<AtomicI64>,
    lag_seconds: Family<AtomicF64>,
    group_status: Family<AtomicI64>,
    open_transaction_seconds: Family<AtomicF64>,
    evaluation_seconds: Histogram,
    errors: IntCounter,
}

impl std::fmt::Debug for LagMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagMetrics").finish_non_exhaustive()
    }
}

const GROUP_TP: &[&str] = &["consumergroup", "topic", "partition"];

impl LagMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let evaluation_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_lag_evaluation_seconds",
                "Time one lag evaluation took: collection from the cluster plus evaluation.",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
        )?;
        registry.register(Box::new(evaluation_seconds.clone()))?;
        let errors = IntCounter::new(
            "sluice_lag_evaluation_errors_total",
            "Lag evaluations that failed (the previous values stay exported).",
        )?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Self {
            lag: Family::new(
                registry,
                "kafka_consumergroup_lag",
                "Log-end offset minus the group's committed offset.",
                GROUP_TP,
            )?,
            lag_sum: Family::new(
                registry,
                "kafka_consumergroup_lag_sum",
                "The group's lag summed over the topic's partitions.",
                &["consumergroup", "topic"],
            )?,
            current_offset: Family::new(
                registry,
                "kafka_consumergroup_current_offset",
                "The group's committed offset.",
                GROUP_TP,
            )?,
            topic_current: Family::new(
                registry,
                "kafka_topic_partition_current_offset",
                "Log-end offset (high watermark) of the partition.",
                &["topic", "partition"],
            )?,
            topic_oldest: Family::new(
                registry,
                "kafka_topic_partition_oldest_offset",
                "Oldest offset still in the partition (log start).",
                &["topic", "partition"],
            )?,
            members: Family::new(
                registry,
                "kafka_consumergroup_members",
                "Live members of the group.",
                &["consumergroup"],
            )?,
            lag_seconds: Family::new(
                registry,
                "kafka_consumergroup_lag_seconds",
                "Estimated time lag: how long ago the log end was at the committed offset.",
                GROUP_TP,
            )?,
            group_status: Family::new(
                registry,
                "sluice_lag_group_status",
                "1 for the group's current Burrow-style status (OK, WARN, REWIND, STALL, STOP, ERR), 0 for the others.",
                &["consumergroup", "status"],
            )?,
            open_transaction_seconds: Family::new(
                registry,
                "sluice_lag_open_transaction_seconds",
                "How long the partition's stable offset has been seen held below its log end by an open transaction; absent when none is. Past transaction.max.timeout.ms (15 min by default) it is a hanging transaction.",
                &["topic", "partition"],
            )?,
            evaluation_seconds,
            errors,
        })
    }

    /// Writes one evaluation.
    pub fn update(&mut self, report: &LagReport, took_seconds: f64) {
        self.evaluation_seconds.observe(took_seconds);
        for g in &report.groups {
            let group = g.group.as_str();
            self.members.set(&[group], g.members as i64);
            for s in Status::ALL {
                self.group_status
                    .set(&[group, s.as_str()], i64::from(s == g.status));
            }
            for t in &g.lag_by_topic {
                self.lag_sum.set(&[group, &t.topic], t.lag);
            }
            for p in &g.partitions {
                let partition = p.partition.to_string();
                let labels = [group, p.topic.as_str(), partition.as_str()];
                self.current_offset.set(&labels, p.committed_offset);
                if let Some(lag) = p.lag {
                    self.lag.set(&labels, lag);
                }
                if let Some(secs) = p.lag_seconds {
                    self.lag_seconds.set(&labels, secs);
                }
            }
        }
        for t in &report.topics {
            let partition = t.partition.to_string();
            let labels = [t.topic.as_str(), partition.as_str()];
            if let Some(end) = t.log_end_offset {
                self.topic_current.set(&labels, end);
            }
            if let Some(oldest) = t.oldest_offset {
                self.topic_oldest.set(&labels, oldest);
            }
            if let Some(secs) = t.open_transaction_seconds {
                self.open_transaction_seconds.set(&labels, secs);
            }
        }
        self.lag.finish();
        self.lag_sum.finish();
        self.current_offset.finish();
        self.topic_current.finish();
        self.topic_oldest.finish();
        self.members.finish();
        self.lag_seconds.finish();
        self.group_status.finish();
        self.open_transaction_seconds.finish();
    }

    /// Counts an evaluation that failed; the previous values stay.
    pub fn failed(&self) {
        self.errors.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::super::collect::{GroupOffsets, PartitionOffsets, Snapshot};
    use super::super::tracker::Tracker;
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buf,
        )
        .unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn snapshot(groups: &[(&str, i64)]) -> Snapshot {
        Snapshot {
            taken_at_ms: 1_000,
            groups: groups
                .iter()
                .map(|(g, committed)| GroupOffsets {
                    group: g.to_string(),
                    state: "Empty".into(),
                    committed: [(("t".to_string(), 0), *committed)].into(),
                    ..GroupOffsets::default()
                })
                .collect(),
            partitions: [(
                ("t".to_string(), 0),
                PartitionOffsets {
                    oldest: Some(2),
                    log_end: Some(10),
                    stable_end: Some(7),
                },
            )]
            .into(),
            settled: Default::default(),
        }
    }

    #[test]
    fn writes_every_family_and_drops_series_that_disappear() {
        let registry = Registry::new();
        let mut m = LagMetrics::new(&registry).unwrap();
        let mut tracker = Tracker::new(3);
        m.update(&tracker.observe(&snapshot(&[("a", 4), ("b", 10)])), 0.01);
        let out = text(&registry);
        for line in [
            r#"kafka_consumergroup_lag{consumergroup="a",partition="0",topic="t"} 6"#,
            r#"kafka_consumergroup_lag_sum{consumergroup="a",topic="t"} 6"#,
            r#"kafka_consumergroup_current_offset{consumergroup="a",partition="0",topic="t"} 4"#,
            r#"kafka_topic_partition_current_offset{partition="0",topic="t"} 10"#,
            r#"kafka_topic_partition_oldest_offset{partition="0",topic="t"} 2"#,
            r#"kafka_consumergroup_members{consumergroup="a"} 0"#,
            r#"kafka_consumergroup_lag_seconds{consumergroup="b",partition="0",topic="t"} 0"#,
            r#"sluice_lag_group_status{consumergroup="a",status="OK"} 1"#,
            r#"sluice_lag_group_status{consumergroup="a",status="STOP"} 0"#,
            r#"sluice_lag_open_transaction_seconds{partition="0",topic="t"} 0"#,
            "sluice_lag_evaluation_seconds_count 1",
        ] {
            assert!(out.contains(line), "missing {line}\n{out}");
        }
        m.update(&tracker.observe(&snapshot(&[("b", 10)])), 0.01);
        let out = text(&registry);
        assert!(!out.contains(r#"consumergroup="a""#), "{out}");
        assert!(out.contains(r#"consumergroup="b""#), "{out}");
        m.failed();
        assert!(text(&registry).contains("sluice_lag_evaluation_errors_total 1"));
    }
}
