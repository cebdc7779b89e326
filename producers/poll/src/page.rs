//! One page of a list API's answer: its items (id, version, time, bytes) and where the next
//! page is. The body comes from a third party, so every item is checked and a page that is
//! not what the spec describes is an error naming what was wrong.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use reqwest::header::HeaderMap;
use serde_json::value::RawValue;
use sluice_topology::poll::{PageSize, Pagination, PollSpec, TimeFormat};

use crate::cursor::PageRef;
use crate::json_path::{elements, find_raw, find_scalar, scalar_text};
use crate::version::{time_ms, Version};

/// One item of a page.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub version: Version,
    /// The item's time (its version when that is a time), for `since` and the lookback.
    pub time_ms: Option<i64>,
    /// The item's bytes as the API wrote them: the raw record's value.
    pub body: Vec<u8>,
}

/// A parsed page.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Item>,
    pub next: Option<PageRef>,
}

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("no array of items at `{0}`")]
    NoItems(String),
    #[error("item {index}: no {what} at `{path}` (a string or a number)")]
    Field {
        index: usize,
        what: &'static str,
        path: String,
    },
}

/// Reads `body` (with `headers`) as the page found at `at`.
pub fn parse(
    spec: &PollSpec,
    at: &PageRef,
    body: &[u8],
    headers: &HeaderMap,
) -> Result<Page, PageError> {
    // Read as unparsed text: only the path to the items and each item's id and version are
    // parsed, and an item's bytes are kept as they are.
    let doc: &RawValue =
        serde_json::from_slice(body).map_err(|e| PageError::NotJson(e.to_string()))?;
    let list = find_raw(doc, &spec.items)
        .and_then(elements)
        .ok_or_else(|| PageError::NoItems(spec.items.clone()))?;
    let format = spec
        .since
        .as_ref()
        .map_or(TimeFormat::Rfc3339, |s| s.format);
    let items = list
        .into_iter()
        .enumerate()
        .map(|(index, v)| item(spec, format, index, v))
        .collect::<Result<Vec<_>, _>>()?;
    let next = next_page(spec, at, doc, headers, &items);
    Ok(Page { items, next })
}

fn item(
    spec: &PollSpec,
    format: TimeFormat,
    index: usize,
    v: &RawValue,
) -> Result<Item, PageError> {
    let field = |what, path: &String| PageError::Field {
        index,
        what,
        path: path.clone(),
    };
    let id = find_scalar(v, &spec.id)
        .as_ref()
        .and_then(scalar_text)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| field("id", &spec.id))?;
    let version_value =
        find_scalar(v, &spec.version).ok_or_else(|| field("version", &spec.version))?;
    let version = Version::of(&version_value).ok_or_else(|| field("version", &spec.version))?;
    Ok(Item {
        id,
        time_ms: time_ms(&version_value, format),
        version,
        body: v.get().as_bytes().to_vec(),
    })
}

/// Where the page after this one is, or `None` when this was the last.
fn next_page(
    spec: &PollSpec,
    at: &PageRef,
    doc: &RawValue,
    headers: &HeaderMap,
    items: &[Item],
) -> Option<PageRef> {
    // A short page is the last one for styles that cannot say so otherwise.
    let full = match &spec.page_size {
        Some(size) => items.len() >= size.value as usize,
        None => !items.is_empty(),
    };
    match &spec.pagination {
        Pagination::None => {
            spec.since.as_ref()?.tie_break.as_ref()?;
            let last = items.last().filter(|_| full)?;
            Some(PageRef::Keyset {
                time_ms: last.time_ms?,
                id: last.id.clone(),
            })
        }
        Pagination::Cursor { path, .. } => {
            let token = find_scalar(doc, path).as_ref().and_then(scalar_text)?;
            (!token.is_empty()).then_some(PageRef::Cursor { token })
        }
        Pagination::Link => link_next(headers).map(|url| PageRef::Url { url }),
        Pagination::Page { start, .. } => {
            let n = match at {
                PageRef::Page { n } => *n,
                _ => *start,
            };
            full.then_some(PageRef::Page { n: n + 1 })
        }
        Pagination::Offset { .. } => next_offset(at, items, full, spec.page_size.as_ref()),
    }
}

/// The offset page after this one. Offsets move under a crawl: an item before the crawl's
/// position that changes (and moves to the end of an `updated_at` order) or goes away shifts
/// every later item one place back, and the item at the page boundary would never be read.
/// So each page asks again for the last [`OFFSET_OVERLAP`]th of the one before it, and checks
/// that one of those items, unchanged, is on it: then everything after it is on this page or
/// later ones. When none is, the rest shifted further back than the overlap: the crawl steps
/// back a page at a time until it finds one (or reaches offset 0), and the store drops what
/// is read twice. An API whose order is not stable never shows the overlap again; after
/// [`OFFSET_STEP_BACKS`] steps back a crawl goes on without the check, so it still ends.
fn next_offset(
    at: &PageRef,
    items: &[Item],
    full: bool,
    page_size: Option<&PageSize>,
) -> Option<PageRef> {
    let (n, anchors, steps_back) = match at {
        PageRef::Offset {
            n,
            anchors,
            steps_back,
        } => (*n, anchors.as_slice(), *steps_back),
        _ => (0, &[][..], 0),
    };
    let shown = |(id, version): &(String, String)| {
        items
            .iter()
            .any(|i| &i.id == id && i.version.as_str() == version)
    };
    let shifted = n > 0 && !anchors.is_empty() && !anchors.iter().any(shown);
    if shifted && steps_back < OFFSET_STEP_BACKS {
        let step = page_size
            .map_or(items.len() as u64, |p| u64::from(p.value))
            .max(1);
        tracing::debug!(
            offset = n,
            "offset page shifted past its overlap; stepping back"
        );
        return Some(PageRef::Offset {
            n: n.saturating_sub(step),
            anchors: anchors.to_vec(),
            steps_back: steps_back + 1,
        });
    }
    // Warned once a crawl: `steps_back` counts one past the budget from then on.
    let steps_back = if shifted && steps_back == OFFSET_STEP_BACKS {
        tracing::warn!(
            offset = n,
            steps_back,
            "offset pages keep shifting past their overlap (is the API's order stable?); this \
             crawl goes on without the check and may miss items until the next crawl"
        );
        steps_back + 1
    } else {
        steps_back
    };
    // Without a page size the list ends on a page with nothing past the overlap.
    let full = full && (page_size.is_some() || items.len() > anchors.len());
    if !full {
        return None;
    }
    let overlap = match items.len() {
        0 | 1 => 0,
        len => (len / OFFSET_OVERLAP).clamp(1, len - 1),
    };
    let anchors = items[items.len() - overlap..]
        .iter()
        .map(|i| (i.id.clone(), i.version.as_str().to_string()))
        .collect();
    Some(PageRef::Offset {
        n: n + (items.len() - overlap) as u64,
        anchors,
        steps_back,
    })
}

/// What a crawl's last pages showed, to end a crawl that stopped making progress: an API
/// that ignores the pagination parameter answers every page alike, and one whose empty pages
/// keep pointing to another (back to one already asked for, or on and on) never runs out;
/// either would be followed for ever, as fast as it answers. Empty pages alone are no
/// stall: an API that filters after paging may answer many in a row before the next item.
#[derive(Debug, Default)]
pub struct Progress {
    at: Option<PageRef>,
    /// The (id, version) of each item of the last page, hashed.
    items: HashSet<u64>,
    /// The empty pages asked for since the last page with items.
    empty_run: HashSet<PageRef>,
}

/// Why a crawl ends before the API says its list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// A page further on showed only items of the page before it.
    Repeated,
    /// An empty page pointed to a page already asked for since the last item.
    Looped,
    /// [`EMPTY_PAGES_AT_MOST`] empty pages in a row, each pointing to another.
    Endless,
}

impl Stall {
    /// What went wrong at `at`, for the source's status and its log.
    pub fn describe(self, at: &PageRef) -> String {
        let at = at.describe();
        match self {
            Stall::Repeated => format!(
                "the page at {at} showed only items of the page before it (does the API \
                 honour the pagination parameter?); the crawl ended there"
            ),
            Stall::Looped => format!(
                "the empty page at {at} pointed to a page already asked for since the last \
                 item; the crawl ended there"
            ),
            Stall::Endless => format!(
                "the API answered {EMPTY_PAGES_AT_MOST} empty pages in a row, each pointing to \
                 another; the crawl ended at {at}"
            ),
        }
    }
}

/// A crawl ends after this many empty pages in a row, each pointing to another.
pub const EMPTY_PAGES_AT_MOST: usize = 1_000;

impl Progress {
    /// Takes `page`, found at `at`; says why following its next page would make no
    /// progress, if it would.
    pub fn stall(&mut self, at: &PageRef, page: &Page) -> Option<Stall> {
        let empty = page.items.is_empty();
        if empty {
            self.empty_run.insert(at.clone());
        } else {
            self.empty_run.clear();
        }
        let stall = match &page.next {
            None => None,
            Some(_) if self.repeated_by(at, page) => Some(Stall::Repeated),
            Some(next) if empty && self.empty_run.contains(next) => Some(Stall::Looped),
            Some(_) if self.empty_run.len() >= EMPTY_PAGES_AT_MOST => Some(Stall::Endless),
            Some(_) => None,
        };
        self.at = Some(at.clone());
        self.items = page.items.iter().map(identity).collect();
        stall
    }

    /// Whether `page`, found at `at` further on than the last page, shows only items that
    /// page showed. An offset crawl stepping back may legitimately read the same items again.
    fn repeated_by(&self, at: &PageRef, page: &Page) -> bool {
        let stepped_back = match (&self.at, at) {
            (Some(PageRef::Offset { n: before, .. }), PageRef::Offset { n, .. }) => n <= before,
            _ => false,
        };
        self.at.is_some()
            && !stepped_back
            && !page.items.is_empty()
            && page.items.iter().all(|i| self.items.contains(&identity(i)))
    }
}

fn identity(item: &Item) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (&item.id, item.version.as_str()).hash(&mut h);
    h.finish()
}

/// The most times one crawl steps back before it stops checking its offset pages' overlap.
pub const OFFSET_STEP_BACKS: u32 = 32;

/// An offset page asks again for this fraction (1/N) of the page before it.
pub const OFFSET_OVERLAP: usize = 8;

/// The target of `Link: <…>; rel="next"` (RFC 8288), across every `Link` header.
pub fn link_next(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            params
                .split(';')
                .any(|p| {
                    let p = p.trim().replace(' ', "");
                    p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
                })
                .then(|| target.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PollSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    /// A page of items `i0`…, version 1 unless `changed` names them (version 2).
    fn body(ids: std::ops::Range<u32>, changed: &[u32]) -> Vec<u8> {
        let items: Vec<_> = ids
            .map(|i| serde_json::json!({"id": format!("i{i}"), "v": if changed.contains(&i) { 2 } else { 1 }}))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "data": items })).unwrap()
    }

    fn offset_next(s: &PollSpec, at: &PageRef, body: &[u8]) -> Option<PageRef> {
        parse(s, at, body, &HeaderMap::new()).unwrap().next
    }

    fn offset(next: &Option<PageRef>) -> (u64, Vec<&str>) {
        match next {
            Some(PageRef::Offset { n, anchors, .. }) => {
                (*n, anchors.iter().map(|(id, _)| id.as_str()).collect())
            }
            other => panic!("not an offset: {other:?}"),
        }
    }

    #[test]
    fn offset_pages_overlap_and_step_back_when_the_list_shifted_past_the_overlap() {
        let s = spec("{url: 'http://127.0.0.1/', items: data, version: v, page_size: {param: limit, value: 16}, pagination: {type: offset, param: offset}}");
        // Items 0–15; the next page starts two items early and must show i14 or i15 again.
        let first = offset_next(&s, &PageRef::First, &body(0..16, &[]));
        assert_eq!(offset(&first), (14, vec!["i14", "i15"]));
        let at = first.unwrap();
        // Nothing moved: the page at 14 starts with the anchors.
        assert_eq!(offset(&offset_next(&s, &at, &body(14..30, &[]))).0, 28);
        // One earlier item left: everything moved back one; i15 is still on the page.
        assert_eq!(offset(&offset_next(&s, &at, &body(15..31, &[]))).0, 28);
        // Three left: i14–i16 moved before offset 14 and neither anchor is on the page (i16
        // would have been skipped): step back a page, keeping the anchors.
        let back = offset_next(&s, &at, &body(17..33, &[]));
        assert_eq!(offset(&back), (0, vec!["i14", "i15"]));
        // At offset 0 nothing can be before the page: the crawl goes on from there.
        assert_eq!(
            offset(&offset_next(&s, &back.unwrap(), &body(3..19, &[]))).0,
            14
        );
        // An anchor shown with a new version has moved; it does not count.
        assert_eq!(
            offset(&offset_next(&s, &at, &body(14..30, &[14, 15]))).0,
            0,
            "both anchors changed: step back"
        );
        // A short page with an anchor on it is the last.
        assert_eq!(offset_next(&s, &at, &body(14..20, &[])), None);
    }

    #[test]
    fn a_crawl_whose_pages_never_show_the_overlap_stops_stepping_back_and_ends() {
        let s = spec("{url: 'http://127.0.0.1/', items: data, version: v, page_size: {param: limit, value: 16}, pagination: {type: offset, param: offset}}");
        // An unstable order: every page is items no earlier page ended with.
        let mut at = PageRef::First;
        let mut pages = 0;
        let mut backs = 0;
        let mut furthest = 0;
        while let Some(next) = {
            let fresh = 1000 * (pages + 1);
            // Past offset 100 the list ends (a short page).
            let len = if furthest > 100 { 3 } else { 16 };
            offset_next(&s, &at, &body(fresh..fresh + len, &[]))
        } {
            let (n, _) = offset(&Some(next.clone()));
            if let PageRef::Offset { n: before, .. } = &at {
                backs += u32::from(n < *before);
            }
            furthest = furthest.max(n);
            at = next;
            pages += 1;
            assert!(pages < 1000, "the crawl never ended");
        }
        assert_eq!(backs, OFFSET_STEP_BACKS);
    }

    #[test]
    fn a_page_showing_only_the_items_of_the_page_before_is_a_repeat() {
        let s = spec("{url: 'http://127.0.0.1/', items: data, version: v, page_size: {param: limit, value: 16}, pagination: {type: offset, param: offset}}");
        let page = |at: &PageRef, ids, changed: &[u32]| {
            parse(&s, at, &body(ids, changed), &HeaderMap::new()).unwrap()
        };
        let after_first = || {
            let mut p = Progress::default();
            let first = page(&PageRef::First, 0..16, &[]);
            // A crawl's first page has no page before it.
            assert_eq!(p.stall(&PageRef::First, &first), None);
            (p, first.next.unwrap())
        };
        // An API ignoring `offset` answers the first page again.
        let (mut p, at) = after_first();
        assert_eq!(p.stall(&at, &page(&at, 0..16, &[])), Some(Stall::Repeated));
        // The next page proper shows the overlap and new items.
        let (mut p, at) = after_first();
        assert_eq!(p.stall(&at, &page(&at, 14..30, &[])), None);
        // An item of the page before with a new version is new.
        let (mut p, at) = after_first();
        assert_eq!(p.stall(&at, &page(&at, 0..16, &[3])), None);
        // A page of items already seen that ends the list (the overlap, nothing after it) is
        // no stall.
        let (mut p, at) = after_first();
        assert_eq!(p.stall(&at, &page(&at, 14..16, &[])), None);
        // Stepping back may read the same items again.
        let mut p = Progress::default();
        let later = PageRef::Offset {
            n: 28,
            anchors: vec![],
            steps_back: 0,
        };
        assert_eq!(p.stall(&later, &page(&later, 28..44, &[])), None);
        let back = PageRef::Offset {
            n: 12,
            anchors: vec![],
            steps_back: 1,
        };
        assert_eq!(p.stall(&back, &page(&back, 28..44, &[])), None);
    }

    #[test]
    fn empty_pages_end_a_crawl_when_they_loop_or_never_stop() {
        let s = spec("{url: 'http://127.0.0.1/', items: data, version: v, pagination: {type: cursor, param: cursor, path: next}}");
        let page = |items: std::ops::Range<u32>, next: &str| {
            let mut doc: serde_json::Value = serde_json::from_slice(&body(items, &[])).unwrap();
            doc["next"] = next.into();
            parse(
                &s,
                &PageRef::First,
                &serde_json::to_vec(&doc).unwrap(),
                &HeaderMap::new(),
            )
            .unwrap()
        };
        let at = |token: &str| PageRef::Cursor {
            token: token.into(),
        };
        // Empty pages that each point further on are followed (an API filtering after
        // paging), up to a bound.
        let mut p = Progress::default();
        for n in 1..EMPTY_PAGES_AT_MOST {
            let (here, next) = (format!("c{n}"), format!("c{}", n + 1));
            assert_eq!(p.stall(&at(&here), &page(0..0, &next)), None, "page {n}");
        }
        let last = format!("c{EMPTY_PAGES_AT_MOST}");
        assert_eq!(
            p.stall(&at(&last), &page(0..0, "c-next")),
            Some(Stall::Endless)
        );
        // An empty page pointing back to one asked for since the last item is a loop.
        let mut p = Progress::default();
        assert_eq!(p.stall(&at("a"), &page(0..0, "b")), None);
        assert_eq!(p.stall(&at("b"), &page(0..0, "a")), Some(Stall::Looped));
        // An item in between starts over: the API may hand out a cursor again later.
        let mut p = Progress::default();
        assert_eq!(p.stall(&at("a"), &page(0..0, "b")), None);
        assert_eq!(p.stall(&at("b"), &page(0..1, "c")), None);
        assert_eq!(p.stall(&at("c"), &page(0..0, "a")), None);
        assert!(Stall::Looped
            .describe(&at("b"))
            .contains("already asked for"));
    }

    #[test]
    fn an_offset_list_without_a_page_size_ends_on_a_page_of_anchors_only() {
        let s = spec("{url: 'http://127.0.0.1/', items: data, version: v, pagination: {type: offset, param: offset}}");
        let first = offset_next(&s, &PageRef::First, &body(0..16, &[]));
        assert_eq!(offset(&first), (14, vec!["i14", "i15"]));
        assert_eq!(offset_next(&s, &first.unwrap(), &body(14..16, &[])), None);
        let one = offset_next(&s, &PageRef::First, &body(0..1, &[]));
        assert_eq!(offset(&one), (1, vec![]));
    }

    #[test]
    fn items_and_a_body_cursor() {
        let s = spec("{url: 'http://127.0.0.1/', items: data, version: v, pagination: {type: cursor, param: c, path: meta.next}}");
        let body = br#"{"data": [{"id": 1, "v": "2026-01-01T00:00:00Z"}, {"id": "b", "v": 3}], "meta": {"next": "abc"}}"#;
        let p = parse(&s, &PageRef::First, body, &HeaderMap::new()).unwrap();
        assert_eq!(p.items.len(), 2);
        assert_eq!(
            (p.items[0].id.as_str(), p.items[0].time_ms),
            ("1", Some(1_767_225_600_000))
        );
        assert_eq!(p.items[1].version.as_str(), "3");
        assert_eq!(
            p.next,
            Some(PageRef::Cursor {
                token: "abc".into()
            })
        );
        let last = br#"{"data": [], "meta": {"next": null}}"#;
        assert_eq!(
            parse(&s, &PageRef::First, last, &HeaderMap::new())
                .unwrap()
                .next,
            None
        );
    }

    #[test]
    fn hostile_pages_are_named_errors() {
        let s = spec("{url: 'http://127.0.0.1/', items: data, version: v}");
        let e = |b: &[u8]| {
            parse(&s, &PageRef::First, b, &HeaderMap::new())
                .unwrap_err()
                .to_string()
        };
        assert!(e(b"<html>").starts_with("the body is not JSON"));
        assert_eq!(e(br#"{"data": {}}"#), "no array of items at `data`");
        assert_eq!(
            e(br#"{"data": [{"id": 1}]}"#),
            "item 0: no version at `v` (a string or a number)"
        );
        assert_eq!(
            e(br#"{"data": [{"id": "", "v": 1}]}"#),
            "item 0: no id at `id` (a string or a number)"
        );
        assert_eq!(
            e(br#"{"data": [{"id": {"x": 1}, "v": 1}]}"#),
            "item 0: no id at `id` (a string or a number)"
        );
    }

    #[test]
    fn page_offset_and_keyset_end_on_a_short_page() {
        let body = br#"[{"id": "a", "v": "2026-01-01T00:00:00Z"}, {"id": "b", "v": "2026-01-01T00:00:00Z"}]"#;
        let h = HeaderMap::new();
        let page = spec("{url: 'http://x/', version: v, pagination: {type: page, param: p}, page_size: {param: n, value: 2}}");
        assert_eq!(
            parse(&page, &PageRef::First, body, &h).unwrap().next,
            Some(PageRef::Page { n: 2 })
        );
        assert_eq!(
            parse(&page, &PageRef::Page { n: 2 }, body, &h)
                .unwrap()
                .next,
            Some(PageRef::Page { n: 3 })
        );
        let offset = spec("{url: 'http://x/', version: v, pagination: {type: offset, param: o}, page_size: {param: n, value: 3}}");
        assert_eq!(
            parse(&offset, &PageRef::First, body, &h).unwrap().next,
            None
        );
        let keyset = spec("{url: 'http://x/', version: v, since: {param: s, tie_break: after}, page_size: {param: n, value: 2}}");
        assert_eq!(
            parse(&keyset, &PageRef::First, body, &h).unwrap().next,
            Some(PageRef::Keyset {
                time_ms: 1_767_225_600_000,
                id: "b".into()
            })
        );
    }

    #[test]
    fn link_headers_give_the_next_url() {
        let mut h = HeaderMap::new();
        h.append(
            "link",
            r#"<http://x/?page=1>; rel="prev", <http://x/?page=3>; rel="next""#
                .parse()
                .unwrap(),
        );
        assert_eq!(link_next(&h).as_deref(), Some("http://x/?page=3"));
        let mut h = HeaderMap::new();
        h.append("link", r#"<http://x/?page=1>; rel="last""#.parse().unwrap());
        assert_eq!(link_next(&h), None);
    }
}
