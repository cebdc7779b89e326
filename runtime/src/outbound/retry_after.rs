//! `Retry-After` (RFC 9110 §10.2.3): how long a server asks us to wait.
//!
//! The value is either delta-seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2015 07:28:00
//! GMT`, plus the obsolete RFC 850 and asctime forms, all read by `httpdate`). It comes from
//! the endpoint, so it is untrusted: anything unreadable is ignored, a date in the past means
//! "now", and every answer is capped so one endpoint cannot park a delivery for a year.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Reads one `Retry-After` value as of `now`, capped at `cap`. `None` when it is neither
/// delta-seconds nor an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64 is still a (very long) wait: cap it.
        value
            .parse::<u64>()
            .map(Duration::from_secs)
            .unwrap_or(Duration::MAX)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

/// The `Retry-After` of a response, if it has one readable value.
pub fn retry_after_header(headers: &HeaderMap, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, now, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(3600);

    fn now() -> SystemTime {
        // Wed, 21 Oct 2015 07:28:00 GMT
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480)
    }

    fn parse(value: &str) -> Option<Duration> {
        parse_retry_after(value, now(), CAP)
    }

    #[test]
    fn delta_seconds() {
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse(" 120 "), Some(Duration::from_secs(120)));
    }

    #[test]
    fn huge_values_are_capped() {
        assert_eq!(parse("86400"), Some(CAP));
        assert_eq!(parse("99999999999999999999999999"), Some(CAP));
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        let in_90s = Some(Duration::from_secs(90));
        assert_eq!(parse("Wed, 21 Oct 2015 07:29:30 GMT"), in_90s);
        assert_eq!(parse("Wednesday, 21-Oct-15 07:29:30 GMT"), in_90s);
        assert_eq!(parse("Wed Oct 21 07:29:30 2015"), in_90s);
        assert_eq!(parse("Thu, 22 Oct 2015 07:28:00 GMT"), Some(CAP));
    }

    #[test]
    fn a_past_date_means_now() {
        assert_eq!(parse("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
    }

    #[test]
    fn garbage_and_negative_values_are_ignored() {
        for value in [
            "",
            " ",
            "-5",
            "+5",
            "5.5",
            "1e3",
            "soon",
            "5s",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "0x10",
        ] {
            assert_eq!(parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn the_header_is_read_from_a_response() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after_header(&headers, now(), CAP), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            retry_after_header(&headers, now(), CAP),
            Some(Duration::from_secs(7))
        );
        headers.insert(
            RETRY_AFTER,
            reqwest::header::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        assert_eq!(retry_after_header(&headers, now(), CAP), None);
    }
}
