//! The delivery task: one event to send to one endpoint, as a record of
//! `<prefix>.deliveries` (and of the retry tiers, and of `<prefix>.dlq.deliveries`).
//!
//! - key: the endpoint id, so one instance owns all of an endpoint's tasks;
//! - value: the JSON body exactly as it is POSTed (see [`crate::payload`]);
//! - headers: what the dispatcher needs without decoding the body ([`header`]).
//!
//! The attempt counter has a header of its own rather than the stream runtime's
//! `sluice_attempts`: a dead letter replayed by `sluice dlq replay` keeps its headers, and
//! must come back as a fresh delivery with a full schedule, not as an exhausted one.

use sluice_stream::headers as routing;
use sluice_stream::{Output, Record};

/// Header names of a delivery task.
pub mod header {
    /// The Standard Webhooks message id (the event's `ce_id`), the same on every attempt.
    pub const WEBHOOK_ID: &str = "sluice_webhook_id";
    /// The event's CloudEvents type.
    pub const EVENT_TYPE: &str = "sluice_event_type";
    /// The event's Kafka key, raw bytes; absent for a keyless event.
    pub const EVENT_KEY: &str = "sluice_event_key";
    /// Attempts made so far, decimal (absent: none).
    pub const ATTEMPTS: &str = "sluice_delivery_attempts";
    /// When the first attempt was made, epoch ms, decimal.
    pub const FIRST_ATTEMPT_AT: &str = "sluice_first_attempt_at";
    /// When the next attempt is due, epoch ms, decimal (absent: now).
    pub const DUE_AT: &str = sluice_stream::headers::DUE_AT;
    /// Under `ordering: per_key`, a waiting task's place in its event key's line (the stream
    /// runtime's header, the same held-key mechanism); only read on a retry tier.
    pub const KEY_SEQ: &str = sluice_stream::headers::KEY_SEQ;
    /// Where the event was read: topic, partition and offset.
    pub const EVENT_TOPIC: &str = "sluice_event_topic";
    pub const EVENT_PARTITION: &str = "sluice_event_partition";
    pub const EVENT_OFFSET: &str = "sluice_event_offset";
}

/// Where the event a task delivers was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One event for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryTask {
    pub endpoint_id: String,
    pub webhook_id: String,
    pub event_type: String,
    pub event_key: Option<Vec<u8>>,
    /// The JSON body, exactly as POSTed (signatures cover these bytes).
    pub body: Vec<u8>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Epoch ms of the first attempt, once one was made.
    pub first_attempt_at: Option<i64>,
    /// Epoch ms before which the next attempt must not start; `None`: at once.
    pub due_at: Option<i64>,
    /// Its place in its key's line while the key is held (`ordering: per_key`).
    pub key_seq: Option<u64>,
    pub event: EventPosition,
}

/// A record that is not a delivery task, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("{at}: no key (the endpoint id)")]
    NoKey { at: String },
    #[error("{at}: no value (the JSON body)")]
    NoBody { at: String },
    #[error("{at}: header `{header}` is missing")]
    Missing { at: String, header: &'static str },
    #[error("{at}: header `{header}` is not {expected}")]
    Invalid {
        at: String,
        header: &'static str,
        expected: &'static str,
    },
}

impl DeliveryTask {
    /// The task a record of the tasks topic or a retry tier carries.
    pub fn from_record(record: &Record) -> Result<Self, TaskError> {
        let at = format!("{}/{}@{}", record.topic, record.partition, record.offset);
        let text = |header: &'static str| -> Result<String, TaskError> {
            let bytes = record.header_bytes(header).ok_or(TaskError::Missing {
                at: at.clone(),
                header,
            })?;
            String::from_utf8(bytes.to_vec()).map_err(|_| TaskError::Invalid {
                at: at.clone(),
                header,
                expected: "UTF-8",
            })
        };
        let number = |header: &'static str| -> Result<Option<i64>, TaskError> {
            match record.header_bytes(header) {
                None => Ok(None),
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .map(Some)
                    .ok_or(TaskError::Invalid {
                        at: at.clone(),
                        header,
                        expected: "a decimal integer",
                    }),
            }
        };
        let endpoint_id = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.is_empty())
            .ok_or(TaskError::NoKey { at: at.clone() })?
            .to_string();
        let body = record
            .value
            .clone()
            .ok_or(TaskError::NoBody { at: at.clone() })?;
        let attempts = number(header::ATTEMPTS)?.unwrap_or(0);
        let attempts = u32::try_from(attempts).map_err(|_| TaskError::Invalid {
            at: at.clone(),
            header: header::ATTEMPTS,
            expected: "a count of attempts",
        })?;
        Ok(Self {
            endpoint_id,
            webhook_id: text(header::WEBHOOK_ID)?,
            event_type: text(header::EVENT_TYPE)?,
            event_key: record.header_bytes(header::EVENT_KEY).map(<[u8]>::to_vec),
            body,
            attempts,
            first_attempt_at: number(header::FIRST_ATTEMPT_AT)?,
            due_at: number(header::DUE_AT)?,
            key_seq: number(header::KEY_SEQ)?.and_then(|n| u64::try_from(n).ok()),
            event: EventPosition {
                topic: text(header::EVENT_TOPIC)?,
                partition: number(header::EVENT_PARTITION)?
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or(TaskError::Missing {
                        at: at.clone(),
                        header: header::EVENT_PARTITION,
                    })?,
                offset: number(header::EVENT_OFFSET)?.ok_or(TaskError::Missing {
                    at: at.clone(),
                    header: header::EVENT_OFFSET,
                })?,
            },
        })
    }

    /// The headers this task is written with.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![
            (header::WEBHOOK_ID.into(), self.webhook_id.clone().into()),
            (header::EVENT_TYPE.into(), self.event_type.clone().into()),
            (header::ATTEMPTS.into(), self.attempts.to_string().into()),
            (header::EVENT_TOPIC.into(), self.event.topic.clone().into()),
            (
                header::EVENT_PARTITION.into(),
                self.event.partition.to_string().into(),
            ),
            (
                header::EVENT_OFFSET.into(),
                self.event.offset.to_string().into(),
            ),
        ];
        if let Some(key) = &self.event_key {
            out.push((header::EVENT_KEY.into(), key.clone()));
        }
        if let Some(at) = self.first_attempt_at {
            out.push((header::FIRST_ATTEMPT_AT.into(), at.to_string().into()));
        }
        if let Some(at) = self.due_at {
            out.push((header::DUE_AT.into(), at.to_string().into()));
        }
        if let Some(seq) = self.key_seq {
            out.push((header::KEY_SEQ.into(), seq.to_string().into()));
        }
        out
    }

    /// This task as a record of `topic`, keyed by its endpoint id.
    pub fn output(&self, topic: &str) -> Output {
        Output {
            topic: topic.to_string(),
            partition: None,
            key: Some(self.endpoint_id.clone().into_bytes()),
            value: Some(self.body.clone()),
            headers: self.headers(),
        }
    }

    /// This task as a dead letter of `dlq_topic`: the task's own headers (its attempt count
    /// left out, so a replay starts a fresh schedule) plus the stream runtime's provenance
    /// headers naming the task record it came from, so `sluice dlq` lists and replays it
    /// (to `tasks_topic`, even when the last attempt was read from a retry tier).
    pub fn dead_letter(
        &self,
        dlq_topic: &str,
        tasks_topic: &str,
        from: &Record,
        group: &str,
        reason: &str,
        history: &str,
    ) -> Output {
        let mut out = self.output(dlq_topic);
        out.headers.retain(|(k, _)| {
            k != header::ATTEMPTS
                && k != header::DUE_AT
                && k != header::FIRST_ATTEMPT_AT
                && k != header::KEY_SEQ
        });
        out.headers.extend([
            (routing::ORIGINAL_TOPIC.into(), tasks_topic.into()),
            (
                routing::ORIGINAL_PARTITION.into(),
                routing::int(from.partition),
            ),
            (routing::ORIGINAL_OFFSET.into(), routing::long(from.offset)),
            (
                routing::ORIGINAL_TIMESTAMP.into(),
                routing::long(from.timestamp_ms.unwrap_or(0)),
            ),
            (routing::ORIGINAL_CONSUMER_GROUP.into(), group.into()),
            (
                routing::EXCEPTION_FQCN.into(),
                b"sluice.delivery.Exhausted".to_vec(),
            ),
            (routing::EXCEPTION_MESSAGE.into(), reason.into()),
            (routing::ATTEMPTS.into(), self.attempts.to_string().into()),
            (routing::FAILURE_KIND.into(), b"permanent".to_vec()),
            (routing::ATTEMPT_HISTORY.into(), history.into()),
        ]);
        if let Some(at) = self.first_attempt_at {
            out.headers
                .push((routing::FIRST_FAILURE_AT.into(), at.to_string().into()));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn task() -> DeliveryTask {
        DeliveryTask {
            endpoint_id: "ep_1".into(),
            webhook_id: "evt_1".into(),
            event_type: "dev.sluice.events.payments.PaymentSucceeded".into(),
            event_key: Some(b"pi_1".to_vec()),
            body: br#"{"type":"x"}"#.to_vec(),
            attempts: 2,
            first_attempt_at: Some(1_700_000_000_000),
            due_at: Some(1_700_000_005_000),
            key_seq: None,
            event: EventPosition {
                topic: "sluice.events.payments".into(),
                partition: 3,
                offset: 42,
            },
        }
    }

    fn as_record(out: &Output, offset: i64) -> Record {
        Record {
            topic: out.topic.clone(),
            partition: 1,
            offset,
            timestamp_ms: Some(5),
            key: out.key.clone(),
            value: out.value.clone(),
            headers: out.headers.clone(),
        }
    }

    #[test]
    fn a_task_round_trips_through_its_record() {
        let t = task();
        let back = DeliveryTask::from_record(&as_record(&t.output("sluice.deliveries"), 7));
        assert_eq!(back, Ok(t.clone()));
        let fresh = DeliveryTask {
            attempts: 0,
            first_attempt_at: None,
            due_at: None,
            key_seq: None,
            event_key: None,
            ..t
        };
        let back = DeliveryTask::from_record(&as_record(&fresh.output("sluice.deliveries"), 8));
        assert_eq!(back, Ok(fresh));
    }

    #[test]
    fn bad_records_say_what_and_where() {
        let out = task().output("sluice.deliveries");
        let mut r = as_record(&out, 9);
        r.key = None;
        assert_eq!(
            DeliveryTask::from_record(&r).unwrap_err().to_string(),
            "sluice.deliveries/1@9: no key (the endpoint id)"
        );
        let mut r = as_record(&out, 9);
        r.headers.retain(|(k, _)| k != header::WEBHOOK_ID);
        assert!(DeliveryTask::from_record(&r)
            .unwrap_err()
            .to_string()
            .contains("`sluice_webhook_id` is missing"));
        let mut r = as_record(&out, 9);
        r.headers.push((header::ATTEMPTS.into(), b"-1".to_vec()));
        assert!(DeliveryTask::from_record(&r)
            .unwrap_err()
            .to_string()
            .contains("`sluice_delivery_attempts` is not a count"));
    }

    #[test]
    fn a_dead_letter_replays_as_a_fresh_delivery_with_provenance() {
        let t = task();
        let from = as_record(&t.output("sluice.retry.deliveries.5s"), 11);
        let dlq = t.dead_letter(
            "sluice.dlq.deliveries",
            "sluice.deliveries",
            &from,
            "sluice-deliver",
            "503",
            "h",
        );
        let r = as_record(&dlq, 0);
        assert_eq!(r.header(routing::ORIGINAL_TOPIC), Some("sluice.deliveries"));
        assert_eq!(r.header(routing::ATTEMPTS), Some("2"));
        let replayed = DeliveryTask::from_record(&r).unwrap();
        assert_eq!(replayed.attempts, 0);
        assert_eq!(replayed.due_at, None);
        assert_eq!(replayed.webhook_id, t.webhook_id);
        assert_eq!(replayed.body, t.body);
    }
}
