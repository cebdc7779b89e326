//! A source's durable state, as records of the compacted topic `<prefix>.state.poll`,
//! written in the same Kafka transaction as the items of each page: the page's items, the
//! (id, version) pairs they add and the cursor after them are committed together or not at
//! all, so a poller killed at any point resumes at the first page not committed.
//!
//! Keys are JSON arrays, so no source name or item id can be mistaken for a separator:
//! - `["<source>", "cursor"]` → [`Cursor`];
//! - `["<source>", "seen", "<page>", "<part>"]` → `[["<id>", "<version>", <item time ms or
//!   null>], …]`: the (id, version) entries page number `<page>` added, in parts of at most
//!   [`SEEN_RECORD_BYTES`]; deleted (a tombstone) once all are behind the lookback. Page 0
//!   holds entries carried over from the per-item records of earlier versions;
//! - `["<source>", "item", "<id>"]` → `{"v": "<version>", "t": …}`: one entry per record, as
//!   earlier versions wrote them; read, then replaced by page 0 at the next commit;
//! - `["<source>", "status"]` → [`ErrorStatus`] (the last failed crawl);
//! - `["<source>", "pause"]` → [`Pause`]: the API's last `Retry-After` or budget reset, so
//!   a poller started again does not ask before it either, and the longest such wait;
//! - `["<source>", "session"]` → [`Session`]: whether a poller is running. One found open
//!   at start means its predecessor stopped uncleanly: the answer to its last request is
//!   unknown (a 429 whose pause never became durable), so the successor waits as long as
//!   the longest wait the API ever asked of the source before it asks anything.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sluice_schemas::metadata::rfc3339_ms;

use crate::seen::{PageEntries, SeenEntry};

/// One record of the state topic; a `None` value is a tombstone.
pub type StateRecord = (Vec<u8>, Option<Vec<u8>>);

/// The most a page's entries put in one record (JSON bytes): well under Kafka's default
/// `max.message.bytes` (1 MiB) whatever the page size.
pub const SEEN_RECORD_BYTES: usize = 256 * 1024;

/// Where the next request of a crawl starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum PageRef {
    /// The crawl's first page.
    First,
    /// A cursor the API gave in the last page's body.
    Cursor { token: String },
    /// The URL of the last page's `Link: rel="next"`.
    Url { url: String },
    /// A page number.
    Page { n: u64 },
    /// An item offset, and the (id, version) of the last items read before it, which the
    /// page at `n` must show again (see [`crate::page`]: a page that does not has shifted),
    /// and how many times this crawl has stepped back so far.
    Offset {
        n: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        anchors: Vec<(String, String)>,
        #[serde(default, skip_serializing_if = "is_zero")]
        steps_back: u32,
    },
    /// After the item `(time, id)`: `since` = time, tie-break = id.
    Keyset { time_ms: i64, id: String },
}

impl PageRef {
    /// The page, in words (for status and warnings; a cursor's token is left out).
    pub fn describe(&self) -> String {
        match self {
            PageRef::First => "the first page".to_string(),
            PageRef::Cursor { .. } => "a body cursor".to_string(),
            PageRef::Url { .. } => "a next link".to_string(),
            PageRef::Page { n } => format!("page {n}"),
            PageRef::Offset { n, .. } => format!("offset {n}"),
            PageRef::Keyset { time_ms, .. } => format!("after {}", rfc3339_ms(*time_ms)),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A crawl in progress: one pass over the list from `since_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crawl {
    /// The `since` the crawl asked for (already moved back by the lookback).
    pub since_ms: Option<i64>,
    pub next: PageRef,
    /// The newest item time seen so far in this crawl.
    pub newest_ms: Option<i64>,
    pub started_ms: i64,
    /// Items written by this crawl so far.
    pub items: u64,
}

/// The last finished crawl that wrote items, for `sluice sources status`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CrawlSummary {
    pub items: u64,
    /// Since this process started or resumed the crawl.
    pub seconds: f64,
}

/// The cursor of one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The newest item time of the finished crawls: the next crawl asks for items since
    /// this, minus the lookback.
    pub watermark_ms: Option<i64>,
    /// The crawl under way, if one was interrupted or is running.
    pub crawl: Option<Crawl>,
    /// The `ETag` of the last single-page crawl, with the URL it answered.
    pub etag: Option<(String, String)>,
    pub items_written: u64,
    pub pages: u64,
    pub last_success_ms: Option<i64>,
    pub last_crawl: Option<CrawlSummary>,
}

/// The last failure of a source's crawls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorStatus {
    pub errors: u64,
    pub last_error: String,
    pub at_ms: i64,
}

/// A source's state as read back.
#[derive(Debug, Default)]
pub struct Restored {
    pub cursor: Cursor,
    /// Entries of per-item records (written by earlier versions).
    pub items: HashMap<String, SeenEntry>,
    /// Entries of per-page records, by (page, part).
    pub pages: BTreeMap<(u64, u32), Vec<(String, SeenEntry)>>,
    pub status: ErrorStatus,
    /// No request to the API before this (epoch ms).
    pub pause_until_ms: Option<i64>,
    /// The longest wait the API ever set for the source (ms).
    pub longest_pause_ms: Option<i64>,
    /// The last poller did not record a clean stop.
    pub unclean: bool,
}

/// The value of a `pause` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub until_ms: i64,
    /// The longest wait the API set so far, this one included.
    #[serde(default)]
    pub longest_ms: i64,
}

/// The value of a `session` record: written open before a poller's first request and
/// closed when it stops cleanly (after the answer to its last request is recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub open: bool,
    pub at_ms: i64,
}

pub fn session_key(source: &str) -> Vec<u8> {
    serde_json::to_vec(&(source, "session")).expect("json")
}

pub fn pause_key(source: &str) -> Vec<u8> {
    serde_json::to_vec(&(source, "pause")).expect("json")
}

pub fn cursor_key(source: &str) -> Vec<u8> {
    serde_json::to_vec(&(source, "cursor")).expect("json")
}

pub fn status_key(source: &str) -> Vec<u8> {
    serde_json::to_vec(&(source, "status")).expect("json")
}

pub fn item_key(source: &str, id: &str) -> Vec<u8> {
    serde_json::to_vec(&(source, "item", id)).expect("json")
}

pub fn seen_key(source: &str, page: u64, part: u32) -> Vec<u8> {
    serde_json::to_vec(&(source, "seen", page.to_string(), part.to_string())).expect("json")
}

pub fn to_value<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("json")
}

/// `value` as the record under `key`.
pub fn put<T: Serialize>(key: Vec<u8>, value: &T) -> StateRecord {
    (key, Some(to_value(value)))
}

/// The records of the entries page `page` added, in parts of at most [`SEEN_RECORD_BYTES`]
/// (an entry larger than that is a part of its own).
pub fn seen_records(
    source: &str,
    page: u64,
    entries: &[(String, SeenEntry)],
) -> (Vec<StateRecord>, PageEntries) {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut current = Vec::with_capacity(SEEN_RECORD_BYTES);
    for (id, e) in entries {
        let one = to_value(&(id, &e.v, e.t));
        if !current.is_empty() && current.len() + one.len() + 2 > SEEN_RECORD_BYTES {
            current.push(b']');
            parts.push(std::mem::take(&mut current));
        }
        current.push(if current.is_empty() { b'[' } else { b',' });
        current.extend_from_slice(&one);
    }
    if !current.is_empty() {
        current.push(b']');
        parts.push(current);
    }
    let summary = PageEntries::of(parts.len() as u32, entries.iter().map(|(_, e)| e));
    let records = parts
        .into_iter()
        .enumerate()
        .map(|(i, value)| (seen_key(source, page, i as u32), Some(value)))
        .collect();
    (records, summary)
}

/// The tombstones of page `page`'s records.
pub fn seen_tombstones(source: &str, page: u64, entries: PageEntries) -> Vec<StateRecord> {
    (0..entries.parts)
        .map(|part| (seen_key(source, page, part), None))
        .collect()
}

impl Restored {
    /// The (id, version) store the records describe: per-item entries first (the older
    /// format), then each page's in page order, a later version replacing an earlier one;
    /// with the live pages' records.
    pub fn seen(&mut self) -> (HashMap<String, SeenEntry>, BTreeMap<u64, PageEntries>) {
        let mut entries = std::mem::take(&mut self.items);
        let mut pages: BTreeMap<u64, PageEntries> = BTreeMap::new();
        for ((page, _), part) in std::mem::take(&mut self.pages) {
            let this = PageEntries::of(1, part.iter().map(|(_, e)| e));
            pages
                .entry(page)
                .and_modify(|p| *p = p.and(this))
                .or_insert(this);
            entries.extend(part);
        }
        (entries, pages)
    }
}

/// Folds one state record into `state` when it belongs to `source`; records of other
/// sources (which share the topic) and unreadable ones are ignored.
pub fn apply(state: &mut Restored, source: &str, key: &[u8], value: Option<&[u8]>) {
    let Ok(parts) = serde_json::from_slice::<Vec<String>>(key) else {
        return;
    };
    if parts.first().map(String::as_str) != Some(source) {
        return;
    }
    match (parts.get(1).map(String::as_str), parts.get(2)) {
        (Some("cursor"), None) => {
            if let Some(c) = value.and_then(|v| serde_json::from_slice(v).ok()) {
                state.cursor = c;
            }
        }
        (Some("status"), None) => {
            if let Some(s) = value.and_then(|v| serde_json::from_slice(v).ok()) {
                state.status = s;
            }
        }
        (Some("pause"), None) => {
            let pause = value.and_then(|v| serde_json::from_slice::<Pause>(v).ok());
            state.pause_until_ms = pause.map(|p| p.until_ms);
            state.longest_pause_ms = pause.map(|p| p.longest_ms).filter(|l| *l > 0);
        }
        (Some("session"), None) => {
            state.unclean = value
                .and_then(|v| serde_json::from_slice::<Session>(v).ok())
                .is_some_and(|s| s.open);
        }
        (Some("item"), Some(id)) => match value.and_then(|v| serde_json::from_slice(v).ok()) {
            Some(entry) => {
                state.items.insert(id.clone(), entry);
            }
            None => {
                state.items.remove(id);
            }
        },
        (Some("seen"), Some(page)) => {
            let (Ok(page), Some(Ok(part))) = (page.parse(), parts.get(3).map(|p| p.parse())) else {
                return;
            };
            let entries = value
                .and_then(|v| serde_json::from_slice::<Vec<(String, String, Option<i64>)>>(v).ok());
            match entries {
                Some(es) => {
                    let es = es.into_iter().map(|(id, v, t)| (id, SeenEntry { v, t }));
                    state.pages.insert((page, part), es.collect());
                }
                None => {
                    state.pages.remove(&(page, part));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_into_the_source_they_belong_to() {
        let mut s = Restored::default();
        let cursor = Cursor {
            watermark_ms: Some(5),
            crawl: Some(Crawl {
                since_ms: Some(1),
                next: PageRef::Keyset {
                    time_ms: 4,
                    id: "a\",b".into(),
                },
                newest_ms: Some(4),
                started_ms: 0,
                items: 3,
            }),
            etag: Some(("http://x/".into(), "\"e1\"".into())),
            items_written: 3,
            ..Cursor::default()
        };
        let entry = SeenEntry {
            v: "2".into(),
            t: Some(4),
        };
        apply(
            &mut s,
            "orders",
            &cursor_key("orders"),
            Some(&to_value(&cursor)),
        );
        apply(
            &mut s,
            "orders",
            &item_key("orders", "a\",b"),
            Some(&to_value(&entry)),
        );
        apply(
            &mut s,
            "orders",
            &item_key("other", "z"),
            Some(&to_value(&entry)),
        );
        apply(&mut s, "orders", &cursor_key("other"), Some(b"{}"));
        apply(&mut s, "orders", b"garbage", Some(b"{}"));
        assert_eq!(s.cursor, cursor);
        assert_eq!(s.items.len(), 1);
        assert_eq!(s.items["a\",b"], entry);
        apply(&mut s, "orders", &item_key("orders", "a\",b"), None);
        assert!(s.items.is_empty());
    }

    fn entries(n: usize, version: &str, t0: i64) -> Vec<(String, SeenEntry)> {
        (0..n)
            .map(|i| {
                let e = SeenEntry {
                    v: version.into(),
                    t: Some(t0 + i as i64),
                };
                (format!("item-{i}-\u{e9}\",]"), e)
            })
            .collect()
    }

    #[test]
    fn a_page_s_entries_round_trip_in_parts_and_later_pages_win() {
        let mut s = Restored::default();
        let legacy = SeenEntry {
            v: "0".into(),
            t: Some(1),
        };
        apply(
            &mut s,
            "o",
            &item_key("o", "item-0-\u{e9}\",]"),
            Some(&to_value(&legacy)),
        );
        // 20,000 entries of about 40 bytes: more than one part.
        let first = entries(20_000, "1", 100);
        let (records, written) = seen_records("o", 1, &first);
        assert!(written.parts > 1, "{written:?}");
        assert_eq!(records.len() as u32, written.parts);
        assert_eq!(written.newest_ms, Some(100 + 19_999));
        for (key, value) in &records {
            assert!(value.as_ref().unwrap().len() <= SEEN_RECORD_BYTES);
            apply(&mut s, "o", key, value.as_deref());
        }
        let (records, _) = seen_records("o", 2, &entries(1, "2", 500));
        for (key, value) in &records {
            apply(&mut s, "o", key, value.as_deref());
        }
        apply(&mut s, "other", &seen_key("o", 9, 0), Some(b"[]"));
        let (seen, pages) = s.seen();
        assert_eq!(seen.len(), 20_000);
        assert_eq!(
            seen["item-0-\u{e9}\",]"].v, "2",
            "page 2 after page 1 after the item"
        );
        assert_eq!(seen["item-1-\u{e9}\",]"].v, "1");
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[&1], written);

        // Deleted pages are gone on the next read.
        let mut again = Restored::default();
        for (key, value) in seen_records("o", 1, &first).0 {
            apply(&mut again, "o", &key, value.as_deref());
        }
        for (key, value) in seen_tombstones("o", 1, written) {
            apply(&mut again, "o", &key, value.as_deref());
        }
        assert_eq!(again.seen(), (HashMap::new(), BTreeMap::new()));
    }

    #[test]
    fn an_open_session_marks_an_unclean_stop_and_the_longest_pause_is_kept() {
        let mut s = Restored::default();
        let pause = Pause {
            until_ms: 10,
            longest_ms: 2_000,
        };
        apply(&mut s, "o", &pause_key("o"), Some(&to_value(&pause)));
        let open = Session {
            open: true,
            at_ms: 5,
        };
        apply(&mut s, "o", &session_key("o"), Some(&to_value(&open)));
        assert!(s.unclean);
        assert_eq!(
            (s.pause_until_ms, s.longest_pause_ms),
            (Some(10), Some(2_000))
        );
        let closed = Session {
            open: false,
            ..open
        };
        apply(&mut s, "o", &session_key("o"), Some(&to_value(&closed)));
        assert!(!s.unclean);
        // A pause written before the longest wait was recorded reads as none known.
        apply(&mut s, "o", &pause_key("o"), Some(br#"{"until_ms": 7}"#));
        assert_eq!((s.pause_until_ms, s.longest_pause_ms), (Some(7), None));
    }
}
