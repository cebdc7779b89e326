//! Hot endpoints: ones with more than their share of tasks waiting in memory, whose
//! partitions are paused so the rest of a burst stays unread in Kafka until they catch up.
//!
//! Pausing a partition holds back every endpoint whose tasks are behind on it. What is
//! behind is unread, so the endpoints last read from the partition stand for it: while all
//! of them are hot themselves (a burst to a few endpoints), a hold costs nobody and lasts
//! while they deliver; once another endpoint was read there, a hold lasts at most a bound,
//! and an endpoint that did not drain within it has its surplus parked in a retry tier
//! instead, and its partitions go on. A partition stays paused while any hot endpoint
//! holds it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::queues::EndpointId;

/// A partition of the tasks topic or of a retry tier.
pub type TopicPartition = (String, i32);

/// Endpoints remembered per partition: enough to tell a few hot endpoints from a mix.
const RECENT: usize = 32;

/// Which hot endpoint holds which partitions paused, and since when.
#[derive(Debug, Default)]
pub struct HotHolds {
    holds: HashMap<EndpointId, Hold>,
    /// The endpoints of the tasks read from each partition since it was last resumed;
    /// `None` past [`RECENT`] of them.
    recent: HashMap<TopicPartition, Option<HashSet<EndpointId>>>,
}

#[derive(Debug)]
struct Hold {
    since: Instant,
    partitions: HashSet<TopicPartition>,
}

impl HotHolds {
    /// `endpoint` holds `tp` paused from `now` (or from when it first held any partition);
    /// `true` when no endpoint held `tp` before, so it is to be paused now.
    pub fn hold(&mut self, endpoint: &EndpointId, tp: &TopicPartition, now: Instant) -> bool {
        let newly = !self.holds_partition(tp);
        self.holds
            .entry(endpoint.clone())
            .or_insert_with(|| Hold {
                since: now,
                partitions: HashSet::new(),
            })
            .partitions
            .insert(tp.clone());
        newly
    }

    /// A task of `endpoint` was read from `tp`.
    pub fn read(&mut self, tp: &TopicPartition, endpoint: &EndpointId) {
        if let Some(Some(seen)) = self.recent.get_mut(tp) {
            if !seen.contains(endpoint) {
                seen.insert(endpoint.clone());
                if seen.len() > RECENT {
                    self.recent.insert(tp.clone(), None);
                }
            }
        } else if !self.recent.contains_key(tp) {
            self.recent
                .insert(tp.clone(), Some(HashSet::from([endpoint.clone()])));
        }
    }

    /// `endpoint` holds nothing any more: the partitions no other endpoint holds, to resume
    /// (what is read from them from now on is remembered afresh).
    pub fn release(&mut self, endpoint: &str) -> Vec<TopicPartition> {
        let Some(hold) = self.holds.remove(endpoint) else {
            return Vec::new();
        };
        let free: Vec<TopicPartition> = hold
            .partitions
            .into_iter()
            .filter(|tp| !self.holds_partition(tp))
            .collect();
        for tp in &free {
            self.recent.remove(tp);
        }
        free
    }

    /// Whether an endpoint that is not hot was read lately from a partition `endpoint`
    /// holds: one that may be waiting behind it.
    pub fn others_behind(&self, endpoint: &str) -> bool {
        let Some(hold) = self.holds.get(endpoint) else {
            return false;
        };
        hold.partitions.iter().any(|tp| match self.recent.get(tp) {
            Some(Some(seen)) => seen.iter().any(|e| !self.holds.contains_key(e)),
            Some(None) => true,
            None => false,
        })
    }

    /// `endpoint`'s hold is counted from `now` again (nobody was behind it).
    pub fn renew(&mut self, endpoint: &str, now: Instant) {
        if let Some(hold) = self.holds.get_mut(endpoint) {
            hold.since = now;
        }
    }

    /// Whether some endpoint holds `tp` paused.
    pub fn holds_partition(&self, tp: &TopicPartition) -> bool {
        self.holds.values().any(|h| h.partitions.contains(tp))
    }

    /// Endpoints holding partitions, to check whether they drained.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointId> {
        self.holds.keys()
    }

    /// Endpoints that have held partitions for `bound` or longer at `now`.
    pub fn overdue(&self, now: Instant, bound: Duration) -> Vec<EndpointId> {
        self.holds
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.since) >= bound)
            .map(|(e, _)| e.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    /// Forgets every hold (after a rebalance every partition starts afresh).
    pub fn clear(&mut self) {
        self.holds.clear();
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tp(p: i32) -> TopicPartition {
        ("tasks".to_string(), p)
    }

    #[test]
    fn a_partition_is_paused_once_and_resumed_when_its_last_holder_lets_go() {
        let now = Instant::now();
        let (a, b): (EndpointId, EndpointId) = (Arc::from("a"), Arc::from("b"));
        let mut hot = HotHolds::default();
        assert!(hot.hold(&a, &tp(0), now), "nobody held partition 0");
        assert!(!hot.hold(&b, &tp(0), now), "a already paused it");
        assert!(hot.hold(&b, &tp(1), now));
        assert_eq!(hot.endpoints().count(), 2, "a and b are hot");
        assert_eq!(hot.release("a"), Vec::<TopicPartition>::new(), "b holds 0");
        assert!(hot.holds_partition(&tp(0)));
        let mut resumed = hot.release("b");
        resumed.sort();
        assert_eq!(resumed, [tp(0), tp(1)]);
        assert!(hot.is_empty());
        assert!(hot.release("b").is_empty());
    }

    #[test]
    fn another_endpoint_read_from_a_held_partition_may_be_behind_it() {
        let now = Instant::now();
        let id = |s: &str| -> EndpointId { Arc::from(s) };
        let mut hot = HotHolds::default();
        for e in ["a", "b"] {
            hot.read(&tp(0), &id(e));
        }
        hot.read(&tp(1), &id("c"));
        hot.hold(&id("a"), &tp(0), now);
        assert!(
            hot.others_behind("a"),
            "b was read from partition 0 and is not hot"
        );
        hot.hold(&id("b"), &tp(0), now);
        assert!(!hot.others_behind("a"), "everyone read there is hot");
        assert!(!hot.others_behind("c"), "c holds nothing");
        hot.release("b");
        assert!(hot.others_behind("a"));
        // Past the endpoints remembered, a partition counts as mixed.
        for n in 0..=RECENT {
            hot.read(&tp(2), &id(&format!("e{n}")));
        }
        hot.hold(&id("e0"), &tp(2), now);
        hot.release("a");
        assert!(hot.others_behind("e0"));
        // A partition resumed is remembered afresh.
        assert_eq!(hot.release("e0"), [tp(2)]);
        hot.read(&tp(2), &id("e0"));
        hot.hold(&id("e0"), &tp(2), now);
        assert!(!hot.others_behind("e0"));
        hot.renew("e0", now + Duration::from_secs(5));
        assert!(hot
            .overdue(now + Duration::from_secs(5), Duration::from_secs(1))
            .is_empty());
    }

    #[test]
    fn a_hold_is_overdue_from_its_first_partition_on() {
        let start = Instant::now();
        let (a, b): (EndpointId, EndpointId) = (Arc::from("a"), Arc::from("b"));
        let mut hot = HotHolds::default();
        hot.hold(&a, &tp(0), start);
        hot.hold(&b, &tp(0), start + Duration::from_millis(600));
        // A later partition does not restart a's clock.
        hot.hold(&a, &tp(1), start + Duration::from_millis(900));
        let bound = Duration::from_secs(1);
        assert!(hot
            .overdue(start + Duration::from_millis(999), bound)
            .is_empty());
        assert_eq!(hot.overdue(start + bound, bound), std::slice::from_ref(&a));
        let mut both = hot.overdue(start + Duration::from_millis(1_600), bound);
        both.sort();
        assert_eq!(both, [a, b]);
    }
}
