//! The fan-out: a stream-loop [`Handler`] over the event topics that writes one delivery
//! task per (event, enabled endpoint that takes it) to `<prefix>.deliveries`.
//!
//! It runs at-least-once: a crash between writing tasks and committing the event's offset
//! writes those tasks again, with the same `webhook-id` (the event's `ce_id`), which is what
//! receivers deduplicate on. An event for an endpoint that subscribes to it but is disabled
//! is not sent: its status is recorded as `endpoint_disabled`, so it can be found (and
//! recovered) later.
//!
//! The event is decoded (through the registry) only when some enabled endpoint takes it, and
//! only once however many do.

use sluice_schemas::codec::{AvroCodec, RecordLocation};
use sluice_stream::{ErrorClass, Handler, HandlerError, Output, Record};

use crate::endpoints::{Endpoint, EndpointTable, EventAttributes};
use crate::payload::{event_data, webhook_body, EventMeta};
use crate::status::{DeliveryStatus, StatusRecord};
use crate::task::{DeliveryTask, EventPosition};

/// Where the fan-out writes.
#[derive(Debug, Clone)]
pub struct FanoutTopics {
    pub tasks: String,
    pub status: String,
}

impl FanoutTopics {
    pub fn for_prefix(prefix: &str) -> Self {
        Self {
            tasks: sluice_topology::naming::deliveries_topic(prefix),
            status: sluice_topology::naming::delivery_status_topic(prefix),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fanout {
    table: EndpointTable,
    codec: AvroCodec,
    topics: FanoutTopics,
}

impl Fanout {
    pub fn new(table: EndpointTable, codec: AvroCodec, topics: FanoutTopics) -> Self {
        Self {
            table,
            codec,
            topics,
        }
    }

    /// The webhook body of `record`, decoded through the registry.
    async fn body(&self, record: &Record, meta: &EventMeta) -> Result<Vec<u8>, HandlerError> {
        webhook_body_of(&self.codec, record, meta).await
    }

    fn disabled(&self, endpoint: &Endpoint, meta: &EventMeta, at: &EventPosition) -> Output {
        StatusRecord {
            endpoint_id: endpoint.id.clone(),
            webhook_id: meta.id.clone(),
            event_type: meta.event_type.clone(),
            status: DeliveryStatus::EndpointDisabled,
            attempts: 0,
            last_status_code: None,
            next_attempt_at: None,
            updated_at: jiff::Timestamp::now(),
            event_topic: None,
            event_partition: None,
            event_offset: None,
        }
        .at(at)
        .output(&self.topics.status)
    }
}

impl Handler for Fanout {
    async fn handle(&self, record: &Record) -> Result<Vec<Output>, HandlerError> {
        let meta = EventMeta::from_record(record)
            .map_err(|e| HandlerError::permanent(ErrorClass::Undecodable, e.to_string()))?;
        let event = EventAttributes {
            event_type: &meta.event_type,
            source: &meta.source,
            subject: meta.subject.as_deref(),
        };
        let subscribed = self.table.subscribed(&event);
        let (enabled, disabled): (Vec<_>, Vec<_>) = subscribed.into_iter().partition(|e| e.enabled);
        let position = position_of(record);
        let mut out: Vec<Output> = disabled
            .iter()
            .map(|e| self.disabled(e, &meta, &position))
            .collect();
        if enabled.is_empty() {
            return Ok(out);
        }
        let body = self.body(record, &meta).await?;
        for endpoint in enabled {
            let task = fresh_task(&endpoint.id, record, &meta, body.clone());
            out.push(task.output(&self.topics.tasks));
        }
        Ok(out)
    }
}

fn position_of(record: &Record) -> EventPosition {
    EventPosition {
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
    }
}

/// A task with a full schedule ahead: no attempt made yet.
fn fresh_task(endpoint_id: &str, record: &Record, meta: &EventMeta, body: Vec<u8>) -> DeliveryTask {
    DeliveryTask {
        endpoint_id: endpoint_id.to_string(),
        webhook_id: meta.id.clone(),
        event_type: meta.event_type.clone(),
        event_key: record.key.clone(),
        body,
        attempts: 0,
        first_attempt_at: None,
        due_at: None,
        key_seq: None,
        event: position_of(record),
    }
}

/// The task the fan-out would have written for `record` (an event read back from its topic)
/// and `endpoint_id`: same webhook-id and body, a fresh attempt count. What
/// `sluice deliveries resend|recover` send.
pub async fn rebuild_task(
    codec: &AvroCodec,
    record: &Record,
    endpoint_id: &str,
) -> Result<DeliveryTask, HandlerError> {
    let meta = EventMeta::from_record(record)
        .map_err(|e| HandlerError::permanent(ErrorClass::Undecodable, e.to_string()))?;
    let body = webhook_body_of(codec, record, &meta).await?;
    Ok(fresh_task(endpoint_id, record, &meta, body))
}

/// The webhook body of `record`, decoded through the registry.
async fn webhook_body_of(
    codec: &AvroCodec,
    record: &Record,
    meta: &EventMeta,
) -> Result<Vec<u8>, HandlerError> {
    let location = RecordLocation::new(&record.topic, record.partition, record.offset);
    let payload = record.value.as_deref().ok_or_else(|| {
        HandlerError::permanent(
            ErrorClass::Undecodable,
            format!("{location:?}: an event without a value"),
        )
    })?;
    let fail = |e: sluice_schemas::codec::CodecError| {
        let class = ErrorClass::Undecodable;
        if e.is_transient() {
            HandlerError::transient(ErrorClass::RegistryUnavailable, e.to_string())
        } else {
            HandlerError::permanent(class, e.to_string())
        }
    };
    let decoded = codec.decode(payload, &location).await.map_err(fail)?;
    let schema = codec
        .writer_schema(decoded.schema_id, &location)
        .await
        .map_err(fail)?;
    Ok(webhook_body(meta, &event_data(&decoded.value, &schema)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::EndpointSpec;
    use apache_avro::types::Value;
    use sluice_runtime::config::RegistryConfig;
    use sluice_schemas::RegistryClient;

    const PAID: &str = "dev.sluice.events.payments.PaymentSucceeded";

    fn endpoint(id: &str, types: &[&str], enabled: bool) -> Vec<u8> {
        let spec: EndpointSpec = serde_json::from_value(serde_json::json!({
            "url": "https://hooks.example.com/in", "event_types": types, "enabled": enabled,
        }))
        .unwrap();
        let (e, _) = Endpoint::create(spec, id.into(), jiff::Timestamp::UNIX_EPOCH).unwrap();
        serde_json::to_vec(&e).unwrap()
    }

    /// A fan-out whose codec already holds schema 7, so nothing reaches the registry.
    fn fanout() -> Fanout {
        let table = EndpointTable::new();
        for (id, types, enabled) in [
            ("ep_a", &["dev.sluice.events.payments.*"][..], true),
            ("ep_b", &[PAID][..], false),
            ("ep_c", &["dev.sluice.events.commerce.*"][..], true),
        ] {
            table
                .apply(id, Some(&endpoint(id, types, enabled)), None)
                .unwrap();
        }
        let codec = AvroCodec::new(RegistryClient::new(&RegistryConfig::default()).unwrap());
        codec.preload(7, schema()).unwrap();
        Fanout::new(table, codec, FanoutTopics::for_prefix("sluice"))
    }

    fn schema() -> apache_avro::Schema {
        apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"PaymentSucceeded","namespace":"dev.sluice.events.payments",
                "fields":[{"name":"payment_id","type":"string"}]}"#,
        )
        .unwrap()
    }

    fn event(headers: &[(&str, &str)]) -> Record {
        let value = Value::Record(vec![("payment_id".into(), Value::String("pi_1".into()))]);
        Record {
            topic: "sluice.events.payments".into(),
            partition: 1,
            offset: 5,
            timestamp_ms: Some(0),
            key: Some(b"pi_1".to_vec()),
            value: Some(sluice_schemas::codec::encode_with(7, &schema(), value).unwrap()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn one_task_per_enabled_subscriber_and_a_status_for_a_disabled_one() {
        let out = fanout()
            .handle(&event(&[
                ("ce_id", "evt_1"),
                ("ce_type", PAID),
                ("ce_source", "s"),
            ]))
            .await
            .unwrap();
        assert_eq!(out.len(), 2, "{out:#?}");
        let status = &out[0];
        assert_eq!(status.topic, "sluice.state.delivery-status");
        assert_eq!(status.key.as_deref(), Some(&b"ep_b/evt_1"[..]));
        let task = &out[1];
        assert_eq!(task.topic, "sluice.deliveries");
        let read = DeliveryTask::from_record(&Record {
            topic: task.topic.clone(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: task.key.clone(),
            value: task.value.clone(),
            headers: task.headers.clone(),
        })
        .unwrap();
        assert_eq!(read.endpoint_id, "ep_a");
        assert_eq!(read.webhook_id, "evt_1");
        assert_eq!(read.event_key.as_deref(), Some(&b"pi_1"[..]));
        assert_eq!((read.event.partition, read.event.offset), (1, 5));
        let body: serde_json::Value = serde_json::from_slice(&read.body).unwrap();
        assert_eq!(body["data"], serde_json::json!({"payment_id": "pi_1"}));
        assert_eq!(body["type"], PAID);
    }

    #[tokio::test]
    async fn unsubscribed_events_write_nothing_and_events_without_an_id_are_refused() {
        let f = fanout();
        let other = [
            ("ce_id", "evt_2"),
            ("ce_type", "dev.sluice.events.scm.CodePushed"),
            ("ce_source", "s"),
        ];
        assert!(f.handle(&event(&other)).await.unwrap().is_empty());
        let err = f
            .handle(&event(&[("ce_type", PAID), ("ce_source", "s")]))
            .await
            .unwrap_err();
        assert!(matches!(err, HandlerError::Permanent { .. }), "{err}");
        assert!(err.message().contains("`ce_id`"), "{err}");
    }
}
