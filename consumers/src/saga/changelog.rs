//! Reading compacted state topics back: saga instances when a replies partition is assigned,
//! participant dedup entries when a commands partition is, and whole topics for the
//! operators' `sluice saga list|show`.
//!
//! Only committed records are read (`read_committed`), so state written by a transaction that
//! was aborted, or is still open in a fenced zombie, never comes back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::KafkaClients;

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("reading {topic}: {reason}")]
    Read { topic: String, reason: String },
}

/// Reaching a partition's end is how a read knows it is done, not an error worth logging.
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Quiet {}

/// Longest a read may take before it is reported as stuck.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads `partitions` of `topic` from their start to their end, calling `f(partition, key,
/// value)` for each keyed record in offset order per partition (`None` value: a tombstone).
/// Returns the number of records read. Blocking: call from a blocking context.
pub fn read_partitions(
    clients: &KafkaClients,
    topic: &str,
    partitions: &[i32],
    mut f: impl FnMut(i32, &[u8], Option<&[u8]>),
) -> Result<usize, ChangelogError> {
    let fail = |reason: String| ChangelogError::Read {
        topic: topic.to_string(),
        reason,
    };
    let consumer: BaseConsumer<Quiet> = clients
        .consumer_config("saga-state", "sluice-saga-state-reader")
        .map_err(|e| fail(e.to_string()))?
        .set("enable.partition.eof", "true")
        .create_with_context(Quiet)
        .map_err(|e| fail(e.to_string()))?;
    let mut tpl = TopicPartitionList::new();
    let mut open: BTreeSet<i32> = BTreeSet::new();
    for &p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| fail(format!("partition {p}: {e}")))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| fail(e.to_string()))?;
            open.insert(p);
        }
    }
    if open.is_empty() {
        return Ok(0);
    }
    consumer.assign(&tpl).map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut n = 0;
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(fail(format!(
                "partitions {open:?} did not reach their end within {READ_TIMEOUT:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                if let Some(key) = m.key() {
                    f(m.partition(), key, m.payload());
                    n += 1;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(fail(e.to_string())),
            None => {}
        }
    }
    Ok(n)
}

/// The number of partitions of `topic`. Blocking.
pub fn partition_count(clients: &KafkaClients, topic: &str) -> Result<i32, ChangelogError> {
    let fail = |reason: String| ChangelogError::Read {
        topic: topic.to_string(),
        reason,
    };
    let consumer: BaseConsumer = clients
        .base("saga-metadata")
        .map_err(|e| fail(e.to_string()))?
        .create()
        .map_err(|e| fail(e.to_string()))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| fail(e.to_string()))?;
    match metadata.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => Err(fail(
            "the topic does not exist; run `sluice topology apply`".into(),
        )),
    }
}
