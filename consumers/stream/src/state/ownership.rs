//! Which state partitions an instance holds. State partition *p* belongs to input partition
//! *p*, and one state partition may serve several input topics (a main topic and its retry
//! tiers): it is restored when the first of them is assigned, and dropped only when the last
//! of them is revoked.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::Assigned;

#[derive(Debug, Default)]
pub struct Ownership {
    inner: Mutex<Owned>,
}

#[derive(Debug, Default)]
struct Owned {
    /// Input partitions owned.
    inputs: HashSet<(String, i32)>,
    /// State partitions restored and held.
    loaded: HashSet<i32>,
}

impl Ownership {
    /// Notes the newly assigned partitions of the topics `is_input` accepts, and returns the
    /// state partitions they need that are not held yet (sorted), to restore before any
    /// record of them is handled; confirm with [`Ownership::restored`].
    pub fn assign(&self, partitions: &Assigned, is_input: impl Fn(&str) -> bool) -> Vec<i32> {
        let mut owned = self.inner.lock().expect("ownership");
        let mut needed: Vec<i32> = Vec::new();
        for (topic, p) in partitions.iter().filter(|(t, _)| is_input(t)) {
            owned.inputs.insert((topic.clone(), *p));
            if !owned.loaded.contains(p) {
                needed.push(*p);
            }
        }
        needed.sort_unstable();
        needed.dedup();
        needed
    }

    /// Notes that `partitions` were restored and are now held.
    pub fn restored(&self, partitions: &[i32]) {
        self.inner
            .lock()
            .expect("ownership")
            .loaded
            .extend(partitions);
    }

    /// Notes revoked partitions, and returns the state partitions no owned input partition
    /// needs any more (sorted): their state is to be dropped.
    pub fn revoke(&self, partitions: &Assigned) -> Vec<i32> {
        let mut owned = self.inner.lock().expect("ownership");
        for tp in partitions {
            owned.inputs.remove(tp);
        }
        let still: HashSet<i32> = owned.inputs.iter().map(|(_, p)| *p).collect();
        let mut gone: Vec<i32> = owned
            .loaded
            .iter()
            .copied()
            .filter(|p| !still.contains(p))
            .collect();
        gone.sort_unstable();
        for p in &gone {
            owned.loaded.remove(p);
        }
        gone
    }

    /// Whether state partition `p` is held.
    pub fn holds(&self, p: i32) -> bool {
        self.inner.lock().expect("ownership").loaded.contains(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(list: &[(&str, i32)]) -> Assigned {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn a_state_partition_is_restored_once_and_dropped_with_its_last_input() {
        let o = Ownership::default();
        let inputs = |t: &str| t != "elsewhere";
        let needed = o.assign(
            &tps(&[("main", 1), ("retry", 1), ("main", 0), ("elsewhere", 5)]),
            inputs,
        );
        assert_eq!(
            needed,
            [0, 1],
            "each state partition once, other topics ignored"
        );
        assert!(!o.holds(1), "held only once restored");
        o.restored(&needed);
        assert!(
            o.assign(&tps(&[("retry", 0)]), inputs).is_empty(),
            "already held"
        );

        assert!(
            o.revoke(&tps(&[("main", 1)])).is_empty(),
            "the retry tier still needs 1"
        );
        assert_eq!(o.revoke(&tps(&[("retry", 1)])), [1]);
        assert!(!o.holds(1));
        assert_eq!(
            o.assign(&tps(&[("main", 1)]), inputs),
            [1],
            "restored again when it comes back"
        );
    }

    #[test]
    fn a_failed_restore_is_asked_for_again() {
        let o = Ownership::default();
        assert_eq!(o.assign(&tps(&[("main", 3)]), |_| true), [3]);
        // No `restored`: the restore failed, the loop stops or comes round again.
        assert_eq!(o.assign(&tps(&[("main", 3)]), |_| true), [3]);
    }
}
