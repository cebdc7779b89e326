//! W3C `traceparent` (Trace Context level 1), carried in a header at every hop: the HTTP
//! request, the raw record, the normalized event, the saga command. Each hop keeps the trace
//! id and puts its own span id in the parent-id field, so one delivery and everything it
//! causes form one trace.
//!
//! Parsing is strict on purpose: a malformed value copied onto a Kafka record would break
//! every downstream propagator, so anything invalid is replaced rather than forwarded.

/// Header name, as the Kafka binding and HTTP both spell it.
pub const HEADER: &str = "traceparent";

/// Returns `value` (trimmed) when it is a valid traceparent, `None` otherwise.
///
/// Rules (W3C Trace Context §3.2): `version-traceid-parentid-flags`, lower-case hex only;
/// version `ff` is invalid; trace id and parent id must not be all zeros; version `00` is
/// exactly 55 characters, later versions may append `-`-separated fields.
pub fn parse(value: &str) -> Option<&str> {
    let value = value.trim_matches(|c: char| c == ' ' || c == '\t');
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return None;
    }
    let is_hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let all_zero = |s: &[u8]| s.iter().all(|&b| b == b'0');
    let (version, trace_id, parent_id, flags) =
        (&bytes[0..2], &bytes[3..35], &bytes[36..52], &bytes[53..55]);
    let dashes = bytes[2] == b'-' && bytes[35] == b'-' && bytes[52] == b'-';
    if !dashes
        || !is_hex(version)
        || version == b"ff"
        || !is_hex(trace_id)
        || !is_hex(parent_id)
        || !is_hex(flags)
        || all_zero(trace_id)
        || all_zero(parent_id)
    {
        return None;
    }
    match (version, bytes.len()) {
        (b"00", 55) => Some(value),
        (b"00", _) => None,
        // A future version: the first four fields are what we understand; more must
        // follow a dash.
        (_, 55) => Some(value),
        (_, _) if bytes[55] == b'-' => Some(value),
        _ => None,
    }
}

/// A new sampled traceparent with random ids: `00-<32 hex>-<16 hex>-01`.
pub fn generate() -> String {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace_id}-{}-01", &span[..16])
}

/// The traceparent of a new span that is a child of `parent`: same version, trace id and
/// flags, a new parent-id.
pub fn child(parent: &str) -> Option<String> {
    let parent = parse(parent)?;
    let span = uuid::Uuid::new_v4().simple().to_string();
    Some(format!(
        "00-{}-{}-{}",
        &parent[3..35],
        &span[..16],
        &parent[53..55]
    ))
}

/// The trace id (32 hex) of a valid traceparent.
pub fn trace_id(value: &str) -> Option<&str> {
    parse(value).map(|v| &v[3..35])
}

/// A child of `parent` when it is a valid traceparent, else the start of a new trace.
pub fn continue_or_start(parent: Option<&str>) -> String {
    parent.and_then(child).unwrap_or_else(generate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn accepts_the_spec_example_and_future_versions() {
        assert_eq!(parse(VALID), Some(VALID));
        assert_eq!(parse(&format!(" {VALID} ")), Some(VALID));
        let v1 = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        assert_eq!(parse(v1), Some(v1));
        let v1_longer = format!("{v1}-whatever");
        assert_eq!(parse(&v1_longer), Some(v1_longer.as_str()));
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let c = child(VALID).unwrap();
        assert_eq!(trace_id(&c), trace_id(VALID));
        assert_eq!(&c[53..], "01");
        assert_ne!(&c[36..52], &VALID[36..52]);
        assert!(parse(&c).is_some());
        let started = continue_or_start(Some("garbage"));
        assert_ne!(trace_id(&started), trace_id(VALID));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn generated_values_are_valid_sampled_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(parse(&a), Some(a.as_str()));
        assert!(a.starts_with("00-") && a.ends_with("-01"), "{a}");
        assert_eq!(a.len(), 55);
        assert_ne!(a, b);
        assert_eq!(trace_id(&continue_or_start(Some(VALID))), trace_id(VALID));
        assert_ne!(continue_or_start(Some("nope")), "nope");
        assert_eq!(parse(&continue_or_start(None)).map(str::len), Some(55));
    }
}
