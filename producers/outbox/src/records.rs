//! From an outbox row to the Kafka record the relay writes: the Avro event of its type on its
//! routed topic, or, when the row cannot be that, a dead letter that names the row.

use std::collections::BTreeMap;

use sluice_schemas::codec::SchemaWriter;
use sluice_schemas::json::from_json_overlaid;
use sluice_schemas::metadata::{self, EventMetadata};
use sluice_schemas::subject::{self, SubjectError};
use sluice_schemas::{Catalog, RegistryClient};
use sluice_topology::Topology;

use crate::event::{envelope_fields, Envelope, OutboxRow};

/// Headers naming the row on every record the relay writes (events and dead letters).
pub mod header {
    pub const TABLE: &str = "sluice_outbox_table";
    pub const ROW_ID: &str = "sluice_outbox_id";
    pub const XID: &str = "sluice_outbox_xid";
    pub const AGGREGATE_TYPE: &str = "sluice_aggregate_type";
    pub const AGGREGATE_ID: &str = "sluice_aggregate_id";
    pub const SEQUENCE: &str = "sluice_sequence";
    pub const EVENT_TYPE: &str = "sluice_event_type";
    /// On dead letters: why the row is not an event.
    pub const ERROR: &str = "sluice_error";
}

/// A record ready to produce.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    pub dead_letter: bool,
}

/// A routed event type: its topic and, when its subject is registered as the catalog's
/// latest, the writer; otherwise why not.
#[derive(Debug)]
struct Route {
    topic: String,
    writer: Result<(u32, SchemaWriter<'static>), String>,
}

/// The routes of the topology, resolved against the registry once at start.
#[derive(Debug)]
pub struct Routes {
    routes: BTreeMap<String, Route>,
}

impl Routes {
    pub async fn resolve(
        catalog: &Catalog,
        registry: &RegistryClient,
        topology: &Topology,
    ) -> Result<Self, SubjectError> {
        let mut routes = BTreeMap::new();
        let naming = topology.subjects.naming;
        for r in &topology.routes {
            let writer = match subject::resolve(catalog, registry, naming, &r.topic, &r.event_type)
                .await
            {
                Ok(ready) => Ok((ready.version, ready.writer)),
                Err(e @ SubjectError::OutOfDate { .. }) => Err(e.to_string()),
                Err(SubjectError::NotRegistered { subject, reason }) => {
                    if let subject::Unreadable::Registry(_) = *reason {
                        // The registry is down: refuse to start rather than dead-letter
                        // every row.
                        return Err(SubjectError::NotRegistered { subject, reason });
                    }
                    Err(format!(
                            "subject {subject} is not registered ({reason}); run `sluice schemas register`"
                        ))
                }
            };
            routes.insert(
                r.event_type.clone(),
                Route {
                    topic: r.topic.clone(),
                    writer,
                },
            );
        }
        Ok(Self { routes })
    }

    /// The record for `row`: its event, or a dead letter to `dlq_topic` saying why not.
    pub fn encode(&self, row: &OutboxRow, table: &str, source: &str, dlq_topic: &str) -> Outgoing {
        match self.event(row, table, source) {
            Ok(out) => out,
            Err(reason) => dead_letter(row, table, dlq_topic, reason),
        }
    }

    fn event(&self, row: &OutboxRow, table: &str, source: &str) -> Result<Outgoing, String> {
        let route = self.routes.get(&row.event_type).ok_or_else(|| {
            format!(
                "`{}` is not a routed event type (see `routes` in the topology)",
                row.event_type
            )
        })?;
        let (version, writer) = route.writer.as_ref().map_err(Clone::clone)?;
        let event_id = row.event_id.to_string();
        // The row's metadata laid over its payload, not copied into it: one event per row.
        let overlay = envelope_fields(
            &row.payload,
            Envelope {
                event_id: &event_id,
                occurred_at_ms: row.created_at_ms,
                source,
                subject: &row.aggregate_id,
            },
        );
        let field = |key: &str| overlay.get(key).or_else(|| row.payload.get(key));
        let value =
            from_json_overlaid(&row.payload, &overlay, writer.schema()).map_err(|fields| {
                let detail = fields
                    .iter()
                    .take(5)
                    .map(|f| format!("{}: {}", f.field, f.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                format!(
                    "the payload does not match {} v{version}: {detail}",
                    row.event_type
                )
            })?;
        let meta = EventMetadata {
            id: event_id,
            source: field("source")
                .and_then(|v| v.as_str())
                .unwrap_or(source)
                .to_string(),
            event_type: row.event_type.clone(),
            time_ms: field("occurred_at")
                .and_then(|v| v.as_i64())
                .unwrap_or(row.created_at_ms),
            subject: Some(row.aggregate_id.clone()),
            traceparent: Some(sluice_schemas::traceparent::continue_or_start(
                row.traceparent(),
            )),
        };
        let payload = writer.encode(value).map_err(|e| e.to_string())?;
        let mut headers = meta.headers();
        headers.extend(identity(row, table));
        Ok(Outgoing {
            topic: route.topic.clone(),
            key: row.aggregate_id.as_bytes().to_vec(),
            payload,
            headers,
            dead_letter: false,
        })
    }
}

fn identity(row: &OutboxRow, table: &str) -> Vec<(&'static str, String)> {
    vec![
        (header::TABLE, table.to_string()),
        (header::ROW_ID, row.position.id.to_string()),
        (header::XID, row.position.xid.to_string()),
        (header::AGGREGATE_TYPE, row.aggregate_type.clone()),
        (header::AGGREGATE_ID, row.aggregate_id.clone()),
        (header::SEQUENCE, row.sequence.to_string()),
    ]
}

/// The dead letter of a row whose event Kafka refused (`reason` says why, e.g. too large):
/// its identity and the reason, without the payload that was refused.
pub fn refused(row: &OutboxRow, table: &str, dlq_topic: &str, reason: String) -> Outgoing {
    let mut out = dead_letter(row, table, dlq_topic, reason);
    let mut body: serde_json::Value = serde_json::from_slice(&out.payload).expect("json");
    body["payload"] = serde_json::Value::Null;
    out.payload = serde_json::to_vec(&body).expect("json");
    out
}

/// The row as JSON on the DLQ, keyed by aggregate id, with its identity and the reason.
fn dead_letter(row: &OutboxRow, table: &str, dlq_topic: &str, reason: String) -> Outgoing {
    let body = serde_json::json!({
        "event_id": row.event_id.to_string(),
        "event_type": row.event_type,
        "payload": row.payload,
        "headers": row.headers,
        "created_at_ms": row.created_at_ms,
    });
    let mut headers = identity(row, table);
    headers.push((metadata::CE_ID, row.event_id.to_string()));
    headers.push((header::EVENT_TYPE, row.event_type.clone()));
    headers.push((header::ERROR, reason));
    Outgoing {
        topic: dlq_topic.to_string(),
        key: row.aggregate_id.as_bytes().to_vec(),
        payload: serde_json::to_vec(&body).expect("json"),
        headers,
        dead_letter: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Position;

    const ORDER: &str = "dev.sluice.events.commerce.OrderPlaced";

    fn routes() -> (Routes, Catalog) {
        let catalog = Catalog::embedded().unwrap();
        let entry = catalog.latest(ORDER).unwrap();
        let writer = SchemaWriter::new(7, entry.schema.clone()).unwrap();
        let mut routes = BTreeMap::new();
        routes.insert(
            ORDER.to_string(),
            Route {
                topic: "p.events.commerce".into(),
                writer: Ok((entry.version, writer)),
            },
        );
        (Routes { routes }, catalog)
    }

    fn row(event_type: &str, payload: serde_json::Value) -> OutboxRow {
        OutboxRow {
            position: Position { xid: 900, id: 5 },
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            sequence: 2,
            event_type: event_type.into(),
            payload,
            headers: serde_json::json!({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
            created_at_ms: 1_700_000_000_000,
        }
    }

    fn get<'a>(o: &'a Outgoing, name: &str) -> Option<&'a str> {
        o.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_row_becomes_its_avro_event_keyed_by_aggregate_with_cloudevents_headers() {
        let (routes, _) = routes();
        let r = row(
            ORDER,
            serde_json::json!({"order_id": "o-1", "total": {"amount": "1.00", "currency": "EUR"}, "line_items": [], "provider": "shop"}),
        );
        let o = routes.encode(&r, "sluice_outbox", "sluice://outbox", "p.dlq.outbox");
        assert!(!o.dead_letter);
        assert_eq!(o.topic, "p.events.commerce");
        assert_eq!(o.key, b"o-1");
        assert_eq!(
            &o.payload[..5],
            &[0, 0, 0, 0, 7],
            "Confluent framing, schema id 7"
        );
        assert_eq!(get(&o, "ce_id"), Some(r.event_id.to_string().as_str()));
        assert_eq!(get(&o, "ce_subject"), Some("o-1"));
        assert_eq!(get(&o, "ce_source"), Some("sluice://outbox"));
        assert_eq!(get(&o, header::SEQUENCE), Some("2"));
        let tp = get(&o, "traceparent").unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
    }

    #[test]
    fn a_row_that_is_not_its_event_becomes_a_dead_letter_naming_the_row() {
        let (routes, _) = routes();
        let bad = row(ORDER, serde_json::json!({"order_id": 1}));
        let o = routes.encode(&bad, "sluice_outbox", "s", "p.dlq.outbox");
        assert!(o.dead_letter);
        assert_eq!(o.topic, "p.dlq.outbox");
        assert_eq!(get(&o, header::ROW_ID), Some("5"));
        assert_eq!(get(&o, header::XID), Some("900"));
        assert!(get(&o, header::ERROR).unwrap().contains("does not match"));
        let body: serde_json::Value = serde_json::from_slice(&o.payload).unwrap();
        assert_eq!(body["payload"], serde_json::json!({"order_id": 1}));

        let o = refused(
            &bad,
            "sluice_outbox",
            "p.dlq.outbox",
            "RecordTooLarge: x".into(),
        );
        let body: serde_json::Value = serde_json::from_slice(&o.payload).unwrap();
        assert_eq!(body["payload"], serde_json::Value::Null);
        assert_eq!(get(&o, header::ERROR), Some("RecordTooLarge: x"));

        let unrouted = row("dev.sluice.events.commerce.Nope", serde_json::json!({}));
        let o = routes.encode(&unrouted, "sluice_outbox", "s", "p.dlq.outbox");
        assert!(get(&o, header::ERROR)
            .unwrap()
            .contains("not a routed event type"));
    }
}
