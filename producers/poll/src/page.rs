//! One page of a list API's answer: its items (id, version, time, bytes) and where the next
//! page is. The body comes from a third party, so every item is checked and a page that is
//! not what the spec describes is an error naming what was wrong.

use reqwest::header::HeaderMap;
use serde_json::Value;
use sluice_topology::poll::{Pagination, PollSpec, TimeFormat};

use crate::cursor::PageRef;
use crate::json_path::{find, scalar_text};
use crate::version::{time_ms, Version};

/// One item of a page.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub version: Version,
    /// The item's time (its version when that is a time), for `since` and the lookback.
    pub time_ms: Option<i64>,
    /// The item as the API wrote it: the raw record's value.
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
    let doc: Value = serde_json::from_slice(body).map_err(|e| PageError::NotJson(e.to_string()))?;
    let list = find(&doc, &spec.items)
        .and_then(Value::as_array)
        .ok_or_else(|| PageError::NoItems(spec.items.clone()))?;
    let format = spec
        .since
        .as_ref()
        .map_or(TimeFormat::Rfc3339, |s| s.format);
    let items = list
        .iter()
        .enumerate()
        .map(|(index, v)| item(spec, format, index, v))
        .collect::<Result<Vec<_>, _>>()?;
    let next = next_page(spec, at, &doc, headers, &items);
    Ok(Page { items, next })
}

fn item(spec: &PollSpec, format: TimeFormat, index: usize, v: &Value) -> Result<Item, PageError> {
    let field = |what, path: &String| PageError::Field {
        index,
        what,
        path: path.clone(),
    };
    let id = find(v, &spec.id)
        .and_then(scalar_text)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| field("id", &spec.id))?;
    let version_value = find(v, &spec.version).ok_or_else(|| field("version", &spec.version))?;
    let version = Version::of(version_value).ok_or_else(|| field("version", &spec.version))?;
    Ok(Item {
        id,
        time_ms: time_ms(version_value, format),
        version,
        body: serde_json::to_vec(v).expect("json"),
    })
}

/// Where the page after this one is, or `None` when this was the last.
fn next_page(
    spec: &PollSpec,
    at: &PageRef,
    doc: &Value,
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
            let token = find(doc, path).and_then(scalar_text)?;
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
        Pagination::Offset { .. } => {
            let n = match at {
                PageRef::Offset { n } => *n,
                _ => 0,
            };
            full.then_some(PageRef::Offset {
                n: n + items.len() as u64,
            })
        }
    }
}

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
