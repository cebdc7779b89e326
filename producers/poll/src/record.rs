//! A polled item as a raw record, with the headers of a webhook delivery (see
//! `sluice_producers::gateway::raw_record`), so the normalizer and its mappings read it
//! unchanged:
//!
//! - key: the item id, so every version of an item lands on one partition, in order;
//! - value: the item's JSON, as the API wrote it;
//! - `sluice_source`, `sluice_provider` (`poll`, or the provider type the spec names),
//!   `sluice_delivery_id` = `<id>@<version>` (one record per item version, which is also
//!   what the normalizer deduplicates by), `sluice_received_at`, `sluice_event_type` when
//!   the spec fixes one, `content-type`, a new `traceparent`.

use rdkafka::message::{Header, OwnedHeaders};
use sluice_schemas::metadata::{raw, rfc3339_ms, CONTENT_TYPE};

use crate::page::Item;

/// The delivery id of one item version.
pub fn delivery_id(item: &Item) -> String {
    format!("{}@{}", item.id, item.version.as_str())
}

/// The record's headers.
pub fn headers(
    source: &str,
    provider: &str,
    event_type: Option<&str>,
    item: &Item,
    received_at_ms: i64,
) -> OwnedHeaders {
    let id = delivery_id(item);
    let at = rfc3339_ms(received_at_ms);
    let trace = sluice_schemas::traceparent::generate();
    let mut pairs: Vec<(&str, &str)> = vec![
        (raw::SOURCE, source),
        (raw::PROVIDER, provider),
        (raw::DELIVERY_ID, &id),
    ];
    if let Some(t) = event_type {
        pairs.push((raw::EVENT_TYPE, t));
    }
    pairs.push((raw::RECEIVED_AT, &at));
    pairs.push((CONTENT_TYPE, "application/json"));
    pairs.push((sluice_schemas::traceparent::HEADER, &trace));
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        })
}
