//! What the loop learns from rebalances. librdkafka delivers them only from a poll, which
//! the loop makes only while collecting a batch, so the loop looks at the outcome between
//! batches: which partitions to drop state for and which to restore.
//!
//! A partition revoked and assigned again between two looks (an eager rebalance, as under
//! the `range` assignor, revokes everything first) may have had another owner meanwhile, so
//! it counts as revoked and added: its state is dropped and read back.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};

use super::Record;

pub type TopicPartition = (String, i32);

/// The loop consumer's context: notes rebalances for the loop.
#[derive(Default)]
pub struct LoopContext {
    /// The assignment may have changed since the loop last looked.
    pub changed: AtomicBool,
    /// Partitions revoked since the loop last looked, including those assigned again since.
    revoked: Mutex<HashSet<TopicPartition>>,
    /// The same, for the batch being collected; taken by [`LoopContext::drop_revoked`].
    revoked_in_batch: Mutex<HashSet<TopicPartition>>,
}

impl ClientContext for LoopContext {}

impl ConsumerContext for LoopContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let tps: Vec<TopicPartition> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            self.revoked
                .lock()
                .expect("revoked lock")
                .extend(tps.iter().cloned());
            self.revoked_in_batch
                .lock()
                .expect("revoked lock")
                .extend(tps);
        }
        if !matches!(rebalance, Rebalance::Error(_)) {
            self.changed.store(true, Ordering::SeqCst);
        }
    }
}

impl LoopContext {
    /// Drops from a batch being collected the records of partitions revoked since they were
    /// taken: if the partition comes back it is fetched again from its committed offset.
    /// Call it before adding each newly received record (which is never stale: librdkafka
    /// discards what it fetched for a revoked partition).
    pub fn drop_revoked(&self, batch: &mut Vec<Record>) {
        let revoked = std::mem::take(&mut *self.revoked_in_batch.lock().expect("revoked lock"));
        if !revoked.is_empty() {
            batch.retain(|r| !revoked.contains(&(r.topic.clone(), r.partition)));
        }
    }

    /// The partitions to drop state for and to restore, going from `assigned` (the last
    /// look) to `now`.
    pub fn changes(
        &self,
        assigned: &HashSet<TopicPartition>,
        now: &HashSet<TopicPartition>,
    ) -> (Vec<TopicPartition>, Vec<TopicPartition>) {
        let again = std::mem::take(&mut *self.revoked.lock().expect("revoked lock"));
        diff(assigned, now, &again)
    }
}

fn diff(
    assigned: &HashSet<TopicPartition>,
    now: &HashSet<TopicPartition>,
    again: &HashSet<TopicPartition>,
) -> (Vec<TopicPartition>, Vec<TopicPartition>) {
    let mut revoked: Vec<TopicPartition> = assigned
        .iter()
        .filter(|tp| !now.contains(*tp) || again.contains(*tp))
        .cloned()
        .collect();
    let mut added: Vec<TopicPartition> = now
        .iter()
        .filter(|tp| !assigned.contains(*tp) || again.contains(*tp))
        .cloned()
        .collect();
    revoked.sort();
    added.sort();
    (revoked, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(tps: &[(&str, i32)]) -> HashSet<TopicPartition> {
        tps.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    fn list(tps: &[(&str, i32)]) -> Vec<TopicPartition> {
        tps.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn a_partition_revoked_and_assigned_again_is_dropped_and_restored() {
        let assigned = set(&[("in", 0), ("in", 1)]);
        // An eager rebalance took both away and gave `in/0` back.
        let (revoked, added) = diff(&assigned, &set(&[("in", 0)]), &assigned);
        assert_eq!(revoked, list(&[("in", 0), ("in", 1)]));
        assert_eq!(added, list(&[("in", 0)]));
        // An incremental one only moved `in/1`; `in/0` keeps its state.
        let (revoked, added) = diff(&assigned, &set(&[("in", 0), ("in", 2)]), &set(&[("in", 1)]));
        assert_eq!(revoked, list(&[("in", 1)]));
        assert_eq!(added, list(&[("in", 2)]));
    }

    #[test]
    fn records_taken_before_a_revocation_are_dropped() {
        let ctx = LoopContext::default();
        let record = |p| Record {
            topic: "in".into(),
            partition: p,
            offset: 0,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Vec::new(),
        };
        let mut batch = vec![record(0), record(1)];
        ctx.revoked_in_batch
            .lock()
            .unwrap()
            .insert(("in".into(), 1));
        ctx.drop_revoked(&mut batch);
        assert_eq!(batch, vec![record(0)]);
        batch.push(record(1));
        ctx.drop_revoked(&mut batch);
        assert_eq!(batch.len(), 2, "each revocation drops once");
    }
}
