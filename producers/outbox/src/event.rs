//! One outbox row: what a service writes, and what the relay reads back.

use std::collections::BTreeMap;

/// A domain event as a service writes it into the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's version after this event: 1 for its first event, then +1 each.
    pub sequence: i64,
    /// A catalog event type, e.g. `dev.sluice.events.commerce.OrderPlaced`.
    pub event_type: String,
    /// The event in the catalog schema's JSON form; see [`envelope`] for the fields filled in.
    pub payload: serde_json::Value,
    /// Extra metadata; `traceparent` continues the writer's trace on the relayed record.
    pub headers: BTreeMap<String, String>,
}

/// A row as the relay reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub position: Position,
    pub event_id: uuid::Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub headers: serde_json::Value,
    pub created_at_ms: i64,
}

impl OutboxRow {
    pub fn aggregate(&self) -> AggregateKey {
        AggregateKey {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
        }
    }

    /// The `traceparent` the writer left in the row's headers, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.headers.get("traceparent").and_then(|v| v.as_str())
    }
}

/// Where a row sits in the relay's order: its transaction id, then its id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub xid: i64,
    pub id: i64,
}

impl Position {
    /// The greatest position strictly before `self` that no row can hold: reading "after" it
    /// reads `self` again (ids are unique, so nothing sits between the two).
    pub fn just_before(self) -> Self {
        Self {
            xid: self.xid,
            id: self.id - 1,
        }
    }
}

/// An aggregate: the unit of ordering.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AggregateKey {
    pub aggregate_type: String,
    pub aggregate_id: String,
}

/// What the metadata fields of a relayed event are, taken from its row.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub event_id: &'a str,
    pub occurred_at_ms: i64,
    pub source: &'a str,
    pub subject: &'a str,
}

/// Fills the catalog's metadata fields (`event_id`, `occurred_at`, `source`, `subject`) from
/// the row where the payload leaves them absent or null; what the payload sets wins, except
/// `event_id`, which is always the row's (it is the id consumers deduplicate on).
pub fn envelope(payload: &serde_json::Value, e: Envelope<'_>) -> serde_json::Value {
    let mut json = payload.clone();
    if let Some(obj) = json.as_object_mut() {
        obj.extend(envelope_fields(payload, e));
    }
    json
}

/// The fields [`envelope`] sets, alone: what a relay overlays on the row's payload instead of
/// copying it (see `sluice_schemas::json::from_json_overlaid`).
pub fn envelope_fields(
    payload: &serde_json::Value,
    e: Envelope<'_>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = serde_json::Map::new();
    fields.insert("event_id".into(), e.event_id.into());
    let mut fill = |key: &str, value: serde_json::Value| {
        if payload.get(key).is_none_or(serde_json::Value::is_null) {
            fields.insert(key.to_string(), value);
        }
    };
    fill("occurred_at", e.occurred_at_ms.into());
    fill("source", e.source.into());
    fill("subject", e.subject.into());
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_fills_what_is_missing_and_always_takes_the_row_id() {
        let e = Envelope {
            event_id: "row-id",
            occurred_at_ms: 5,
            source: "sluice://outbox",
            subject: "o-1",
        };
        let filled = envelope(
            &serde_json::json!({"event_id": "other", "source": "svc", "subject": null}),
            e,
        );
        assert_eq!(
            filled,
            serde_json::json!({"event_id": "row-id", "source": "svc", "subject": "o-1", "occurred_at": 5})
        );
        assert_eq!(envelope(&serde_json::json!([1]), e), serde_json::json!([1]));
    }

    #[test]
    fn just_before_is_below_and_next_to_the_position() {
        let p = Position { xid: 9, id: 4 };
        assert!(p.just_before() < p);
        assert_eq!(p.just_before(), Position { xid: 9, id: 3 });
    }
}
