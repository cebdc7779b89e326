//! The dispatcher's waiting room: each endpoint's tasks in a queue of their own, handed out
//! round-robin across endpoints, so a slow or failing endpoint only ever waits behind itself.
//!
//! Per endpoint, at most `max_in_flight` attempts run at once. With [`Order::PerKey`] the
//! tasks of one event key go one at a time, in arrival order (the next waits until the one
//! before it finished), while other keys of the same endpoint go past it. An endpoint can be
//! held until an instant (its breaker is open, its rate limit is spent): it keeps its tasks
//! and hands none out until then. What waits beyond a bound can be taken out again
//! ([`Queues::surplus`]) to be parked elsewhere, so memory stays bounded; the newest go, so
//! a key's older tasks stay ahead of its parked ones. Each endpoint's last attempt outcome
//! is kept, so the dispatcher can tell an endpoint that keeps up (its backlog may wait
//! unread in Kafka) from one whose surplus is better parked ([`Queues::keeps_up`]). (Under per-key order a key with parked
//! tasks must also park what arrives for it until they are back — the held-key state's job,
//! outside this structure.)

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An endpoint's id, cheap to clone.
pub type EndpointId = Arc<str>;

/// An event key.
pub type Key = Vec<u8>;

/// In which order an endpoint's tasks may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Any order, up to the in-flight cap at once.
    #[default]
    Unordered,
    /// One at a time per event key, in arrival order; tasks without a key are unordered.
    PerKey,
}

/// How an endpoint's tasks are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lanes {
    pub max_in_flight: usize,
    pub order: Order,
}

/// A task waiting, with the key that orders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued<T> {
    pub key: Option<Key>,
    pub task: T,
}

#[derive(Debug)]
pub struct Queues<T> {
    endpoints: HashMap<EndpointId, EndpointQueue<T>>,
    /// Endpoints that may have a task to hand out now, in turn.
    ready: VecDeque<EndpointId>,
    /// Held endpoints by the instant they may go again.
    held: BTreeSet<(Instant, EndpointId)>,
    waiting: usize,
}

impl<T> Default for Queues<T> {
    fn default() -> Self {
        Self {
            endpoints: HashMap::new(),
            ready: VecDeque::new(),
            held: BTreeSet::new(),
            waiting: 0,
        }
    }
}

#[derive(Debug)]
struct EndpointQueue<T> {
    lanes: Lanes,
    in_flight: usize,
    /// Keyless tasks, and every task under [`Order::Unordered`].
    free: VecDeque<(u64, Queued<T>)>,
    /// Per-key queues under [`Order::PerKey`].
    by_key: HashMap<Key, VecDeque<(u64, Queued<T>)>>,
    /// Keys whose head may go (not in flight, not empty), oldest head first.
    ready_keys: BTreeSet<(u64, Key)>,
    /// Keys with an attempt in flight.
    busy_keys: HashSet<Key>,
    held_until: Option<Instant>,
    /// Whether the endpoint is in [`Queues::ready`].
    listed: bool,
    /// Arrival stamps, to hand out the oldest eligible task first.
    next_stamp: u64,
    /// When this entry was made (the endpoint had nothing waiting or running before).
    since: Instant,
    /// When its last attempt ended, and whether it delivered.
    last_outcome: Option<(Instant, bool)>,
    /// Its surplus is parked from now on, until it is idle again.
    parking: bool,
}

impl<T> EndpointQueue<T> {
    fn new(lanes: Lanes) -> Self {
        Self {
            lanes,
            in_flight: 0,
            free: VecDeque::new(),
            by_key: HashMap::new(),
            ready_keys: BTreeSet::new(),
            busy_keys: HashSet::new(),
            held_until: None,
            listed: false,
            next_stamp: 0,
            since: Instant::now(),
            last_outcome: None,
            parking: false,
        }
    }

    /// Delivering, recently: its last attempt (or, before any ended, its first task) is
    /// younger than `within`, and not parking.
    fn keeps_up(&self, now: Instant, within: Duration) -> bool {
        let recent = |t: Instant| now.saturating_duration_since(t) < within;
        !self.parking
            && match self.last_outcome {
                Some((at, delivered)) => delivered && recent(at),
                None => recent(self.since),
            }
    }

    fn waiting(&self) -> usize {
        self.free.len() + self.by_key.values().map(VecDeque::len).sum::<usize>()
    }

    fn push(&mut self, queued: Queued<T>) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        match (&queued.key, self.lanes.order) {
            (Some(key), Order::PerKey) => {
                let key = key.clone();
                let q = self.by_key.entry(key.clone()).or_default();
                if q.is_empty() && !self.busy_keys.contains(&key) {
                    self.ready_keys.insert((stamp, key));
                }
                q.push_back((stamp, queued));
            }
            _ => self.free.push_back((stamp, queued)),
        }
    }

    /// Whether a task can be handed out now.
    fn can_send(&self, now: Instant) -> bool {
        self.in_flight < self.lanes.max_in_flight.max(1)
            && self.held_until.is_none_or(|t| t <= now)
            && (!self.free.is_empty() || !self.ready_keys.is_empty())
    }

    /// The oldest task that may go: the free queue's head or the oldest ready key's head.
    fn take(&mut self) -> Option<Queued<T>> {
        let free = self.free.front().map(|(s, _)| *s);
        let keyed = self.ready_keys.first().map(|(s, _)| *s);
        let from_free = match (free, keyed) {
            (Some(f), Some(k)) => f < k,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        self.in_flight += 1;
        if from_free {
            return self.free.pop_front().map(|(_, q)| q);
        }
        let (_, key) = self.ready_keys.pop_first()?;
        let q = self.by_key.get_mut(&key)?;
        let (_, queued) = q.pop_front()?;
        if q.is_empty() {
            self.by_key.remove(&key);
        }
        self.busy_keys.insert(key);
        Some(queued)
    }

    fn finished(&mut self, key: Option<&[u8]>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(key) = key else { return };
        if self.busy_keys.remove(key) {
            if let Some((stamp, _)) = self.by_key.get(key).and_then(VecDeque::front) {
                self.ready_keys.insert((*stamp, key.to_vec()));
            }
        }
    }

    /// Every waiting task beyond the oldest `keep`, newest last.
    fn surplus(&mut self, keep: usize) -> Vec<Queued<T>> {
        let mut all: Vec<(u64, Queued<T>)> = self.free.drain(..).collect();
        for (_, q) in self.by_key.drain() {
            all.extend(q);
        }
        all.sort_by_key(|(stamp, _)| *stamp);
        let rest = all.split_off(keep.min(all.len()));
        self.ready_keys.clear();
        for (_, queued) in all {
            self.push(queued);
        }
        rest.into_iter().map(|(_, q)| q).collect()
    }
}

impl<T> Queues<T> {
    /// Queues `task` for `endpoint`, whose lanes are `lanes` (the latest settings win).
    pub fn push(&mut self, endpoint: &EndpointId, lanes: Lanes, key: Option<Key>, task: T) {
        let q = self
            .endpoints
            .entry(endpoint.clone())
            .or_insert_with(|| EndpointQueue::new(lanes));
        q.lanes = lanes;
        q.push(Queued { key, task });
        self.waiting += 1;
        self.list(endpoint);
    }

    /// The next task to send and its endpoint, taking endpoints in turn; `None` when no
    /// endpoint may send now.
    pub fn next(&mut self, now: Instant) -> Option<(EndpointId, Queued<T>)> {
        self.release_held(now);
        while let Some(endpoint) = self.ready.pop_front() {
            let Some(q) = self.endpoints.get_mut(&endpoint) else {
                continue;
            };
            q.listed = false;
            if !q.can_send(now) {
                continue;
            }
            let Some(queued) = q.take() else { continue };
            self.waiting -= 1;
            if q.can_send(now) {
                q.listed = true;
                self.ready.push_back(endpoint.clone());
            }
            return Some((endpoint, queued));
        }
        None
    }

    /// An attempt of `endpoint` (for `key`) finished: its slot, and its key, are free.
    pub fn finished(&mut self, endpoint: &EndpointId, key: Option<&[u8]>) {
        if let Some(q) = self.endpoints.get_mut(endpoint) {
            q.finished(key);
            self.list(endpoint);
        }
        self.forget_if_idle(endpoint);
    }

    /// An attempt of `endpoint` ended at `now`, delivered or not (call before
    /// [`finished`](Self::finished), which may forget an idle endpoint).
    pub fn attempted(&mut self, endpoint: &str, delivered: bool, now: Instant) {
        if let Some(q) = self.endpoints.get_mut(endpoint) {
            q.last_outcome = Some((now, delivered));
        }
    }

    /// Whether `endpoint` is delivering: its last attempt delivered less than `within` ago
    /// (or, before any ended, it got its first task less than `within` ago), and it is not
    /// [parking](Self::park_from_now).
    pub fn keeps_up(&self, endpoint: &str, now: Instant, within: Duration) -> bool {
        self.endpoints
            .get(endpoint)
            .is_some_and(|q| q.keeps_up(now, within))
    }

    /// `endpoint`'s surplus is to be parked from now on, until nothing of it waits or runs.
    pub fn park_from_now(&mut self, endpoint: &str) {
        if let Some(q) = self.endpoints.get_mut(endpoint) {
            q.parking = true;
        }
    }

    /// Hands out none of `endpoint`'s tasks before `until`.
    pub fn hold(&mut self, endpoint: &EndpointId, until: Instant) {
        if let Some(q) = self.endpoints.get_mut(endpoint) {
            if let Some(old) = q.held_until.replace(until) {
                self.held.remove(&(old, endpoint.clone()));
            }
            self.held.insert((until, endpoint.clone()));
        }
    }

    /// Takes out `endpoint`'s waiting tasks beyond its oldest `keep`, oldest first: what is
    /// to be parked rather than held in memory.
    pub fn surplus(&mut self, endpoint: &EndpointId, keep: usize) -> Vec<Queued<T>> {
        let Some(q) = self.endpoints.get_mut(endpoint) else {
            return Vec::new();
        };
        let rest = q.surplus(keep);
        self.waiting -= rest.len();
        self.forget_if_idle(endpoint);
        rest
    }

    /// Tasks waiting for `endpoint` (not in flight).
    pub fn waiting_for(&self, endpoint: &str) -> usize {
        self.endpoints
            .get(endpoint)
            .map_or(0, EndpointQueue::waiting)
    }

    /// Tasks waiting, every endpoint.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// When the earliest held endpoint may go again.
    pub fn next_release(&self) -> Option<Instant> {
        self.held.first().map(|(t, _)| *t)
    }

    fn release_held(&mut self, now: Instant) {
        while let Some((t, endpoint)) = self.held.first().cloned() {
            if t > now {
                break;
            }
            self.held.pop_first();
            if let Some(q) = self.endpoints.get_mut(&endpoint) {
                if q.held_until == Some(t) {
                    q.held_until = None;
                }
            }
            self.list(&endpoint);
        }
    }

    /// Puts `endpoint` in turn unless it already is.
    fn list(&mut self, endpoint: &EndpointId) {
        if let Some(q) = self.endpoints.get_mut(endpoint) {
            if !q.listed {
                q.listed = true;
                self.ready.push_back(endpoint.clone());
            }
        }
    }

    /// Drops an endpoint's entry once nothing of it waits or runs, so memory follows the
    /// endpoints with work, not every endpoint ever seen.
    fn forget_if_idle(&mut self, endpoint: &EndpointId) {
        let idle = self
            .endpoints
            .get(endpoint)
            .is_some_and(|q| q.in_flight == 0 && q.waiting() == 0 && q.held_until.is_none());
        if idle {
            self.endpoints.remove(endpoint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(s: &str) -> EndpointId {
        Arc::from(s)
    }

    const ONE: Lanes = Lanes {
        max_in_flight: 1,
        order: Order::Unordered,
    };

    fn key(k: &str) -> Option<Key> {
        Some(k.as_bytes().to_vec())
    }

    fn drain(q: &mut Queues<u32>, now: Instant) -> Vec<(String, u32)> {
        std::iter::from_fn(|| q.next(now))
            .map(|(e, t)| (e.to_string(), t.task))
            .collect()
    }

    #[test]
    fn endpoints_take_turns_and_a_busy_one_waits_only_behind_itself() {
        let now = Instant::now();
        let mut q = Queues::default();
        for t in 0..3 {
            q.push(&id("slow"), ONE, None, t);
        }
        q.push(&id("fast"), ONE, None, 10);
        q.push(&id("fast"), ONE, None, 11);
        assert_eq!(
            drain(&mut q, now),
            [("slow".into(), 0), ("fast".into(), 10)],
            "one in flight each; the slow one's backlog does not delay fast"
        );
        q.finished(&id("fast"), None);
        assert_eq!(drain(&mut q, now), [("fast".into(), 11)]);
        assert_eq!(q.waiting_for("slow"), 2);
        q.finished(&id("slow"), None);
        assert_eq!(drain(&mut q, now), [("slow".into(), 1)]);
    }

    #[test]
    fn per_key_tasks_go_one_at_a_time_in_order_and_other_keys_pass() {
        let now = Instant::now();
        let lanes = Lanes {
            max_in_flight: 10,
            order: Order::PerKey,
        };
        let mut q = Queues::default();
        let e = id("e");
        q.push(&e, lanes, key("a"), 1);
        q.push(&e, lanes, key("a"), 2);
        q.push(&e, lanes, key("b"), 3);
        q.push(&e, lanes, None, 4);
        q.push(&e, lanes, key("a"), 5);
        assert_eq!(
            drain(&mut q, now),
            [("e".into(), 1), ("e".into(), 3), ("e".into(), 4)],
            "a's second waits for its first; b and the keyless one go"
        );
        q.finished(&e, Some(b"a"));
        assert_eq!(drain(&mut q, now), [("e".into(), 2)]);
        q.finished(&e, Some(b"b"));
        assert!(
            drain(&mut q, now).is_empty(),
            "b has nothing more; a is busy"
        );
        q.finished(&e, Some(b"a"));
        assert_eq!(drain(&mut q, now), [("e".into(), 5)]);
    }

    #[test]
    fn a_held_endpoint_keeps_its_tasks_until_its_time() {
        let now = Instant::now();
        let mut q = Queues::default();
        let (e, other) = (id("e"), id("other"));
        q.push(&e, ONE, None, 1);
        q.push(&other, ONE, None, 2);
        q.hold(&e, now + Duration::from_secs(30));
        assert_eq!(drain(&mut q, now), [("other".into(), 2)]);
        assert_eq!(q.next_release(), Some(now + Duration::from_secs(30)));
        assert!(drain(&mut q, now + Duration::from_secs(29)).is_empty());
        assert_eq!(
            drain(&mut q, now + Duration::from_secs(30)),
            [("e".into(), 1)]
        );
    }

    #[test]
    fn the_surplus_is_the_newest_and_what_stays_keeps_its_order() {
        let now = Instant::now();
        let lanes = Lanes {
            max_in_flight: 5,
            order: Order::PerKey,
        };
        let mut q = Queues::default();
        let e = id("e");
        for (t, k) in [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "a")] {
            q.push(&e, lanes, key(k), t);
        }
        let parked: Vec<u32> = q.surplus(&e, 2).into_iter().map(|p| p.task).collect();
        assert_eq!(parked, [3, 4, 5]);
        assert_eq!(q.waiting(), 2);
        assert_eq!(drain(&mut q, now), [("e".into(), 1), ("e".into(), 2)]);
    }

    #[test]
    fn an_endpoint_keeps_up_while_its_attempts_deliver_and_until_it_parks() {
        let within = Duration::from_secs(1);
        let mut q = Queues::default();
        let (fresh, ok, failing, hanging) = (id("fresh"), id("ok"), id("failing"), id("hanging"));
        for e in [&fresh, &ok, &failing, &hanging] {
            q.push(e, ONE, None, 1);
            q.push(e, ONE, None, 2);
        }
        let now = Instant::now();
        assert!(drain(&mut q, now).len() == 4, "one in flight each");
        q.attempted(&ok, true, now);
        q.attempted(&failing, false, now);
        let soon = now + Duration::from_millis(500);
        assert!(q.keeps_up("fresh", soon, within), "no attempt ended yet");
        assert!(q.keeps_up("ok", soon, within));
        assert!(!q.keeps_up("failing", soon, within));
        // Nothing has ended for a while: a hanging endpoint and a stale success alike.
        let later = now + Duration::from_secs(5);
        assert!(!q.keeps_up("hanging", later, within));
        assert!(!q.keeps_up("ok", later, within));
        assert!(!q.keeps_up("unknown", soon, within));
        q.park_from_now("ok");
        assert!(!q.keeps_up("ok", soon, within), "parking until idle");
        q.finished(&ok, None);
        assert_eq!(drain(&mut q, now), [("ok".into(), 2)]);
        q.finished(&ok, None);
        q.push(&ok, ONE, None, 3);
        assert!(
            q.keeps_up("ok", Instant::now(), within),
            "idle and back: a fresh start"
        );
    }

    #[test]
    fn idle_endpoints_are_forgotten() {
        let now = Instant::now();
        let mut q = Queues::default();
        for n in 0..1_000 {
            let e = id(&format!("e{n}"));
            q.push(&e, ONE, None, n);
        }
        let sent: Vec<(EndpointId, Queued<u32>)> = std::iter::from_fn(|| q.next(now)).collect();
        assert_eq!(sent.len(), 1_000);
        for (e, _) in &sent {
            q.finished(e, None);
        }
        assert!(q.endpoints.is_empty());
        assert_eq!(q.waiting(), 0);
    }
}
