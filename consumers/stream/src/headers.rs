//! Header names on retry and DLQ records.
//!
//! Provenance uses Spring Kafka's `kafka_dlt-*` names and encodings (partition as a 4-byte
//! big-endian int, offset and timestamp as 8-byte big-endian longs, the rest UTF-8), so tools
//! built for Spring's dead-letter topics read sluice's too. sluice adds its own attempt and
//! timing headers.

pub const ORIGINAL_TOPIC: &str = "kafka_dlt-original-topic";
pub const ORIGINAL_PARTITION: &str = "kafka_dlt-original-partition";
pub const ORIGINAL_OFFSET: &str = "kafka_dlt-original-offset";
pub const ORIGINAL_TIMESTAMP: &str = "kafka_dlt-original-timestamp";
pub const ORIGINAL_TIMESTAMP_TYPE: &str = "kafka_dlt-original-timestamp-type";
pub const ORIGINAL_CONSUMER_GROUP: &str = "kafka_dlt-original-consumer-group";
pub const EXCEPTION_FQCN: &str = "kafka_dlt-exception-fqcn";
pub const EXCEPTION_MESSAGE: &str = "kafka_dlt-exception-message";

/// Attempts made so far, decimal.
pub const ATTEMPTS: &str = "sluice_attempts";
/// When the first attempt failed, epoch ms, decimal.
pub const FIRST_FAILURE_AT: &str = "sluice_first_failure_at";
/// When a retry record becomes due, epoch ms, decimal.
pub const DUE_AT: &str = "sluice_due_at";
/// `transient` or `permanent`.
pub const FAILURE_KIND: &str = "sluice_failure_kind";
/// One line per failed attempt: `<attempt> <epoch ms> <class>: <message>`.
pub const ATTEMPT_HISTORY: &str = "sluice_attempt_history";
/// Per-key ordering: the record's sequence number among its key's records in the retry
/// path, decimal (see [`super::ordering`]).
pub const KEY_SEQ: &str = "sluice_key_seq";
/// Set on a record replayed from a DLQ: `<dlq topic>/<partition>@<offset>`.
pub const REPLAYED_FROM: &str = "sluice_replayed_from";

/// Every header the failure router writes; stripped before a copy is re-routed so a record
/// carries one set of provenance, not a stack of them.
pub const ROUTING_HEADERS: &[&str] = &[
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    ORIGINAL_TIMESTAMP_TYPE,
    ORIGINAL_CONSUMER_GROUP,
    EXCEPTION_FQCN,
    EXCEPTION_MESSAGE,
    ATTEMPTS,
    FIRST_FAILURE_AT,
    DUE_AT,
    FAILURE_KIND,
    ATTEMPT_HISTORY,
    KEY_SEQ,
];

pub fn int(v: i32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub fn long(v: i64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub fn read_int(bytes: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.try_into().ok()?))
}

pub fn read_long(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}
