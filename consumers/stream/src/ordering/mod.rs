//! Per-key ordering on the retry path (`ordering: per_key` in a retry policy): once a key
//! has a record in the retry path, later records with that key wait behind it instead of
//! overtaking, and are released in order when it succeeds or is dead-lettered.
//!
//! Why it is correct under exactly-once, restarts and rebalances:
//! - **One owner per key.** A key's records and state all live in partition *i*, where *i*
//!   is the key's main-topic partition: retry copies go to tier partition *i* explicitly and
//!   the state to held-key partition *i*. The loop uses the `range` assignor, which gives
//!   partition *i* of every topic with equal partition counts to the same member, and checks
//!   at start that the counts are equal.
//! - **State commits with the batch.** The held keys are written to a compacted topic in the
//!   batch's transaction, so state, outputs and offsets are all or nothing. An aborted batch
//!   puts back the in-memory state it found ([`state::HeldKeys::finish_batch`]).
//! - **Restored on assignment** by reading the held-key partition to its end
//!   (`read_committed`), so a restart or a new owner continues where the last commit left.
//!
//! Records without a key are never held. Records already in the retry path without a
//! sequence number (from before ordering was on) are handled as they come.

mod restore;
pub mod state;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Mutex;

use sluice_topology::model::{Ordering, RetryPolicySpec};
use sluice_topology::naming;

use super::failure::FailureRouter;
use super::headers as h;
use super::{Guarantee, Output, Record};
pub use restore::check_partitions;
use state::{Arrival, HeldKeys, KeyId};

/// Per-key ordering for one loop: the retry policy it comes from and its held-key topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerKey {
    pub policy: String,
    pub held_topic: String,
}

impl PerKey {
    /// The ordering a retry policy asks for; `None` unless it says `ordering: per_key`.
    pub fn for_policy(prefix: &str, policy: &RetryPolicySpec) -> Option<Self> {
        (policy.ordering == Ordering::PerKey).then(|| Self {
            policy: policy.name.clone(),
            held_topic: naming::held_topic(prefix, &policy.name),
        })
    }

    /// Per-key ordering writes its state in the batch's transaction.
    pub fn check_guarantee(&self, guarantee: Guarantee) -> Result<(), OrderingError> {
        match guarantee {
            Guarantee::ExactlyOnce => Ok(()),
            Guarantee::AtLeastOnce => Err(OrderingError::NeedsExactlyOnce {
                policy: self.policy.clone(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OrderingError {
    #[error("retry policy `{policy}` has `ordering: per_key`, which needs the exactly-once guarantee (the held keys commit with the outputs and offsets); run exactly-once or drop the ordering")]
    NeedsExactlyOnce { policy: String },
    #[error("retry policy `{policy}` has `ordering: per_key`, which needs the same partition count in every input, retry-tier and held-key topic: {}", counts.iter().map(|(t, n)| format!("{t} has {}", n.map_or("no such topic".to_string(), |n| n.to_string()))).collect::<Vec<_>>().join(", "))]
    Partitions {
        policy: String,
        counts: Vec<(String, Option<i32>)>,
    },
    #[error("reading held keys from {topic}/{partition}: {reason}")]
    Restore {
        topic: String,
        partition: i32,
        reason: String,
    },
    #[error("reading topic metadata: {0}")]
    Metadata(String),
}

/// Where a handled record stands in its key's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    id: KeyId,
    partition: i32,
    /// Its sequence number; `None` for a main-topic record whose key is not held.
    seq: Option<u64>,
}

impl Slot {
    /// Key `id` of `partition` with sequence number `seq`: for other loops keeping the same
    /// held-key state (outbound delivery's per-key order).
    pub fn new(id: KeyId, partition: i32, seq: Option<u64>) -> Self {
        Self { id, partition, seq }
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn seq(&self) -> Option<u64> {
        self.seq
    }
}

/// What the loop does with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not ordered (no key, or a retry record without a sequence number): handle as usual.
    Free,
    /// Handle it, then report the outcome with [`KeyOrdering::retried`] or
    /// [`KeyOrdering::resolved`].
    Handle(Slot),
    /// Do not handle it: write this copy, which waits behind the key's head.
    Forward(Output),
}

/// The held keys of one loop, shared by its partition tasks; a mutex serialises the
/// changes to a key (held keys are rare, so contention is too).
#[derive(Debug)]
pub struct KeyOrdering {
    pub per_key: PerKey,
    router: FailureRouter,
    state: Mutex<HeldKeys>,
    /// Counts decisions; taken under the state lock, so stamps follow the order in which
    /// records were let through.
    stamps: AtomicU64,
}

impl KeyOrdering {
    pub fn new(per_key: PerKey, router: FailureRouter) -> Self {
        Self {
            per_key,
            router,
            state: Mutex::default(),
            stamps: AtomicU64::new(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HeldKeys> {
        self.state.lock().expect("held keys lock")
    }

    /// What to do with `record`, and its stamp: outputs written in stamp order keep each
    /// key's order even when its records are handled by different partition tasks.
    pub fn decide(&self, record: &Record) -> (u64, Decision) {
        let mut state = self.state();
        let stamp = self.stamps.fetch_add(1, AtomicOrdering::SeqCst);
        (stamp, self.decide_locked(&mut state, record))
    }

    fn decide_locked(&self, state: &mut HeldKeys, record: &Record) -> Decision {
        let Some(key) = record.key.clone() else {
            return Decision::Free;
        };
        let id = KeyId {
            topic: record
                .header(h::ORIGINAL_TOPIC)
                .unwrap_or(&record.topic)
                .to_string(),
            key,
        };
        let partition = record.partition;
        if self.router.tier_of(&record.topic).is_none() {
            return match state.follow(partition, &id) {
                Some((seq, tier)) => Decision::Forward(self.follower(record, seq, tier)),
                None => Decision::Handle(Slot {
                    id,
                    partition,
                    seq: None,
                }),
            };
        }
        let Some(seq) = record.header(h::KEY_SEQ).and_then(|s| s.parse().ok()) else {
            return Decision::Free;
        };
        match state.arrive(partition, &id, seq) {
            Arrival::Handle => Decision::Handle(Slot {
                id,
                partition,
                seq: Some(seq),
            }),
            Arrival::Follow { tier } => Decision::Forward(self.follower(record, seq, tier)),
            Arrival::Untracked => {
                tracing::warn!(
                    topic = record.topic,
                    partition,
                    offset = record.offset,
                    seq,
                    "retry record's key is not held under that number; handling it unordered"
                );
                Decision::Free
            }
        }
    }

    /// The handled record failed and `copy` goes to retry `tier`: it stays (or becomes) its
    /// key's head, on the tier partition its key's state lives in.
    pub fn retried(&self, slot: &Slot, tier: usize, copy: &mut Output) {
        let seq = self
            .state()
            .retried(slot.partition, &slot.id, slot.seq, tier);
        copy.partition = Some(slot.partition);
        copy.headers.retain(|(k, _)| k != h::KEY_SEQ);
        copy.headers
            .push((h::KEY_SEQ.to_string(), seq.to_string().into_bytes()));
    }

    /// The handled record succeeded or was dead-lettered: the next record of its key may go.
    pub fn resolved(&self, slot: &Slot) {
        if let Some(seq) = slot.seq {
            self.state().resolved(slot.partition, &slot.id, seq);
        }
    }

    /// A copy of `record` that waits behind its key's head on `tier`, unhandled: no attempt
    /// is counted and it is due as soon as it is reached.
    fn follower(&self, record: &Record, seq: u64, tier: usize) -> Output {
        let mut headers = self.router.provenance(record);
        headers.push((h::KEY_SEQ.to_string(), seq.to_string().into_bytes()));
        Output {
            topic: self.router.tiers[tier.min(self.router.tiers.len() - 1)]
                .topic
                .clone(),
            partition: Some(record.partition),
            key: record.key.clone(),
            value: record.value.clone(),
            headers,
        }
    }

    /// The held-key records of the batch: each changed key's state, or a tombstone for a
    /// released one. Written in the batch's transaction.
    pub fn batch_writes(&self) -> Vec<Output> {
        self.state()
            .changes()
            .into_iter()
            .map(|(partition, id, state)| Output {
                topic: self.per_key.held_topic.clone(),
                partition: Some(partition),
                key: Some(id.encode()),
                value: state.map(|s| serde_json::to_vec(&s).expect("state serialises")),
                headers: Vec::new(),
            })
            .collect()
    }

    /// Keeps (committed) or undoes (aborted) the batch's changes; returns the held keys.
    pub fn finish_batch(&self, committed: bool) -> usize {
        let mut state = self.state();
        state.finish_batch(committed);
        state.len()
    }

    pub fn held(&self) -> usize {
        self.state().len()
    }

    /// Drops the state of partitions this instance no longer owns.
    pub fn forget(&self, partitions: &HashSet<i32>) {
        let mut state = self.state();
        for p in partitions {
            state.forget(*p);
        }
    }

    /// Rebuilds the state of newly owned partitions from the held-key topic. Blocking.
    pub fn restore(
        &self,
        log: &dyn crate::state::StateLog,
        partitions: &HashSet<i32>,
    ) -> Result<usize, OrderingError> {
        let mut restored = 0;
        let mut partitions: Vec<i32> = partitions.iter().copied().collect();
        partitions.sort_unstable();
        let by_partition = restore::read_partitions(log, &self.per_key.held_topic, &partitions)?;
        // Indices beyond today's tiers (a policy lost tiers) wait on the last one.
        let last = self.router.tiers.len().saturating_sub(1);
        for (p, keys) in by_partition {
            let keys = keys
                .into_iter()
                .map(|(id, mut s)| {
                    s.pending.values_mut().for_each(|t| *t = (*t).min(last));
                    (id, s)
                })
                .collect::<std::collections::HashMap<_, _>>();
            restored += keys.len();
            self.state().load(p, keys);
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::failure::{RetryTier, Routed};
    use crate::ErrorClass;
    use crate::HandlerError;

    fn ordering() -> KeyOrdering {
        let router = FailureRouter {
            group: "g".into(),
            tiers: ["t0", "t1"]
                .iter()
                .map(|t| RetryTier {
                    topic: t.to_string(),
                    delay: Duration::from_secs(1),
                })
                .collect(),
            max_attempts: 3,
            dlq_topic: "dlq".into(),
        };
        let per_key = PerKey {
            policy: "p".into(),
            held_topic: "held".into(),
        };
        KeyOrdering::new(per_key, router)
    }

    fn main(key: &str, offset: i64) -> Record {
        Record {
            topic: "in".into(),
            partition: 1,
            offset,
            timestamp_ms: Some(5),
            key: Some(key.as_bytes().to_vec()),
            value: Some(format!("{key}{offset}").into_bytes()),
            headers: vec![("x".into(), b"y".to_vec())],
        }
    }

    /// What the loop would consume from the tier after writing `out` there.
    fn consumed(out: &Output, offset: i64) -> Record {
        Record {
            topic: out.topic.clone(),
            partition: out.partition.unwrap(),
            offset,
            timestamp_ms: Some(6),
            key: out.key.clone(),
            value: out.value.clone(),
            headers: out.headers.clone(),
        }
    }

    fn header<'a>(o: &'a Output, name: &str) -> Option<&'a str> {
        o.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn a_held_key_s_records_follow_its_head_and_state_is_written_per_batch() {
        let o = ordering();
        let router = o.router.clone();
        // A1 is handled and fails: it enters tier 0 as the head, on the key's partition.
        let Decision::Handle(slot) = o.decide(&main("A", 10)).1 else {
            panic!("A1 is handled")
        };
        let err = HandlerError::transient(ErrorClass::custom("Timeout"), "later");
        let (routed, mut head) = router.route(&main("A", 10), &err, 1000);
        assert!(matches!(routed, Routed::Retry { tier: 0, .. }));
        o.retried(&slot, 0, &mut head);
        assert_eq!((head.topic.as_str(), head.partition), ("t0", Some(1)));
        assert_eq!(header(&head, h::KEY_SEQ), Some("0"));

        // A2 arrives on the main topic: forwarded unhandled, behind the head, not due-dated.
        let Decision::Forward(follower) = o.decide(&main("A", 11)).1 else {
            panic!("A2 follows")
        };
        assert_eq!(
            (follower.topic.as_str(), follower.partition),
            ("t0", Some(1))
        );
        assert_eq!(header(&follower, h::KEY_SEQ), Some("1"));
        assert_eq!(header(&follower, h::ATTEMPTS), None, "no attempt counted");
        assert_eq!(header(&follower, h::DUE_AT), None);
        assert_eq!(header(&follower, "x"), Some("y"));
        assert_eq!(follower.value.as_deref(), Some(&b"A11"[..]));
        // Another key and a keyless record are not affected.
        assert!(matches!(o.decide(&main("B", 12)).1, Decision::Handle(_)));
        let keyless = Record {
            key: None,
            ..main("A", 13)
        };
        assert_eq!(o.decide(&keyless).1, Decision::Free);

        let writes = o.batch_writes();
        assert_eq!(writes.len(), 1);
        assert_eq!(
            (writes[0].topic.as_str(), writes[0].partition),
            ("held", Some(1))
        );
        assert_eq!(o.finish_batch(true), 1);

        // The follower is reached on tier 0 before the head came due again: it stays behind.
        let Decision::Forward(again) = o.decide(&consumed(&follower, 0)).1 else {
            panic!("not the head yet")
        };
        assert_eq!(again.topic, "t0");
        assert_eq!(header(&again, h::ORIGINAL_OFFSET).map(str::len), Some(8));
        // The head is reached and succeeds; then the follower is the head.
        let Decision::Handle(head_slot) = o.decide(&consumed(&head, 1)).1 else {
            panic!("the head is handled")
        };
        o.resolved(&head_slot);
        let Decision::Handle(next) = o.decide(&consumed(&again, 2)).1 else {
            panic!("the follower is now the head")
        };
        o.resolved(&next);
        let writes = o.batch_writes();
        assert_eq!(writes[0].value, None, "released: a tombstone");
        assert_eq!(o.finish_batch(true), 0);
        // Once released, records of the key are handled as they come.
        assert!(matches!(o.decide(&main("A", 14)).1, Decision::Handle(_)));
    }

    #[test]
    fn stamps_follow_the_order_records_are_let_through() {
        let o = ordering();
        let stamps: Vec<u64> = (0..4).map(|i| o.decide(&main("A", i)).0).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    }

    #[test]
    fn retry_records_without_a_sequence_number_are_free() {
        let o = ordering();
        let mut r = main("A", 1);
        r.topic = "t1".into();
        assert_eq!(o.decide(&r).1, Decision::Free);
        r.headers.push((h::KEY_SEQ.into(), b"4".to_vec()));
        assert_eq!(o.decide(&r).1, Decision::Free, "key not held");
    }

    #[test]
    fn per_key_needs_exactly_once() {
        let p = PerKey {
            policy: "normalizer".into(),
            held_topic: "h".into(),
        };
        assert!(p.check_guarantee(Guarantee::ExactlyOnce).is_ok());
        let e = p.check_guarantee(Guarantee::AtLeastOnce).unwrap_err();
        assert!(e.to_string().contains("`normalizer`"), "{e}");
        let e = OrderingError::Partitions {
            policy: "normalizer".into(),
            counts: vec![("a".into(), Some(6)), ("b".into(), None)],
        };
        assert!(
            e.to_string().ends_with("a has 6, b has no such topic"),
            "{e}"
        );
    }
}
