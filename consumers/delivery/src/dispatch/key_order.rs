//! `ordering: per_key` that holds across retries, parking and restarts: once a task of an
//! endpoint's event key waits in a retry tier (failed, or parked under an open breaker), the
//! key is *held*, and its later tasks wait behind it — forwarded, unsent and without an
//! attempt counted, to the tier the head waits in — until the head is delivered or given
//! up. Other keys of the same endpoint go on.
//!
//! It is the stream runtime's held-key mechanism ([`sluice_stream::ordering::state`]):
//! the same state machine, the same compacted held-key topic and restore. A key here is
//! (endpoint id, event key), and its partition is the task's: tasks and tier copies are
//! keyed by endpoint id into topics of equal partition counts, and the dispatcher's
//! `range` assignor gives partition *i* of each to one instance, which also owns held-key
//! partition *i*.
//!
//! The dispatcher is at-least-once, not transactional, so the order of writes is what keeps
//! a crash harmless: a key's state is written only after the tier copy that changed it is
//! acknowledged. A crash between the two leaves a copy whose number the state does not know,
//! which is then sent unordered (once, as a retry of the same `webhook-id`); the reverse, a
//! state naming a copy that was never written, would hold the key forever.

use std::collections::HashMap;

use sluice_stream::ordering::state::{Arrival, HeldKeys, KeyId, KeyState};
/// A task allowed to go, and where it stands in its key's line: the stream runtime's
/// [`sluice_stream::ordering::Slot`] (its number is `None` while its key is not held).
pub use sluice_stream::ordering::Slot;
use sluice_stream::state::{restore_latest, StateLog};
use sluice_stream::{Output, Record};

use super::settle::Settled;
use super::tiers::Tiers;
use crate::task::DeliveryTask;

/// Whether a task of a `per_key` endpoint may be sent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Not ordered (no event key, or a tier copy whose number the state does not know).
    Free,
    /// Send it; report its settlement with [`KeyOrder::settled`].
    Go(Slot),
    /// Its key is held: forward it unsent, as number `seq`, to tier `tier`.
    Wait { seq: u64, tier: usize },
}

/// The held keys of the partitions a dispatcher owns.
#[derive(Debug)]
pub struct KeyOrder {
    held_topic: String,
    tiers: Tiers,
    state: HeldKeys,
}

#[derive(Debug, thiserror::Error)]
#[error("reading held delivery keys from {topic}: {reason}")]
pub struct RestoreError {
    topic: String,
    reason: String,
}

impl KeyOrder {
    pub fn new(held_topic: &str, tiers: Tiers) -> Self {
        Self {
            held_topic: held_topic.to_string(),
            tiers,
            state: HeldKeys::default(),
        }
    }

    /// Whose turn it is: `task`, read from `from`, goes or waits behind its key's head.
    pub fn turn(&mut self, task: &DeliveryTask, from: &Record) -> Turn {
        let Some(key) = task.event_key.clone() else {
            return Turn::Free;
        };
        let id = KeyId {
            topic: task.endpoint_id.clone(),
            key,
        };
        let partition = from.partition;
        // A number counts only on a tier: a dead letter replayed to the tasks topic starts
        // afresh.
        let seq = task.key_seq.filter(|_| self.tiers.contains(&from.topic));
        let turn = match seq {
            None => match self.state.follow(partition, &id) {
                Some((seq, tier)) => Turn::Wait { seq, tier },
                None => Turn::Go(Slot::new(id, partition, None)),
            },
            Some(seq) => match self.state.arrive(partition, &id, seq) {
                Arrival::Handle => Turn::Go(Slot::new(id, partition, Some(seq))),
                Arrival::Follow { tier } => Turn::Wait { seq, tier },
                Arrival::Untracked => Turn::Free,
            },
        };
        self.state.finish_batch(true);
        turn
    }

    /// The held-key record of `task`'s key as it stands now, to write once the waiting copy
    /// [`Turn::Wait`] led to is acknowledged.
    pub fn record_of(&self, task: &DeliveryTask, from: &Record) -> Option<Output> {
        let id = KeyId {
            topic: task.endpoint_id.clone(),
            key: task.event_key.clone()?,
        };
        Some(self.record(from.partition, &id))
    }

    /// A task that went settled as `settled`: if it waits in a tier now (retrying or
    /// parked), it is (or stays) its key's head and its copy carries its number; otherwise
    /// (delivered, dead-lettered, gone, disabled) the next one of its key may go. Returns
    /// the key's held-key record, to write after `settled`'s own records.
    pub fn settled(&mut self, slot: &Slot, settled: &mut Settled) -> Option<Output> {
        let waiting = settled
            .outputs
            .iter_mut()
            .find_map(|o| self.tiers.position(&o.topic).map(|tier| (tier, o)));
        let (partition, id) = (slot.partition(), slot.id());
        match (waiting, slot.seq()) {
            (Some((tier, copy)), seq) => {
                let seq = self.state.retried(partition, id, seq, tier);
                copy.headers
                    .retain(|(k, _)| k != crate::task::header::KEY_SEQ);
                copy.headers.push((
                    crate::task::header::KEY_SEQ.to_string(),
                    seq.to_string().into_bytes(),
                ));
            }
            (None, Some(seq)) => self.state.resolved(partition, id, seq),
            (None, None) => return None,
        }
        self.state.finish_batch(true);
        Some(self.record(partition, id))
    }

    /// A task whose tier copy (its key's `seq`) Kafka refused was dead-lettered instead: the
    /// next one of its key may go. Returns the key's held-key record, as [`Self::settled`].
    pub fn copy_refused(&mut self, slot: &Slot, seq: u64) -> Output {
        let (partition, id) = (slot.partition(), slot.id());
        self.state.resolved(partition, id, seq);
        self.state.finish_batch(true);
        self.record(partition, id)
    }

    /// Keys held, over every owned partition.
    pub fn held(&self) -> usize {
        self.state.len()
    }

    fn record(&self, partition: i32, id: &KeyId) -> Output {
        Output {
            topic: self.held_topic.clone(),
            partition: Some(partition),
            key: Some(id.encode()),
            value: self
                .state
                .get(partition, id)
                .map(|s| serde_json::to_vec(s).expect("held-key state serialises")),
            headers: Vec::new(),
        }
    }

    /// Replaces the state with what the held-key topic says of `partitions` (the owned
    /// ones). A held key that cannot be read fails the restore: going on without it would
    /// let its later tasks overtake the one waiting. Blocking.
    pub fn restore(
        &mut self,
        log: &dyn StateLog,
        partitions: &[i32],
    ) -> Result<usize, RestoreError> {
        let fail = |reason: String| RestoreError {
            topic: self.held_topic.clone(),
            reason,
        };
        let restored = restore_latest(log, &self.held_topic, partitions, |v| {
            serde_json::from_slice::<KeyState>(v)
        })
        .map_err(|e| fail(e.to_string()))?;
        if let Some((p, _, why)) = restored.unreadable.first() {
            return Err(fail(format!(
                "partition {p}: a held key's state is not readable: {why}"
            )));
        }
        self.state = HeldKeys::default();
        for (p, keys) in restored.partitions {
            let keys: HashMap<KeyId, KeyState> = keys
                .into_iter()
                .filter_map(|(k, s)| Some((KeyId::decode(&k)?, s)))
                .collect();
            self.state.load(p, keys);
        }
        Ok(self.state.len())
    }
}

#[cfg(test)]
#[path = "key_order_tests.rs"]
mod tests;
