//! The webhook body: an event as a subscriber receives it.
//!
//! ```json
//! {"id": "<ce_id>", "type": "dev.sluice.events.payments.PaymentSucceeded",
//!  "timestamp": "2026-01-02T03:04:05.678Z", "source": "...", "subject": "...",
//!  "data": { ...the Avro record as JSON, decimals as strings... }}
//! ```
//!
//! `id` is also the `webhook-id` header, the same on every attempt, so receivers
//! deduplicate on either. The body is built once, at fan-out, and sent byte for byte on
//! every attempt: the signature covers exactly these bytes.

use serde::Serialize;
use sluice_schemas::metadata::{CE_ID, CE_SOURCE, CE_SUBJECT, CE_TIME, CE_TYPE};
use sluice_stream::Record;

/// The CloudEvents attributes of an event record, from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub subject: Option<String>,
    /// RFC 3339; the record's timestamp when the event has no `ce_time`.
    pub time: String,
}

/// An event record without the attributes a delivery needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: header `{header}` is missing or not UTF-8")]
pub struct MissingAttribute {
    pub at: String,
    pub header: &'static str,
}

impl EventMeta {
    pub fn from_record(record: &Record) -> Result<Self, MissingAttribute> {
        let need = |header: &'static str| {
            record
                .header(header)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| MissingAttribute {
                    at: format!("{}/{}@{}", record.topic, record.partition, record.offset),
                    header,
                })
        };
        let time = record.header(CE_TIME).map(str::to_string).or_else(|| {
            let ms = record.timestamp_ms?;
            jiff::Timestamp::from_millisecond(ms)
                .ok()
                .map(|t| t.to_string())
        });
        Ok(Self {
            id: need(CE_ID)?,
            event_type: need(CE_TYPE)?,
            source: need(CE_SOURCE)?,
            subject: record.header(CE_SUBJECT).map(str::to_string),
            time: time.unwrap_or_default(),
        })
    }
}

#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    data: &'a serde_json::Value,
}

/// The body POSTed for the event `meta` whose decoded record is `data`.
pub fn webhook_body(meta: &EventMeta, data: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&Body {
        id: &meta.id,
        event_type: &meta.event_type,
        timestamp: &meta.time,
        source: &meta.source,
        subject: meta.subject.as_deref(),
        data,
    })
    .expect("JSON values serialise")
}

/// The JSON of a decoded Avro record, decimals as strings with their scale.
pub fn event_data(
    value: &apache_avro::types::Value,
    schema: &apache_avro::Schema,
) -> serde_json::Value {
    sluice_schemas::json::to_json_with_schema(value, schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    fn record(headers: &[(&str, &str)]) -> Record {
        Record {
            topic: "sluice.events.payments".into(),
            partition: 0,
            offset: 4,
            timestamp_ms: Some(1_700_000_000_000),
            key: None,
            value: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn the_body_carries_the_event_id_type_time_and_data_with_decimals_as_text() {
        let schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"PaymentSucceeded","namespace":"dev.sluice.events.payments","fields":[
                {"name":"payment_id","type":"string"},
                {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}}]}"#,
        )
        .unwrap();
        let value = Value::Record(vec![
            ("payment_id".into(), Value::String("pi_1".into())),
            (
                "amount".into(),
                Value::Decimal(apache_avro::Decimal::from(12345u32.to_be_bytes().to_vec())),
            ),
        ]);
        let meta = EventMeta::from_record(&record(&[
            ("ce_id", "evt_1"),
            ("ce_type", "dev.sluice.events.payments.PaymentSucceeded"),
            ("ce_source", "sluice://sources/stripe"),
            ("ce_time", "2026-01-02T03:04:05.678Z"),
        ]))
        .unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&webhook_body(&meta, &event_data(&value, &schema))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": "evt_1",
                "type": "dev.sluice.events.payments.PaymentSucceeded",
                "timestamp": "2026-01-02T03:04:05.678Z",
                "source": "sluice://sources/stripe",
                "data": {"payment_id": "pi_1", "amount": "123.45"},
            })
        );
    }

    #[test]
    fn missing_attributes_are_named_and_the_time_falls_back_to_the_record() {
        let err = EventMeta::from_record(&record(&[("ce_type", "a.B")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sluice.events.payments/0@4: header `ce_id` is missing or not UTF-8"
        );
        let meta = EventMeta::from_record(&record(&[
            ("ce_id", "e"),
            ("ce_type", "a.B"),
            ("ce_source", "s"),
            ("ce_subject", "pi_1"),
        ]))
        .unwrap();
        assert_eq!(meta.time, "2023-11-14T22:13:20Z");
        assert_eq!(meta.subject.as_deref(), Some("pi_1"));
    }
}
