//! Where a failed record goes: the next retry tier, or the dead-letter topic.
//!
//! The copy keeps the original key, value and headers byte for byte and adds provenance
//! (see [`super::headers`]). A record already on a retry tier keeps its first provenance,
//! so the DLQ says where it originally came from, not which tier it last sat on.

use std::time::Duration;

use sluice_topology::model::RetryPolicySpec;
use sluice_topology::naming;

use super::headers as h;
use super::{HandlerError, Output, Record};

/// Most of an error message a copy carries: a copy must stay within the room the topology
/// leaves for failure headers (`sluice_topology::sizes::FAILURE_COPY_OVERHEAD_BYTES`),
/// whatever the error says about the record.
const MAX_MESSAGE_BYTES: usize = 2 * 1024;
/// Most of the attempt history a copy carries; the oldest lines go first.
const MAX_HISTORY_BYTES: usize = 4 * 1024;

/// The first `max` bytes of `text`, cut at a character boundary, with `…` when cut.
fn clip_front(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// The last `max` bytes of `text`, cut at a character boundary, with `…` when cut.
fn clip_back(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..]).into()
}

/// One retry tier: its topic and how long a record waits there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTier {
    pub topic: String,
    pub delay: Duration,
}

/// The retry policy of one consumer.
#[derive(Debug, Clone)]
pub struct FailureRouter {
    pub group: String,
    pub tiers: Vec<RetryTier>,
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub dlq_topic: String,
}

impl FailureRouter {
    /// The routing `policy` from the topology describes, for consumer group `group`: one
    /// tier per delay, named by the topology's convention.
    pub fn from_policy(prefix: &str, group: &str, policy: &RetryPolicySpec) -> Self {
        Self {
            group: group.to_string(),
            tiers: policy
                .tiers
                .iter()
                .map(|d| RetryTier {
                    topic: naming::retry_topic(prefix, &policy.name, d.0),
                    delay: d.0,
                })
                .collect(),
            max_attempts: policy.max_attempts,
            dlq_topic: policy.dlq_topic.clone(),
        }
    }
}

/// Where a failure was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    Retry { tier: usize, due_at_ms: i64 },
    DeadLetter,
}

impl FailureRouter {
    /// Builds the copy of `record` that goes to a retry tier or the DLQ.
    pub fn route(&self, record: &Record, error: &HandlerError, now_ms: i64) -> (Routed, Output) {
        let previous: u32 = record
            .header(h::ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let attempt = previous + 1;
        let transient = matches!(error, HandlerError::Transient { .. });
        let retry = transient && attempt < self.max_attempts && !self.tiers.is_empty();

        let mut headers = self.provenance(record);
        let mut push = |k: &str, v: Vec<u8>| headers.push((k.to_string(), v));
        push(
            h::EXCEPTION_FQCN,
            error.class().as_str().as_bytes().to_vec(),
        );
        push(
            h::EXCEPTION_MESSAGE,
            clip_front(error.message(), MAX_MESSAGE_BYTES)
                .as_bytes()
                .to_vec(),
        );
        push(h::ATTEMPTS, attempt.to_string().into_bytes());
        let first = record
            .header(h::FIRST_FAILURE_AT)
            .map(str::to_string)
            .unwrap_or_else(|| now_ms.to_string());
        push(h::FIRST_FAILURE_AT, first.into_bytes());
        push(
            h::FAILURE_KIND,
            if transient { "transient" } else { "permanent" }
                .as_bytes()
                .to_vec(),
        );
        let mut history = record
            .header(h::ATTEMPT_HISTORY)
            .unwrap_or_default()
            .to_string();
        if !history.is_empty() {
            history.push('\n');
        }
        history.push_str(&format!(
            "{attempt} {now_ms} {}",
            clip_front(&error.to_string(), MAX_MESSAGE_BYTES)
        ));
        push(
            h::ATTEMPT_HISTORY,
            clip_back(&history, MAX_HISTORY_BYTES).as_bytes().to_vec(),
        );

        let (routed, topic) = if retry {
            let tier = (attempt as usize - 1).min(self.tiers.len() - 1);
            let due_at_ms = now_ms + self.tiers[tier].delay.as_millis() as i64;
            push(h::DUE_AT, due_at_ms.to_string().into_bytes());
            (
                Routed::Retry { tier, due_at_ms },
                self.tiers[tier].topic.clone(),
            )
        } else {
            (Routed::DeadLetter, self.dlq_topic.clone())
        };
        let output = Output {
            topic,
            partition: None,
            key: record.key.clone(),
            value: record.value.clone(),
            headers,
        };
        (routed, output)
    }

    /// `record`'s own headers (minus routing ones) plus where it was first read: kept from
    /// the record when it already comes from a tier, else taken from it.
    pub fn provenance(&self, record: &Record) -> Vec<(String, Vec<u8>)> {
        let mut headers: Vec<(String, Vec<u8>)> = record
            .headers
            .iter()
            .filter(|(k, _)| !h::ROUTING_HEADERS.contains(&k.as_str()))
            .cloned()
            .collect();
        let keep = |name: &str| record.header_bytes(name).map(<[u8]>::to_vec);
        let already_routed = record.header_bytes(h::ORIGINAL_TOPIC).is_some();
        let mut push = |k: &str, v: Vec<u8>| headers.push((k.to_string(), v));
        if already_routed {
            for name in [
                h::ORIGINAL_TOPIC,
                h::ORIGINAL_PARTITION,
                h::ORIGINAL_OFFSET,
                h::ORIGINAL_TIMESTAMP,
                h::ORIGINAL_TIMESTAMP_TYPE,
                h::ORIGINAL_CONSUMER_GROUP,
            ] {
                if let Some(v) = keep(name) {
                    push(name, v);
                }
            }
        } else {
            push(h::ORIGINAL_TOPIC, record.topic.as_bytes().to_vec());
            push(h::ORIGINAL_PARTITION, h::int(record.partition));
            push(h::ORIGINAL_OFFSET, h::long(record.offset));
            if let Some(ts) = record.timestamp_ms {
                push(h::ORIGINAL_TIMESTAMP, h::long(ts));
                push(h::ORIGINAL_TIMESTAMP_TYPE, b"CreateTime".to_vec());
            }
            push(h::ORIGINAL_CONSUMER_GROUP, self.group.as_bytes().to_vec());
        }
        headers
    }

    /// The tier a topic belongs to, if it is one of this router's tier topics.
    pub fn tier_of(&self, topic: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.topic == topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;

    fn router() -> FailureRouter {
        FailureRouter {
            group: "sluice-normalizer".into(),
            tiers: vec![
                RetryTier {
                    topic: "r.5s".into(),
                    delay: Duration::from_secs(5),
                },
                RetryTier {
                    topic: "r.1m".into(),
                    delay: Duration::from_secs(60),
                },
            ],
            max_attempts: 3,
            dlq_topic: "dlq".into(),
        }
    }

    #[test]
    fn failure_headers_stay_within_their_room_whatever_the_error_says() {
        let r = router();
        let mut rec = record();
        let huge = "é".repeat(50_000);
        for _ in 0..10 {
            let (_, copy) = r.route(
                &rec,
                &HandlerError::transient(ErrorClass::custom("X"), huge.clone()),
                1000,
            );
            rec.headers = copy.headers;
        }
        let added: usize = rec.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(
            (added as u64) < sluice_topology::sizes::FAILURE_COPY_OVERHEAD_BYTES,
            "{added}"
        );
        let message = rec
            .headers
            .iter()
            .find(|(k, _)| k == h::EXCEPTION_MESSAGE)
            .map(|(_, v)| String::from_utf8(v.clone()).expect("cut at a char boundary"))
            .unwrap();
        assert!(message.ends_with('…'));
    }

    fn record() -> Record {
        Record {
            topic: "raw".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1000),
            key: Some(b"k".to_vec()),
            value: Some(vec![0, 1, 2, 255]),
            headers: vec![("sluice_source".into(), b"stripe".to_vec())],
        }
    }

    fn header<'a>(o: &'a Output, name: &str) -> Option<&'a [u8]> {
        o.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn transient_failures_climb_the_tiers_then_dead_letter_with_first_provenance() {
        let r = router();
        let err = HandlerError::transient(
            ErrorClass::custom("RegistryTimeout"),
            "registry did not answer",
        );
        let (routed, first) = r.route(&record(), &err, 10_000);
        assert_eq!(
            routed,
            Routed::Retry {
                tier: 0,
                due_at_ms: 15_000
            }
        );
        assert_eq!(first.topic, "r.5s");
        assert_eq!(
            (first.key.clone(), first.value.clone()),
            (Some(b"k".to_vec()), Some(vec![0, 1, 2, 255]))
        );
        assert_eq!(header(&first, "sluice_source"), Some(&b"stripe"[..]));
        assert_eq!(
            header(&first, h::ORIGINAL_PARTITION),
            Some(&2i32.to_be_bytes()[..])
        );
        assert_eq!(
            header(&first, h::ORIGINAL_OFFSET),
            Some(&41i64.to_be_bytes()[..])
        );

        // The copy is consumed from the tier and fails again.
        let on_tier = Record {
            topic: "r.5s".into(),
            partition: 0,
            offset: 7,
            headers: first.headers.clone(),
            ..record()
        };
        let (routed, second) = r.route(&on_tier, &err, 20_000);
        assert_eq!(
            routed,
            Routed::Retry {
                tier: 1,
                due_at_ms: 80_000
            }
        );
        let on_tier = Record {
            topic: "r.1m".into(),
            partition: 0,
            offset: 3,
            headers: second.headers.clone(),
            ..record()
        };
        let (routed, dead) = r.route(&on_tier, &err, 90_000);
        assert_eq!(routed, Routed::DeadLetter);
        assert_eq!(dead.topic, "dlq");
        assert_eq!(header(&dead, h::ORIGINAL_TOPIC), Some(&b"raw"[..]));
        assert_eq!(
            header(&dead, h::ORIGINAL_OFFSET),
            Some(&41i64.to_be_bytes()[..])
        );
        assert_eq!(header(&dead, h::ATTEMPTS), Some(&b"3"[..]));
        assert_eq!(header(&dead, h::FIRST_FAILURE_AT), Some(&b"10000"[..]));
        assert_eq!(header(&dead, h::DUE_AT), None);
        let history =
            String::from_utf8(header(&dead, h::ATTEMPT_HISTORY).unwrap().to_vec()).unwrap();
        assert_eq!(history.lines().count(), 3, "{history}");
        // One set of provenance, not one per hop.
        assert_eq!(
            dead.headers
                .iter()
                .filter(|(k, _)| k == h::ORIGINAL_TOPIC)
                .count(),
            1
        );
    }

    #[test]
    fn permanent_failures_go_straight_to_the_dlq() {
        let (routed, out) = router().route(
            &record(),
            &HandlerError::permanent(ErrorClass::InvalidJson, "expected value at line 1"),
            5,
        );
        assert_eq!(routed, Routed::DeadLetter);
        assert_eq!(header(&out, h::EXCEPTION_FQCN), Some(&b"InvalidJson"[..]));
        assert_eq!(header(&out, h::FAILURE_KIND), Some(&b"permanent"[..]));
        assert_eq!(
            header(&out, h::ORIGINAL_CONSUMER_GROUP),
            Some(&b"sluice-normalizer"[..])
        );
    }
}
