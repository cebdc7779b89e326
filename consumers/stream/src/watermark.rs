//! Committing in order what finishes out of order.
//!
//! A consumer that works on many records of a partition at once (the delivery dispatcher
//! sends to many endpoints concurrently) may only commit an offset once every record before
//! it is done: a commit says "everything below this is handled". [`Watermark`] tracks one
//! partition: records are [`taken`](Watermark::take) in offset order and
//! [`settled`](Watermark::settle) in any order, and [`committable`](Watermark::committable) is
//! the offset to commit — one past the longest settled prefix. A slow record therefore holds
//! back the commit, never the work on the records after it; after a crash only the unsettled
//! records are handled again.

use std::collections::BTreeSet;

#[derive(Debug, Clone, Default)]
pub struct Watermark {
    /// The offset every record below which is settled (the next offset to commit).
    floor: Option<i64>,
    /// One past the highest offset taken.
    next: Option<i64>,
    /// Offsets taken and not settled yet.
    open: BTreeSet<i64>,
    /// Offsets settled above the floor while an earlier one is still open.
    done_above: BTreeSet<i64>,
}

impl Watermark {
    /// Notes record `offset` as being worked on. Offsets are taken in increasing order;
    /// gaps (compacted or transaction-marker offsets) are fine.
    pub fn take(&mut self, offset: i64) {
        debug_assert!(self.next.is_none_or(|n| offset >= n), "taken out of order");
        if self.floor.is_none() {
            self.floor = Some(offset);
        }
        if self.open.is_empty() && self.done_above.is_empty() {
            // Nothing pending: the gap before `offset` is settled by definition.
            self.floor = Some(offset);
        }
        self.open.insert(offset);
        self.next = Some(offset + 1);
    }

    /// Notes record `offset` as done. Settling an offset not taken (or twice) is ignored.
    pub fn settle(&mut self, offset: i64) {
        if !self.open.remove(&offset) {
            return;
        }
        self.done_above.insert(offset);
        let lowest_open = self.open.first().copied();
        // Everything settled below the lowest open offset joins the floor.
        let settled: Vec<i64> = match lowest_open {
            Some(low) => self.done_above.range(..low).copied().collect(),
            None => self.done_above.iter().copied().collect(),
        };
        for o in settled {
            self.done_above.remove(&o);
        }
        self.floor = match lowest_open {
            Some(low) => Some(low),
            None => self.next,
        };
    }

    /// The offset to commit: one past the longest settled prefix; `None` before anything
    /// was taken.
    pub fn committable(&self) -> Option<i64> {
        self.floor
    }

    /// Records taken and not settled.
    pub fn pending(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_record_holds_the_commit_not_the_records_after_it() {
        let mut w = Watermark::default();
        assert_eq!(w.committable(), None);
        for o in 10..15 {
            w.take(o);
        }
        assert_eq!(w.committable(), Some(10), "nothing settled yet");
        w.settle(11);
        w.settle(12);
        assert_eq!(w.committable(), Some(10), "10 is still open");
        w.settle(10);
        assert_eq!(w.committable(), Some(13), "10..=12 settled");
        w.settle(14);
        assert_eq!(w.committable(), Some(13));
        assert_eq!(w.pending(), 1);
        w.settle(13);
        assert_eq!(
            w.committable(),
            Some(15),
            "all settled: one past the last taken"
        );
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn gaps_between_offsets_do_not_hold_the_commit() {
        let mut w = Watermark::default();
        w.take(3);
        w.take(7); // 4..=6 are transaction markers or compacted away
        w.settle(7);
        assert_eq!(w.committable(), Some(3));
        w.settle(3);
        assert_eq!(w.committable(), Some(8));
        w.take(20);
        assert_eq!(
            w.committable(),
            Some(20),
            "an idle gap is settled by definition"
        );
        w.settle(20);
        assert_eq!(w.committable(), Some(21));
    }

    #[test]
    fn settling_twice_or_what_was_never_taken_changes_nothing() {
        let mut w = Watermark::default();
        w.take(1);
        w.take(2);
        w.settle(5);
        w.settle(2);
        w.settle(2);
        assert_eq!(w.committable(), Some(1));
        w.settle(1);
        assert_eq!(w.committable(), Some(3));
    }

    proptest::proptest! {
        /// Against the definition: the commit is the lowest open offset, or one past the
        /// last taken when none is open; whatever order records settle in.
        #[test]
        fn the_commit_is_the_lowest_open_offset(
            steps in proptest::collection::vec((1i64..4, proptest::bool::ANY, 0usize..8), 1..200)
        ) {
            let mut w = Watermark::default();
            let (mut open, mut next): (Vec<i64>, i64) = (Vec::new(), 0);
            for (gap, settle, pick) in steps {
                if settle && !open.is_empty() {
                    let o = open.remove(pick % open.len());
                    w.settle(o);
                } else {
                    next += gap;
                    w.take(next);
                    open.push(next);
                    next += 1;
                }
                let expected = open.iter().min().copied().unwrap_or(next);
                proptest::prop_assert_eq!(w.committable(), Some(expected));
                proptest::prop_assert_eq!(w.pending(), open.len());
            }
        }
    }
}
