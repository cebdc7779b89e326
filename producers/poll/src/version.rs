//! An item's version, as the API writes it: an RFC 3339 timestamp, a number, or any other
//! string. Versions of one item are compared when both are times or both numbers, so a
//! stale read (an older version served after a newer one was written) is recognised;
//! otherwise only equality is known.

use std::cmp::Ordering;

use serde_json::Value;
use sluice_schemas::metadata::parse_rfc3339_ms;
use sluice_topology::poll::TimeFormat;

use crate::json_path::scalar_text;

/// One version of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

impl Version {
    /// The version in `value`, when it is a string or a number.
    pub fn of(value: &Value) -> Option<Version> {
        scalar_text(value).filter(|t| !t.is_empty()).map(Version)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How `self` compares to `other`, when the two can be ordered.
    pub fn compare(&self, other: &Version) -> Option<Ordering> {
        if self == other {
            return Some(Ordering::Equal);
        }
        if let (Some(a), Some(b)) = (parse_rfc3339_ms(&self.0), parse_rfc3339_ms(&other.0)) {
            return Some(a.cmp(&b));
        }
        if let (Ok(a), Ok(b)) = (self.0.parse::<f64>(), other.0.parse::<f64>()) {
            return a.partial_cmp(&b);
        }
        None
    }
}

/// An item time in epoch milliseconds: an RFC 3339 string, or a number in `format`'s unit.
pub fn time_ms(value: &Value, format: TimeFormat) -> Option<i64> {
    match value {
        Value::String(s) => {
            parse_rfc3339_ms(s).or_else(|| s.parse::<f64>().ok().and_then(|n| number_ms(n, format)))
        }
        Value::Number(n) => number_ms(n.as_f64()?, format),
        _ => None,
    }
}

fn number_ms(n: f64, format: TimeFormat) -> Option<i64> {
    let ms = match format {
        TimeFormat::UnixMillis => n,
        TimeFormat::UnixSeconds | TimeFormat::Rfc3339 => n * 1000.0,
    };
    (ms.is_finite() && ms.abs() < 1e16).then_some(ms as i64)
}

/// `ms` as the `since` parameter's value.
pub fn format_time(ms: i64, format: TimeFormat) -> String {
    match format {
        TimeFormat::Rfc3339 => sluice_schemas::metadata::rfc3339_ms(ms),
        TimeFormat::UnixSeconds => ms.div_euclid(1000).to_string(),
        TimeFormat::UnixMillis => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_order_as_times_or_numbers_and_else_only_match() {
        let v = |s: &str| Version(s.into());
        assert_eq!(
            v("2026-01-01T00:00:01Z").compare(&v("2026-01-01T00:00:00.500+00:00")),
            Some(Ordering::Greater)
        );
        assert_eq!(v("9").compare(&v("10")), Some(Ordering::Less));
        assert_eq!(v("abc").compare(&v("abc")), Some(Ordering::Equal));
        assert_eq!(v("abc").compare(&v("abd")), None);
        assert_eq!(Version::of(&json!(3)), Some(v("3")));
        assert_eq!(Version::of(&json!("")), None);
        assert_eq!(Version::of(&json!(null)), None);
    }

    #[test]
    fn times_read_and_write_in_each_format() {
        let t = 1_767_225_600_123; // 2026-01-01T00:00:00.123Z
        assert_eq!(
            time_ms(&json!("2026-01-01T00:00:00.123Z"), TimeFormat::Rfc3339),
            Some(t)
        );
        assert_eq!(
            time_ms(&json!(1_767_225_600), TimeFormat::UnixSeconds),
            Some(t - 123)
        );
        assert_eq!(time_ms(&json!(t), TimeFormat::UnixMillis), Some(t));
        assert_eq!(time_ms(&json!("later"), TimeFormat::Rfc3339), None);
        assert_eq!(time_ms(&json!(1e300), TimeFormat::UnixMillis), None);
        assert_eq!(
            format_time(t, TimeFormat::Rfc3339),
            "2026-01-01T00:00:00.123Z"
        );
        assert_eq!(format_time(t, TimeFormat::UnixSeconds), "1767225600");
        assert_eq!(format_time(t, TimeFormat::UnixMillis), t.to_string());
    }
}
