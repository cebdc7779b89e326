//! Reading the delivery log back: the latest status of each of an endpoint's deliveries
//! (the compacted `<prefix>.state.delivery-status`) and every attempt of one delivery
//! (`<prefix>.deliveries.attempts`), for `sluice deliveries list|show|resend|recover`.
//!
//! Both are read by time, not from the topics' start: statuses updated since a time start at
//! that time (through the broker's time index), and one delivery's attempts lie between its
//! event's timestamp and its status's last update. So `show` costs the records of that span,
//! not the attempts topic's two weeks; `list` without `--since` reads the status topic whole
//! (compacted: one record per delivery of its retention). Blocking: call from a blocking
//! context.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_runtime::kafka::KafkaClients;
use sluice_stream::state::kafka::{partition_count, read_partitions_within, TimeWindow};
use sluice_stream::state::StateError;
use sluice_topology::naming;

use crate::attempt_log::AttemptRecord;
use crate::status::StatusRecord;

/// How far apart the clocks that stamp the log may be (the publisher's, the deliverer's, the
/// reader's), and how late a settled attempt may be written: every window is widened by it.
pub const CLOCK_SLACK: Duration = Duration::from_secs(300);

/// How far ahead of the broker's clock a record may be stamped and still be accepted
/// (Kafka's `log.message.timestamp.after.max.ms`, one hour by default). A read stops at the
/// first record past its window, so a record from a fast clock must not end it early.
const FUTURE_STAMPS: Duration = Duration::from_secs(3600);

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The window of records updated at or after `since`.
fn since_window(since: Option<jiff::Timestamp>) -> TimeWindow {
    TimeWindow {
        from_ms: since.map(|t| t.as_millisecond().saturating_sub(ms(CLOCK_SLACK))),
        to_ms: None,
    }
}

/// The window holding every attempt of `status`'s delivery: from its event's timestamp
/// (`event_ms`, when the event can still be read) to the status's last update.
fn attempts_window(status: &StatusRecord, event_ms: Option<i64>) -> TimeWindow {
    TimeWindow {
        from_ms: event_ms.map(|t| t.saturating_sub(ms(CLOCK_SLACK))),
        to_ms: Some(
            status
                .updated_at
                .as_millisecond()
                .saturating_add(ms(CLOCK_SLACK + FUTURE_STAMPS)),
        ),
    }
}

/// The latest status of every delivery to `endpoint_id`, oldest update first. A record that
/// is not a status record is skipped with a warning (by position, never by value).
/// With `since`, only deliveries updated at or after it, read from that time on.
pub fn statuses(
    clients: &KafkaClients,
    prefix: &str,
    endpoint_id: &str,
    since: Option<jiff::Timestamp>,
) -> Result<Vec<StatusRecord>, StateError> {
    let topic = naming::delivery_status_topic(prefix);
    let key_prefix = format!("{endpoint_id}/");
    let mut latest: BTreeMap<Vec<u8>, StatusRecord> = BTreeMap::new();
    let partitions: Vec<i32> = (0..partition_count(clients, &topic)?).collect();
    let window = since_window(since);
    read_partitions_within(clients, &topic, &partitions, window, |p, key, value| {
        if !key.starts_with(key_prefix.as_bytes()) {
            return;
        }
        match value.map(serde_json::from_slice::<StatusRecord>) {
            None => {
                latest.remove(key);
            }
            Some(Ok(record)) if record.endpoint_id == endpoint_id => {
                latest.insert(key.to_vec(), record);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(%topic, partition = p, error = %e, "not a status record; skipped")
            }
        }
    })?;
    let mut out: Vec<StatusRecord> = latest
        .into_values()
        .filter(|s| since.is_none_or(|t| s.updated_at >= t))
        .collect();
    out.sort_by_key(|s| s.updated_at);
    Ok(out)
}

/// Every attempt of `status`'s delivery, in attempt order.
pub fn attempts(
    clients: &KafkaClients,
    prefix: &str,
    status: &StatusRecord,
) -> Result<Vec<AttemptRecord>, StateError> {
    let topic = naming::delivery_attempts_topic(prefix);
    let window = attempts_window(status, event_timestamp(clients, status));
    let (endpoint_id, webhook_id) = (&status.endpoint_id, &status.webhook_id);
    let mut out = Vec::new();
    let partitions: Vec<i32> = (0..partition_count(clients, &topic)?).collect();
    read_partitions_within(clients, &topic, &partitions, window, |_, key, value| {
        if key != endpoint_id.as_bytes() {
            return;
        }
        if let Some(Ok(record)) = value.map(serde_json::from_slice::<AttemptRecord>) {
            if &record.webhook_id == webhook_id {
                out.push(record);
            }
        }
    })?;
    out.sort_by_key(|a| (a.started_at, a.attempt));
    Ok(out)
}

/// The timestamp of the event `status` names, when it can still be read; without it the
/// attempts are looked for from the topic's start.
fn event_timestamp(clients: &KafkaClients, status: &StatusRecord) -> Option<i64> {
    let at = status.event_position()?;
    match sluice_ops::dlq::fetch(clients, &at.topic, at.partition, at.offset) {
        Ok(event) => event.0.timestamp_ms,
        Err(e) => {
            tracing::debug!(webhook_id = %status.webhook_id, error = %e,
                "the event is not readable; its attempts are looked for from the topic's start");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::DeliveryStatus;

    fn status(updated_ms: i64) -> StatusRecord {
        StatusRecord {
            endpoint_id: "ep_1".into(),
            webhook_id: "evt_1".into(),
            event_type: "payment.succeeded".into(),
            status: DeliveryStatus::Delivered,
            attempts: 2,
            last_status_code: Some(200),
            next_attempt_at: None,
            updated_at: jiff::Timestamp::from_millisecond(updated_ms).unwrap(),
            event_topic: None,
            event_partition: None,
            event_offset: None,
        }
    }

    #[test]
    fn a_delivery_s_attempts_are_looked_for_from_its_event_to_its_last_update() {
        let slack = ms(CLOCK_SLACK);
        let w = attempts_window(&status(10_000_000), Some(9_000_000));
        assert_eq!(w.from_ms, Some(9_000_000 - slack));
        assert_eq!(w.to_ms, Some(10_000_000 + slack + ms(FUTURE_STAMPS)));
        let unread = attempts_window(&status(10_000_000), None);
        assert_eq!(unread.from_ms, None, "no event: from the topic's start");
    }

    #[test]
    fn statuses_since_a_time_are_read_from_a_little_before_it() {
        let since = jiff::Timestamp::from_millisecond(5_000_000).unwrap();
        assert_eq!(
            since_window(Some(since)),
            TimeWindow {
                from_ms: Some(5_000_000 - ms(CLOCK_SLACK)),
                to_ms: None
            }
        );
        assert_eq!(since_window(None), TimeWindow::ALL);
    }
}
