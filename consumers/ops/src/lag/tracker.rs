//! The state between evaluations: a window of samples per group partition and a log-end
//! history per partition. It turns a stream of [`Snapshot`]s into [`LagReport`]s and is pure
//! (no Kafka), so it is tested with made-up snapshots.
//!
//! Memory is bounded: windows hold at most `window` samples, histories at most
//! `history_points` points, and whatever a snapshot no longer shows (a deleted group, a
//! partition a group stopped committing on, a deleted topic) is forgotten.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::collect::{GroupOffsets, PartitionOffsets, Snapshot, TopicPartition};
use super::history::{LogEndHistory, DEFAULT_HISTORY_POINTS};
use super::open_transactions::OpenTransactions;
use super::report::{GroupLag, LagReport, PartitionLag, TopicLag, TopicPartitionOffsets};
use super::status::{self, Sample, Status};

/// Samples in a status window by default for long-running modes, as in Burrow.
pub const DEFAULT_WINDOW: usize = 10;

#[derive(Debug, Clone)]
pub struct Tracker {
    window: usize,
    history_points: usize,
    /// (group, topic, partition) → the newest `window` samples, oldest first.
    windows: HashMap<(String, TopicPartition), VecDeque<Sample>>,
    histories: HashMap<TopicPartition, LogEndHistory>,
    open: OpenTransactions,
}

impl Tracker {
    /// `window`: samples per status window (at least 2).
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(2),
            history_points: DEFAULT_HISTORY_POINTS,
            windows: HashMap::new(),
            histories: HashMap::new(),
            open: OpenTransactions::default(),
        }
    }

    pub fn window(&self) -> usize {
        self.window
    }

    /// Windows and histories held, for tests and the bench.
    pub fn held(&self) -> (usize, usize) {
        (self.windows.len(), self.histories.len())
    }

    /// Adds a snapshot and evaluates every group in it.
    pub fn observe(&mut self, snapshot: &Snapshot) -> LagReport {
        let now = snapshot.taken_at_ms;
        for (tp, offsets) in &snapshot.partitions {
            if let Some(end) = offsets.log_end {
                self.histories
                    .entry(tp.clone())
                    .or_insert_with(|| LogEndHistory::new(self.history_points))
                    .record(end, now);
            }
        }
        self.histories
            .retain(|tp, _| snapshot.partitions.contains_key(tp));
        self.open.observe(&snapshot.partitions, now);

        let mut live: HashSet<(String, TopicPartition)> = HashSet::new();
        let groups = snapshot
            .groups
            .iter()
            .map(|g| self.group(g, snapshot, &mut live))
            .collect();
        self.windows.retain(|key, _| live.contains(key));

        LagReport {
            taken_at_ms: now,
            window: self.window,
            groups,
            topics: snapshot
                .partitions
                .iter()
                .map(|((topic, partition), o)| TopicPartitionOffsets {
                    topic: topic.clone(),
                    partition: *partition,
                    oldest_offset: o.oldest,
                    log_end_offset: o.log_end,
                    stable_offset: o.stable_end,
                    open_transaction_seconds: self
                        .open
                        .open_seconds(&(topic.clone(), *partition), now),
                })
                .collect(),
        }
    }

    fn group(
        &mut self,
        g: &GroupOffsets,
        snapshot: &Snapshot,
        live: &mut HashSet<(String, TopicPartition)>,
    ) -> GroupLag {
        if g.error.is_some() {
            // Keep its windows: one failed fetch should not erase the group's history.
            live.extend(
                self.windows
                    .keys()
                    .filter(|(group, _)| *group == g.group)
                    .cloned(),
            );
        }
        let owners: HashMap<&TopicPartition, &str> = g
            .members
            .iter()
            .flat_map(|m| m.assigned.iter().map(move |tp| (tp, m.client_id.as_str())))
            .collect();
        // Members whose assignments could not be read: assume they own everything.
        let owned_by_default = !g.members.is_empty() && owners.is_empty();
        let now = snapshot.taken_at_ms;
        let mut partitions = Vec::with_capacity(g.committed.len());
        let mut complete = true;
        for (tp, &committed) in &g.committed {
            let offsets = snapshot.partitions.get(tp).copied().unwrap_or_default();
            let key = (g.group.clone(), tp.clone());
            let window = self.windows.entry(key.clone()).or_default();
            window.push_back(Sample {
                at_ms: now,
                committed,
                log_end: offsets.log_end,
                settled: snapshot.settled.contains(&(tp.clone(), committed)),
            });
            while window.len() > self.window {
                window.pop_front();
            }
            let owner = owners.get(tp).map(|c| c.to_string());
            let eval = status::evaluate(
                window.make_contiguous(),
                self.window,
                owner.is_some() || owned_by_default,
            );
            complete &= eval.complete;
            // No time lag where the offsets make no sense (unknown log end, or a committed
            // offset beyond it).
            let time_lag = self
                .histories
                .get(tp)
                .filter(|_| offsets.log_end.is_some_and(|end| end >= committed))
                .and_then(|h| h.time_lag(committed, now));
            partitions.push(PartitionLag {
                topic: tp.0.clone(),
                partition: tp.1,
                committed_offset: committed,
                log_end_offset: offsets.log_end,
                oldest_offset: offsets.oldest,
                lag: offsets.log_end.map(|end| end - committed),
                lag_seconds: time_lag.map(|t| t.seconds),
                lag_seconds_estimate: time_lag.map(|t| t.estimate),
                status: eval.status,
                samples: window.len(),
                owner,
                stable_offset: offsets.stable_end,
                waits_on_transaction: waits_on_transaction(committed, offsets),
            });
            live.insert(key);
        }
        let mut lag_by_topic: BTreeMap<&str, i64> = BTreeMap::new();
        for p in &partitions {
            *lag_by_topic.entry(p.topic.as_str()).or_default() += p.lag.unwrap_or(0).max(0);
        }
        let lag_by_topic = lag_by_topic
            .into_iter()
            .map(|(topic, lag)| TopicLag {
                topic: topic.to_string(),
                lag,
            })
            .collect();
        let status = if g.error.is_some() {
            Status::Err
        } else {
            status::worst(partitions.iter().map(|p| p.status))
        };
        GroupLag {
            group: g.group.clone(),
            state: g.state.clone(),
            members: g.members.len(),
            status,
            complete,
            error: g.error.clone(),
            lag_by_topic,
            partitions,
        }
    }
}

/// Whether a group at `committed` has read all a read_committed reader may, with records
/// beyond it that an open transaction holds back.
fn waits_on_transaction(committed: i64, offsets: PartitionOffsets) -> bool {
    match (offsets.stable_end, offsets.log_end) {
        (Some(stable), Some(end)) => committed >= stable && stable < end,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::collect::{Member, PartitionOffsets};
    use super::super::history::Estimate;
    use super::*;

    fn tp(t: &str, p: i32) -> TopicPartition {
        (t.to_string(), p)
    }

    /// A snapshot at `at_ms` of one group `g` on topic `t`: per partition (committed, log end).
    fn snap(at_ms: i64, owned: &[i32], parts: &[(i64, i64)]) -> Snapshot {
        let members = if owned.is_empty() {
            vec![]
        } else {
            vec![Member {
                member_id: "m".into(),
                client_id: "c1".into(),
                host: "/127.0.0.1".into(),
                assigned: owned.iter().map(|p| tp("t", *p)).collect(),
            }]
        };
        Snapshot {
            taken_at_ms: at_ms,
            groups: vec![GroupOffsets {
                group: "g".into(),
                state: if owned.is_empty() { "Empty" } else { "Stable" }.into(),
                members,
                committed: parts
                    .iter()
                    .enumerate()
                    .map(|(i, (c, _))| (tp("t", i as i32), *c))
                    .collect(),
                error: None,
            }],
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, (_, end))| {
                    (
                        tp("t", i as i32),
                        PartitionOffsets {
                            oldest: Some(0),
                            log_end: Some(*end),
                            stable_end: Some(*end),
                        },
                    )
                })
                .collect(),
            settled: Default::default(),
        }
    }

    #[test]
    fn statuses_follow_the_windows_and_the_group_takes_the_worst() {
        let mut t = Tracker::new(3);
        // p0 caught up, p1 stuck and owned, p2 moving but never gaining.
        let r = t.observe(&snap(0, &[1], &[(5, 5), (2, 10), (0, 10)]));
        assert!(!r.groups[0].complete);
        assert_eq!(r.groups[0].status, Status::Ok);
        t.observe(&snap(1_000, &[1], &[(5, 5), (2, 10), (5, 15)]));
        let r = t.observe(&snap(2_000, &[1], &[(5, 5), (2, 12), (10, 20)]));
        let g = &r.groups[0];
        let st: Vec<Status> = g.partitions.iter().map(|p| p.status).collect();
        assert_eq!(st, vec![Status::Ok, Status::Stall, Status::Warn]);
        assert_eq!(g.status, Status::Stall);
        assert!(g.complete);
        assert_eq!(g.partitions[1].owner.as_deref(), Some("c1"));
        assert_eq!(g.partitions[0].owner, None);
        assert_eq!(g.lag_by_topic[0].lag, 20);
        assert_eq!(g.partitions[2].samples, 3);
        assert_eq!(t.held(), (3, 3));
    }

    #[test]
    fn unowned_stuck_partition_stops_and_time_lag_grows() {
        let mut t = Tracker::new(3);
        for at in [0, 1_000, 2_000] {
            t.observe(&snap(at, &[], &[(0, 100)]));
        }
        let r = t.observe(&snap(4_000, &[], &[(0, 100)]));
        let p = &r.groups[0].partitions[0];
        assert_eq!(p.status, Status::Stop);
        assert_eq!(p.lag, Some(100));
        // The log end never moved while watched: at least since the first sample.
        assert_eq!(p.lag_seconds, Some(4.0));
        assert_eq!(p.lag_seconds_estimate, Some(Estimate::LowerBound));
    }

    #[test]
    fn a_group_caught_up_to_an_open_transaction_waits_on_it() {
        let mut t = Tracker::new(2);
        let mut s = snap(0, &[0], &[(5, 9), (3, 9)]);
        for o in s.partitions.values_mut() {
            o.stable_end = Some(5);
        }
        t.observe(&s);
        s.taken_at_ms = 7_000;
        let r = t.observe(&s);
        let waits: Vec<bool> = r.groups[0]
            .partitions
            .iter()
            .map(|p| p.waits_on_transaction)
            .collect();
        // p0 read everything stable; p1 still has stable records to read.
        assert_eq!(waits, vec![true, false]);
        assert_eq!(r.groups[0].partitions[0].stable_offset, Some(5));
        assert_eq!(r.topics[0].open_transaction_seconds, Some(7.0));
        assert_eq!(r.topics[0].stable_offset, Some(5));
    }

    #[test]
    fn members_without_readable_assignments_count_as_owners() {
        let mut s = snap(0, &[0], &[(1, 4)]);
        s.groups[0].members[0].assigned.clear();
        let mut t = Tracker::new(2);
        t.observe(&s);
        s.taken_at_ms = 1_000;
        let r = t.observe(&s);
        assert_eq!(r.groups[0].partitions[0].status, Status::Stall);
    }

    #[test]
    fn vanished_groups_and_partitions_are_forgotten_but_failed_fetches_keep_history() {
        let mut t = Tracker::new(3);
        t.observe(&snap(0, &[], &[(1, 4), (1, 4)]));
        assert_eq!(t.held(), (2, 2));
        t.observe(&snap(1_000, &[], &[(1, 4)]));
        assert_eq!(t.held(), (1, 1));

        let mut failed = snap(2_000, &[], &[]);
        failed.groups[0].error = Some("coordinator not available".into());
        let r = t.observe(&failed);
        assert_eq!(r.groups[0].status, Status::Err);
        assert_eq!(t.held().0, 1, "the window survives one failed fetch");

        let gone = Snapshot {
            taken_at_ms: 3_000,
            ..Snapshot::default()
        };
        let r = t.observe(&gone);
        assert!(r.groups.is_empty());
        assert_eq!(t.held(), (0, 0));
    }

    #[test]
    fn unknown_log_end_or_offset_beyond_it_is_err_without_a_time_lag() {
        let mut s = snap(0, &[0], &[(1, 4)]);
        s.partitions.values_mut().for_each(|o| o.log_end = None);
        let r = Tracker::new(3).observe(&s);
        let p = &r.groups[0].partitions[0];
        assert_eq!((p.status, p.lag, p.lag_seconds), (Status::Err, None, None));
        assert_eq!(r.groups[0].status, Status::Err);

        let beyond = snap(0, &[0], &[(9, 4)]);
        let r = Tracker::new(3).observe(&beyond);
        let p = &r.groups[0].partitions[0];
        assert_eq!(
            (p.status, p.lag, p.lag_seconds),
            (Status::Err, Some(-5), None)
        );
    }
}
