//! [`Publisher`]: one domain event in, one Avro record on its routed topic out.
//!
//! Schema ids are resolved once, at construction: for every route the subject's latest
//! registered schema must be the catalog's latest version (compared in Avro canonical form).
//! An event type whose subject is missing, or whose registered latest differs, is marked
//! unavailable and refused with a typed error instead of failing every other type; the hot
//! path never calls the registry.

use std::collections::BTreeMap;
use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::producer::{FutureProducer, Producer};
use sluice_runtime::kafka::{ClientError, KafkaClients};
use sluice_schemas::codec::{CodecError, SchemaWriter};
use sluice_schemas::json::{from_json, FieldError};
use sluice_schemas::metadata::{now_ms, EventMetadata};
use sluice_schemas::subject::{self, SubjectError, Unreadable};
use sluice_schemas::{Catalog, CatalogError, RegistryClient, RegistryError};
use sluice_topology::Topology;

use crate::produce::{self, ProduceError};

/// Where a published event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Registry id of the writer schema in the record's wire-format header.
    pub schema_id: u32,
}

/// Per-call context: who publishes and the trace it belongs to.
#[derive(Debug, Clone, Default)]
pub struct PublishContext {
    /// `source` to fill in when the event has none; the publisher's default otherwise.
    pub source: Option<String>,
    /// W3C traceparent to continue; a new trace is started when absent or invalid.
    pub traceparent: Option<String>,
}

/// Construction options.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Deadline for Kafka's acknowledgement (and the producer's `message.timeout.ms`).
    pub produce_timeout: Duration,
    /// `source` filled in when neither the event nor the context has one.
    pub default_source: String,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            produce_timeout: Duration::from_secs(5),
            default_source: "sluice://publishers/rust".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublisherBuildError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("looking up {what} in the schema registry: {source}")]
    Registry { what: String, source: RegistryError },
    /// The catalog's schema for a registered subject could not be prepared for writing.
    #[error(transparent)]
    Subject(SubjectError),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("`{0}` is not a routed event type (see `routes` in the topology)")]
    UnknownEventType(String),
    #[error("subject {subject} for {event_type} is not registered; run `sluice schemas register` and restart the gateway")]
    SchemaNotRegistered { event_type: String, subject: String },
    #[error("the latest schema registered under {subject} (id {registered_id}) is not {event_type} v{catalog_version} from this build's catalog; run `sluice schemas register` (or deploy the matching sluice) and restart")]
    SchemaOutOfDate {
        event_type: String,
        subject: String,
        registered_id: u32,
        catalog_version: u32,
    },
    #[error("the event does not match {event_type} v{version}: {}", summary(.fields))]
    SchemaMismatch {
        event_type: String,
        version: u32,
        fields: Vec<FieldError>,
    },
    #[error(transparent)]
    Encode(#[from] CodecError),
    #[error(transparent)]
    Produce(#[from] ProduceError),
}

fn summary(fields: &[FieldError]) -> String {
    let mut s = fields
        .iter()
        .take(5)
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ");
    if fields.len() > 5 {
        s.push_str(&format!("; and {} more", fields.len() - 5));
    }
    s
}

impl PublishError {
    /// Stable machine-readable code, as the HTTP API returns it.
    pub fn code(&self) -> &'static str {
        use crate::gateway::errors::code;
        match self {
            Self::UnknownEventType(_) => code::UNKNOWN_EVENT_TYPE,
            Self::SchemaNotRegistered { .. } => code::SCHEMA_NOT_REGISTERED,
            Self::SchemaOutOfDate { .. } => code::SCHEMA_OUT_OF_DATE,
            Self::SchemaMismatch { .. } | Self::Encode(_) => code::SCHEMA_MISMATCH,
            Self::Produce(ProduceError::Unavailable { .. }) => code::KAFKA_UNAVAILABLE,
            Self::Produce(ProduceError::TooLarge { .. }) => code::BODY_TOO_LARGE,
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Self::UnknownEventType(_) => 404,
            Self::SchemaNotRegistered { .. } | Self::SchemaOutOfDate { .. } => 503,
            Self::SchemaMismatch { .. } | Self::Encode(_) => 422,
            Self::Produce(ProduceError::Unavailable { .. }) => 503,
            Self::Produce(ProduceError::TooLarge { .. }) => 413,
        }
    }
}

/// Whether a route's event type can be published, and the writer when it can.
#[derive(Debug)]
enum Availability {
    Ready {
        /// The catalog version `writer` writes.
        version: u32,
        writer: SchemaWriter<'static>,
    },
    NotRegistered,
    OutOfDate {
        registered_id: u32,
        catalog_version: u32,
    },
}

#[derive(Debug)]
struct Route {
    topic: String,
    subject: String,
    availability: Availability,
}

/// A route that can be published: its topic, the catalog version and the writer built for
/// its subject at construction.
struct ReadyRoute<'a> {
    topic: &'a str,
    version: u32,
    writer: &'a SchemaWriter<'static>,
}

/// Publishes catalog events to their routed topics. Cheap to share behind an `Arc`.
pub struct Publisher {
    producer: FutureProducer,
    options: PublisherOptions,
    routes: BTreeMap<String, Route>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Publisher {
    /// A publisher with its own idempotent producer (role `publisher`) and default options.
    pub async fn new(
        clients: &KafkaClients,
        registry: &RegistryClient,
        catalog: &Catalog,
        topology: &Topology,
    ) -> Result<Self, PublisherBuildError> {
        Self::with_options(
            clients,
            registry,
            catalog,
            topology,
            PublisherOptions::default(),
        )
        .await
    }

    pub async fn with_options(
        clients: &KafkaClients,
        registry: &RegistryClient,
        catalog: &Catalog,
        topology: &Topology,
        options: PublisherOptions,
    ) -> Result<Self, PublisherBuildError> {
        let producer = produce::producer(clients, "publisher", options.produce_timeout)?;
        Self::with_producer(producer, registry, catalog, topology, options).await
    }

    /// Shares an existing producer (the gateway's), whose `message.timeout.ms` should match
    /// `options.produce_timeout`.
    pub async fn with_producer(
        producer: FutureProducer,
        registry: &RegistryClient,
        catalog: &Catalog,
        topology: &Topology,
        options: PublisherOptions,
    ) -> Result<Self, PublisherBuildError> {
        let mut routes = BTreeMap::new();
        for route in &topology.routes {
            let naming = topology.subjects.naming;
            let resolved =
                subject::resolve(catalog, registry, naming, &route.topic, &route.event_type).await;
            let subject = naming.subject(&route.topic, &route.event_type);
            let availability = availability(resolved, catalog, &route.event_type)?;
            routes.insert(
                route.event_type.clone(),
                Route {
                    topic: route.topic.clone(),
                    subject,
                    availability,
                },
            );
        }
        Ok(Self {
            producer,
            options,
            routes,
        })
    }

    /// Routed event types, available or not.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// Whether `event_type` is routed (it may still be unavailable).
    pub fn is_routed(&self, event_type: &str) -> bool {
        self.routes.contains_key(event_type)
    }

    /// The topic `event_type` is published to.
    pub fn topic_of(&self, event_type: &str) -> Option<&str> {
        self.routes.get(event_type).map(|r| r.topic.as_str())
    }

    /// `Ok` when `event_type` can be published now.
    pub fn check_available(&self, event_type: &str) -> Result<(), PublishError> {
        self.ready(event_type).map(|_| ())
    }

    fn ready(&self, event_type: &str) -> Result<ReadyRoute<'_>, PublishError> {
        let route = self
            .routes
            .get(event_type)
            .ok_or_else(|| PublishError::UnknownEventType(event_type.to_string()))?;
        match &route.availability {
            Availability::Ready { version, writer } => Ok(ReadyRoute {
                topic: &route.topic,
                version: *version,
                writer,
            }),
            Availability::NotRegistered => Err(PublishError::SchemaNotRegistered {
                event_type: event_type.to_string(),
                subject: route.subject.clone(),
            }),
            Availability::OutOfDate {
                registered_id,
                catalog_version,
            } => Err(PublishError::SchemaOutOfDate {
                event_type: event_type.to_string(),
                subject: route.subject.clone(),
                registered_id: *registered_id,
                catalog_version: *catalog_version,
            }),
        }
    }

    /// Publishes `json` as `event_type`; `event_id`, `occurred_at` and `source` are filled in
    /// when absent (a new UUIDv7, now, the default source).
    pub async fn publish(
        &self,
        event_type: &str,
        json: serde_json::Value,
    ) -> Result<Published, PublishError> {
        self.publish_with(event_type, json, &PublishContext::default())
            .await
    }

    /// [`publish`](Self::publish) with a source and trace context.
    pub async fn publish_with(
        &self,
        event_type: &str,
        mut json: serde_json::Value,
        context: &PublishContext,
    ) -> Result<Published, PublishError> {
        let route = self.ready(event_type)?;
        let source = context
            .source
            .clone()
            .unwrap_or_else(|| self.options.default_source.clone());
        fill_defaults(&mut json, &source);
        let value = from_json(&json, route.writer.schema()).map_err(|fields| {
            PublishError::SchemaMismatch {
                event_type: event_type.to_string(),
                version: route.version,
                fields,
            }
        })?;
        self.send(event_type, value, context).await
    }

    /// Publishes an Avro value of `event_type`'s latest catalog schema (it is resolved
    /// against that schema first, so plain `Long`s for timestamps are fine).
    pub async fn publish_avro(
        &self,
        event_type: &str,
        value: Value,
        context: &PublishContext,
    ) -> Result<Published, PublishError> {
        let route = self.ready(event_type)?;
        let value = sluice_schemas::codec::resolve(value, route.writer.schema()).map_err(|e| {
            PublishError::SchemaMismatch {
                event_type: event_type.to_string(),
                version: route.version,
                fields: vec![FieldError {
                    field: "$".into(),
                    message: e.to_string(),
                }],
            }
        })?;
        self.send(event_type, value, context).await
    }

    async fn send(
        &self,
        event_type: &str,
        value: Value,
        context: &PublishContext,
    ) -> Result<Published, PublishError> {
        let route = self.ready(event_type)?;
        let mut meta =
            metadata_of(&value, event_type).ok_or_else(|| PublishError::SchemaMismatch {
                event_type: event_type.to_string(),
                version: route.version,
                fields: vec![FieldError {
                    field: "$".into(),
                    message: "event_id, occurred_at and source must be set".into(),
                }],
            })?;
        meta.traceparent = Some(crate::traceparent::continue_or_start(
            context.traceparent.as_deref(),
        ));
        let key = meta.subject.clone().unwrap_or_else(|| meta.id.clone());
        let payload = route.writer.encode(value)?;
        let delivered = produce::send(
            &self.producer,
            route.topic,
            key.as_bytes(),
            &payload,
            produce::owned_headers(&meta.headers()),
            self.options.produce_timeout,
        )
        .await?;
        Ok(Published {
            event_id: meta.id,
            topic: route.topic.to_string(),
            partition: delivered.partition,
            offset: delivered.offset,
            schema_id: route.writer.id(),
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Waits (blocking a worker thread) until queued records are delivered or `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}

/// What a route's subject resolution means for publishing: a missing or out-of-date subject
/// disables only its event type (with a warning), while a catalog or registry failure stops
/// the publisher from being built at all.
fn availability(
    resolved: Result<subject::Ready, SubjectError>,
    catalog: &Catalog,
    event_type: &str,
) -> Result<Availability, PublisherBuildError> {
    match resolved {
        Ok(ready) => Ok(Availability::Ready {
            version: ready.version,
            writer: ready.writer,
        }),
        Err(SubjectError::OutOfDate {
            subject,
            id,
            version,
            ..
        }) => {
            let path = catalog.latest(event_type).map(|e| e.path.as_str());
            tracing::warn!(%subject, registered_id = id, catalog = %path.unwrap_or_default(),
                "registry's latest schema differs from the catalog; publishing {event_type} is disabled");
            Ok(Availability::OutOfDate {
                registered_id: id,
                catalog_version: version,
            })
        }
        Err(SubjectError::NotRegistered { subject, reason }) => match *reason {
            Unreadable::Missing => {
                tracing::warn!(%subject, "subject not registered (run `sluice schemas register`); publishing {event_type} is disabled");
                Ok(Availability::NotRegistered)
            }
            Unreadable::Catalog(e) => Err(PublisherBuildError::Catalog(e)),
            Unreadable::Registry(source) => Err(PublisherBuildError::Registry {
                what: format!("subject {subject}"),
                source,
            }),
            reason => Err(PublisherBuildError::Subject(SubjectError::NotRegistered {
                subject,
                reason: Box::new(reason),
            })),
        },
    }
}

/// Fills `event_id`, `occurred_at` and `source` when absent or null.
pub fn fill_defaults(json: &mut serde_json::Value, source: &str) {
    let Some(obj) = json.as_object_mut() else {
        return;
    };
    let mut fill = |key: &str, value: serde_json::Value| {
        if obj.get(key).is_none_or(serde_json::Value::is_null) {
            obj.insert(key.to_string(), value);
        }
    };
    fill("event_id", uuid::Uuid::now_v7().to_string().into());
    fill("occurred_at", now_ms().into());
    fill("source", source.into());
}

/// The CloudEvents metadata of a catalog record (its first four fields, by convention).
fn metadata_of(value: &Value, event_type: &str) -> Option<EventMetadata> {
    let Value::Record(fields) = value else {
        return None;
    };
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let string = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Union(_, inner)) => match inner.as_ref() {
            Value::String(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    let time_ms = match field("occurred_at")? {
        Value::TimestampMillis(ms) | Value::Long(ms) => *ms,
        _ => return None,
    };
    Some(EventMetadata {
        id: string(field("event_id"))?,
        source: string(field("source"))?,
        event_type: event_type.to_string(),
        time_ms,
        subject: string(field("subject")),
        traceparent: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let mut j = serde_json::json!({"event_id": "mine", "occurred_at": null});
        fill_defaults(&mut j, "sluice://publishers/billing");
        assert_eq!(j["event_id"], "mine");
        assert!(j["occurred_at"].as_i64().unwrap() > 1_700_000_000_000);
        assert_eq!(j["source"], "sluice://publishers/billing");
        let mut j = serde_json::json!({});
        fill_defaults(&mut j, "s");
        let id = uuid::Uuid::parse_str(j["event_id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let mut not_object = serde_json::json!([1]);
        fill_defaults(&mut not_object, "s");
        assert_eq!(not_object, serde_json::json!([1]));
    }

    #[test]
    fn metadata_comes_from_the_record() {
        let catalog = Catalog::embedded().unwrap();
        let entry = catalog
            .latest("dev.sluice.events.payments.PaymentSucceeded")
            .unwrap();
        let json = serde_json::json!({
            "event_id": "e1", "occurred_at": 1_649_367_553_123i64, "source": "s",
            "subject": "pi_1", "payment_id": "pi_1",
            "amount": {"amount": "1.00", "currency": "EUR"}, "provider": "stripe"
        });
        let value = from_json(&json, &entry.schema).unwrap();
        let m = metadata_of(&value, &entry.full_name).unwrap();
        assert_eq!(m.id, "e1");
        assert_eq!(m.time_ms, 1_649_367_553_123);
        assert_eq!(m.subject.as_deref(), Some("pi_1"));
        assert_eq!(m.event_type, entry.full_name);
    }

    /// A missing or out-of-date subject disables only its event type; a catalog or registry
    /// failure stops the build, with the messages the publisher always gave.
    #[test]
    fn subject_resolution_decides_availability_or_fails_the_build() {
        let catalog = Catalog::embedded().unwrap();
        let event_type = "dev.sluice.events.payments.PaymentSucceeded";
        let entry = catalog.latest(event_type).unwrap();
        let not_registered = |reason: Unreadable| SubjectError::NotRegistered {
            subject: "orders-value".into(),
            reason: Box::new(reason),
        };

        let ready = subject::ready(
            "orders-value".into(),
            entry,
            sluice_schemas::Registration::Current { id: 31 },
        );
        match availability(ready, &catalog, event_type).unwrap() {
            Availability::Ready { version, writer } => {
                assert_eq!((version, writer.id()), (entry.version, 31));
            }
            other => panic!("{other:?}"),
        }
        let missing = Err(not_registered(Unreadable::Missing));
        assert!(matches!(
            availability(missing, &catalog, event_type),
            Ok(Availability::NotRegistered)
        ));
        let out_of_date = Err(SubjectError::OutOfDate {
            subject: "orders-value".into(),
            id: 9,
            event_type: event_type.into(),
            version: 2,
        });
        assert!(matches!(
            availability(out_of_date, &catalog, event_type),
            Ok(Availability::OutOfDate {
                registered_id: 9,
                catalog_version: 2
            })
        ));

        let down = Err(not_registered(Unreadable::Registry(
            RegistryError::Request {
                url: "http://registry".into(),
                message: "HTTP 503".into(),
                retriable: true,
            },
        )));
        let err = availability(down, &catalog, event_type).unwrap_err();
        assert_eq!(
            err.to_string(),
            "looking up subject orders-value in the schema registry: registry http://registry: HTTP 503"
        );
        let unknown = Err(not_registered(Unreadable::Catalog(
            CatalogError::UnknownEventType("x".into()),
        )));
        let err = availability(unknown, &catalog, "x").unwrap_err();
        assert!(matches!(err, PublisherBuildError::Catalog(_)), "{err}");
    }

    #[test]
    fn error_codes_and_statuses_are_stable() {
        let e = PublishError::SchemaMismatch {
            event_type: "t".into(),
            version: 1,
            fields: vec![FieldError {
                field: "amount".into(),
                message: "expected decimal string".into(),
            }],
        };
        assert_eq!((e.code(), e.http_status()), ("schema_mismatch", 422));
        assert!(e.to_string().contains("amount: expected decimal string"));
        let e = PublishError::SchemaNotRegistered {
            event_type: "t".into(),
            subject: "s".into(),
        };
        assert_eq!((e.code(), e.http_status()), ("schema_not_registered", 503));
        assert!(e.to_string().contains("sluice schemas register"));
        let e = PublishError::UnknownEventType("x".into());
        assert_eq!((e.code(), e.http_status()), ("unknown_event_type", 404));
    }
}
