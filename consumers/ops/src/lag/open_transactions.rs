//! Transactions that hold read_committed readers back.
//!
//! While a transaction is open on a partition, its last stable offset (where a
//! read_committed consumer stops) stays at the transaction's first record, below the log
//! end. A group that has read everything up to it shows a lag it cannot work off, and the
//! usual cause of a long wait is a transaction nobody will end: its producer died and no
//! successor with the same transactional id came, or the broker lost its marker (a lone
//! broker restarting after a crash, docs/faults.md). No transaction outlives the broker's
//! `transaction.max.timeout.ms` (15 min by default), so a stable offset stuck for longer
//! points at a *hanging* transaction, which `kafka-transactions.sh find-hanging` lists and
//! `kafka-transactions.sh abort` ends.
//!
//! The monitor only knows what it has seen: the time reported is how long this process has
//! watched the stable offset stay at one value below the log end, a lower bound of the
//! transaction's age.

use std::collections::HashMap;

use super::collect::{PartitionOffsets, TopicPartition};

/// Kafka's default `transaction.max.timeout.ms`: no transaction can stay open longer.
pub const HANGING_AFTER_SECONDS: f64 = 900.0;

/// Per partition, the stable offset below the log end and when it was first seen there.
#[derive(Debug, Clone, Default)]
pub struct OpenTransactions {
    since: HashMap<TopicPartition, (i64, i64)>,
}

impl OpenTransactions {
    /// Takes one pass's offsets at `now_ms`; forgets partitions the pass did not show.
    pub fn observe<'a>(
        &mut self,
        partitions: impl IntoIterator<Item = (&'a TopicPartition, &'a PartitionOffsets)>,
        now_ms: i64,
    ) {
        let mut seen = HashMap::new();
        for (tp, o) in partitions {
            let (Some(stable), Some(end)) = (o.stable_end, o.log_end) else {
                continue;
            };
            if stable >= end {
                continue;
            }
            let since = match self.since.get(tp) {
                Some(&(at, since)) if at == stable => since,
                _ => now_ms,
            };
            seen.insert(tp.clone(), (stable, since));
        }
        self.since = seen;
    }

    /// Seconds the stable offset of `tp` has been seen at its current value below the log
    /// end; `None` when no transaction holds it back.
    pub fn open_seconds(&self, tp: &TopicPartition, now_ms: i64) -> Option<f64> {
        self.since
            .get(tp)
            .map(|&(_, since)| (now_ms - since).max(0) as f64 / 1000.0)
    }

    /// Partitions held back, for tests.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(stable: i64, end: i64) -> PartitionOffsets {
        PartitionOffsets {
            oldest: Some(0),
            log_end: Some(end),
            stable_end: Some(stable),
        }
    }

    #[test]
    fn a_stable_offset_held_below_the_log_end_ages_until_it_moves() {
        let tp = ("t".to_string(), 0);
        let mut open = OpenTransactions::default();
        open.observe([(&tp, &offsets(5, 9))], 1_000);
        assert_eq!(open.open_seconds(&tp, 1_000), Some(0.0));
        // More records after the open transaction: the log end moves, the stable offset not.
        open.observe([(&tp, &offsets(5, 20))], 4_000);
        assert_eq!(open.open_seconds(&tp, 4_000), Some(3.0));
        // The transaction ended and another opened further on: a new wait starts.
        open.observe([(&tp, &offsets(21, 30))], 5_000);
        assert_eq!(open.open_seconds(&tp, 5_000), Some(0.0));
        // Everything stable.
        open.observe([(&tp, &offsets(30, 30))], 6_000);
        assert_eq!(open.open_seconds(&tp, 6_000), None);
        assert!(open.is_empty());
    }

    #[test]
    fn partitions_without_offsets_or_gone_are_forgotten() {
        let (a, b) = (("t".to_string(), 0), ("t".to_string(), 1));
        let mut open = OpenTransactions::default();
        open.observe([(&a, &offsets(1, 2)), (&b, &offsets(1, 2))], 0);
        assert_eq!(open.len(), 2);
        let unknown = PartitionOffsets {
            stable_end: None,
            ..offsets(1, 2)
        };
        open.observe([(&a, &unknown)], 1_000);
        assert!(open.is_empty());
    }
}
