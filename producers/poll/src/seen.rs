//! The (id, version) store: which version of each item was written, so re-reading the
//! lookback window (or a page again after a crash) writes nothing twice, while a changed
//! item, a new version, is a new record.
//!
//! Every entry is also a record of the state topic (see [`crate::cursor`]); in memory only
//! entries that a later crawl can still return are kept: once a crawl over an API that
//! lists items oldest first has moved past `time - lookback`, older entries are dropped, so
//! memory stays flat through a long backfill.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// The version written last for one item, and the item's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEntry {
    pub v: String,
    pub t: Option<i64>,
}

/// What to do with an item read from a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A version not written yet.
    Write,
    /// This version was written already.
    Duplicate,
    /// Older than the version written: a stale read, dropped so the item never goes back.
    Stale,
}

#[derive(Debug, Default)]
pub struct Seen {
    entries: HashMap<String, SeenEntry>,
}

impl Seen {
    pub fn new(entries: HashMap<String, SeenEntry>) -> Self {
        Self { entries }
    }

    pub fn decide(&self, id: &str, version: &Version) -> Decision {
        let Some(entry) = self.entries.get(id) else {
            return Decision::Write;
        };
        match version.compare(&Version(entry.v.clone())) {
            Some(Ordering::Equal) => Decision::Duplicate,
            Some(Ordering::Less) => Decision::Stale,
            Some(Ordering::Greater) | None => Decision::Write,
        }
    }

    pub fn record(&mut self, id: String, entry: SeenEntry) {
        self.entries.insert(id, entry);
    }

    /// Forgets entries of items older than `horizon_ms` (entries without a time are kept).
    pub fn forget_before(&mut self, horizon_ms: i64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.t.is_none_or(|t| t >= horizon_ms));
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: &str, t: i64) -> SeenEntry {
        SeenEntry {
            v: v.into(),
            t: Some(t),
        }
    }

    #[test]
    fn a_version_is_written_once_and_a_new_one_again() {
        let mut s = Seen::default();
        let v = |x: &str| Version(x.into());
        assert_eq!(s.decide("a", &v("1")), Decision::Write);
        s.record("a".into(), entry("1", 10));
        assert_eq!(s.decide("a", &v("1")), Decision::Duplicate);
        assert_eq!(s.decide("a", &v("2")), Decision::Write);
        s.record("a".into(), entry("2", 20));
        assert_eq!(s.decide("a", &v("1")), Decision::Stale);
        s.record("b".into(), entry("x", 5));
        assert_eq!(
            s.decide("b", &v("y")),
            Decision::Write,
            "unordered versions differ"
        );
        assert_eq!(s.forget_before(10), 1);
        assert_eq!(s.len(), 1);
    }
}
