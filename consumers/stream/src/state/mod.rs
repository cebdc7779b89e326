//! State a consumer keeps in compacted Kafka topics: the normalizer's dedup keys, held keys
//! under per-key ordering, saga instances and saga participants' handled commands.
//!
//! All of them follow one pattern, built from the pieces here:
//! - **Co-partitioned.** State for input partition *p* lives in partition *p* of its state
//!   topic, so whoever owns an input partition owns its state. [`Ownership`] tracks which
//!   state partitions an instance must hold as partitions are assigned and revoked.
//! - **Restored on assignment.** A newly owned state partition is read back to its stable end
//!   through a [`StateLog`] ([`KafkaStateLog`] in production, with the rules in [`kafka`];
//!   [`MemoryLog`] in unit tests), usually through [`restore_latest`].
//! - **Staged per batch.** A batch's changes are [`Staged`] and written as outputs in the
//!   batch's own transaction; they become the committed state only once that transaction
//!   commits, and vanish if it aborts — exactly as the topic itself would.
//!
//! [`StateTable`] puts the three together for a plain keyed table of JSON values.

pub mod kafka;
mod memory;
mod ownership;
mod staged;
mod table;

use std::collections::HashMap;
use std::sync::Arc;

pub use kafka::KafkaStateLog;
pub use memory::MemoryLog;
pub use ownership::Ownership;
pub use staged::Staged;
pub use table::{RestoreReport, StateTable};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {topic}: {reason}")]
    Read { topic: String, reason: String },
}

/// What a [`StateLog`] calls for each record it reads: (partition, key, value), `None` value
/// for a tombstone.
pub type Visit<'a> = dyn FnMut(i32, &[u8], Option<&[u8]>) + 'a;

/// Where state topics are read back from.
pub trait StateLog: Send + Sync + std::fmt::Debug {
    /// Reads `partitions` of `topic` from their start to their stable end, calling
    /// `f(partition, key, value)` for each keyed record in offset order per partition (`None`
    /// value: a tombstone). Returns the number of records read. May block: call it from a
    /// blocking context.
    fn read(&self, topic: &str, partitions: &[i32], f: &mut Visit<'_>)
        -> Result<usize, StateError>;
}

/// A shared state log, as handlers hold it.
pub type SharedLog = Arc<dyn StateLog>;

/// The latest value of every key of some state partitions, as [`restore_latest`] read them.
#[derive(Debug)]
pub struct Restored<V> {
    /// Every requested partition, empty ones included, with its live keys.
    pub partitions: HashMap<i32, HashMap<Vec<u8>, V>>,
    /// Records read, tombstones and superseded values included.
    pub records: usize,
    /// Keys whose latest value could not be decoded: (partition, key, why). They are left
    /// out of `partitions`; the caller decides whether that is fatal.
    pub unreadable: Vec<(i32, Vec<u8>, String)>,
}

/// Reads `partitions` of `topic` and keeps each key's latest value, decoded by `decode`:
/// a tombstone removes the key, a later value replaces an earlier one.
pub fn restore_latest<V, E: std::fmt::Display>(
    log: &dyn StateLog,
    topic: &str,
    partitions: &[i32],
    mut decode: impl FnMut(&[u8]) -> Result<V, E>,
) -> Result<Restored<V>, StateError> {
    let mut restored: HashMap<i32, HashMap<Vec<u8>, V>> =
        partitions.iter().map(|p| (*p, HashMap::new())).collect();
    let mut unreadable: HashMap<(i32, Vec<u8>), String> = HashMap::new();
    let records = log.read(topic, partitions, &mut |p, key, value| {
        let keys = restored.entry(p).or_default();
        let decoded = value.map(&mut decode);
        unreadable.remove(&(p, key.to_vec()));
        match decoded {
            None => {
                keys.remove(key);
            }
            Some(Ok(v)) => {
                keys.insert(key.to_vec(), v);
            }
            Some(Err(e)) => {
                keys.remove(key);
                unreadable.insert((p, key.to_vec()), e.to_string());
            }
        }
    })?;
    let mut unreadable: Vec<(i32, Vec<u8>, String)> = unreadable
        .into_iter()
        .map(|((p, k), why)| (p, k, why))
        .collect();
    unreadable.sort();
    Ok(Restored {
        partitions: restored,
        records,
        unreadable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Output;

    fn write(topic: &str, p: i32, key: &str, value: Option<&str>) -> Output {
        Output {
            topic: topic.into(),
            partition: Some(p),
            key: Some(key.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: Vec::new(),
        }
    }

    #[test]
    fn the_latest_value_wins_and_tombstones_and_unreadable_values_remove_keys() {
        let log = MemoryLog::default();
        log.commit(&[
            write("s", 0, "a", Some("1")),
            write("s", 0, "b", Some("2")),
            write("s", 1, "a", Some("10")),
            write("s", 0, "a", Some("3")),
            write("s", 0, "b", None),
            write("s", 0, "c", Some("not a number")),
            write("other", 0, "z", Some("9")),
        ]);
        let r = restore_latest(&log, "s", &[0, 2], |v| {
            std::str::from_utf8(v).unwrap().parse::<i64>()
        })
        .unwrap();
        assert_eq!(r.records, 5, "partition 0's records only");
        assert_eq!(r.partitions[&0], HashMap::from([(b"a".to_vec(), 3)]));
        assert!(
            r.partitions[&2].is_empty(),
            "requested partitions are always present"
        );
        assert!(
            !r.partitions.contains_key(&1),
            "unrequested partitions are not read"
        );
        assert_eq!(r.unreadable.len(), 1);
        assert_eq!(r.unreadable[0].1, b"c");

        // A readable value after an unreadable one repairs the key.
        log.commit(&[write("s", 0, "c", Some("4"))]);
        let r = restore_latest(&log, "s", &[0], |v| {
            std::str::from_utf8(v).unwrap().parse::<i64>()
        })
        .unwrap();
        assert!(r.unreadable.is_empty());
        assert_eq!(r.partitions[&0][b"c".as_slice()], 4);
    }
}
