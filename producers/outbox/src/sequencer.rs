//! Per-aggregate order within one lane, apart from Kafka and PostgreSQL.
//!
//! Rows arrive in `(xid, id)` order, which is not commit order: a transaction that took its
//! id first can write sequence 6 of an aggregate while a later one, committed earlier, wrote
//! 5. The sequencer releases each aggregate's rows in `sequence` order only (1, 2, 3, …),
//! holds a row whose predecessor has not been seen yet, and reports a hold that lasts longer
//! than the configured bound. It never skips: a held aggregate waits until its missing row
//! arrives, while other aggregates of the lane go on.
//!
//! Its durable part ([`Durable`]) is what the relay writes to Kafka with the events: the
//! position below which every row is done, and each aggregate's last relayed sequence, which
//! also recognises rows that were relayed after a held one and are read again after a restart.
//!
//! A lane remembers a bounded number of aggregates. Past the bound it writes the last
//! sequences of some to PostgreSQL (`<table>_relayed`) and forgets them; an aggregate it no
//! longer knows is then looked up there before its rows are ordered ([`Sequencer::unknown`],
//! [`Sequencer::learn`]), so memory stays flat however many aggregates the table ever had.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;

use crate::event::{AggregateKey, OutboxRow, Position};

/// What survives a restart: restored from the state topic, written in each transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durable {
    /// Every row at or below it is relayed (or was relayed and is read again as a duplicate).
    pub watermark: Position,
    /// The last relayed sequence per aggregate remembered (0: looked up, none relayed),
    /// least recently advanced first: those are forgotten first.
    pub last: LinkedHashMap<AggregateKey, i64>,
    /// Whether the lane forgot some aggregates (their last sequences are in PostgreSQL):
    /// then an aggregate not in `last` is looked up before its rows are ordered.
    pub forgotten: bool,
}

/// Rows of one aggregate waiting for a missing sequence.
#[derive(Debug, Clone)]
struct Held {
    rows: BTreeMap<i64, OutboxRow>,
    since: Instant,
    reported: bool,
}

/// A gap that has been waited on for longer than the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub aggregate: AggregateKey,
    pub expected: i64,
    pub next_held: i64,
    pub held_rows: usize,
    pub waited: Duration,
}

/// One lane's ordering state.
#[derive(Debug, Clone, Default)]
pub struct Sequencer {
    durable: Durable,
    /// Where the next read starts: past held rows, which stay here in memory.
    cursor: Position,
    held: BTreeMap<AggregateKey, Held>,
}

/// The most aggregates a lane forgets at once: a lane over its bound by far (one restored
/// from before the bound existed) shrinks over several steps instead of copying and writing
/// everything in one.
pub const FORGET_AT_ONCE: usize = 4096;

/// The outcome of one batch: what to publish, in order, and the state once it is committed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub emit: Vec<OutboxRow>,
    /// Aggregates whose last sequence changed, with the new value.
    pub advanced: BTreeMap<AggregateKey, i64>,
    /// Rows read again that were already relayed (after a restart).
    pub duplicates: usize,
    /// Gaps reported for the first time by this batch.
    pub gaps: Vec<Gap>,
    next: Next,
}

/// What a plan changes besides `advanced`: a lane's last sequences cover every aggregate it
/// ever relayed, so a plan carries only the changes, never a copy of them all.
#[derive(Debug, Clone)]
struct Next {
    watermark: Position,
    cursor: Position,
    held: BTreeMap<AggregateKey, Held>,
}

impl Plan {
    pub fn watermark(&self) -> Position {
        self.next.watermark
    }

    /// Where the read after this plan starts: known before the plan is committed, so the
    /// next batch can be read while this one's transaction runs.
    pub fn cursor(&self) -> Position {
        self.next.cursor
    }

    /// Whether committing the plan changes anything durable.
    pub fn is_durable_change(&self, before: &Sequencer) -> bool {
        !self.emit.is_empty() || self.watermark() != before.durable.watermark
    }
}

impl Sequencer {
    pub fn restore(durable: Durable) -> Self {
        Self {
            cursor: durable.watermark,
            durable,
            held: BTreeMap::new(),
        }
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// The position the next read starts after.
    pub fn cursor(&self) -> Position {
        self.cursor
    }

    /// Rows held behind gaps.
    pub fn held_rows(&self) -> usize {
        self.held.values().map(|h| h.rows.len()).sum()
    }

    /// The longest current hold.
    pub fn oldest_hold(&self, now: Instant) -> Duration {
        self.held
            .values()
            .map(|h| now.saturating_duration_since(h.since))
            .max()
            .unwrap_or_default()
    }

    /// The aggregates of `rows` to look up before they are planned: those not remembered,
    /// once the lane has forgotten any (until then an unknown aggregate has no history).
    pub fn unknown(&self, rows: &[OutboxRow]) -> Vec<AggregateKey> {
        if !self.durable.forgotten {
            return Vec::new();
        }
        let mut keys: Vec<AggregateKey> = rows
            .iter()
            .map(OutboxRow::aggregate)
            .filter(|k| !self.durable.last.contains_key(k))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Remembers last sequences looked up (0 for an aggregate with none relayed).
    pub fn learn(&mut self, found: impl IntoIterator<Item = (AggregateKey, i64)>) {
        for (key, sequence) in found {
            let last = self.durable.last.entry(key).or_insert(sequence);
            *last = (*last).max(sequence);
        }
    }

    /// When more than `keep` aggregates are remembered, some to forget (none with held
    /// rows), with their last sequences: the least recently advanced, down to three quarters
    /// of `keep` (so not on every batch), at most [`FORGET_AT_ONCE`] a time (each is copied,
    /// written to PostgreSQL and deleted from the state topic in one go).
    pub fn to_forget(&self, keep: usize) -> Vec<(AggregateKey, i64)> {
        let len = self.durable.last.len();
        if len <= keep {
            return Vec::new();
        }
        let target = keep - keep / 4;
        self.durable
            .last
            .iter()
            .filter(|(k, _)| !self.held.contains_key(*k))
            .take((len - target).min(FORGET_AT_ONCE))
            .map(|(k, s)| (k.clone(), *s))
            .collect()
    }

    /// Forgets `keys`, whose last sequences PostgreSQL now keeps.
    pub fn forget<'k>(&mut self, keys: impl IntoIterator<Item = &'k AggregateKey>) {
        for key in keys {
            self.durable.last.remove(key);
        }
        self.durable.forgotten = true;
    }

    /// Orders `rows` (read after [`cursor`](Self::cursor), in `(xid, id)` order).
    pub fn plan(&self, rows: Vec<OutboxRow>, now: Instant, report_after: Duration) -> Plan {
        let mut work = Work {
            last: &self.durable.last,
            advanced: BTreeMap::new(),
            cursor: self.cursor,
            held: self.held.clone(),
        };
        let mut emit = Vec::new();
        let mut duplicates = 0;
        for row in rows {
            work.cursor = work.cursor.max(row.position);
            let key = row.aggregate();
            let expected = work.last(&key).map_or(1, |s| s + 1);
            if row.sequence < expected {
                duplicates += 1;
            } else if row.sequence > expected {
                let held = work.held.entry(key).or_insert_with(|| Held {
                    rows: BTreeMap::new(),
                    since: now,
                    reported: false,
                });
                held.rows.insert(row.sequence, row);
            } else {
                work.advanced.insert(key.clone(), row.sequence);
                emit.push(row);
                work.release(&key, now, &mut emit);
            }
        }
        let gaps = work.report(now, report_after);
        let watermark = work.safe_watermark();
        Plan {
            emit,
            advanced: work.advanced,
            duplicates,
            gaps,
            next: Next {
                watermark,
                cursor: work.cursor,
                held: work.held,
            },
        }
    }

    /// Takes the state a committed plan leads to.
    pub fn commit(&mut self, plan: Plan) {
        // `insert` moves an advanced aggregate to the back: the recently advanced last.
        for (key, sequence) in plan.advanced {
            self.durable.last.insert(key, sequence);
        }
        self.durable.watermark = plan.next.watermark;
        self.cursor = plan.next.cursor;
        self.held = plan.next.held;
    }
}

/// `key`'s last relayed sequence: this batch's advance, else the lane's as it was.
fn relayed(
    advanced: &BTreeMap<AggregateKey, i64>,
    last: &LinkedHashMap<AggregateKey, i64>,
    key: &AggregateKey,
) -> Option<i64> {
    advanced.get(key).or_else(|| last.get(key)).copied()
}

/// A plan in the making: the lane's last sequences as they were, and what the batch changes.
struct Work<'a> {
    last: &'a LinkedHashMap<AggregateKey, i64>,
    advanced: BTreeMap<AggregateKey, i64>,
    cursor: Position,
    held: BTreeMap<AggregateKey, Held>,
}

impl Work<'_> {
    /// `key`'s last relayed sequence, counting this batch.
    fn last(&self, key: &AggregateKey) -> Option<i64> {
        relayed(&self.advanced, self.last, key)
    }

    /// Emits `key`'s held rows that have become next in line.
    fn release(&mut self, key: &AggregateKey, now: Instant, emit: &mut Vec<OutboxRow>) {
        let mut last = self.last(key).unwrap_or(0);
        let Some(held) = self.held.get_mut(key) else {
            return;
        };
        while let Some(row) = held.rows.remove(&(last + 1)) {
            last = row.sequence;
            emit.push(row);
        }
        self.advanced.insert(key.clone(), last);
        if held.rows.is_empty() {
            self.held.remove(key);
        } else {
            // A new gap further on: its wait starts now.
            held.since = now;
            held.reported = false;
        }
    }

    fn report(&mut self, now: Instant, after: Duration) -> Vec<Gap> {
        let mut gaps = Vec::new();
        let (advanced, last) = (&self.advanced, self.last);
        for (key, held) in &mut self.held {
            let waited = now.saturating_duration_since(held.since);
            if !held.reported && waited >= after {
                held.reported = true;
                gaps.push(Gap {
                    aggregate: key.clone(),
                    expected: relayed(advanced, last, key).map_or(1, |s| s + 1),
                    next_held: held.rows.keys().next().copied().unwrap_or_default(),
                    held_rows: held.rows.len(),
                    waited,
                });
            }
        }
        gaps
    }

    /// The cursor, pulled back before the first held row so a restart reads it again.
    fn safe_watermark(&self) -> Position {
        self.held
            .values()
            .flat_map(|h| h.rows.values())
            .map(|r| r.position.just_before())
            .min()
            .map_or(self.cursor, |h| h.min(self.cursor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(xid: i64, id: i64, agg: &str, seq: i64) -> OutboxRow {
        OutboxRow {
            position: Position { xid, id },
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: "order".into(),
            aggregate_id: agg.into(),
            sequence: seq,
            event_type: "t".into(),
            payload: serde_json::json!({}),
            headers: serde_json::json!({}),
            created_at_ms: 0,
        }
    }

    fn emitted(plan: &Plan) -> Vec<(String, i64)> {
        plan.emit
            .iter()
            .map(|r| (r.aggregate_id.clone(), r.sequence))
            .collect()
    }

    const BOUND: Duration = Duration::from_secs(30);

    #[test]
    fn a_later_sequence_read_first_waits_for_its_predecessor() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        // Sequence 2 took the lower xid (its transaction started first, committed last).
        let plan = s.plan(
            vec![row(10, 1, "a", 2), row(11, 2, "b", 1), row(12, 3, "a", 1)],
            now,
            BOUND,
        );
        assert_eq!(
            emitted(&plan),
            [("b".into(), 1), ("a".into(), 1), ("a".into(), 2)]
        );
        assert_eq!(plan.watermark(), Position { xid: 12, id: 3 });
        s.commit(plan);
        assert_eq!(s.held_rows(), 0);
    }

    #[test]
    fn a_held_row_keeps_the_watermark_below_it_but_not_the_cursor() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        let plan = s.plan(vec![row(10, 1, "a", 2), row(11, 2, "b", 1)], now, BOUND);
        assert_eq!(emitted(&plan), [("b".into(), 1)]);
        assert_eq!(plan.watermark(), Position { xid: 10, id: 0 });
        s.commit(plan);
        assert_eq!(s.cursor(), Position { xid: 11, id: 2 });
        assert_eq!(s.held_rows(), 1);

        // After a restart from the watermark, b:1 is read again and recognised.
        let mut restarted = Sequencer::restore(s.durable().clone());
        let plan = restarted.plan(
            vec![row(10, 1, "a", 2), row(11, 2, "b", 1), row(13, 4, "a", 1)],
            now,
            BOUND,
        );
        assert_eq!(emitted(&plan), [("a".into(), 1), ("a".into(), 2)]);
        assert_eq!(plan.duplicates, 1);
        assert_eq!(plan.watermark(), Position { xid: 13, id: 4 });
        restarted.commit(plan);
    }

    #[test]
    fn a_gap_is_reported_once_after_the_bound_and_never_skipped() {
        let t0 = Instant::now();
        let mut s = Sequencer::default();
        let plan = s.plan(vec![row(1, 1, "a", 1), row(2, 2, "a", 3)], t0, BOUND);
        assert!(plan.gaps.is_empty());
        s.commit(plan);
        let plan = s.plan(vec![], t0 + Duration::from_secs(31), BOUND);
        assert_eq!(
            plan.gaps,
            [Gap {
                aggregate: AggregateKey {
                    aggregate_type: "order".into(),
                    aggregate_id: "a".into()
                },
                expected: 2,
                next_held: 3,
                held_rows: 1,
                waited: Duration::from_secs(31),
            }]
        );
        assert!(plan.emit.is_empty());
        s.commit(plan);
        let plan = s.plan(vec![], t0 + Duration::from_secs(62), BOUND);
        assert!(plan.gaps.is_empty(), "reported once");
        s.commit(plan);
        // The missing row arrives late: both go, in order.
        let plan = s.plan(vec![row(3, 3, "a", 2)], t0 + Duration::from_secs(70), BOUND);
        assert_eq!(emitted(&plan), [("a".into(), 2), ("a".into(), 3)]);
        assert_eq!(plan.advanced.values().copied().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn a_plan_changes_nothing_until_committed_and_then_only_what_it_advanced() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        let rows = (1..=100).map(|i| row(i, i, &format!("k{i}"), 1)).collect();
        let plan = s.plan(rows, now, BOUND);
        s.commit(plan);
        assert_eq!(s.durable().last.len(), 100);
        let before = s.durable().clone();
        let plan = s.plan(
            vec![row(200, 200, "k7", 2), row(201, 201, "k8", 3)],
            now,
            BOUND,
        );
        assert_eq!(s.durable(), &before, "planning is not committing");
        assert_eq!(emitted(&plan), [("k7".into(), 2)]);
        assert_eq!(plan.advanced.len(), 1);
        s.commit(plan);
        let key = |id: &str| AggregateKey {
            aggregate_type: "order".into(),
            aggregate_id: id.into(),
        };
        assert_eq!(s.durable().last[&key("k7")], 2);
        assert_eq!(s.durable().last[&key("k8")], 1, "k8:3 is held, not relayed");
        assert_eq!(s.durable().last.len(), 100);
        assert_eq!(s.held_rows(), 1);
        assert_eq!(s.durable().watermark, Position { xid: 201, id: 200 });
    }

    fn key(id: &str) -> AggregateKey {
        AggregateKey {
            aggregate_type: "order".into(),
            aggregate_id: id.into(),
        }
    }

    #[test]
    fn a_lane_forgets_past_its_bound_and_orders_a_forgotten_aggregate_from_what_it_looks_up() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        let rows: Vec<_> = (1..=20).map(|i| row(i, i, &format!("k{i}"), 1)).collect();
        // Nothing forgotten yet: an aggregate not remembered has no history to look up.
        assert!(s.unknown(&rows).is_empty());
        let plan = s.plan(rows, now, BOUND);
        s.commit(plan);
        // k20:3 is held behind k20:2: a held aggregate is never forgotten.
        let plan = s.plan(vec![row(30, 30, "k20", 3)], now, BOUND);
        s.commit(plan);
        assert!(s.to_forget(20).is_empty(), "within the bound");
        let forget = s.to_forget(16);
        assert_eq!(forget.len(), 20 - 12, "down to three quarters of the bound");
        assert!(forget.iter().all(|(k, seq)| k != &key("k20") && *seq == 1));
        s.forget(forget.iter().map(|(k, _)| k));
        assert_eq!(s.durable().last.len(), 12);
        assert!(s.durable().forgotten);

        let (gone, _) = &forget[0];
        let kept = s
            .durable()
            .last
            .keys()
            .find(|k| *k != &key("k20"))
            .unwrap()
            .clone();
        let rows = vec![
            row(40, 40, &gone.aggregate_id, 2),
            row(41, 41, &kept.aggregate_id, 2),
            row(42, 42, "new", 1),
            row(43, 43, &gone.aggregate_id, 3),
        ];
        // Only aggregates the lane does not remember are looked up, each once.
        let mut unknown = s.unknown(&rows);
        unknown.sort();
        let mut want = vec![gone.clone(), key("new")];
        want.sort();
        assert_eq!(unknown, want);
        // Without what PostgreSQL knows, `gone`:2 would wait for a sequence 1 relayed long ago.
        s.learn([(gone.clone(), 1), (key("new"), 0)]);
        let plan = s.plan(rows, now, BOUND);
        assert_eq!(
            emitted(&plan),
            [
                (gone.aggregate_id.clone(), 2),
                (kept.aggregate_id.clone(), 2),
                ("new".into(), 1),
                (gone.aggregate_id.clone(), 3)
            ]
        );
        s.commit(plan);
        // Read again after a restart, a forgotten aggregate's relayed row is a duplicate.
        s.forget([gone.clone()].iter());
        s.learn([(gone.clone(), 3)]);
        let plan = s.plan(vec![row(43, 43, &gone.aggregate_id, 3)], now, BOUND);
        assert!(plan.emit.is_empty());
        assert_eq!(plan.duplicates, 1);
    }

    #[test]
    fn the_least_recently_advanced_aggregates_are_forgotten_first() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        let plan = s.plan(
            (1..=8).map(|i| row(i, i, &format!("k{i}"), 1)).collect(),
            now,
            BOUND,
        );
        s.commit(plan);
        // k1 and k2 advance again: they are now the most recent.
        let plan = s.plan(vec![row(20, 20, "k1", 2), row(21, 21, "k2", 2)], now, BOUND);
        s.commit(plan);
        let forgotten: Vec<String> = s
            .to_forget(4)
            .into_iter()
            .map(|(k, _)| k.aggregate_id)
            .collect();
        assert_eq!(forgotten, ["k3", "k4", "k5", "k6", "k7"]);
    }

    #[test]
    fn nothing_new_is_no_durable_change() {
        let s = Sequencer::default();
        let plan = s.plan(vec![], Instant::now(), BOUND);
        assert!(!plan.is_durable_change(&s));
    }
}
