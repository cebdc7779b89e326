//! How many sagas the orchestrator lets start: at most `max_in_flight` running or
//! compensating at once, so its memory follows its configuration, not the orders queued.
//!
//! An instance counts in the store once its start control is applied, which happens a hop
//! later (the trigger becomes a start control on the replies topic). Until then its trigger
//! counts here, as *starting*: admitted in a committed batch, its start control not applied
//! yet. A start control applied by another instance after a rebalance would never be seen
//! here, so a rebalance forgets the starting count (one overshoot at most per rebalance).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[derive(Debug, Default)]
pub(super) struct Admission {
    /// Start controls owed by committed batches.
    starting: AtomicUsize,
    /// The batch in progress: start controls its triggers made, and start controls applied.
    admitted: AtomicUsize,
    started: AtomicUsize,
}

impl Admission {
    /// Takes one trigger unless `moving` running instances plus those on their way reach
    /// `max_in_flight`.
    pub(super) fn admit(&self, moving: usize, max_in_flight: usize) -> bool {
        let before = self.admitted.fetch_add(1, Relaxed);
        if moving + self.starting.load(Relaxed) + before >= max_in_flight {
            self.admitted.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// An admitted trigger made `starts` start controls instead of the one counted: none
    /// (no saga of its type) or several (several sagas start on it).
    pub(super) fn made(&self, starts: usize) {
        match starts {
            0 => {
                let _ = self
                    .admitted
                    .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
            }
            n => {
                self.admitted.fetch_add(n - 1, Relaxed);
            }
        }
    }

    /// A start control was applied in the batch in progress.
    pub(super) fn applied(&self) {
        self.started.fetch_add(1, Relaxed);
    }

    /// Settles the batch: a committed one's admissions become owed start controls and its
    /// applied ones are paid; an aborted batch will be handled again, so it counts nothing.
    pub(super) fn batch_end(&self, committed: bool) {
        let admitted = self.admitted.swap(0, Relaxed);
        let started = self.started.swap(0, Relaxed);
        if committed {
            let owed = self.starting.load(Relaxed) + admitted;
            self.starting.store(owed.saturating_sub(started), Relaxed);
        }
    }

    pub(super) fn rebalanced(&self) {
        self.starting.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_count_until_their_start_is_applied_and_no_longer() {
        let a = Admission::default();
        assert!(a.admit(0, 3) && a.admit(0, 3) && a.admit(0, 3));
        assert!(!a.admit(0, 3), "three on their way");
        a.batch_end(true);
        assert!(!a.admit(0, 3), "still owed after the commit");
        // The next batch applies two of the starts: they now count as moving instead.
        a.applied();
        a.applied();
        assert!(!a.admit(2, 3));
        a.batch_end(true);
        assert!(!a.admit(2, 3), "one start still owed");
        a.applied();
        a.batch_end(true);
        assert!(!a.admit(3, 3));
        assert!(a.admit(2, 3), "one finished: one more may start");
    }

    #[test]
    fn aborted_batches_and_triggers_without_a_saga_count_nothing() {
        let a = Admission::default();
        assert!(a.admit(0, 2) && a.admit(0, 2));
        a.batch_end(false);
        assert!(
            a.admit(0, 2),
            "the aborted batch's triggers are offered again"
        );
        a.made(0);
        assert!(a.admit(0, 2) && a.admit(0, 2));
        a.made(2);
        a.batch_end(true);
        assert!(
            !a.admit(0, 2),
            "a trigger that starts two sagas counts twice"
        );
        a.rebalanced();
        assert!(a.admit(0, 2), "a rebalance forgets what was owed");
    }
}
