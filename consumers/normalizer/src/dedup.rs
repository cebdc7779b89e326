//! Redelivery dedup with its state in Kafka.
//!
//! The delivery keys (`<source>\n<delivery id>`) a batch processed go to the changelog as
//! one record per changelog partition, a JSON array of `[key, received time]`, in the same
//! transaction as the batch's normalized events, to the partition with the same number as
//! the raw records' partition. One record per batch instead of one per delivery halves what
//! the broker writes for each delivery. The changelog is retained for the dedup window
//! (`cleanup.policy: compact,delete`, `retention.ms`), and batch records have unique keys,
//! so retention, not compaction, removes them. Redeliveries carry the same key, so they land
//! on the same raw partition, and whoever owns that partition rebuilds exactly the state it
//! needs by reading that changelog partition on assignment. Records of the earlier format
//! (one key per record, value = received time) are still read.
//!
//! In memory a committed key is held as a 128-bit fingerprint (the first half of its
//! SHA-256), not as its text: a window of a million distinct deliveries then costs tens of
//! MiB instead of over a hundred. A collision needs about 2^64 chosen ids, out of a sender's
//! reach; the changelog keeps the full keys, so the fingerprint can change between versions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use sluice_runtime::fingerprint::Fingerprint;
use sluice_stream::state::StateLog;

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("reading dedup changelog {topic} partitions {partitions:?}: {reason}")]
    Restore {
        topic: String,
        partitions: Vec<i32>,
        reason: String,
    },
}

#[derive(Debug)]
pub struct DedupStore {
    pub topic: String,
    window_ms: i64,
    /// Changelog partition → keys seen (with their time), pruned as the window moves.
    seen: Mutex<HashMap<i32, PartitionKeys>>,
    /// Keys of the batch in progress by changelog partition, applied on commit. A map, not
    /// a list: every record of a batch looks its key up here.
    pending: Mutex<HashMap<i32, HashMap<String, i64>>>,
}

/// One partition's keys, and the same keys oldest first so the window can be pruned from the
/// front as it moves, without scanning every key.
#[derive(Debug, Default)]
struct PartitionKeys {
    times: HashMap<Fingerprint, i64>,
    /// In the order keys were recorded; received times are nearly in that order, and a key
    /// recorded out of order is pruned a little late, never early.
    by_age: VecDeque<(i64, Fingerprint)>,
}

/// What the store remembers of a delivery key; see the module comment.
fn fingerprint(key: &str) -> Fingerprint {
    sluice_runtime::fingerprint::fingerprint(key.as_bytes())
}

impl PartitionKeys {
    fn insert(&mut self, key: Fingerprint, at_ms: i64) {
        self.times.insert(key, at_ms);
        self.by_age.push_back((at_ms, key));
    }

    fn get(&self, key: &str) -> Option<i64> {
        self.times.get(&fingerprint(key)).copied()
    }

    /// Drops every key recorded before `oldest_ms`.
    fn prune(&mut self, oldest_ms: i64) {
        while self.by_age.front().is_some_and(|(at, _)| *at < oldest_ms) {
            let Some((at, key)) = self.by_age.pop_front() else {
                break;
            };
            // A key recorded again later keeps its newer entry.
            if self.times.get(&key) == Some(&at) {
                self.times.remove(&key);
            }
        }
    }
}

pub fn key(source: &str, delivery_id: &str) -> String {
    format!("{source}\n{delivery_id}")
}

/// The key of a delivery's content digest (see `sluice_content_digest`). The NUL keeps it
/// apart from every delivery id: an HTTP header value cannot hold one, so a sender choosing
/// an unsigned id cannot make it equal another delivery's digest key.
pub fn digest_key(source: &str, digest: &str) -> String {
    format!("{source}\n\0sha256:{digest}")
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
            .get(&partition)
            .is_some_and(|m| m.contains_key(key))
        {
            return true;
        }
        self.seen
            .lock()
            .expect("dedup lock")
            .get(&partition)
            .and_then(|m| m.get(key))
            .is_some_and(|t| fresh(&t))
    }

    pub fn record_pending(&self, partition: i32, key: String, at_ms: i64) {
        self.pending
            .lock()
            .expect("dedup lock")
            .entry(partition)
            .or_default()
            .insert(key, at_ms);
    }

    /// The batch's keys as changelog records: (partition, record key, value), one per
    /// partition. Record keys are unique, so compaction never drops one.
    pub fn pending_records(&self) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
        let pending = self.pending.lock().expect("dedup lock");
        pending
            .iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(p, keys)| {
                let entries: Vec<(&String, &i64)> = keys.iter().collect();
                (
                    *p,
                    format!("{BATCH_KEY_PREFIX}{}", uuid::Uuid::new_v4().simple()).into_bytes(),
                    serde_json::to_vec(&entries).expect("keys and times serialise"),
                )
            })
            .collect()
    }

    /// Applies (on commit) or drops (on abort) the batch's keys, and forgets keys that fell
    /// out of the window by `now_ms`, so memory follows the window, not the run's length.
    pub fn finish_batch(&self, committed: bool, now_ms: i64) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("dedup lock"));
        if committed {
            let mut seen = self.seen.lock().expect("dedup lock");
            for (p, keys) in pending {
                let partition = seen.entry(p).or_default();
                let mut keys: Vec<(Fingerprint, i64)> =
                    keys.iter().map(|(k, at)| (fingerprint(k), *at)).collect();
                keys.sort_by_key(|(_, at)| *at);
                for (key, at) in keys {
                    partition.insert(key, at);
                }
            }
            for partition in seen.values_mut() {
                partition.prune(now_ms - self.window_ms);
            }
        }
    }

    pub fn forget(&self, partitions: &HashSet<i32>) {
        self.seen
            .lock()
            .expect("dedup lock")
            .retain(|p, _| !partitions.contains(p));
    }

    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .expect("dedup lock")
            .values()
            .map(|p| p.times.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads changelog `partitions` to their stable end (see [`sluice_stream::state`]),
    /// all in one read, and replaces their state. Returns the keys restored. Blocking; call
    /// from a blocking context.
    pub fn restore(
        &self,
        log: &dyn StateLog,
        partitions: &[i32],
        now_ms: i64,
    ) -> Result<usize, DedupError> {
        let mut state: HashMap<i32, HashMap<Fingerprint, i64>> =
            partitions.iter().map(|p| (*p, HashMap::new())).collect();
        log.read(&self.topic, partitions, &mut |p, key, value| {
            let keys = state.entry(p).or_default();
            let key = String::from_utf8_lossy(key).into_owned();
            for (key, t) in entries(key, value) {
                let key = fingerprint(&key);
                match t {
                    Some(t) if now_ms - t <= self.window_ms => {
                        keys.insert(key, t);
                    }
                    _ => {
                        keys.remove(&key); // tombstone or expired
                    }
                }
            }
        })
        .map_err(|e| DedupError::Restore {
            topic: self.topic.clone(),
            partitions: partitions.to_vec(),
            reason: e.to_string(),
        })?;
        let mut n = 0;
        let mut seen = self.seen.lock().expect("dedup lock");
        for (partition, keys) in state {
            n += keys.len();
            let mut keys: Vec<(Fingerprint, i64)> = keys.into_iter().collect();
            keys.sort_by_key(|(_, at)| *at);
            let mut restored = PartitionKeys::default();
            for (key, at) in keys {
                restored.insert(key, at);
            }
            seen.insert(partition, restored);
        }
        Ok(n)
    }
}

/// Record keys of batch records start with this; a delivery key never does (it starts with
/// a source name, which holds no NUL).
const BATCH_KEY_PREFIX: &str = "\0dedup-batch\0";

/// The (delivery key, received time) entries of one changelog record: every entry of a
/// batch record, or the one key of an earlier single-key record (`None` time for a
/// tombstone or an unreadable value).
fn entries(record_key: String, value: Option<&[u8]>) -> Vec<(String, Option<i64>)> {
    if record_key.starts_with(BATCH_KEY_PREFIX) {
        return value
            .and_then(|v| serde_json::from_slice::<Vec<(String, i64)>>(v).ok())
            .map(|all| all.into_iter().map(|(k, t)| (k, Some(t))).collect())
            .unwrap_or_default();
    }
    let t = value.and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
    vec![(record_key, t)]
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
        d.finish_batch(false, 1000);
        assert!(
            !d.is_duplicate(0, "a", 1000),
            "aborted batches leave no trace"
        );
        d.record_pending(0, "a".into(), 1000);
        d.finish_batch(true, 1000);
        assert!(d.is_duplicate(0, "a", 2000));
        assert!(!d.is_duplicate(1, "a", 2000), "state is per partition");
        assert!(!d.is_duplicate(0, "a", 1000 + 61_000), "outside the window");
    }

    #[test]
    fn no_delivery_id_can_name_a_digest_key() {
        let digest = "ab".repeat(32);
        let forged_id = format!("sha256:{digest}");
        assert_ne!(key("github", &forged_id), digest_key("github", &digest));
    }

    #[test]
    fn memory_follows_the_window_over_a_million_distinct_ids() {
        // One id a millisecond for 1,000,000 ms, batches of 1,000, a 10 s window: the store
        // must hold about the window's 10,000 ids (plus one batch), never the run's million.
        let d = DedupStore::new("t", Duration::from_secs(10));
        let mut most = 0;
        for batch in 0..1_000i64 {
            for i in 0..1_000i64 {
                let at = batch * 1_000 + i;
                d.record_pending((i % 3) as i32, format!("src\nid-{at}"), at);
            }
            d.finish_batch(true, batch * 1_000 + 999);
            most = most.max(d.len());
        }
        assert!(most <= 11_003, "held {most} keys");
        assert!(d.len() >= 10_000, "the window's ids are kept: {}", d.len());
        assert!(d.is_duplicate(0, "src\nid-999999", 1_000_000));
        assert!(!d.is_duplicate(0, "src\nid-3", 1_000_000));
        let held: usize = d
            .seen
            .lock()
            .unwrap()
            .values()
            .map(|p| p.by_age.len())
            .sum();
        assert_eq!(held, d.len(), "the age queue is pruned with the map");
    }

    #[test]
    fn a_batch_is_one_record_per_partition_and_reads_back_with_the_old_format() {
        let d = DedupStore::new("t", Duration::from_secs(60));
        d.record_pending(0, "stripe\nevt_1".into(), 1000);
        d.record_pending(0, "stripe\nevt_2".into(), 1001);
        d.record_pending(2, "github\nd-1".into(), 1002);
        let mut records = d.pending_records();
        records.sort();
        assert_eq!(records.len(), 2, "one record per partition");
        let (p, key, value) = &records[0];
        assert_eq!(*p, 0);
        let mut got = entries(String::from_utf8(key.clone()).unwrap(), Some(value));
        got.sort();
        assert_eq!(
            got,
            [
                ("stripe\nevt_1".to_string(), Some(1000)),
                ("stripe\nevt_2".to_string(), Some(1001))
            ]
        );
        assert_ne!(
            records[0].1,
            d.pending_records()[0].1,
            "record keys are unique"
        );
        // A record of the earlier format: the key itself, its time as text; a tombstone.
        assert_eq!(
            entries("stripe\nevt_9".into(), Some(b"1234")),
            [("stripe\nevt_9".to_string(), Some(1234))]
        );
        assert_eq!(
            entries("stripe\nevt_9".into(), None),
            [("stripe\nevt_9".to_string(), None)]
        );
    }
}
