//! The normalizer consumer: raw webhook deliveries in, canonical Avro events out, exactly
//! once per delivery.
//!
//! For each raw record it skips redeliveries (see [`dedup`]), maps the body with the
//! provider's mapping, encodes each event with the schema registered for its subject, and
//! emits the events plus a dedup changelog entry. Anything it cannot process fails
//! permanently (and is dead-lettered by the runtime) with a reason; registry or broker
//! trouble fails transiently and goes through the retry tiers.

pub mod dedup;
pub mod mappings;

use sluice_stream::ErrorClass;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value as Json;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::trace_context;
use sluice_schemas::codec::SchemaWriter;
use sluice_schemas::json::from_json;
use sluice_schemas::metadata::{self, raw, EventMetadata};
use sluice_schemas::subject::{self, SubjectError};
use sluice_schemas::{Catalog, RegistryClient};
use sluice_topology::model::UnmappedPolicy;
use sluice_topology::Topology;
use tracing::Instrument;

use crate::mappings::{generic, MapError, RawDelivery};
use dedup::DedupStore;
use sluice_stream::headers as routing;
use sluice_stream::state::{KafkaStateLog, Ownership, SharedLog};
use sluice_stream::{Assigned, Handler, HandlerError, Output, Record};

/// The consumer group of the normalizers of a topology: `<prefix>-normalizer`, so
/// deployments sharing a cluster under different prefixes never share a group.
pub fn group(prefix: &str) -> String {
    format!("{prefix}-normalizer")
}
/// The retry policy the normalizer uses, by name in `topology.yaml`.
pub const RETRY_POLICY: &str = "normalizer";

#[derive(Debug, thiserror::Error)]
pub enum NormalizerError {
    /// A routed event type's subject is missing or out of date.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    #[error("the topology has no `{0}` topic for dedup state")]
    NoDedupTopic(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Where events of one type go, and the schema they are written with.
#[derive(Debug)]
struct Target {
    topic: String,
    writer: SchemaWriter<'static>,
}

#[derive(Debug, Clone)]
struct NormalizerMetrics {
    events: IntCounterVec,
    duplicates: IntCounterVec,
}

pub struct Normalizer {
    /// Where the dedup changelog is read back from.
    state: SharedLog,
    targets: HashMap<String, Target>,
    unmapped: HashMap<String, UnmappedPolicy>,
    dedup: DedupStore,
    /// Which dedup partitions this instance holds, by the raw partitions it owns.
    ownership: Ownership,
    raw_topics: HashSet<String>,
    metrics: NormalizerMetrics,
    dead_letters: Option<sluice_stream::FailureRouter>,
}

impl std::fmt::Debug for Normalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalizer")
            .field("targets", &self.targets.len())
            .field("dedup", &self.dedup.topic)
            .finish()
    }
}

impl Normalizer {
    /// Resolves every routed event type's schema id from the registry (registered at deploy
    /// time by `sluice schemas register`; never registered from here).
    pub async fn new(
        clients: KafkaClients,
        registry: &RegistryClient,
        catalog: &Catalog,
        topology: &Topology,
        dedup_window: Duration,
        metrics_registry: &Registry,
    ) -> Result<Self, NormalizerError> {
        let mut targets = HashMap::new();
        for route in &topology.routes {
            let ready = subject::resolve(
                catalog,
                registry,
                topology.subjects.naming,
                &route.topic,
                &route.event_type,
            )
            .await?;
            targets.insert(
                route.event_type.clone(),
                Target {
                    topic: route.topic.clone(),
                    writer: ready.writer,
                },
            );
        }
        let dedup_topic = sluice_topology::naming::state_topic(&topology.prefix, "dedup");
        if !topology.topics.iter().any(|t| t.name == dedup_topic) {
            return Err(NormalizerError::NoDedupTopic(dedup_topic));
        }
        let metrics = NormalizerMetrics {
            events: IntCounterVec::new(
                Opts::new(
                    "sluice_normalizer_events_total",
                    "Normalized events produced, by event type.",
                ),
                &["event_type"],
            )?,
            duplicates: IntCounterVec::new(
                Opts::new(
                    "sluice_normalizer_duplicates_total",
                    "Redeliveries recognised and skipped, by source.",
                ),
                &["source"],
            )?,
        };
        metrics_registry.register(Box::new(metrics.events.clone()))?;
        metrics_registry.register(Box::new(metrics.duplicates.clone()))?;
        Ok(Self {
            state: Arc::new(KafkaStateLog::new(clients)),
            targets,
            unmapped: topology
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.unmapped))
                .collect(),
            dedup: DedupStore::new(&dedup_topic, dedup_window),
            ownership: Ownership::default(),
            raw_topics: topology
                .sources
                .iter()
                .map(|s| s.raw_topic.clone())
                .collect(),
            metrics,
            dead_letters: None,
        })
    }

    /// The raw topics this normalizer consumes.
    pub fn raw_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.raw_topics.iter().cloned().collect();
        t.sort();
        t
    }

    /// Dead-letters deliveries that were only partly mapped (a SendGrid batch with kinds
    /// that have no mapping, under the `dlq` policy) while their mapped events still go out.
    pub fn with_dead_letters(mut self, router: sluice_stream::FailureRouter) -> Self {
        self.dead_letters = Some(router);
        self
    }

    fn events_for(
        &self,
        record: &Record,
        delivery: &RawDelivery<'_>,
    ) -> Result<(Vec<mappings::Mapped>, Option<Output>), HandlerError> {
        let mapped = self.map_whole(record, delivery)?;
        if delivery.provider != "sendgrid" {
            return Ok((mapped, None));
        }
        let unmapped = mappings::sendgrid::unmapped_elements(delivery);
        if unmapped.is_empty() || mapped.is_empty() {
            return Ok((mapped, None));
        }
        let mut mapped = mapped;
        if self.unmapped.get(delivery.source) == Some(&UnmappedPolicy::Generic) {
            for (_, kind, element) in &unmapped {
                let one = RawDelivery {
                    event_type: Some(kind),
                    body: element.as_bytes(),
                    ..*delivery
                };
                mapped.push(generic::external_event(&one).map_err(|e| permanent(&e))?);
            }
            return Ok((mapped, None));
        }
        let kinds: Vec<String> = unmapped
            .iter()
            .map(|(i, k, _)| format!("{k} at [{i}]"))
            .collect();
        let error = HandlerError::permanent(
            ErrorClass::UnmappedEventType,
            format!(
                "{} batch elements have no mapping: {}",
                delivery.provider,
                kinds.join(", ")
            ),
        );
        let dead = self
            .dead_letters
            .as_ref()
            .map(|router| router.route(record, &error, metadata::now_ms()).1);
        Ok((mapped, dead))
    }

    fn map_whole(
        &self,
        record: &Record,
        delivery: &RawDelivery<'_>,
    ) -> Result<Vec<mappings::Mapped>, HandlerError> {
        match mappings::map(delivery) {
            Ok(mapped) => Ok(mapped),
            Err(MapError::Unmapped { .. })
                if self.unmapped.get(delivery.source) == Some(&UnmappedPolicy::Generic) =>
            {
                generic::external_event(delivery)
                    .map(|m| vec![m])
                    .map_err(|e| permanent(&e))
            }
            Err(e) => {
                tracing::debug!(topic = record.topic, offset = record.offset, error = %e, "delivery not mapped");
                Err(permanent(&e))
            }
        }
    }
}

fn permanent(e: &MapError) -> HandlerError {
    HandlerError::permanent(e.class(), e.to_string())
}

impl Normalizer {
    /// Maps one raw delivery into its events, inside the hop span `span`.
    async fn normalize(
        &self,
        record: &Record,
        span: &tracing::Span,
    ) -> Result<Vec<Output>, HandlerError> {
        let need = |name: &str| {
            record.header(name).ok_or_else(|| {
                HandlerError::permanent(
                    ErrorClass::MissingRawHeader,
                    format!("raw record has no `{name}` header"),
                )
            })
        };
        let source = need(raw::SOURCE)?;
        let provider = need(raw::PROVIDER)?;
        let delivery_id = need(raw::DELIVERY_ID)?;
        let received_at_ms = record
            .header(raw::RECEIVED_AT)
            .and_then(metadata::parse_rfc3339_ms)
            .or(record.timestamp_ms)
            .unwrap_or_else(metadata::now_ms);
        // Dedup state is keyed by the raw partition, also for records coming back from a
        // retry tier.
        let raw_partition = record
            .header_bytes(routing::ORIGINAL_PARTITION)
            .and_then(routing::read_int)
            .unwrap_or(record.partition);
        let from_tier = record.header_bytes(routing::ORIGINAL_TOPIC).is_some();
        if from_tier {
            // This instance may not own the raw partition: read its committed state now.
            let (log, dedup) = (&*self.state, &self.dedup);
            tokio::task::block_in_place(|| {
                dedup.restore(log, &[raw_partition], metadata::now_ms())
            })
            .map_err(|e| HandlerError::transient(ErrorClass::DedupRestore, e.to_string()))?;
        }
        let dedup_key = dedup::key(source, delivery_id);
        // Where the signature leaves the delivery id out, a replay under a fresh id is
        // still the same signed content (the gateway keys it to the same partition).
        let digest_key = record
            .header(raw::CONTENT_DIGEST)
            .map(|d| dedup::digest_key(source, d));
        let now = metadata::now_ms();
        let seen = |key: &String| self.dedup.is_duplicate(raw_partition, key, now);
        if seen(&dedup_key) || digest_key.as_ref().is_some_and(seen) {
            self.metrics.duplicates.with_label_values(&[source]).inc();
            return Ok(Vec::new());
        }

        let body = record.value.as_deref().unwrap_or_default();
        let delivery = RawDelivery {
            source,
            provider,
            delivery_id,
            event_type: record.header(raw::EVENT_TYPE),
            received_at_ms,
            content_type: record.header(metadata::CONTENT_TYPE),
            body,
        };
        let (mapped, dead_letter) = self.events_for(record, &delivery)?;

        let hop = trace_context::traceparent(span);
        let mut outputs = Vec::with_capacity(mapped.len() + 2);
        outputs.extend(dead_letter);
        for (index, m) in mapped.into_iter().enumerate() {
            let target = self.targets.get(m.event_type).ok_or_else(|| {
                HandlerError::permanent(
                    ErrorClass::UnroutedEventType,
                    format!("{} has no route in the topology", m.event_type),
                )
            })?;
            let meta = EventMetadata {
                id: mappings::event_id(source, delivery_id, index),
                source: format!("sluice://sources/{source}"),
                event_type: m.event_type.to_string(),
                time_ms: m.occurred_at_ms,
                subject: m.subject.clone(),
                // This hop's span, a child of the raw record's.
                traceparent: Some(hop.clone().unwrap_or_else(|| {
                    sluice_schemas::traceparent::continue_or_start(
                        record.header(metadata::TRACEPARENT),
                    )
                })),
            };
            let mut full = match m.fields {
                Json::Object(map) => map,
                other => {
                    return Err(HandlerError::permanent(
                        ErrorClass::InvalidPayload,
                        format!("mapping produced {other} instead of an object"),
                    ))
                }
            };
            full.insert("event_id".into(), Json::String(meta.id.clone()));
            full.insert("occurred_at".into(), Json::from(meta.time_ms));
            full.insert("source".into(), Json::String(meta.source.clone()));
            full.insert(
                "subject".into(),
                meta.subject.clone().map_or(Json::Null, Json::String),
            );
            let value =
                from_json(&Json::Object(full), target.writer.schema()).map_err(|errors| {
                    let detail: Vec<String> = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect();
                    HandlerError::permanent(
                        ErrorClass::SchemaMismatch,
                        format!(
                            "{} does not fit {}: {}",
                            provider,
                            m.event_type,
                            detail.join("; ")
                        ),
                    )
                })?;
            let payload = target
                .writer
                .encode(value)
                .map_err(|e| HandlerError::permanent(ErrorClass::EncodeFailed, e.to_string()))?;
            self.metrics.events.with_label_values(&[m.event_type]).inc();
            outputs.push(Output {
                topic: target.topic.clone(),
                partition: None,
                key: Some(m.key.into_bytes()),
                value: Some(payload),
                headers: meta
                    .headers()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into_bytes()))
                    .collect(),
            });
        }
        // Written with the batch's other deliveries in one changelog record (see
        // `batch_outputs`).
        self.dedup
            .record_pending(raw_partition, dedup_key, received_at_ms);
        if let Some(key) = digest_key {
            self.dedup
                .record_pending(raw_partition, key, received_at_ms);
        }
        Ok(outputs)
    }
}

impl Handler for Normalizer {
    async fn handle(&self, record: &Record) -> Result<Vec<Output>, HandlerError> {
        // This hop's span: a child of the raw record's, the parent of every event it maps.
        let span = tracing::info_span!("normalize", topic = %record.topic, partition = record.partition, offset = record.offset);
        trace_context::follow(&span, record.header(metadata::TRACEPARENT));
        self.normalize(record, &span).instrument(span.clone()).await
    }

    fn batch_outputs(&self) -> Vec<Output> {
        self.dedup
            .pending_records()
            .into_iter()
            .map(|(partition, key, value)| Output {
                topic: self.dedup.topic.clone(),
                partition: Some(partition),
                key: Some(key),
                value: Some(value),
                headers: Vec::new(),
            })
            .collect()
    }

    async fn on_assigned(&self, partitions: &Assigned) -> Result<(), HandlerError> {
        let needed = self
            .ownership
            .assign(partitions, |t| self.raw_topics.contains(t));
        if needed.is_empty() {
            return Ok(());
        }
        let (log, dedup) = (&*self.state, &self.dedup);
        let n = tokio::task::block_in_place(|| dedup.restore(log, &needed, metadata::now_ms()))
            .map_err(|e| HandlerError::transient(ErrorClass::DedupRestore, e.to_string()))?;
        self.ownership.restored(&needed);
        tracing::info!(partitions = ?needed, keys = n, "dedup state restored");
        Ok(())
    }

    fn on_revoked(&self, partitions: &Assigned) {
        let gone = self.ownership.revoke(partitions);
        self.dedup.forget(&gone.into_iter().collect());
    }

    fn on_batch_end(&self, committed: bool) {
        self.dedup.finish_batch(committed, metadata::now_ms());
    }
}
