//! The processing loop every sluice consumer runs: consume → handler → produce outputs →
//! commit, with the delivery guarantee chosen per consumer.
//!
//! - **Exactly-once**: a Kafka transaction holds a batch's outputs, its retry/DLQ records and
//!   the consumer offsets (`send_offsets_to_transaction`); downstream consumers read with
//!   `isolation.level=read_committed`, so they see all of a batch or none of it.
//! - **At-least-once**: offsets are committed after every output of the batch is acknowledged.
//!
//! The loop never polls while a transaction is open, so a rebalance (which librdkafka only
//! delivers from a poll) can never revoke a partition mid-transaction. A handler returns
//! outputs, a transient error (retried through the retry tiers) or a permanent error
//! (dead-lettered with provenance). With per-key ordering (see [`ordering`]) later records of
//! a key with a record in the retry path wait behind it.

mod batch;
pub mod error_class;
pub mod failure;
pub mod headers;
pub mod metrics;
pub mod ordering;
pub mod outcome;
pub mod processing;
mod rebalance;
pub mod refusals;
pub mod state;
pub mod watermark;

use std::future::Future;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

pub use error_class::ErrorClass;
pub use failure::{FailureRouter, RetryTier};
pub use ordering::PerKey;
pub use processing::{fence_predecessor, run, LoopError};

/// One consumed record, owned so handlers can hold it across awaits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// Copies a consumed message out of librdkafka's buffer.
    pub fn from_message<M: rdkafka::message::Message>(m: &M) -> Self {
        use rdkafka::message::Headers;
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Bytes of key and value, what a batch counts against `max_batch_bytes`.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)
    }

    /// The last value of header `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A record the handler wants written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub topic: String,
    /// Explicit partition (state changelogs co-partitioned with their input); `None` lets
    /// the key choose.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    /// `None` writes a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Output {
    /// The record to produce: key, value (absent for a tombstone), headers and, when set,
    /// the partition.
    pub fn record(&self) -> FutureRecord<'_, [u8], [u8]> {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = &self.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &self.value {
            record = record.payload(v.as_slice());
        }
        if let Some(p) = self.partition {
            record = record.partition(p);
        }
        record
    }
}

/// Why a handler could not process a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying later: a registry or broker timeout, a downstream outage.
    #[error("{class}: {message}")]
    Transient { class: ErrorClass, message: String },
    /// Retrying cannot help: undecodable input, a validation failure, an unmapped type.
    #[error("{class}: {message}")]
    Permanent { class: ErrorClass, message: String },
}

impl HandlerError {
    pub fn transient(class: ErrorClass, message: impl Into<String>) -> Self {
        HandlerError::Transient {
            class,
            message: message.into(),
        }
    }

    pub fn permanent(class: ErrorClass, message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            class,
            message: message.into(),
        }
    }

    pub fn class(&self) -> &ErrorClass {
        match self {
            HandlerError::Transient { class, .. } | HandlerError::Permanent { class, .. } => class,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            HandlerError::Transient { message, .. } | HandlerError::Permanent { message, .. } => {
                message
            }
        }
    }
}

/// Partitions newly assigned to this instance.
pub type Assigned = Vec<(String, i32)>;

/// What a consumer does with each record.
pub trait Handler: Send + Sync + 'static {
    /// Whether to take `record` now. A handler already holding all it may (an orchestrator
    /// at its in-flight cap) answers [`Admit::Later`]: the record's partition is held at
    /// it, unhandled and uncommitted, and read again after the delay, while its other
    /// partitions go on. How a consumer's memory stays bounded by configuration when the
    /// work it takes on outlives the batch.
    fn admit(&self, _record: &Record) -> Admit {
        Admit::Now
    }

    /// Processes one record. Called for records of one partition in offset order.
    fn handle(
        &self,
        record: &Record,
    ) -> impl Future<Output = Result<Vec<Output>, HandlerError>> + Send;

    /// Called before the first record of newly assigned partitions is handled, e.g. to
    /// rebuild state from a changelog. An error stops the loop.
    fn on_assigned(
        &self,
        _partitions: &Assigned,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async { Ok(()) }
    }

    /// Called after partitions are revoked, to drop their state.
    fn on_revoked(&self, _partitions: &Assigned) {}

    /// Records to write once per batch, after every record of it was handled: in the same
    /// transaction (exactly-once), or before the offsets are committed (at-least-once). For
    /// state a handler gathers over a batch and writes once rather than per record.
    fn batch_outputs(&self) -> Vec<Output> {
        Vec::new()
    }

    /// Called once a batch's outputs and offsets are committed (`true`) or abandoned
    /// (`false`, the batch will be handled again), so state derived from it is applied
    /// only when it is durable.
    fn on_batch_end(&self, _committed: bool) {}
}

/// A handler's answer to "take this record now?" (see [`Handler::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Now,
    /// Hold the record's partition at it for this long, then offer the record again.
    Later(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    ExactlyOnce,
    AtLeastOnce,
}

/// How one consumer runs.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Consumer group; also the prefix of the transactional id.
    pub group: String,
    /// Stable per instance, so a restarted instance fences its predecessor's open
    /// transaction at once instead of waiting for it to time out.
    pub instance_id: String,
    pub topics: Vec<String>,
    pub guarantee: Guarantee,
    /// Most records handled per transaction / commit. A transaction's round trips cost the
    /// same for 10 records or 10,000, so under load bigger batches go faster; `linger`
    /// bounds the wait when records trickle in.
    pub max_batch: usize,
    /// Most bytes of keys and values per batch: with `max_batch` it bounds what a batch holds
    /// in memory, whatever the records' size (a batch closes once it reaches this).
    pub max_batch_bytes: usize,
    /// How long to wait for more records before processing a partial batch; zero takes
    /// only the records already fetched.
    pub linger: Duration,
    pub transaction_timeout: Duration,
    /// Per-key ordering on the retry path; needs [`Guarantee::ExactlyOnce`].
    pub per_key: Option<PerKey>,
    /// Most records the consumer reads ahead (librdkafka's `queued.min.messages`, 100,000 by
    /// default) unless `kafka.properties` sets it; `None` leaves librdkafka's. The byte bound
    /// ([`sluice_runtime::kafka::FETCH_BOUNDS`]) counts payloads only, while each queued record
    /// also costs its queue entry and keeps its decompressed batch alive: for small records
    /// (saga commands and replies) the count is what bounds memory.
    pub read_ahead_records: Option<u32>,
}

/// How long a loop waits for a batch to fill unless configured: not at all. A batch takes
/// the records already fetched and goes; under load more arrive while a batch commits, so
/// batches grow by themselves, and at light load no hop waits for records that are not
/// coming (docs/benchmarks.md, "Saga latency").
pub const DEFAULT_LINGER: Duration = Duration::ZERO;

/// Bytes of keys and values per batch unless configured: 10,000 webhook deliveries of a few
/// KiB each would hold ~50 MiB at once, a fifth of a role's memory budget (docs/benchmarks.md,
/// "Memory bounded by configuration").
pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Records per batch unless configured: exactly-once normalizer throughput roughly doubled
/// from 2,000 to 10,000 in `sluice bench normalizer` (docs/benchmarks.md).
pub const DEFAULT_MAX_BATCH: usize = 10_000;

impl LoopConfig {
    pub fn new(group: &str, instance_id: &str, topics: Vec<String>, guarantee: Guarantee) -> Self {
        Self {
            group: group.to_string(),
            instance_id: instance_id.to_string(),
            topics,
            guarantee,
            max_batch: DEFAULT_MAX_BATCH,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            linger: DEFAULT_LINGER,
            transaction_timeout: Duration::from_secs(30),
            per_key: None,
            read_ahead_records: None,
        }
    }
}
