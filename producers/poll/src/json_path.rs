//! Dotted paths into a JSON document: `data`, `result.items`, `meta.next[0]`. The empty path
//! is the document itself. Enough to find items, ids, versions and cursors in list APIs;
//! no wildcards or filters.
//!
//! [`find_raw`] walks the same paths through the unparsed text: only the objects and arrays
//! on the path are split into their members, so a page of items is read without building
//! every item's values, and an item's bytes stay as the API wrote them.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;

/// One step of a path: a member name, or an array index.
enum Step<'p> {
    Member(&'p str),
    Index(usize),
}

/// The steps of `path`; `None` for an index that is not one (`[x]`, `[0`).
fn steps(path: &str) -> impl Iterator<Item = Option<Step<'_>>> {
    path.split('.')
        .filter(|_| !path.is_empty())
        .flat_map(|segment| {
            let (name, indexes) = match segment.find('[') {
                Some(i) => (&segment[..i], &segment[i..]),
                None => (segment, ""),
            };
            let member = (!name.is_empty()).then_some(Some(Step::Member(name)));
            let indexes = indexes.split('[').skip(1).map(|index| {
                let n = index.strip_suffix(']')?.parse().ok()?;
                Some(Step::Index(n))
            });
            member.into_iter().chain(indexes)
        })
}

/// The value at `path` in `root`, if there is one.
pub fn find<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    steps(path).try_fold(root, |at, step| match step? {
        Step::Member(name) => at.get(name),
        Step::Index(n) => at.get(n),
    })
}

/// The unparsed value at `path` in `root`, if there is one. Where a key repeats, the last one
/// counts, as when parsing to a [`Value`].
pub fn find_raw<'a>(root: &'a RawValue, path: &str) -> Option<&'a RawValue> {
    steps(path).try_fold(root, |at, step| match step? {
        Step::Member(name) => member(at, name),
        Step::Index(n) => elements(at)?.get(n).copied(),
    })
}

/// `object[name]` without parsing the members' values.
fn member<'a>(object: &'a RawValue, name: &str) -> Option<&'a RawValue> {
    let members: BTreeMap<String, &'a RawValue> = serde_json::from_str(object.get()).ok()?;
    members.get(name).copied()
}

/// An array's elements, unparsed; `None` when `value` is not an array.
pub fn elements(value: &RawValue) -> Option<Vec<&RawValue>> {
    serde_json::from_str(value.get()).ok()
}

/// A parsed scalar at `path` in `root` (`None` when absent, or when it is not a JSON scalar).
pub fn find_scalar(root: &RawValue, path: &str) -> Option<Value> {
    let raw = find_raw(root, path)?;
    matches!(
        raw.get().as_bytes().first(),
        Some(b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
    )
    .then(|| serde_json::from_str(raw.get()).ok())
    .flatten()
}

/// A scalar as text (strings as they are, numbers as written); `None` for anything else.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_find_fields_and_array_elements() {
        let doc = json!({"data": {"items": [{"id": 7}, {"id": "b"}]}, "next": null});
        assert_eq!(find(&doc, ""), Some(&doc));
        assert_eq!(find(&doc, "data.items[1].id"), Some(&json!("b")));
        assert_eq!(find(&doc, "data.items[0].id"), Some(&json!(7)));
        assert_eq!(find(&doc, "next"), Some(&Value::Null));
        for missing in [
            "nope",
            "data.items[2]",
            "data.items[x]",
            "data.items[0",
            "data.x.y",
        ] {
            assert_eq!(find(&doc, missing), None, "{missing}");
        }
        assert_eq!(scalar_text(&json!(7)).as_deref(), Some("7"));
        assert_eq!(scalar_text(&json!("7")).as_deref(), Some("7"));
        assert_eq!(scalar_text(&json!([7])), None);
    }

    #[test]
    fn raw_paths_find_what_parsed_paths_find() {
        let text = r#"{"data": {"items": [{"id": 7, "n": {"x": [1, 2]}}, {"id": "b"}]}, "next": null, "k": 1, "k": 2}"#;
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        let doc: Value = serde_json::from_str(text).unwrap();
        for path in [
            "",
            "data",
            "data.items[1].id",
            "data.items[0].n.x[1]",
            "next",
            "k",
            "nope",
            "data.items[2]",
            "data.items[x]",
            "data.items[0",
            "data.x.y",
            "next.x",
        ] {
            let parsed =
                find_raw(raw, path).map(|r| serde_json::from_str::<Value>(r.get()).unwrap());
            assert_eq!(parsed.as_ref(), find(&doc, path), "{path}");
        }
        let items = find_raw(raw, "data.items").and_then(elements).unwrap();
        assert_eq!(items[0].get(), r#"{"id": 7, "n": {"x": [1, 2]}}"#);
        assert_eq!(find_scalar(raw, "data.items[1].id"), Some(json!("b")));
        assert_eq!(find_scalar(raw, "data.items[0].n"), None);
        assert_eq!(find_scalar(raw, "next"), Some(Value::Null));
    }
}
