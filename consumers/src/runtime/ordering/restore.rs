//! The Kafka side of per-key ordering: reading a held-key partition back, and checking the
//! partition counts that co-location depends on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::KafkaClients;

use super::state::{KeyId, KeyState};
use super::OrderingError;

/// How long a restore waits for a transaction still open on the partition (a predecessor
/// that died mid-batch) to be committed or aborted, on top of the read itself.
const RESTORE_DEADLINE: Duration = Duration::from_secs(90);

/// Reads held-key partition `partition` of `topic` to its end, committed records only.
/// Blocking.
pub fn read_partition(
    clients: &KafkaClients,
    topic: &str,
    partition: i32,
) -> Result<HashMap<KeyId, KeyState>, OrderingError> {
    let fail = |reason: String| OrderingError::Restore {
        topic: topic.to_string(),
        partition,
        reason,
    };
    let consumer = clients
        .read_to_end_consumer("held-keys-restore", "sluice-held-keys-restore")
        .map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + RESTORE_DEADLINE;
    let end = stable_end(clients, &consumer, topic, partition, deadline).map_err(fail)?;
    let mut keys = HashMap::new();
    let (low, _) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| fail(e.to_string()))?;
    if end <= low {
        return Ok(keys);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(|e| fail(e.to_string()))?;
    consumer.assign(&tpl).map_err(|e| fail(e.to_string()))?;
    loop {
        if Instant::now() > deadline {
            return Err(fail("timed out before reaching the end".into()));
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                if let Some(id) = m.key().and_then(KeyId::decode) {
                    match m.payload() {
                        Some(v) => {
                            let state: KeyState = serde_json::from_slice(v)
                                .map_err(|e| fail(format!("offset {}: {e}", m.offset())))?;
                            keys.insert(id, state);
                        }
                        None => {
                            keys.remove(&id);
                        }
                    }
                }
                if m.offset() + 1 >= end {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(fail(e.to_string())),
            None => {}
        }
    }
    Ok(keys)
}

/// The partition's end once no transaction is open on it: a `read_committed` read stops at
/// the last stable offset, so a predecessor's open transaction would otherwise hide state
/// that is about to commit.
fn stable_end<C: rdkafka::consumer::ConsumerContext>(
    clients: &KafkaClients,
    committed: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    deadline: Instant,
) -> Result<i64, String> {
    let everything: BaseConsumer = clients
        .base("held-keys-restore")
        .map_err(|e| e.to_string())?
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(|e| e.to_string())?;
    let (_, high) = everything
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    loop {
        let (_, stable) = committed
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        if stable >= high {
            return Ok(stable);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "a transaction stayed open on it (stable offset {stable}, end {high})"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks that every topic of the loop and the held-key topic have the same partition
/// count, against live metadata. A topic created moments ago may take a few seconds to
/// show in every broker's metadata, so a missing one is looked up again before giving up.
/// Blocking.
pub fn check_partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    policy: &str,
    topics: &[String],
) -> Result<(), OrderingError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match partition_counts(consumer, policy, topics) {
            Err(OrderingError::Partitions { counts, .. })
                if counts.iter().any(|(_, n)| n.is_none()) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

fn partition_counts<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    policy: &str,
    topics: &[String],
) -> Result<(), OrderingError> {
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| OrderingError::Metadata(e.to_string()))?;
    let counts: Vec<(String, Option<i32>)> = topics
        .iter()
        .map(|t| {
            let n = metadata
                .topics()
                .iter()
                .find(|m| m.name() == t && m.error().is_none())
                .map(|m| m.partitions().len() as i32)
                .filter(|n| *n > 0);
            (t.clone(), n)
        })
        .collect();
    let first = counts.first().and_then(|c| c.1);
    if counts.iter().all(|(_, n)| n.is_some() && *n == first) {
        Ok(())
    } else {
        Err(OrderingError::Partitions {
            policy: policy.to_string(),
            counts,
        })
    }
}
