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
        let decoded = self.codec.decode(payload, &location).await.map_err(fail)?;
        let schema = self
            .codec
            .writer_schema(decoded.schema_id, &location)
            .await
            .map_err(fail)?;
        Ok(webhook_body(meta, &event_data(&decoded.value, &schema)))
    }

    fn disabled(&self, endpoint: &Endpoint, meta: &EventMeta) -> Output {
        StatusRecord {
            endpoint_id: endpoint.id.clone(),
            webhook_id: meta.id.clone(),
            event_type: meta.event_type.clone(),
            status: DeliveryStatus::EndpointDisabled,
            attempts: 0,
            last_status_code: None,
            next_attempt_at: None,
            updated_at: jiff::Timestamp::now(),
        }
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
        let mut out: Vec<Output> = disabled.iter().map(|e| self.disabled(e, &meta)).collect();
        if enabled.is_empty() {
            return Ok(out);
        }
        let body = self.body(record, &meta).await?;
        let position = EventPosition {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
        };
        for endpoint in enabled {
            let task = DeliveryTask {
                endpoint_id: endpoint.id.clone(),
                webhook_id: meta.id.clone(),
                event_type: meta.event_type.clone(),
                event_key: record.key.clone(),
                body: body.clone(),
                attempts: 0,
                first_attempt_at: None,
                due_at: None,
                event: position.clone(),
            };
            out.push(task.output(&self.topics.tasks));
        }
        Ok(out)
    }
}
