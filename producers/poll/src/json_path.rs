//! Dotted paths into a JSON document: `data`, `result.items`, `meta.next[0]`. The empty path
//! is the document itself. Enough to find items, ids, versions and cursors in list APIs;
//! no wildcards or filters.

use serde_json::Value;

/// The value at `path` in `root`, if there is one.
pub fn find<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = root;
    if path.is_empty() {
        return Some(at);
    }
    for segment in path.split('.') {
        let (name, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            at = at.get(name)?;
        }
        for index in indexes.split('[').skip(1) {
            let n: usize = index.strip_suffix(']')?.parse().ok()?;
            at = at.get(n)?;
        }
    }
    Some(at)
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
}
