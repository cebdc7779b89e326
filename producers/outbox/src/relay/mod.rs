//! `sluice outbox relay`: publishes outbox rows to Kafka exactly once, in order per
//! aggregate.
//!
//! The relay owns some of the table's lanes (see [`crate::lanes`]); each step of an owned lane
//! is one Kafka transaction with the lane's next events and its new position
//! ([`crate::position`]). Relays of one table share the lanes: each takes its fair share
//! (lanes ÷ live relays, rounded up) and gives back what is above it, so a second relay
//! started next to a first one gets half the lanes within a few polls.

mod db;
mod lane;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_runtime::config::OutboxConfig;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::Shutdown;
use sluice_stream::state::kafka::partition_count;

pub use db::{application_name, read_sql, Db, DbError};
pub use lane::{Lane, LaneError, Step};

use crate::ddl::{InvalidTableName, TableName};
use crate::metrics::RelayMetrics;
use crate::records::Routes;

/// The relay's settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub table: TableName,
    pub lanes: u32,
    pub poll_interval: Duration,
    pub batch_size: u32,
    pub gap_report: Duration,
    pub source: String,
    pub aggregates_in_memory: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Table(#[from] InvalidTableName),
    #[error("outbox.{0} must be between {1} and {2}")]
    OutOfRange(&'static str, u32, u32),
}

impl Settings {
    pub fn from_config(c: &OutboxConfig) -> Result<Self, SettingsError> {
        if !(1..=1024).contains(&c.lanes) {
            return Err(SettingsError::OutOfRange("lanes", 1, 1024));
        }
        if !(1..=10_000).contains(&c.batch_size) {
            return Err(SettingsError::OutOfRange("batch_size", 1, 10_000));
        }
        if !(16..=100_000_000).contains(&c.aggregates_in_memory) {
            return Err(SettingsError::OutOfRange(
                "aggregates_in_memory",
                16,
                100_000_000,
            ));
        }
        Ok(Self {
            table: TableName::parse(&c.table)?,
            lanes: c.lanes,
            poll_interval: Duration::from_millis(c.poll_interval_ms.max(1)),
            batch_size: c.batch_size,
            gap_report: Duration::from_millis(c.gap_report_ms),
            source: c.source.clone(),
            aggregates_in_memory: c.aggregates_in_memory as usize,
        })
    }
}

/// What every lane of the relay shares.
pub struct Relay {
    pub settings: Settings,
    pub clients: KafkaClients,
    pub routes: Routes,
    pub state_topic: String,
    pub dlq_topic: String,
    pub state_partitions: i32,
    pub metrics: RelayMetrics,
    /// Rows whose event Kafka refused (too large, invalid), by event id, with why: their
    /// next attempt goes to the DLQ instead, so a refused record never blocks its lane.
    pub refused: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, String>>,
    /// Signalled when a lane finds rows after waiting, or a service commits rows (the
    /// table's notifications): the sleeping lanes look too.
    pub rows_found: tokio::sync::Notify,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .field("state_topic", &self.state_topic)
            .finish()
    }
}

/// The compacted topic holding the relay's positions under topology `prefix`.
pub fn state_topic(prefix: &str) -> String {
    sluice_topology::naming::state_topic(prefix, "outbox")
}

/// The outbox relay's dead-letter topic under topology `prefix`.
pub fn dlq_topic(prefix: &str) -> String {
    sluice_topology::naming::dlq_topic(prefix, "outbox")
}

impl Relay {
    pub async fn new(
        settings: Settings,
        clients: KafkaClients,
        routes: Routes,
        prefix: &str,
        metrics: RelayMetrics,
    ) -> Result<Self, sluice_stream::state::StateError> {
        let state_topic = state_topic(prefix);
        let (c, t) = (clients.clone(), state_topic.clone());
        let state_partitions = tokio::task::spawn_blocking(move || partition_count(&c, &t))
            .await
            .expect("metadata task")?;
        Ok(Self {
            settings,
            clients,
            routes,
            dlq_topic: dlq_topic(prefix),
            state_topic,
            state_partitions,
            metrics,
            refused: Default::default(),
            rows_found: Default::default(),
        })
    }

    /// Relays until `shutdown`: connects (again after any loss of the connection, which
    /// also loses the lane locks), claims a fair share of lanes and runs each as a task.
    pub async fn run(self: Arc<Self>, dsn: String, shutdown: Shutdown) {
        let listener = tokio::spawn(Arc::clone(&self).listen(dsn.clone(), shutdown.clone()));
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_triggered() {
            match Db::connect(&dsn, &self.settings.table, self.settings.lanes).await {
                Ok(db) => {
                    backoff = Duration::from_millis(200);
                    self.relay_connected(db, &dsn, &shutdown).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "outbox database unavailable")
                }
            }
            self.metrics.lanes_owned.set(0);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        listener.abort();
    }

    /// Wakes the lanes whenever a service commits rows (the table's notifications), on a
    /// session of its own, connected again after any loss.
    async fn listen(self: Arc<Self>, dsn: String, shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_triggered() {
            let started = Instant::now();
            let ended = tokio::select! {
                e = db::listen(&dsn, &self.settings.table, || self.rows_found.notify_waiters()) => e,
                _ = shutdown.wait() => return,
            };
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(200);
            }
            tracing::warn!(error = %ended, retry_in = ?backoff,
                "not listening for new outbox rows; lanes poll until it is back");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn relay_connected(self: &Arc<Self>, db: Db, dsn: &str, shutdown: &Shutdown) {
        let mut owned: BTreeMap<u32, Running> = BTreeMap::new();
        let mut last_balance: Option<Instant> = None;
        while !shutdown.is_triggered() && !db.is_closed() {
            // A lane that failed is claimed again from its committed position.
            for n in finished(&mut owned).await {
                let _ = db.unlock(n).await;
            }
            if last_balance.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_balance = Some(Instant::now());
                let balanced = self.balance(&db, dsn, &mut owned).await;
                if let Err(e) = balanced {
                    tracing::warn!(error = %e, "could not balance outbox lanes");
                    break;
                }
            }
            self.metrics.lanes_owned.set(owned.len() as i64);
            tokio::select! {
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = shutdown.wait() => {}
            }
        }
        // Each lane finishes its batch; dropping the connection releases whatever locks are left.
        while let Some((n, lane)) = owned.pop_first() {
            lane.stop().await;
            let _ = db.unlock(n).await;
        }
    }

    /// Gives back lanes above the fair share, then claims free ones up to it.
    async fn balance(
        self: &Arc<Self>,
        db: &Db,
        dsn: &str,
        owned: &mut BTreeMap<u32, Running>,
    ) -> Result<(), DbError> {
        let relays = db.live_relays().await?;
        let share = crate::lanes::fair_share(self.settings.lanes, relays) as usize;
        while owned.len() > share {
            let Some((n, lane)) = owned.pop_last() else {
                break;
            };
            lane.stop().await;
            db.unlock(n).await?;
            tracing::info!(lane = n, relays, "outbox lane given back to balance relays");
        }
        // Start at a different lane per process so relays starting together spread out.
        // Every lane taken is fenced before any position is read (see `Lane::fence`).
        let start = std::process::id() % self.settings.lanes;
        let mut fenced = Vec::new();
        for i in 0..self.settings.lanes {
            if owned.len() + fenced.len() >= share {
                break;
            }
            let n = (start + i) % self.settings.lanes;
            if owned.contains_key(&n) || !db.try_lock(n).await? {
                continue;
            }
            match Lane::fence(self, n).await {
                Ok(f) => fenced.push((n, f)),
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim an outbox lane");
                    db.unlock(n).await?;
                }
            }
        }
        for (n, f) in fenced {
            match Lane::open(self, f, dsn).await {
                Ok(lane) => {
                    owned.insert(n, Running::start(self, lane));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim an outbox lane");
                    db.unlock(n).await?;
                }
            }
        }
        Ok(())
    }
}

/// An owned lane's task: it steps on its own until stopped or failed.
struct Running {
    stop: Shutdown,
    task: tokio::task::JoinHandle<Result<(), LaneError>>,
}

impl Running {
    fn start(relay: &Arc<Relay>, lane: Lane) -> Self {
        let stop = Shutdown::new();
        let task = tokio::spawn(lane.run(relay.clone(), stop.clone()));
        Self { stop, task }
    }

    /// Lets the lane finish its batch, then waits for it.
    async fn stop(self) {
        self.stop.trigger();
        report(self.task.await);
    }
}

/// Removes the lanes whose task ended (an error: they run until stopped) and returns them.
async fn finished(owned: &mut BTreeMap<u32, Running>) -> Vec<u32> {
    let done: Vec<u32> = owned
        .iter()
        .filter(|(_, r)| r.task.is_finished())
        .map(|(n, _)| *n)
        .collect();
    for n in &done {
        if let Some(r) = owned.remove(n) {
            report(r.task.await);
        }
    }
    done
}

fn report(ended: Result<Result<(), LaneError>, tokio::task::JoinError>) {
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "outbox lane failed; it is claimed again from its committed position")
        }
        Err(e) => tracing::error!(error = %e, "outbox lane task ended abnormally"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_refuse_what_would_break_the_relay() {
        let ok = Settings::from_config(&OutboxConfig::default()).unwrap();
        assert_eq!((ok.table.as_str(), ok.lanes), ("sluice_outbox", 8));
        let with = |f: fn(&mut OutboxConfig)| {
            let mut c = OutboxConfig::default();
            f(&mut c);
            Settings::from_config(&c).unwrap_err().to_string()
        };
        assert_eq!(
            with(|c| c.lanes = 0),
            "outbox.lanes must be between 1 and 1024"
        );
        assert_eq!(
            with(|c| c.batch_size = 0),
            "outbox.batch_size must be between 1 and 10000"
        );
        assert_eq!(
            with(|c| c.aggregates_in_memory = 15),
            "outbox.aggregates_in_memory must be between 16 and 100000000"
        );
        assert!(with(|c| c.table = "x; drop table y".into()).contains("not a plain identifier"));
    }

    #[test]
    fn topics_follow_the_topology_naming() {
        assert_eq!(state_topic("sluice"), "sluice.state.outbox");
        assert_eq!(dlq_topic("sluice"), "sluice.dlq.outbox");
    }
}
