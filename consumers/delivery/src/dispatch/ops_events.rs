//! Operational events of delivery: `delivery.failing`, `delivery.recovered`,
//! `delivery.exhausted` and `endpoint.disabled`, as Avro events of the catalog
//! (`schemas/avro/delivery/`, namespace `dev.sluice.events.delivery`) on
//! `<prefix>.deliveries.events`, keyed by endpoint id, with the CloudEvents headers every
//! sluice event has. Their subjects are registered by `sluice schemas register` and
//! resolved once at start, like every other writer's.

use std::collections::HashMap;

use serde_json::{json, Value as Json};
use sluice_schemas::codec::SchemaWriter;
use sluice_schemas::json::from_json;
use sluice_schemas::metadata::EventMetadata;
use sluice_schemas::subject::{self, SubjectError, SubjectNaming};
use sluice_schemas::{Catalog, RegistryClient};
use sluice_stream::Output;

/// The CloudEvents source of every operational event.
pub const SOURCE: &str = "sluice://deliver";

/// What happened to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpsEventType {
    /// The first failure after a success (or since this instance took the endpoint).
    Failing,
    /// The first success after failures.
    Recovered,
    /// A delivery's schedule ran out: dead-lettered.
    Exhausted,
    /// The endpoint was disabled: it answered 410 Gone, or failed for `disable_after`.
    Disabled,
}

impl OpsEventType {
    pub const ALL: [Self; 4] = [
        Self::Failing,
        Self::Recovered,
        Self::Exhausted,
        Self::Disabled,
    ];

    /// The short name operators know it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failing => "delivery.failing",
            Self::Recovered => "delivery.recovered",
            Self::Exhausted => "delivery.exhausted",
            Self::Disabled => "endpoint.disabled",
        }
    }

    /// Its catalog event type (the record's full name, the `ce_type` header).
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Failing => "dev.sluice.events.delivery.DeliveryFailing",
            Self::Recovered => "dev.sluice.events.delivery.DeliveryRecovered",
            Self::Exhausted => "dev.sluice.events.delivery.DeliveryExhausted",
            Self::Disabled => "dev.sluice.events.delivery.EndpointDisabled",
        }
    }
}

/// One operational event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsEvent {
    pub event_type: OpsEventType,
    pub endpoint_id: String,
    /// The delivery that caused it.
    pub webhook_id: String,
    pub status_code: Option<u16>,
    /// When the endpoint started failing, for `failing`, `disabled` and `recovered`.
    pub failing_since: Option<jiff::Timestamp>,
    /// Why, for `endpoint.disabled`: `gone` or `failing`.
    pub reason: Option<&'static str>,
    pub time: jiff::Timestamp,
}

impl OpsEvent {
    /// The event's fields as JSON, in the shape of its catalog record.
    fn fields(&self, event_id: &str) -> Json {
        let mut fields = json!({
            "event_id": event_id,
            "occurred_at": self.time.as_millisecond(),
            "source": SOURCE,
            "subject": self.endpoint_id,
            "endpoint_id": self.endpoint_id,
            "webhook_id": self.webhook_id,
            "status_code": self.status_code,
            "failing_since": self.failing_since.map(|t| t.as_millisecond()),
        });
        if self.event_type == OpsEventType::Disabled {
            fields["reason"] = self.reason.unwrap_or("failing").into();
        }
        fields
    }
}

/// An operational event could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OpsEventError {
    #[error("operational event {event_type}: {source}")]
    Subject {
        event_type: &'static str,
        #[source]
        source: SubjectError,
    },
    #[error("operational event {event_type} does not fit its schema: {reason}")]
    Encode {
        event_type: &'static str,
        reason: String,
    },
}

/// The writers of the four operational events for their topic.
#[derive(Debug, Clone)]
pub struct OpsEvents {
    pub topic: String,
    writers: HashMap<OpsEventType, SchemaWriter<'static>>,
}

impl OpsEvents {
    /// Looks the four subjects up on `topic` (registered by `sluice schemas register`) and
    /// checks them against the catalog. At start-up, never per event.
    pub async fn resolve(
        catalog: &Catalog,
        registry: &RegistryClient,
        naming: SubjectNaming,
        topic: &str,
    ) -> Result<Self, OpsEventError> {
        let mut writers = HashMap::new();
        for t in OpsEventType::ALL {
            let ready = subject::resolve(catalog, registry, naming, topic, t.event_type())
                .await
                .map_err(|source| OpsEventError::Subject {
                    event_type: t.event_type(),
                    source,
                })?;
            writers.insert(t, ready.writer);
        }
        Ok(Self::with_writers(topic, writers))
    }

    pub fn with_writers(
        topic: &str,
        writers: HashMap<OpsEventType, SchemaWriter<'static>>,
    ) -> Self {
        Self {
            topic: topic.to_string(),
            writers,
        }
    }

    /// `event` as a record of the topic: Avro in the Confluent wire format, keyed by
    /// endpoint id, with CloudEvents headers.
    pub fn output(&self, event: &OpsEvent) -> Result<Output, OpsEventError> {
        let event_type = event.event_type.event_type();
        let fail = |reason: String| OpsEventError::Encode { event_type, reason };
        let writer = self
            .writers
            .get(&event.event_type)
            .ok_or_else(|| fail("no writer resolved".into()))?;
        let meta = EventMetadata {
            id: uuid::Uuid::now_v7().to_string(),
            source: SOURCE.to_string(),
            event_type: event_type.to_string(),
            time_ms: event.time.as_millisecond(),
            subject: Some(event.endpoint_id.clone()),
            traceparent: None,
        };
        let value = from_json(&event.fields(&meta.id), writer.schema()).map_err(|errors| {
            fail(
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let bytes = writer.encode(value).map_err(|e| fail(e.to_string()))?;
        Ok(Output {
            topic: self.topic.clone(),
            partition: None,
            key: Some(event.endpoint_id.clone().into_bytes()),
            value: Some(bytes),
            headers: meta
                .headers()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into_bytes()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_schemas::json::to_json;

    /// Writers of the catalog's schemas with made-up ids, as a registry would give.
    fn offline() -> OpsEvents {
        let catalog = Catalog::embedded().unwrap();
        let writers = OpsEventType::ALL
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let schema = catalog.latest(t.event_type()).unwrap().schema.clone();
                (*t, SchemaWriter::new(i as u32 + 7, schema).unwrap())
            })
            .collect();
        OpsEvents::with_writers("sluice.deliveries.events", writers)
    }

    fn event(event_type: OpsEventType, reason: Option<&'static str>) -> OpsEvent {
        OpsEvent {
            event_type,
            endpoint_id: "ep_1".into(),
            webhook_id: "evt_1".into(),
            status_code: Some(503),
            failing_since: Some(jiff::Timestamp::from_millisecond(1_000).unwrap()),
            reason,
            time: jiff::Timestamp::from_millisecond(5_000).unwrap(),
        }
    }

    /// The record `out` carries, decoded with `event_type`'s catalog schema.
    fn decoded(out: &Output, event_type: OpsEventType) -> Json {
        let catalog = Catalog::embedded().unwrap();
        let schema = &catalog.latest(event_type.event_type()).unwrap().schema;
        let bytes = out.value.as_deref().unwrap();
        assert_eq!(bytes[0], 0, "Confluent wire format");
        let mut body = &bytes[5..];
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .unwrap();
        to_json(&reader.read_value(&mut body).unwrap())
    }

    #[test]
    fn every_event_is_an_avro_event_of_the_catalog_with_cloudevents_headers() {
        let events = offline();
        for t in OpsEventType::ALL {
            let reason = (t == OpsEventType::Disabled).then_some("gone");
            let out = events.output(&event(t, reason)).unwrap();
            assert_eq!(out.key.as_deref(), Some(&b"ep_1"[..]));
            let header = |k: &str| {
                out.headers
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            };
            assert_eq!(header("ce_type").as_deref(), Some(t.event_type()));
            assert_eq!(header("ce_source").as_deref(), Some(SOURCE));
            assert_eq!(header("ce_subject").as_deref(), Some("ep_1"));
            let json = decoded(&out, t);
            assert_eq!(json["event_id"].as_str(), header("ce_id").as_deref());
            assert_eq!(json["endpoint_id"], "ep_1");
            assert_eq!(json["webhook_id"], "evt_1");
            assert_eq!(json["status_code"], 503);
            assert_eq!(json["failing_since"], 1_000);
            assert_eq!(json["occurred_at"], 5_000);
            if t == OpsEventType::Disabled {
                assert_eq!(json["reason"], "gone");
            } else {
                assert!(json.get("reason").is_none(), "{json}");
            }
        }
    }

    #[test]
    fn an_unanswered_attempt_has_no_status_code() {
        let mut e = event(OpsEventType::Failing, None);
        e.status_code = None;
        e.failing_since = None;
        let out = offline().output(&e).unwrap();
        let json = decoded(&out, OpsEventType::Failing);
        assert_eq!(json["status_code"], Json::Null);
        assert_eq!(json["failing_since"], Json::Null);
    }
}
