//! Consumer lag for operators: every consumer group on the cluster, its committed offsets
//! against the log ends, an estimated time lag, and a Burrow-style status per partition and
//! group.
//!
//! - [`collect`] reads the cluster (groups, members, committed, oldest and log-end offsets);
//! - [`tracker`] keeps windows of samples between passes and builds a [`LagReport`];
//! - [`status`] is the pure Burrow-style evaluator, [`history`] the time-lag interpolation;
//! - [`metrics`] exports reports to Prometheus, [`run_exporter`] is the long-running mode.
//!
//! Status needs samples over time: a one-shot `sluice lag` takes a window of samples a short
//! interval apart; the exporter and `--watch` slide a window over their passes.

pub mod assignment;
pub mod collect;
pub mod history;
pub mod metrics;
pub mod open_transactions;
pub mod report;
pub mod settled;
pub mod status;
pub mod tracker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use sluice_runtime::admin::Readiness;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::Shutdown;

pub use collect::{Collector, GroupFilter, Snapshot};
pub use metrics::LagMetrics;
pub use report::{GroupLag, LagReport, PartitionLag};
pub use status::Status;
pub use tracker::Tracker;

#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error(transparent)]
    Client(#[from] sluice_runtime::kafka::ClientError),
    #[error(transparent)]
    Config(#[from] sluice_runtime::ConfigError),
    #[error("{what}: {source}")]
    Kafka { what: String, source: KafkaError },
    #[error("the lag collection task failed: {0}")]
    Task(String),
}

/// A collector plus the tracker that remembers its passes.
#[derive(Debug)]
pub struct LagMonitor {
    collector: Arc<Collector>,
    tracker: Tracker,
}

impl LagMonitor {
    pub fn new(
        clients: KafkaClients,
        filter: GroupFilter,
        window: usize,
    ) -> Result<Self, LagError> {
        Ok(Self::with_collector(
            Collector::new(clients, filter)?,
            window,
        ))
    }

    pub fn with_collector(collector: Collector, window: usize) -> Self {
        Self {
            collector: Arc::new(collector),
            tracker: Tracker::new(window),
        }
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// One pass: collects from the cluster (on a blocking thread) and evaluates.
    pub async fn sample(&mut self) -> Result<LagReport, LagError> {
        let collector = self.collector.clone();
        let snapshot = tokio::task::spawn_blocking(move || collector.collect())
            .await
            .map_err(|e| LagError::Task(e.to_string()))??;
        Ok(self.tracker.observe(&snapshot))
    }

    /// Takes `window` samples `interval` apart (the first at once) and returns the last
    /// report, whose statuses are evaluated over a full window. Stops early on shutdown.
    pub async fn sample_window(
        &mut self,
        interval: Duration,
        shutdown: &Shutdown,
    ) -> Result<LagReport, LagError> {
        let mut report = self.sample().await?;
        for _ in 1..self.tracker.window() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait() => break,
            }
            report = self.sample().await?;
        }
        Ok(report)
    }
}

/// The long-running exporter: a pass every `interval` until shutdown, each written to
/// `metrics`. Marks the `lag` readiness check once the first pass succeeded. A failed pass
/// is logged and counted, and the previous values stay exported.
pub async fn run_exporter(
    mut monitor: LagMonitor,
    mut metrics: LagMetrics,
    interval: Duration,
    readiness: Readiness,
    shutdown: Shutdown,
) {
    readiness.set("lag", false);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait() => break,
        }
        let started = Instant::now();
        match monitor.sample().await {
            Ok(report) => {
                metrics.update(&report, started.elapsed().as_secs_f64());
                readiness.set("lag", true);
                tracing::debug!(
                    groups = report.groups.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "lag evaluated"
                );
            }
            Err(e) => {
                metrics.failed();
                tracing::warn!(error = %e, "lag evaluation failed; keeping the previous values");
            }
        }
    }
}
