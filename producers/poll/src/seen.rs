//! The (id, version) store: which version of each item was written, so re-reading the
//! lookback window (or a page again after a crash) writes nothing twice, while a changed
//! item, a new version, is a new record.
//!
//! The entries a page adds are written as that page's records of the state topic (see
//! [`crate::cursor`]), in the page's own transaction: one record per page rather than one per
//! item halves what a page's transaction writes. In memory only entries that a later crawl
//! can still return are kept: once a crawl over an API that lists items oldest first has
//! moved past `time - lookback`, older entries are dropped, and a page whose entries are all
//! older is deleted from the topic too, so both memory and the topic stay flat through a
//! long backfill.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

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

/// The state records of one page's entries: how many, and the newest item time among them
/// (`None` when one has no time: such a page is never deleted, as its entries never expire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageEntries {
    pub parts: u32,
    pub newest_ms: Option<i64>,
}

impl PageEntries {
    /// The records of `entries` in `parts` records.
    pub fn of<'a>(parts: u32, entries: impl IntoIterator<Item = &'a SeenEntry>) -> Self {
        let mut newest = Some(i64::MIN);
        for e in entries {
            newest = match (newest, e.t) {
                (Some(n), Some(t)) => Some(n.max(t)),
                _ => None,
            };
        }
        Self {
            parts,
            newest_ms: newest,
        }
    }
}

impl PageEntries {
    /// The records of one page written in two sets of parts.
    pub fn and(self, other: PageEntries) -> PageEntries {
        PageEntries {
            parts: self.parts + other.parts,
            newest_ms: self.newest_ms.zip(other.newest_ms).map(|(a, b)| a.max(b)),
        }
    }
}

#[derive(Debug, Default)]
pub struct Seen {
    entries: HashMap<String, SeenEntry>,
    /// The pages whose records hold entries, by page number.
    pages: BTreeMap<u64, PageEntries>,
}

impl Seen {
    pub fn new(entries: HashMap<String, SeenEntry>, pages: BTreeMap<u64, PageEntries>) -> Self {
        Self { entries, pages }
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

    pub fn get(&self, id: &str) -> Option<&SeenEntry> {
        self.entries.get(id)
    }

    pub fn record(&mut self, id: String, entry: SeenEntry) {
        self.entries.insert(id, entry);
    }

    /// Notes that page `page`'s entries were written as `records`.
    pub fn page_written(&mut self, page: u64, records: PageEntries) {
        self.pages.insert(page, records);
    }

    /// Forgets entries of items older than `horizon_ms` (entries without a time are kept);
    /// returns the pages whose records now hold only such entries, for the caller to delete.
    pub fn forget_before(&mut self, horizon_ms: i64) -> Vec<(u64, PageEntries)> {
        self.entries
            .retain(|_, e| e.t.is_none_or(|t| t >= horizon_ms));
        let behind: Vec<u64> = self
            .pages
            .iter()
            .filter(|(_, p)| p.newest_ms.is_some_and(|n| n < horizon_ms))
            .map(|(n, _)| *n)
            .collect();
        behind
            .into_iter()
            .filter_map(|n| self.pages.remove(&n).map(|p| (n, p)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pages whose records are still live.
    pub fn pages(&self) -> usize {
        self.pages.len()
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
        s.record(
            "c".into(),
            SeenEntry {
                v: "1".into(),
                t: None,
            },
        );
        assert_eq!(
            s.decide("b", &v("y")),
            Decision::Write,
            "unordered versions differ"
        );
        assert!(s.forget_before(10).is_empty());
        assert_eq!(
            s.len(),
            2,
            "b (5) is forgotten; a (20) kept, and an untimed one"
        );
    }

    #[test]
    fn a_page_is_released_once_all_its_entries_are_behind_the_horizon() {
        let mut s = Seen::default();
        let (a, b) = (entry("1", 10), entry("1", 30));
        s.page_written(1, PageEntries::of(1, [&a, &b]));
        s.page_written(2, PageEntries::of(2, [&entry("1", 20)]));
        let untimed = SeenEntry {
            v: "1".into(),
            t: None,
        };
        s.page_written(3, PageEntries::of(1, [&entry("1", 5), &untimed]));
        assert_eq!(
            s.forget_before(25),
            vec![(
                2,
                PageEntries {
                    parts: 2,
                    newest_ms: Some(20)
                }
            )]
        );
        assert_eq!(s.forget_before(31).len(), 1, "page 1 once 30 is behind");
        assert!(
            s.forget_before(i64::MAX).is_empty(),
            "page 3 holds an untimed entry"
        );
        assert_eq!(s.pages(), 1);
    }
}
