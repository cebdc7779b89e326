//! Redelivery dedup with its state in Kafka.
//!
//! Each processed delivery writes `<source>\n<delivery id>` → received time to a compacted
//! changelog, in the same transaction as its normalized events, to the changelog partition
//! with the same number as the raw record's partition. Redeliveries carry the same key, so
//! they land on the same raw partition, and whoever owns that partition rebuilds exactly
//! the state it needs by reading that changelog partition on assignment.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::KafkaClients;

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("reading dedup changelog {topic}/{partition}: {reason}")]
    Restore {
        topic: String,
        partition: i32,
        reason: String,
    },
}

#[derive(Debug)]
pub struct DedupStore {
    pub topic: String,
    window_ms: i64,
    /// Changelog partition → keys seen (with their time).
    seen: Mutex<HashMap<i32, HashMap<String, i64>>>,
    /// Keys of the batch in progress, applied on commit.
    pending: Mutex<Vec<(i32, String, i64)>>,
}

pub fn key(source: &str, delivery_id: &str) -> String {
    format!("{source}\n{delivery_id}")
}

impl DedupStore {
    pub fn new(topic: &str, window: Duration) -> Self {
        Self {
            topic: topic.to_string(),
            window_ms: window.as_millis() as i64,
            seen: Mutex::default(),
            pending: Mutex::default(),
        }
    }

    /// Whether `key` was already processed (committed, or earlier in this batch).
    pub fn is_duplicate(&self, partition: i32, key: &str, now_ms: i64) -> bool {
        let fresh = |t: &i64| now_ms - *t <= self.window_ms;
        if self
            .pending
            .lock()
            .expect("dedup lock")
            .iter()
            .any(|(p, k, _)| *p == partition && k == key)
        {
            return true;
        }
        self.seen
            .lock()
            .expect("dedup lock")
            .get(&partition)
            .and_then(|m| m.get(key))
            .is_some_and(fresh)
    }

    pub fn record_pending(&self, partition: i32, key: String, at_ms: i64) {
        self.pending
            .lock()
            .expect("dedup lock")
            .push((partition, key, at_ms));
    }

    /// Applies (on commit) or drops (on abort) the batch's keys.
    pub fn finish_batch(&self, committed: bool) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("dedup lock"));
        if committed {
            let mut seen = self.seen.lock().expect("dedup lock");
            for (p, k, t) in pending {
                seen.entry(p).or_default().insert(k, t);
            }
        }
    }

    pub fn forget(&self, partitions: &HashSet<i32>) {
        self.seen
            .lock()
            .expect("dedup lock")
            .retain(|p, _| !partitions.contains(p));
    }

    pub fn loaded_partitions(&self) -> HashSet<i32> {
        self.seen
            .lock()
            .expect("dedup lock")
            .keys()
            .copied()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .expect("dedup lock")
            .values()
            .map(HashMap::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads changelog `partition` from the start to its end (committed records only) and
    /// replaces that partition's state. Blocking; call from a blocking context.
    pub fn restore(
        &self,
        clients: &KafkaClients,
        partition: i32,
        now_ms: i64,
    ) -> Result<usize, DedupError> {
        let fail = |reason: String| DedupError::Restore {
            topic: self.topic.clone(),
            partition,
            reason,
        };
        let consumer = clients
            .read_to_end_consumer("dedup-restore", "sluice-dedup-restore")
            .map_err(|e| fail(e.to_string()))?;
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, partition, Duration::from_secs(10))
            .map_err(|e| fail(e.to_string()))?;
        let mut state = HashMap::new();
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, partition, Offset::Beginning)
                .map_err(|e| fail(e.to_string()))?;
            consumer.assign(&tpl).map_err(|e| fail(e.to_string()))?;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                if std::time::Instant::now() > deadline {
                    return Err(fail("timed out before reaching the end".into()));
                }
                match consumer.poll(Duration::from_millis(500)) {
                    Some(Ok(m)) => {
                        let Some(key) = m.key().map(|k| String::from_utf8_lossy(k).into_owned())
                        else {
                            continue;
                        };
                        match m
                            .payload()
                            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                        {
                            Some(t) if now_ms - t <= self.window_ms => {
                                state.insert(key, t);
                            }
                            _ => {
                                state.remove(&key); // tombstone or expired
                            }
                        }
                        if m.offset() + 1 >= high {
                            break;
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                    Some(Err(e)) => return Err(fail(e.to_string())),
                    None => {}
                }
            }
        }
        let n = state.len();
        self.seen
            .lock()
            .expect("dedup lock")
            .insert(partition, state);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keys_count_only_after_commit() {
        let d = DedupStore::new("t", Duration::from_secs(60));
        assert!(!d.is_duplicate(0, "a", 1000));
        d.record_pending(0, "a".into(), 1000);
        assert!(d.is_duplicate(0, "a", 1000), "same batch");
        d.finish_batch(false);
        assert!(
            !d.is_duplicate(0, "a", 1000),
            "aborted batches leave no trace"
        );
        d.record_pending(0, "a".into(), 1000);
        d.finish_batch(true);
        assert!(d.is_duplicate(0, "a", 2000));
        assert!(!d.is_duplicate(1, "a", 2000), "state is per partition");
        assert!(!d.is_duplicate(0, "a", 1000 + 61_000), "outside the window");
    }
}
