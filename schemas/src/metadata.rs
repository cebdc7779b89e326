//! Event metadata: the CloudEvents Kafka protocol binding in binary mode.
//!
//! Every record sluice writes carries `ce_id`, `ce_source`, `ce_type`, `ce_specversion`,
//! `ce_time` and (when known) `ce_subject` headers, plus W3C `traceparent`. The value is the
//! Avro payload, which repeats `event_id` and `occurred_at` for sinks that drop headers.

use std::time::{SystemTime, UNIX_EPOCH};

pub const CE_ID: &str = "ce_id";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TYPE: &str = "ce_type";
pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CE_TIME: &str = "ce_time";
pub const CE_SUBJECT: &str = "ce_subject";
pub const CONTENT_TYPE: &str = "content-type";
pub const TRACEPARENT: &str = "traceparent";
pub const SPECVERSION: &str = "1.0";
/// Content type of Confluent wire-format Avro values.
pub const AVRO_CONTENT_TYPE: &str = "application/avro";

/// Headers of a raw webhook delivery as the gateway writes it and the normalizer reads it.
/// The value is the exact request body.
pub mod raw {
    /// Configured source instance (`stripe`, `github-main`).
    pub const SOURCE: &str = "sluice_source";
    /// Provider type (`stripe`, `standard_webhooks`, …).
    pub const PROVIDER: &str = "sluice_provider";
    pub const DELIVERY_ID: &str = "sluice_delivery_id";
    /// The provider's event name, when known.
    pub const EVENT_TYPE: &str = "sluice_event_type";
    /// RFC 3339 UTC with milliseconds.
    pub const RECEIVED_AT: &str = "sluice_received_at";
    /// Prefix of the safe copies of original request headers.
    pub const ORIGINAL_HEADER_PREFIX: &str = "sluice_h_";
    /// SHA-256 (hex) of the claimed event type, a newline and the body; set when the
    /// provider's signature does not cover its delivery id, so a replay under a fresh id is
    /// still recognised as a redelivery.
    pub const CONTENT_DIGEST: &str = "sluice_content_digest";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    pub id: String,
    pub source: String,
    /// The record's full Avro name, e.g. `dev.sluice.events.payments.PaymentSucceeded`.
    pub event_type: String,
    /// Epoch milliseconds, UTC.
    pub time_ms: i64,
    pub subject: Option<String>,
    pub traceparent: Option<String>,
}

impl EventMetadata {
    /// A new event with a fresh UUIDv7 id (time-ordered, so ids sort by creation).
    pub fn new(source: &str, event_type: &str) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            source: source.to_string(),
            event_type: event_type.to_string(),
            time_ms: now_ms(),
            subject: None,
            traceparent: None,
        }
    }

    /// The headers to put on the Kafka record, in binding order.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (CE_ID, self.id.clone()),
            (CE_SOURCE, self.source.clone()),
            (CE_TYPE, self.event_type.clone()),
            (CE_SPECVERSION, SPECVERSION.to_string()),
            (CE_TIME, rfc3339_ms(self.time_ms)),
            (CONTENT_TYPE, AVRO_CONTENT_TYPE.to_string()),
        ];
        if let Some(s) = &self.subject {
            h.push((CE_SUBJECT, s.clone()));
        }
        if let Some(t) = &self.traceparent {
            h.push((TRACEPARENT, t.clone()));
        }
        h
    }

    /// Reads metadata back from record headers; `None` when a required header is missing.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Option<Self> {
        let (mut id, mut source, mut ty, mut time, mut subject, mut trace) =
            (None, None, None, None, None, None);
        for (k, v) in headers {
            let v = String::from_utf8_lossy(v).into_owned();
            match k {
                CE_ID => id = Some(v),
                CE_SOURCE => source = Some(v),
                CE_TYPE => ty = Some(v),
                CE_TIME => time = parse_rfc3339_ms(&v),
                CE_SUBJECT => subject = Some(v),
                TRACEPARENT => trace = Some(v),
                _ => {}
            }
        }
        Some(Self {
            id: id?,
            source: source?,
            event_type: ty?,
            time_ms: time?,
            subject,
            traceparent: trace,
        })
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Formats epoch milliseconds as RFC 3339 UTC (`2026-11-22T23:38:55.123Z`), always with
/// milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    jiff::fmt::temporal::DateTimePrinter::new()
        .precision(Some(3))
        .timestamp_to_string(&ts)
}

/// Parses an RFC 3339 date-time with any UTC offset to epoch milliseconds:
/// `2019-05-15T15:20:30Z`, `2019-05-15T15:20:30.123+02:00`, `2008-01-10T11:00:00-05:00`.
/// Fractions beyond milliseconds are truncated. A time without an offset is refused: it
/// names no instant.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(jiff::Timestamp::as_millisecond)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_matches_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_649_367_553_123), "2022-04-07T21:39:13.123Z");
        for ms in [0, 951_782_400_000, 1_649_367_553_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339_ms("2022-04-07T21:39:13Z"),
            Some(1_649_367_553_000)
        );
        assert_eq!(parse_rfc3339_ms("not a time"), None);
        assert_eq!(parse_rfc3339_ms("2019-05-15T15:20:30"), None, "no offset");
        assert_eq!(
            parse_rfc3339_ms("2019-02-30T15:20:30Z"),
            None,
            "no such day"
        );
        assert_eq!(
            parse_rfc3339_ms("2019-05-15T15:20:30.123456Z"),
            Some(1_557_933_630_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2019-05-15T10:20:30-05:00"),
            parse_rfc3339_ms("2019-05-15T15:20:30Z")
        );
    }

    #[test]
    fn headers_round_trip() {
        let mut m = EventMetadata::new(
            "sluice://sources/stripe",
            "dev.sluice.events.payments.PaymentSucceeded",
        );
        m.subject = Some("pi_1".into());
        m.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        m.time_ms = 1_649_367_553_123;
        let headers = m.headers();
        assert!(headers
            .iter()
            .any(|(k, v)| *k == CE_SPECVERSION && v == "1.0"));
        let back =
            EventMetadata::from_headers(headers.iter().map(|(k, v)| (*k, v.as_bytes()))).unwrap();
        assert_eq!(back, m);
    }
}
