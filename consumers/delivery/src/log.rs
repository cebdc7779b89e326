//! Reading the delivery log back: the latest status of each of an endpoint's deliveries
//! (the compacted `<prefix>.state.delivery-status`) and every attempt of one delivery
//! (`<prefix>.deliveries.attempts`), for `sluice deliveries list|show|resend|recover`.
//!
//! Both read their topic from its start to its end and keep the endpoint's records: fine
//! for operating one endpoint now and then, linear in the topic's size (the attempts topic
//! is kept for its retention, not compacted). Blocking: call from a blocking context.

use std::collections::BTreeMap;

use sluice_runtime::kafka::KafkaClients;
use sluice_stream::state::kafka::{partition_count, read_partitions};
use sluice_stream::state::StateError;
use sluice_topology::naming;

use crate::attempt_log::AttemptRecord;
use crate::status::StatusRecord;

/// The latest status of every delivery to `endpoint_id`, oldest update first. A record that
/// is not a status record is skipped with a warning (by position, never by value).
pub fn statuses(
    clients: &KafkaClients,
    prefix: &str,
    endpoint_id: &str,
) -> Result<Vec<StatusRecord>, StateError> {
    let topic = naming::delivery_status_topic(prefix);
    let key_prefix = format!("{endpoint_id}/");
    let mut latest: BTreeMap<Vec<u8>, StatusRecord> = BTreeMap::new();
    let partitions: Vec<i32> = (0..partition_count(clients, &topic)?).collect();
    read_partitions(clients, &topic, &partitions, |p, key, value| {
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
    let mut out: Vec<StatusRecord> = latest.into_values().collect();
    out.sort_by_key(|s| s.updated_at);
    Ok(out)
}

/// Every attempt to deliver `webhook_id` to `endpoint_id`, in attempt order.
pub fn attempts(
    clients: &KafkaClients,
    prefix: &str,
    endpoint_id: &str,
    webhook_id: &str,
) -> Result<Vec<AttemptRecord>, StateError> {
    let topic = naming::delivery_attempts_topic(prefix);
    let mut out = Vec::new();
    let partitions: Vec<i32> = (0..partition_count(clients, &topic)?).collect();
    read_partitions(clients, &topic, &partitions, |_, key, value| {
        if key != endpoint_id.as_bytes() {
            return;
        }
        if let Some(Ok(record)) = value.map(serde_json::from_slice::<AttemptRecord>) {
            if record.webhook_id == webhook_id {
                out.push(record);
            }
        }
    })?;
    out.sort_by_key(|a| (a.started_at, a.attempt));
    Ok(out)
}
