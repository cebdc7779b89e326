//! What one evaluation says, in the shape `sluice lag --json` prints and the exporter reads.

use serde::Serialize;

use super::history::Estimate;
use super::status::Status;

/// One evaluation of every selected group.
#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    /// When the log ends were read, milliseconds since the Unix epoch.
    pub taken_at_ms: i64,
    /// Samples in a status window.
    pub window: usize,
    pub groups: Vec<GroupLag>,
    /// Oldest and log-end offsets of every partition the groups have committed on.
    pub topics: Vec<TopicPartitionOffsets>,
}

/// One consumer group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub state: String,
    pub members: usize,
    /// The worst status of its partitions (ERR when its offsets could not be read).
    pub status: Status,
    /// Whether every partition's window was full.
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Total lag per topic.
    pub lag_by_topic: Vec<TopicLag>,
    pub partitions: Vec<PartitionLag>,
}

/// A group's total lag on one topic.
#[derive(Debug, Clone, Serialize)]
pub struct TopicLag {
    pub topic: String,
    pub lag: i64,
}

/// One partition a group has committed on.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    pub log_end_offset: Option<i64>,
    pub oldest_offset: Option<i64>,
    /// `log_end_offset - committed_offset`, as Kafka's tool computes it.
    pub lag: Option<i64>,
    /// Estimated time lag in seconds (see [`super::history`]).
    pub lag_seconds: Option<f64>,
    pub lag_seconds_estimate: Option<Estimate>,
    pub status: Status,
    /// Samples the status was evaluated over.
    pub samples: usize,
    /// Client id of the live member that owns the partition.
    pub owner: Option<String>,
    /// Where a read_committed reader stops (see [`super::open_transactions`]).
    pub stable_offset: Option<i64>,
    /// The group has read up to the stable offset and the rest of its lag waits behind an
    /// open transaction.
    pub waits_on_transaction: bool,
}

/// Offsets of one partition of a topic.
#[derive(Debug, Clone, Serialize)]
pub struct TopicPartitionOffsets {
    pub topic: String,
    pub partition: i32,
    pub oldest_offset: Option<i64>,
    pub log_end_offset: Option<i64>,
    pub stable_offset: Option<i64>,
    /// How long this monitor has seen the stable offset held at its value below the log end
    /// by an open transaction (a lower bound of its age); `None` when nothing holds it.
    pub open_transaction_seconds: Option<f64>,
}
