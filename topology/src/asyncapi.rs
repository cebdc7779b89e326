//! An AsyncAPI 3.0 document describing what data teams can subscribe to: one channel per
//! routed topic, one message per event type, each message's payload the Avro schema itself.

use serde_json::{json, Map, Value};
use sluice_schemas::Catalog;

use crate::model::Topology;

/// Schema format identifier AsyncAPI uses for Avro schemas.
pub const AVRO_SCHEMA_FORMAT: &str = "application/vnd.apache.avro+json;version=1.9.0";

pub fn document(topology: &Topology, catalog: &Catalog, version: &str) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut by_topic: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for r in &topology.routes {
        by_topic.entry(&r.topic).or_default().push(&r.event_type);
    }
    for (topic, types) in by_topic {
        let channel_id = topic.replace('.', "_");
        let mut channel_messages = Map::new();
        for t in types {
            let Ok(entry) = catalog.latest(t) else {
                continue;
            };
            let message_id = t.rsplit('.').next().unwrap_or(t).to_string();
            let subject = topology.subjects.naming.subject(topic, t);
            messages.insert(
                message_id.clone(),
                json!({
                    "name": t,
                    "title": message_id,
                    "contentType": "application/avro",
                    "summary": format!("{t} v{}; registry subject {subject}; Confluent wire format", entry.version),
                    "headers": cloudevents_headers(),
                    "payload": {
                        "schemaFormat": AVRO_SCHEMA_FORMAT,
                        "schema": serde_json::from_str::<Value>(&entry.json).unwrap_or(Value::Null),
                    },
                    "bindings": {"kafka": {"schemaIdLocation": "payload", "schemaIdPayloadEncoding": "confluent"}},
                }),
            );
            channel_messages.insert(
                message_id.clone(),
                json!({"$ref": format!("#/components/messages/{message_id}")}),
            );
        }
        channels.insert(
            channel_id.clone(),
            json!({"address": topic, "messages": channel_messages}),
        );
        let refs: Vec<Value> = channels[&channel_id]["messages"]
            .as_object()
            .map(|m| {
                m.keys()
                    .map(|k| json!({"$ref": format!("#/channels/{channel_id}/messages/{k}")}))
                    .collect()
            })
            .unwrap_or_default();
        operations.insert(
            format!("consume_{channel_id}"),
            json!({
                "action": "receive",
                "channel": {"$ref": format!("#/channels/{channel_id}")},
                "messages": refs,
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "sluice events",
            "version": version,
            "description": "Normalized events published by sluice. Values are Avro in the Confluent wire format; headers follow the CloudEvents Kafka binding (binary mode)."
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    })
}

fn cloudevents_headers() -> Value {
    let string = |d: &str| json!({"type": "string", "description": d});
    json!({
        "type": "object",
        "required": ["ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time"],
        "properties": {
            "ce_id": string("unique event id; equals the payload's event_id"),
            "ce_source": string("the sluice source or service that produced it"),
            "ce_type": string("full Avro record name"),
            "ce_specversion": string("always 1.0"),
            "ce_time": string("RFC 3339 UTC; equals the payload's occurred_at"),
            "ce_subject": string("id of the resource the event is about"),
            "traceparent": string("W3C trace context"),
        }
    })
}
