//! An in-memory state log, for unit tests of handlers and of the loop's batch handling: what
//! a committed batch wrote is what a later restore reads, as with a Kafka state topic.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{StateError, StateLog, Visit};
use crate::Output;

type Entry = (Vec<u8>, Option<Vec<u8>>);

/// Topics' records by partition, in the order batches committed them.
#[derive(Debug, Default)]
pub struct MemoryLog {
    topics: Mutex<HashMap<String, HashMap<i32, Vec<Entry>>>>,
    /// Topics that fail to read, with why: a restore that cannot finish.
    failing: Mutex<HashMap<String, String>>,
}

impl MemoryLog {
    /// Appends a committed batch's keyed outputs that name their partition: state writes.
    /// Other outputs (events, failure copies) are not state and are left out.
    pub fn commit(&self, outputs: &[Output]) {
        let mut topics = self.topics.lock().expect("memory log");
        for o in outputs {
            if let (Some(p), Some(key)) = (o.partition, &o.key) {
                topics
                    .entry(o.topic.clone())
                    .or_default()
                    .entry(p)
                    .or_default()
                    .push((key.clone(), o.value.clone()));
            }
        }
    }

    /// Makes every later read of `topic` fail with `reason`.
    pub fn fail_reads(&self, topic: &str, reason: &str) {
        self.failing
            .lock()
            .expect("memory log")
            .insert(topic.to_string(), reason.to_string());
    }

    /// Records held for `topic`, every partition.
    pub fn len(&self, topic: &str) -> usize {
        self.topics
            .lock()
            .expect("memory log")
            .get(topic)
            .map_or(0, |ps| ps.values().map(Vec::len).sum())
    }
}

impl StateLog for MemoryLog {
    fn read(&self, topic: &str, ps: &[i32], f: &mut Visit<'_>) -> Result<usize, StateError> {
        if let Some(reason) = self.failing.lock().expect("memory log").get(topic) {
            return Err(StateError::Read {
                topic: topic.to_string(),
                reason: reason.clone(),
            });
        }
        let topics = self.topics.lock().expect("memory log");
        let mut n = 0;
        for p in ps {
            for (key, value) in topics
                .get(topic)
                .and_then(|ps| ps.get(p))
                .into_iter()
                .flatten()
            {
                f(*p, key, value.as_deref());
                n += 1;
            }
        }
        Ok(n)
    }
}
