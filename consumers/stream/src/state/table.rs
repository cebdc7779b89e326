//! A keyed table of JSON values in a co-partitioned state topic: the committed values of the
//! partitions this instance holds, plus the batch's staged changes. The simplest state a
//! handler can keep; handlers with indexes of their own (saga instances, dedup windows)
//! build on the same pieces ([`Ownership`], [`Staged`], [`restore_latest`]) directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{restore_latest, Ownership, Staged, StateError, StateLog};
use crate::{Assigned, Output};

#[derive(Debug)]
pub struct StateTable<V> {
    topic: String,
    /// Ordered by key, so the keys sharing a prefix are found without a scan.
    committed: Mutex<HashMap<i32, BTreeMap<String, V>>>,
    staged: Staged<(i32, String), V>,
    ownership: Ownership,
}

/// What a restore brought back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// State partitions restored (none when every one was held already).
    pub partitions: Vec<i32>,
    pub records: usize,
    /// Keys left out because their latest value could not be read: (partition, key, why).
    pub unreadable: Vec<(i32, String, String)>,
}

impl<V: Clone + Serialize + DeserializeOwned> StateTable<V> {
    pub fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_string(),
            committed: Mutex::default(),
            staged: Staged::default(),
            ownership: Ownership::default(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// `key`'s latest value in state partition `p`: the batch's, else the committed one.
    pub fn get(&self, p: i32, key: &str) -> Option<V> {
        if let Some(change) = self.staged.get(&(p, key.to_string())) {
            return change;
        }
        self.committed
            .lock()
            .expect("state table")
            .get(&p)
            .and_then(|m| m.get(key))
            .cloned()
    }

    /// For each of `prefixes`, in their order, the keys of state partition `p` that start with
    /// it and have a value, the batch's changes included. The changes are gone through once,
    /// not once per prefix; the keys of each prefix are found by range, not by a scan.
    pub fn keys_with_prefixes(&self, p: i32, prefixes: &[&str]) -> Vec<Vec<String>> {
        let mut found: Vec<std::collections::BTreeSet<String>> = {
            let committed = self.committed.lock().expect("state table");
            let empty = BTreeMap::new();
            let keys = committed.get(&p).unwrap_or(&empty);
            prefixes
                .iter()
                .map(|prefix| {
                    starting_with(keys, prefix)
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .collect()
        };
        // Each changed key of the partition: set (true) or deleted (false).
        let changed: BTreeMap<String, bool> = self.staged.with(|changes| {
            changes
                .iter()
                .filter(|((sp, _), _)| *sp == p)
                .map(|((_, key), change)| (key.clone(), change.is_some()))
                .collect()
        });
        for (prefix, keys) in prefixes.iter().zip(&mut found) {
            for (key, set) in starting_with(&changed, prefix) {
                if *set {
                    keys.insert(key.clone());
                } else {
                    keys.remove(key);
                }
            }
        }
        found.into_iter().map(|k| k.into_iter().collect()).collect()
    }

    /// Stages `value` for `key` and returns its state record, to write with the batch.
    pub fn put(&self, p: i32, key: &str, value: V) -> Output {
        let bytes = serde_json::to_vec(&value).expect("state values serialise");
        self.staged.put((p, key.to_string()), value);
        self.record(p, key, Some(bytes))
    }

    /// Stages the removal of `key` and returns its tombstone, to write with the batch.
    pub fn delete(&self, p: i32, key: &str) -> Output {
        self.staged.delete((p, key.to_string()));
        self.record(p, key, None)
    }

    fn record(&self, p: i32, key: &str, value: Option<Vec<u8>>) -> Output {
        Output {
            topic: self.topic.clone(),
            partition: Some(p),
            key: Some(key.as_bytes().to_vec()),
            value,
            headers: Vec::new(),
        }
    }

    /// Ends the batch: applies its changes when it committed, drops them when it aborted.
    pub fn finish(&self, committed: bool) {
        let changes = self.staged.finish(committed);
        let mut state = self.committed.lock().expect("state table");
        for ((p, key), change) in changes {
            let Some(partition) = state.get_mut(&p) else {
                continue; // revoked meanwhile: its new owner reads the change back
            };
            match change {
                Some(v) => partition.insert(key, v),
                None => partition.remove(&key),
            };
        }
    }

    /// Restores the state partitions that the newly assigned partitions of the topics
    /// `is_input` accepts need and this instance does not hold yet. Blocking.
    pub fn assign(
        &self,
        log: &dyn StateLog,
        partitions: &Assigned,
        is_input: impl Fn(&str) -> bool,
    ) -> Result<RestoreReport, StateError> {
        let needed = self.ownership.assign(partitions, is_input);
        if needed.is_empty() {
            return Ok(RestoreReport::default());
        }
        let restored = restore_latest(log, &self.topic, &needed, |v| {
            serde_json::from_slice::<V>(v)
        })?;
        let lossy = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        {
            let mut state = self.committed.lock().expect("state table");
            for (p, keys) in restored.partitions {
                state.insert(p, keys.into_iter().map(|(k, v)| (lossy(&k), v)).collect());
            }
        }
        self.ownership.restored(&needed);
        Ok(RestoreReport {
            partitions: needed,
            records: restored.records,
            unreadable: restored
                .unreadable
                .into_iter()
                .map(|(p, k, why)| (p, lossy(&k), why))
                .collect(),
        })
    }

    /// Drops the state partitions no owned input partition needs after `partitions` went.
    pub fn revoke(&self, partitions: &Assigned) {
        let gone = self.ownership.revoke(partitions);
        let mut state = self.committed.lock().expect("state table");
        for p in gone {
            state.remove(&p);
        }
    }

    /// Whether state partition `p` is held.
    pub fn holds(&self, p: i32) -> bool {
        self.ownership.holds(p)
    }
}

/// The entries of `map` whose key starts with `prefix`, found by range, not by a scan.
fn starting_with<'a, T>(
    map: &'a BTreeMap<String, T>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a T)> {
    map.range::<str, _>((
        std::ops::Bound::Included(prefix),
        std::ops::Bound::Unbounded,
    ))
    .take_while(move |(k, _)| k.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryLog;

    fn tps(list: &[(&str, i32)]) -> Assigned {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    /// A batch: stage, then commit to the log and the table together, or abort.
    fn batch(log: &MemoryLog, table: &StateTable<u32>, writes: Vec<Output>, commit: bool) {
        if commit {
            log.commit(&writes);
        }
        table.finish(commit);
    }

    #[test]
    fn committed_batches_survive_a_restart_and_aborted_ones_leave_nothing() {
        let log = MemoryLog::default();
        let table: StateTable<u32> = StateTable::new("state");
        table.assign(&log, &tps(&[("in", 0)]), |_| true).unwrap();

        let w = vec![table.put(0, "a", 1), table.put(0, "b", 2)];
        assert_eq!(table.get(0, "a"), Some(1), "the batch sees its own changes");
        batch(&log, &table, w, true);
        let w = vec![table.put(0, "a", 99), table.delete(0, "b")];
        assert_eq!(table.get(0, "b"), None);
        batch(&log, &table, w, false);
        assert_eq!((table.get(0, "a"), table.get(0, "b")), (Some(1), Some(2)));

        // Another instance taking the partition over sees exactly the committed state.
        let next: StateTable<u32> = StateTable::new("state");
        let report = next.assign(&log, &tps(&[("in", 0)]), |_| true).unwrap();
        assert_eq!(report.partitions, [0]);
        assert_eq!(report.records, 2);
        assert_eq!((next.get(0, "a"), next.get(0, "b")), (Some(1), Some(2)));
        let w = vec![next.delete(0, "b")];
        batch(&log, &next, w, true);
        let again: StateTable<u32> = StateTable::new("state");
        again.assign(&log, &tps(&[("in", 0)]), |_| true).unwrap();
        assert_eq!(again.get(0, "b"), None, "the tombstone came back too");
    }

    #[test]
    fn keys_with_a_prefix_are_those_of_the_partition_and_the_batch() {
        let log = MemoryLog::default();
        let table: StateTable<u32> = StateTable::new("state");
        table
            .assign(&log, &tps(&[("in", 0), ("in", 1)]), |_| true)
            .unwrap();
        let w = vec![
            table.put(0, "s1:a", 1),
            table.put(0, "s1:b", 2),
            table.put(0, "s10:a", 3),
            table.put(0, "s0:a", 4),
            table.put(1, "s1:c", 5),
        ];
        batch(&log, &table, w, true);
        assert_eq!(table.keys_with_prefixes(0, &["s1:"])[0], ["s1:a", "s1:b"]);
        // The open batch counts: a staged delete hides a key, a staged put adds one.
        let _ = (table.delete(0, "s1:a"), table.put(0, "s1:z", 6));
        assert_eq!(table.keys_with_prefixes(0, &["s1:"])[0], ["s1:b", "s1:z"]);
        let _ = (table.put(0, "s0:b", 7), table.put(0, "s2:a", 8));
        assert_eq!(
            table.keys_with_prefixes(0, &["s10:", "s1:", "s0:", "s3:"]),
            [
                vec!["s10:a"],
                vec!["s1:b", "s1:z"],
                vec!["s0:a", "s0:b"],
                vec![]
            ]
        );
        table.finish(false);
        assert_eq!(table.keys_with_prefixes(0, &["s1:"])[0], ["s1:a", "s1:b"]);
        assert_eq!(table.keys_with_prefixes(1, &["s1:"])[0], ["s1:c"]);
        assert!(table.keys_with_prefixes(2, &["s1:"])[0].is_empty());
    }

    #[test]
    fn revoked_partitions_are_dropped_and_read_again_when_they_return() {
        let log = MemoryLog::default();
        let table: StateTable<u32> = StateTable::new("state");
        table.assign(&log, &tps(&[("in", 1)]), |_| true).unwrap();
        let w = vec![table.put(1, "k", 7)];
        batch(&log, &table, w, true);
        table.revoke(&tps(&[("in", 1)]));
        assert!(!table.holds(1));
        assert_eq!(table.get(1, "k"), None);
        let report = table.assign(&log, &tps(&[("in", 1)]), |_| true).unwrap();
        assert_eq!(report.records, 1);
        assert_eq!(table.get(1, "k"), Some(7));
    }

    #[test]
    fn a_failed_restore_holds_nothing_and_unreadable_values_are_reported() {
        let log = MemoryLog::default();
        log.commit(&[Output {
            topic: "state".into(),
            partition: Some(0),
            key: Some(b"bad".to_vec()),
            value: Some(b"not json".to_vec()),
            headers: Vec::new(),
        }]);
        let table: StateTable<u32> = StateTable::new("state");
        let report = table.assign(&log, &tps(&[("in", 0)]), |_| true).unwrap();
        assert_eq!(report.unreadable.len(), 1);
        assert_eq!(report.unreadable[0].1, "bad");

        log.fail_reads("state", "broker unreachable");
        let err = table
            .assign(&log, &tps(&[("in", 2)]), |_| true)
            .unwrap_err();
        assert!(err.to_string().contains("broker unreachable"), "{err}");
        assert!(!table.holds(2));
    }
}
