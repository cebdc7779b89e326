//! What the orchestrator remembers of its instances: the committed state of the partitions it
//! owns, the changes of the batch in progress (applied only once the batch commits), and an
//! index of pending deadlines so the timer never walks every instance.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sluice_stream::state::Staged;

use super::instance::{Instance, Status};

mod finished;
use finished::Finished;

/// An instance in memory: in full while it can still receive inputs, or only its status and
/// when it finished once it has been finished for a while (enough to refuse a second
/// trigger, and to know when its state record may be deleted).
#[derive(Debug, Clone)]
pub enum Slot {
    Live(Arc<Instance>),
    Gone { status: Status, finished_at: i64 },
}

/// A pending command whose deadline (or backoff) has passed, for the timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub saga: usize,
    pub partition: i32,
    pub id: String,
    pub command_id: String,
    pub due_at: i64,
}

/// In-flight instances of one saga, for the gauges.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub in_flight: i64,
    pub parked: i64,
    /// Age (ms) of the oldest in-flight instance by the step it is on (`-` for none).
    pub oldest: HashMap<String, i64>,
}

type Partition = (usize, i32);

/// One owned partition's instances.
#[derive(Debug, Default)]
struct Instances {
    /// Running, compensating and parked ones, and the recently finished.
    live: HashMap<String, Arc<Instance>>,
    /// Finished ones held by status only.
    gone: Finished,
}

impl Instances {
    fn get(&self, id: &str) -> Option<Slot> {
        if let Some(i) = self.live.get(id) {
            return Some(Slot::Live(i.clone()));
        }
        let (status, finished_at) = self.gone.get(id)?;
        Some(Slot::Gone {
            status,
            finished_at,
        })
    }
}

#[derive(Debug, Default)]
struct Committed {
    slots: HashMap<Partition, Instances>,
    /// (due at, saga, partition, id) of every committed instance with a deadline.
    deadlines: BTreeSet<(i64, usize, i32, String)>,
    /// How many live instances are [`is_moving`], kept as they change so the orchestrator's
    /// admission check costs nothing per trigger.
    moving: usize,
    /// Instances that finished while held in full, oldest first (some may have been
    /// replaced or dropped since): beyond [`FINISHED_IN_FULL`] the oldest keep only their
    /// status, whatever the retention time.
    finished_in_full: VecDeque<(usize, i32, String)>,
}

/// Most finished instances held in full. They are kept a while only to tell a late reply
/// from a duplicate in the metrics; at a few KiB each, a drain at thousands of sagas per
/// second would otherwise hold a minute's worth (hundreds of MiB) at once. 1,000 is a third
/// of a second of such a drain and five seconds at 200 sagas/s; a reply arriving later is
/// counted as late rather than as a duplicate, and ignored either way.
pub const FINISHED_IN_FULL: usize = 1_000;

/// When a finished instance finished; `None` while it runs.
pub fn finished_at(slot: &Slot) -> Option<i64> {
    match slot {
        Slot::Live(i) if i.status.is_terminal() => Some(i.updated_at),
        Slot::Live(_) => None,
        Slot::Gone { finished_at, .. } => Some(*finished_at),
    }
}

/// Running or compensating: an instance whose steps are still under way. A parked one waits
/// for an operator and does not count, so parked sagas never stop new ones from starting.
fn is_moving(instance: &Instance) -> bool {
    matches!(instance.status, Status::Running | Status::Compensating)
}

fn due_at(instance: &Instance) -> Option<i64> {
    instance.pending.as_ref().and_then(|p| p.due_at())
}

impl Committed {
    fn put(&mut self, (saga, p): Partition, id: String, slot: Slot) {
        self.forget((saga, p), &id);
        let m = self.slots.entry((saga, p)).or_default();
        match slot {
            Slot::Live(instance) => {
                if let Some(d) = due_at(&instance) {
                    self.deadlines.insert((d, saga, p, id.clone()));
                }
                self.moving += usize::from(is_moving(&instance));
                if instance.status.is_terminal() {
                    self.finished_in_full.push_back((saga, p, id.clone()));
                }
                m.live.insert(id, instance);
            }
            Slot::Gone {
                status,
                finished_at,
            } => m.gone.insert(&id, status, finished_at),
        }
    }

    /// Removes an instance from the partition's tables, and its deadline and count with it.
    fn forget(&mut self, (saga, p): Partition, id: &str) {
        let Some(m) = self.slots.get_mut(&(saga, p)) else {
            return;
        };
        if let Some(old) = m.live.remove(id) {
            self.moving -= usize::from(is_moving(&old));
            if let Some(d) = due_at(&old) {
                self.deadlines.remove(&(d, saga, p, id.to_string()));
            }
        } else if m.gone.len() > 0 {
            m.gone.remove(id);
        }
    }

    /// Keeps only the status of the oldest finished instances beyond [`FINISHED_IN_FULL`].
    fn trim_finished(&mut self) {
        while self.finished_in_full.len() > FINISHED_IN_FULL {
            let Some((saga, p, id)) = self.finished_in_full.pop_front() else {
                break;
            };
            let Some(m) = self.slots.get_mut(&(saga, p)) else {
                continue;
            };
            if let Some(i) = m.live.get(&id).filter(|i| i.status.is_terminal()) {
                let (status, finished_at) = (i.status, i.updated_at);
                m.live.remove(&id);
                m.gone.insert(&id, status, finished_at);
            }
        }
    }

    fn drop_partition(&mut self, (saga, p): Partition) {
        if let Some(m) = self.slots.remove(&(saga, p)) {
            for (id, instance) in m.live {
                self.moving -= usize::from(is_moving(&instance));
                if let Some(d) = due_at(&instance) {
                    self.deadlines.remove(&(d, saga, p, id));
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Store {
    committed: Mutex<Committed>,
    /// The batch's changes: an instance's new state, or a delete.
    batch: Staged<(usize, i32, String), Arc<Instance>>,
}

impl Store {
    /// The instance's latest state: this batch's, else the committed one.
    pub fn get(&self, saga: usize, partition: i32, id: &str) -> Option<Slot> {
        if let Some(change) = self.batch.get(&(saga, partition, id.to_string())) {
            return change.map(Slot::Live);
        }
        self.committed
            .lock()
            .expect("saga store")
            .slots
            .get(&(saga, partition))?
            .get(id)
    }

    /// Records the batch's new state of an instance.
    pub fn stage(&self, saga: usize, partition: i32, id: String, instance: Arc<Instance>) {
        self.batch.put((saga, partition, id), instance);
    }

    /// Records that the batch deletes an instance (its state record gets a tombstone).
    pub fn stage_delete(&self, saga: usize, partition: i32, id: String) {
        self.batch.delete((saga, partition, id));
    }

    /// Applies the batch on commit, or forgets it on abort.
    pub fn finish(&self, committed: bool) {
        let changes = self.batch.finish(committed);
        let mut c = self.committed.lock().expect("saga store");
        for ((saga, p, id), change) in changes {
            if !c.slots.contains_key(&(saga, p)) {
                continue; // revoked meanwhile: its new owner reads the change back
            }
            match change {
                Some(instance) => c.put((saga, p), id, Slot::Live(instance)),
                None => c.forget((saga, p), &id),
            }
        }
        c.trim_finished();
    }

    /// Replaces a partition's state with what was read from the state topic.
    pub fn load(
        &self,
        saga: usize,
        partition: i32,
        slots: impl IntoIterator<Item = (String, Slot)>,
    ) {
        // Finished ones in the order they finished, as their expiry expects.
        let mut slots: Vec<(String, Slot)> = slots.into_iter().collect();
        let mut c = self.committed.lock().expect("saga store");
        c.drop_partition((saga, partition));
        c.slots.insert((saga, partition), Instances::default());
        slots.sort_by_key(|(_, slot)| finished_at(slot));
        for (id, slot) in slots {
            c.put((saga, partition), id, slot);
        }
        c.trim_finished();
    }

    pub fn drop_partition(&self, saga: usize, partition: i32) {
        self.committed
            .lock()
            .expect("saga store")
            .drop_partition((saga, partition));
    }

    /// Pending commands whose deadline has passed at `now`.
    pub fn due(&self, now: i64) -> Vec<Due> {
        let c = self.committed.lock().expect("saga store");
        c.deadlines
            .range(..(now.saturating_add(1), 0, 0, String::new()))
            .filter_map(|(at, saga, p, id)| {
                let i = c.slots.get(&(*saga, *p))?.live.get(id)?;
                Some(Due {
                    saga: *saga,
                    partition: *p,
                    id: id.clone(),
                    command_id: i.pending.as_ref()?.command_id.clone(),
                    due_at: *at,
                })
            })
            .collect()
    }

    /// Up to `limit` finished instances (saga, partition, id) that finished before `before`.
    pub fn expired(&self, before: i64, limit: usize) -> Vec<(usize, i32, String)> {
        let mut c = self.committed.lock().expect("saga store");
        let mut out = Vec::new();
        for ((saga, p), m) in c.slots.iter_mut() {
            let in_full = m
                .live
                .iter()
                .filter(|(_, i)| i.status.is_terminal() && i.updated_at < before);
            let ids = in_full
                .map(|(id, _)| id.clone())
                .chain(m.gone.expired(before, limit - out.len()));
            out.extend(ids.take(limit - out.len()).map(|id| (*saga, *p, id)));
            if out.len() == limit {
                break;
            }
        }
        out
    }

    /// Counts in-flight instances per saga (`sagas` of them), and keeps only the status of
    /// instances finished before `finished_before`.
    pub fn sweep(&self, sagas: usize, now: i64, finished_before: i64) -> Vec<Tally> {
        let mut tallies = vec![Tally::default(); sagas];
        let mut c = self.committed.lock().expect("saga store");
        for ((saga, _), m) in c.slots.iter_mut() {
            let tally = &mut tallies[*saga];
            let Instances { live, gone } = m;
            live.retain(|id, instance| {
                if instance.status.is_terminal() {
                    if instance.updated_at < finished_before {
                        gone.insert(id, instance.status, instance.updated_at);
                        return false;
                    }
                    return true;
                }
                tally.in_flight += 1;
                if instance.status == Status::Parked {
                    tally.parked += 1;
                }
                let step = instance.current_step().unwrap_or("-").to_string();
                let age = now - instance.started_at;
                let oldest = tally.oldest.entry(step).or_insert(0);
                *oldest = (*oldest).max(age);
                true
            });
        }
        tallies
    }

    /// Committed instances still running or compensating (parked ones are not counted).
    pub fn moving(&self) -> usize {
        self.committed.lock().expect("saga store").moving
    }

    /// Instances held in full.
    pub fn live(&self) -> usize {
        self.committed
            .lock()
            .expect("saga store")
            .slots
            .values()
            .map(|m| m.live.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::instance::{Kind, Pending, TriggerRef, Wait};
    use super::*;

    fn instance(id: &str, deadline: Option<i64>) -> Arc<Instance> {
        Arc::new(Instance {
            saga: "s".into(),
            id: id.into(),
            status: Status::Running,
            started_at: 0,
            updated_at: 0,
            seq: 1,
            data: "{}".into(),
            trigger: TriggerRef::default(),
            traceparent: None,
            completed: vec![],
            pending: deadline.map(|d| Pending {
                step: "a".into(),
                kind: Kind::Action,
                try_no: 1,
                attempt: 1,
                command_id: format!("{id}:a:do:1"),
                compensates: None,
                sent_at: 0,
                wait: Wait::Reply { deadline: d },
            }),
            failure: None,
            to_compensate: vec![],
            compensated: vec![],
            parked: None,
            history: vec![],
        })
    }

    #[test]
    fn only_committed_changes_count_and_deadlines_follow_them() {
        let store = Store::default();
        store.load(0, 1, HashMap::new());
        store.stage(0, 1, "x".into(), instance("x", Some(100)));
        assert!(
            store.get(0, 1, "x").is_some(),
            "the batch sees its own changes"
        );
        assert!(
            store.due(1_000).is_empty(),
            "the timer sees only committed state"
        );
        store.finish(false);
        assert!(
            store.get(0, 1, "x").is_none(),
            "an aborted batch leaves nothing"
        );

        store.stage(0, 1, "x".into(), instance("x", Some(100)));
        store.stage(0, 1, "y".into(), instance("y", Some(500)));
        store.finish(true);
        let due: Vec<String> = store.due(200).into_iter().map(|d| d.id).collect();
        assert_eq!(due, ["x"]);
        // A new state moves the deadline; the old one is gone from the index.
        store.stage(0, 1, "x".into(), instance("x", Some(900)));
        store.finish(true);
        assert!(store.due(200).is_empty());
        assert_eq!(store.due(1_000).len(), 2);
        store.drop_partition(0, 1);
        assert!(store.due(1_000).is_empty());
        store.stage(0, 1, "z".into(), instance("z", Some(100)));
        store.finish(true);
        assert!(
            store.get(0, 1, "z").is_none(),
            "a change to a partition dropped meanwhile is left to its new owner"
        );
    }

    #[test]
    fn the_moving_count_follows_commits_finishes_parks_and_revocations() {
        let store = Store::default();
        store.load(0, 1, HashMap::new());
        store.load(0, 2, HashMap::new());
        store.stage(0, 1, "a".into(), instance("a", None));
        store.stage(0, 1, "b".into(), instance("b", None));
        store.stage(0, 2, "c".into(), instance("c", None));
        assert_eq!(store.moving(), 0, "uncommitted instances do not count");
        store.finish(true);
        assert_eq!(store.moving(), 3);
        store.stage(0, 1, "a".into(), instance("a", Some(5)));
        store.finish(true);
        assert_eq!(store.moving(), 3, "a new state of a running instance");
        store.stage(0, 1, "a".into(), finished("a", 10));
        let mut parked = (*instance("b", None)).clone();
        parked.status = Status::Parked;
        store.stage(0, 1, "b".into(), Arc::new(parked));
        store.finish(true);
        assert_eq!(store.moving(), 1, "finished and parked ones do not count");
        store.sweep(1, 100, 50);
        assert_eq!(store.moving(), 1);
        store.drop_partition(0, 2);
        assert_eq!(store.moving(), 0, "a revoked partition's instances leave");
        let mut slots = HashMap::new();
        slots.insert("d".to_string(), Slot::Live(instance("d", None)));
        slots.insert(
            "e".to_string(),
            Slot::Gone {
                status: Status::Completed,
                finished_at: 1,
            },
        );
        store.load(0, 2, slots);
        assert_eq!(store.moving(), 1, "restored instances count");
        store.stage_delete(0, 2, "d".into());
        store.finish(true);
        assert_eq!(store.moving(), 0);
    }

    #[test]
    fn only_so_many_finished_instances_stay_in_full() {
        let store = Store::default();
        store.load(0, 0, HashMap::new());
        // Batches apply in commit order (within one, in no particular order).
        for batch in [0..5, 5..FINISHED_IN_FULL + 5] {
            for i in batch {
                store.stage(0, 0, format!("s{i}"), finished(&format!("s{i}"), i as i64));
            }
            store.finish(true);
        }
        assert_eq!(store.live(), FINISHED_IN_FULL);
        for i in 0..5 {
            assert!(
                matches!(store.get(0, 0, &format!("s{i}")), Some(Slot::Gone { finished_at, .. }) if finished_at == i as i64),
                "the oldest keep their status and finish time"
            );
        }
        assert!(matches!(store.get(0, 0, "s5"), Some(Slot::Live(_))));
        store.stage(0, 0, "r".into(), instance("r", None));
        store.finish(true);
        assert!(
            matches!(store.get(0, 0, "r"), Some(Slot::Live(_))),
            "running instances are never trimmed"
        );
    }

    fn finished(id: &str, at: i64) -> Arc<Instance> {
        let mut i = (*instance(id, None)).clone();
        i.status = Status::Completed;
        i.updated_at = at;
        Arc::new(i)
    }

    #[test]
    fn only_instances_finished_before_the_cut_expire_and_deletes_wait_for_the_commit() {
        let store = Store::default();
        store.load(0, 1, HashMap::new());
        store.stage(0, 1, "old".into(), finished("old", 100));
        store.stage(0, 1, "new".into(), finished("new", 900));
        store.stage(0, 1, "running".into(), instance("running", Some(50)));
        store.finish(true);
        // Kept in full, or only the status after a sweep: both expire by when they finished.
        store.sweep(1, 1_000, 500);
        let mut expired = store.expired(500, 10);
        expired.sort();
        assert_eq!(expired, [(0, 1, "old".to_string())]);
        assert_eq!(
            store.expired(1_000, 10).len(),
            2,
            "a running saga never expires"
        );
        assert_eq!(store.expired(1_000, 1).len(), 1, "at most `limit`");

        store.stage_delete(0, 1, "old".into());
        assert!(
            store.get(0, 1, "old").is_none(),
            "the batch sees the delete"
        );
        store.finish(false);
        assert!(
            store.get(0, 1, "old").is_some(),
            "an aborted delete leaves it"
        );
        store.stage_delete(0, 1, "old".into());
        store.finish(true);
        assert!(store.get(0, 1, "old").is_none());
        assert!(store.expired(500, 10).is_empty());
    }
}
