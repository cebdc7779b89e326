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

/// Formats epoch milliseconds as RFC 3339 UTC (`2026-11-22T23:38:55.123Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an RFC 3339 date-time with any UTC offset to epoch milliseconds:
/// `2019-05-15T15:20:30Z`, `2019-05-15T15:20:30.123+02:00`, `2008-01-10T11:00:00-05:00`.
/// Fractions beyond milliseconds are truncated.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    fn num(s: &str) -> Option<i64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    let b = s.as_bytes();
    if !s.is_ascii()
        || b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?);
    let (h, mi, sec) = (num(&s[11..13])?, num(&s[14..16])?, num(&s[17..19])?);
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        millis = num(&format!("{:0<3}", &r[..digits.min(3)]))?;
        rest = &r[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hhmm = &rest[1..];
            let (oh, om) = match hhmm.len() {
                5 if hhmm.as_bytes()[2] == b':' => (num(&hhmm[..2])?, num(&hhmm[3..])?),
                4 => (num(&hhmm[..2])?, num(&hhmm[2..])?),
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let local = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec;
    Some((local - offset_secs) * 1000 + millis)
}

// Howard Hinnant's civil-from-days algorithms, for a dependency-free UTC calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
