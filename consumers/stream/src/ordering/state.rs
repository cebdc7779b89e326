//! The held-key state machine, kept free of Kafka so every transition is unit-tested.
//!
//! A key is held while any of its records is in the retry path. Each record entering the
//! path gets the key's next sequence number; only the lowest unresolved one (the head) is
//! handled, the others follow it from tier to tier without being handled. When the head
//! succeeds or is dead-lettered the next one becomes the head; when none is left the key is
//! released.
//!
//! Changes are applied at once, so later records of the same batch see them, and the state
//! a batch found is kept per touched key so an aborted batch can be undone.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// A record's original topic and its key: what ordering is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId {
    pub topic: String,
    pub key: Vec<u8>,
}

impl KeyId {
    /// The held-key topic's record key: the topic, a NUL (never part of a topic name), the
    /// key bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.topic.len() + 1 + self.key.len());
        out.extend_from_slice(self.topic.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.key);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let nul = bytes.iter().position(|b| *b == 0)?;
        Some(Self {
            topic: String::from_utf8(bytes[..nul].to_vec()).ok()?,
            key: bytes[nul + 1..].to_vec(),
        })
    }
}

/// One held key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// The sequence number the next record entering the path gets.
    pub next_seq: u64,
    /// Unresolved sequence numbers → the retry tier the record sits in. The first is the
    /// head; never empty (an empty key is released).
    pub pending: BTreeMap<u64, usize>,
}

impl KeyState {
    pub fn head(&self) -> Option<(u64, usize)> {
        self.pending.iter().next().map(|(s, t)| (*s, *t))
    }
}

/// What to do with a retry-tier record carrying sequence number `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// It is the head: handle it.
    Handle,
    /// An earlier record of the key is unresolved: send it, unhandled, to `tier` (the
    /// head's), behind the head.
    Follow { tier: usize },
    /// Its key is not held or the number is not pending (state written before ordering was
    /// on, or lost): handle it without ordering.
    Untracked,
}

/// The held keys of the partitions this instance owns. The partition is the main topic's,
/// which is also the retry-tier and held-key partition the key's records and state use.
#[derive(Debug, Default)]
pub struct HeldKeys {
    partitions: HashMap<i32, HashMap<KeyId, KeyState>>,
    /// Keys changed by the batch in progress, with the state they had before it.
    touched: HashMap<(i32, KeyId), Option<KeyState>>,
}

impl HeldKeys {
    pub fn is_held(&self, partition: i32, id: &KeyId) -> bool {
        self.get(partition, id).is_some()
    }

    pub fn get(&self, partition: i32, id: &KeyId) -> Option<&KeyState> {
        self.partitions.get(&partition)?.get(id)
    }

    /// A main-topic record whose key is held joins the path behind the head, without being
    /// handled: its sequence number and the tier to send it to. `None` when not held.
    pub fn follow(&mut self, partition: i32, id: &KeyId) -> Option<(u64, usize)> {
        let (_, tier) = self.get(partition, id)?.head()?;
        self.update(partition, id, |state| {
            let state = state.as_mut()?;
            let seq = state.next_seq;
            state.next_seq += 1;
            state.pending.insert(seq, tier);
            Some((seq, tier))
        })
    }

    /// A record with sequence number `seq` came due on a retry tier.
    pub fn arrive(&mut self, partition: i32, id: &KeyId, seq: u64) -> Arrival {
        let Some(state) = self.get(partition, id) else {
            return Arrival::Untracked;
        };
        match state.head() {
            _ if !state.pending.contains_key(&seq) => Arrival::Untracked,
            Some((head, _)) if head == seq => Arrival::Handle,
            Some((_, tier)) => {
                self.update(partition, id, |s| {
                    if let Some(s) = s {
                        s.pending.insert(seq, tier);
                    }
                });
                Arrival::Follow { tier }
            }
            None => Arrival::Untracked,
        }
    }

    /// A handled record failed and was sent to retry `tier`. `seq` is its number, or `None`
    /// for a main-topic record entering the path (which holds its key). Returns its number.
    pub fn retried(&mut self, partition: i32, id: &KeyId, seq: Option<u64>, tier: usize) -> u64 {
        self.update(partition, id, |state| {
            let state = state.get_or_insert_with(|| KeyState {
                next_seq: 0,
                pending: BTreeMap::new(),
            });
            let seq = seq.unwrap_or_else(|| {
                let s = state.next_seq;
                state.next_seq += 1;
                s
            });
            state.pending.insert(seq, tier);
            seq
        })
    }

    /// Record `seq` left the path (it succeeded or was dead-lettered); the next one becomes
    /// the head, or the key is released.
    pub fn resolved(&mut self, partition: i32, id: &KeyId, seq: u64) {
        if !self
            .get(partition, id)
            .is_some_and(|s| s.pending.contains_key(&seq))
        {
            return;
        }
        self.update(partition, id, |state| {
            if let Some(s) = state {
                s.pending.remove(&seq);
                if s.pending.is_empty() {
                    *state = None;
                }
            }
        });
    }

    /// The current state of every key the batch changed (`None`: released), to write to the
    /// held-key topic with the batch.
    pub fn changes(&self) -> Vec<(i32, KeyId, Option<KeyState>)> {
        let mut out: Vec<_> = self
            .touched
            .keys()
            .map(|(p, id)| (*p, id.clone(), self.get(*p, id).cloned()))
            .collect();
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        out
    }

    /// Keeps the batch's changes (committed) or puts back the state it found (aborted).
    pub fn finish_batch(&mut self, committed: bool) {
        let touched = std::mem::take(&mut self.touched);
        if committed {
            return;
        }
        for ((p, id), before) in touched {
            self.set(p, id, before);
        }
    }

    /// Replaces partition `p`'s state with what was read from the held-key topic.
    pub fn load(&mut self, partition: i32, keys: HashMap<KeyId, KeyState>) {
        self.partitions.insert(partition, keys);
    }

    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.touched.retain(|(p, _), _| *p != partition);
    }

    /// Held keys over every owned partition.
    pub fn len(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes one key's state (`None`: not held), remembering on first touch what it was
    /// before the batch.
    fn update<R>(
        &mut self,
        partition: i32,
        id: &KeyId,
        change: impl FnOnce(&mut Option<KeyState>) -> R,
    ) -> R {
        let mut state = self
            .partitions
            .get_mut(&partition)
            .and_then(|m| m.remove(id));
        self.touched
            .entry((partition, id.clone()))
            .or_insert_with(|| state.clone());
        let out = change(&mut state);
        self.set(partition, id.clone(), state);
        out
    }

    fn set(&mut self, partition: i32, id: KeyId, state: Option<KeyState>) {
        match state {
            Some(s) => {
                self.partitions.entry(partition).or_default().insert(id, s);
            }
            None => {
                if let Some(m) = self.partitions.get_mut(&partition) {
                    m.remove(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str) -> KeyId {
        KeyId {
            topic: "in".into(),
            key: key.as_bytes().to_vec(),
        }
    }

    #[test]
    fn followers_wait_behind_the_head_and_are_released_in_order() {
        let mut h = HeldKeys::default();
        let a = id("A");
        assert_eq!(h.follow(0, &a), None, "a key that is not held is handled");
        // The first record fails: the key is held, seq 0 on tier 0.
        assert_eq!(h.retried(0, &a, None, 0), 0);
        // Two more records arrive on the main topic: they follow to the head's tier.
        assert_eq!(h.follow(0, &a), Some((1, 0)));
        assert_eq!(h.follow(0, &a), Some((2, 0)));
        // The head fails again and moves on to tier 1.
        assert_eq!(h.arrive(0, &a, 0), Arrival::Handle);
        assert_eq!(h.retried(0, &a, Some(0), 1), 0);
        // The followers come due on tier 0: not the head, so they chase it to tier 1.
        assert_eq!(h.arrive(0, &a, 1), Arrival::Follow { tier: 1 });
        assert_eq!(h.arrive(0, &a, 2), Arrival::Follow { tier: 1 });
        assert_eq!(
            h.get(0, &a).unwrap().pending,
            [(0, 1), (1, 1), (2, 1)].into()
        );
        // The head succeeds: seq 1 is next, seq 2 still waits.
        h.resolved(0, &a, 0);
        assert_eq!(h.arrive(0, &a, 2), Arrival::Follow { tier: 1 });
        assert_eq!(h.arrive(0, &a, 1), Arrival::Handle);
        h.resolved(0, &a, 1);
        assert_eq!(h.arrive(0, &a, 2), Arrival::Handle);
        h.resolved(0, &a, 2);
        assert!(!h.is_held(0, &a), "nothing left: released");
        assert!(h.is_empty());
    }

    #[test]
    fn a_failing_follower_becomes_the_new_head_on_tier_zero() {
        let mut h = HeldKeys::default();
        let d = id("D");
        h.retried(0, &d, None, 0);
        assert_eq!(h.follow(0, &d), Some((1, 0)));
        assert_eq!(h.follow(0, &d), Some((2, 0)));
        // The head is dead-lettered: resolved like a success.
        assert_eq!(h.arrive(0, &d, 0), Arrival::Handle);
        h.resolved(0, &d, 0);
        // The first follower is handled, fails and becomes the head on tier 0.
        assert_eq!(h.arrive(0, &d, 1), Arrival::Handle);
        assert_eq!(h.retried(0, &d, Some(1), 0), 1);
        assert_eq!(h.get(0, &d).unwrap().head(), Some((1, 0)));
        assert_eq!(h.arrive(0, &d, 2), Arrival::Follow { tier: 0 });
        // A new main record keeps counting up.
        assert_eq!(h.follow(0, &d), Some((3, 0)));
    }

    #[test]
    fn keys_are_separate_per_key_topic_and_partition() {
        let mut h = HeldKeys::default();
        h.retried(0, &id("A"), None, 0);
        assert!(!h.is_held(0, &id("B")));
        assert!(!h.is_held(1, &id("A")));
        let other_topic = KeyId {
            topic: "other".into(),
            key: b"A".to_vec(),
        };
        assert!(!h.is_held(0, &other_topic));
        assert_eq!(h.arrive(0, &id("B"), 0), Arrival::Untracked);
        assert_eq!(h.arrive(0, &id("A"), 7), Arrival::Untracked, "unknown seq");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn an_aborted_batch_puts_back_what_it_found() {
        let mut h = HeldKeys::default();
        let (a, b) = (id("A"), id("B"));
        h.retried(0, &a, None, 0);
        h.follow(0, &a);
        h.finish_batch(true);
        assert!(h.changes().is_empty(), "a committed batch starts clean");
        let before = h.get(0, &a).cloned();

        h.resolved(0, &a, 0);
        h.resolved(0, &a, 1);
        h.retried(1, &b, None, 2);
        let changes = h.changes();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0], (0, a.clone(), None), "A released");
        assert_eq!(changes[1].0, 1);
        assert!(changes[1].2.is_some(), "B held");
        h.finish_batch(false);
        assert_eq!(h.get(0, &a).cloned(), before);
        assert!(!h.is_held(1, &b));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn the_changes_of_a_batch_are_each_key_s_final_state() {
        let mut h = HeldKeys::default();
        let a = id("A");
        h.retried(0, &a, None, 0);
        h.resolved(0, &a, 0);
        h.retried(0, &a, None, 1);
        assert_eq!(
            h.changes(),
            vec![(
                0,
                a,
                Some(KeyState {
                    next_seq: 1,
                    pending: [(0, 1)].into()
                })
            )]
        );
    }

    #[test]
    fn held_key_records_round_trip() {
        let k = KeyId {
            topic: "sluice.raw.stripe".into(),
            key: vec![0, 1, 255],
        };
        assert_eq!(KeyId::decode(&k.encode()), Some(k));
        assert_eq!(KeyId::decode(b"no separator"), None);
        let s = KeyState {
            next_seq: 3,
            pending: [(1, 0), (2, 2)].into(),
        };
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<KeyState>(&json).unwrap(), s);
    }

    #[test]
    fn forgetting_a_partition_drops_its_keys() {
        let mut h = HeldKeys::default();
        h.retried(0, &id("A"), None, 0);
        h.retried(1, &id("B"), None, 0);
        h.finish_batch(true);
        h.forget(0);
        assert_eq!(h.len(), 1);
        h.load(0, [(id("C"), h.get(1, &id("B")).unwrap().clone())].into());
        assert!(h.is_held(0, &id("C")));
    }
}
