//! Durable writes: produce one record with the idempotent `acks=all` producer and wait for
//! its delivery report, bounded by the gateway's `produce_timeout_ms`.
//!
//! The producer's `message.timeout.ms` is set to the same deadline, so when a caller is told
//! "not accepted" librdkafka has given the record up too rather than leaving it in flight to
//! land later; a slightly longer local timer guards against a report that never comes.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sluice_runtime::kafka::{ClientError, KafkaClients};

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("Kafka did not acknowledge the write to {topic} within {timeout:?}: {reason}")]
    Unavailable {
        topic: String,
        timeout: Duration,
        reason: String,
    },
    #[error("the broker refuses a record of {bytes} bytes for {topic} (message too large)")]
    TooLarge { topic: String, bytes: usize },
}

/// The idempotent producer for `role` with `message.timeout.ms` = `timeout`.
pub fn producer(
    clients: &KafkaClients,
    role: &'static str,
    timeout: Duration,
) -> Result<FutureProducer, ClientError> {
    let mut config = clients.producer_config(role)?;
    config.set("message.timeout.ms", timeout.as_millis().max(1).to_string());
    config.create().map_err(|source| ClientError::Create {
        role,
        bootstrap: clients.bootstrap_servers().to_string(),
        source,
    })
}

/// Headers as librdkafka takes them.
pub fn owned_headers<K: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k.as_ref(),
            value: Some(v.as_ref()),
        })
    })
}

/// Produces and waits for the delivery report; `Ok` only when the broker acknowledged.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    headers: OwnedHeaders,
    timeout: Duration,
) -> Result<Delivered, ProduceError> {
    send_keyed(producer, topic, key, Some(payload), headers, timeout).await
}

/// [`send`] for a record whose value may be absent: `None` writes a tombstone, which
/// removes `key` from a compacted topic.
pub async fn send_keyed(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: Option<&[u8]>,
    headers: OwnedHeaders,
    timeout: Duration,
) -> Result<Delivered, ProduceError> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .key(key)
        .headers(headers);
    record.payload = payload;
    let bytes = payload.map_or(0, <[u8]>::len);
    let unavailable = |reason: String| ProduceError::Unavailable {
        topic: topic.to_string(),
        timeout,
        reason,
    };
    // A full local queue means the broker has been slow for a while: answer at once rather
    // than wait for room and then for the record's own timeout.
    let delivery = producer
        .send_result(record)
        .map_err(|(e, _)| match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => {
                unavailable("the local producer queue is full".into())
            }
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => ProduceError::TooLarge {
                topic: topic.to_string(),
                bytes,
            },
            _ => unavailable(describe(&e)),
        })?;
    // librdkafka fails the record after `message.timeout.ms`; the local timer only covers a
    // report that never arrives.
    let guard = timeout + Duration::from_secs(2);
    match tokio::time::timeout(guard, delivery).await {
        Err(_) => Err(unavailable("no delivery report".into())),
        Ok(Err(_canceled)) => Err(unavailable("the producer was dropped".into())),
        Ok(Ok(Ok(delivery))) => Ok(Delivered {
            partition: delivery.partition,
            offset: delivery.offset,
        }),
        Ok(Ok(Err((e, _)))) => Err(match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => ProduceError::TooLarge {
                topic: topic.to_string(),
                bytes,
            },
            _ => unavailable(describe(&e)),
        }),
    }
}

fn describe(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => "message timed out".into(),
        _ => e.to_string(),
    }
}
