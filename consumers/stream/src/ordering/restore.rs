//! The Kafka side of per-key ordering: reading a held-key partition back, and checking the
//! partition counts that co-location depends on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use super::state::{KeyId, KeyState};
use super::OrderingError;
use crate::state::{restore_latest, StateLog};

/// Reads held-key partitions `partitions` of `topic` back (see [`crate::state`]), each
/// partition's keys apart. A held key whose state cannot be read fails the restore: running
/// on without it would let its later records overtake the one in the retry path. Blocking.
pub fn read_partitions(
    log: &dyn StateLog,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, HashMap<KeyId, KeyState>>, OrderingError> {
    let fail = |partition: i32, reason: String| OrderingError::Restore {
        topic: topic.to_string(),
        partition,
        reason,
    };
    let restored = restore_latest(log, topic, partitions, |v| {
        serde_json::from_slice::<KeyState>(v)
    })
    .map_err(|e| {
        fail(
            partitions.first().copied().unwrap_or_default(),
            e.to_string(),
        )
    })?;
    if let Some((p, _, why)) = restored.unreadable.into_iter().next() {
        return Err(fail(
            p,
            format!("a held key's state is not readable: {why}"),
        ));
    }
    Ok(restored
        .partitions
        .into_iter()
        .map(|(p, keys)| {
            let keys = keys
                .into_iter()
                .filter_map(|(key, state)| Some((KeyId::decode(&key)?, state)))
                .collect();
            (p, keys)
        })
        .collect())
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
