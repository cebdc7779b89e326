//! The Kafka side of per-key ordering: reading a held-key partition back, and checking the
//! partition counts that co-location depends on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use sluice_runtime::kafka::KafkaClients;

use super::state::{KeyId, KeyState};
use super::OrderingError;
use crate::compacted;

/// Reads held-key partitions `partitions` of `topic` to their stable end (see
/// [`crate::compacted`]), each partition's keys apart. Blocking.
pub fn read_partitions(
    clients: &KafkaClients,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, HashMap<KeyId, KeyState>>, OrderingError> {
    let mut keys: HashMap<i32, HashMap<KeyId, KeyState>> =
        partitions.iter().map(|p| (*p, HashMap::new())).collect();
    let mut undecodable: Option<OrderingError> = None;
    compacted::read_partitions(clients, topic, partitions, |p, key, value| {
        let Some(id) = KeyId::decode(key) else {
            return;
        };
        let held = keys.entry(p).or_default();
        match value.map(serde_json::from_slice::<KeyState>) {
            Some(Ok(state)) => {
                held.insert(id, state);
            }
            Some(Err(e)) => {
                undecodable.get_or_insert(OrderingError::Restore {
                    topic: topic.to_string(),
                    partition: p,
                    reason: format!("a held key's state is not readable: {e}"),
                });
            }
            None => {
                held.remove(&id);
            }
        }
    })
    .map_err(|e| OrderingError::Restore {
        topic: topic.to_string(),
        partition: partitions.first().copied().unwrap_or_default(),
        reason: e.to_string(),
    })?;
    match undecodable {
        Some(e) => Err(e),
        None => Ok(keys),
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
