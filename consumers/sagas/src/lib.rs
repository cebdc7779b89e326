//! Saga orchestration with its state in Kafka: no database, every transition one Kafka
//! transaction.
//!
//! - [`definition`]: a saga from `topology.yaml`, ready for the state machine.
//! - [`machine`]: the pure transition function (state, input, now) → (state, effects).
//! - [`instance`]: the per-instance state record kept in the compacted state topic.
//! - [`messages`]: the Avro commands, replies, control messages and events.
//! - [`orchestrator`]: the [`Handler`](sluice_stream::Handler) that runs the machine inside
//!   the exactly-once loop, and [`timer`], which turns passed deadlines into inputs.
//! - [`participant`]: the API for writing a participant, with command-id dedup built in;
//!   [`demo`] has the inventory, payments and shipping participants.
//! - [`http`]: the built-in participant that executes `http:` steps as HTTP calls;
//!   [`detached`] lets its calls outlive the batch that read them.
//! - [`ops`]: what `sluice saga list|show|retry|abort` read and send.
//!
//! All inputs of an instance go through its saga's replies topic, keyed by saga id: a
//! trigger is handed off there as a `start` control message, deadlines and operator requests
//! too. So one partition owner sees every input of an instance in order, and keeps the
//! instance's state in the state topic partition with the same number, which it reads back
//! when the partition is assigned.

/// Records each saga role's consumer reads ahead unless `kafka.properties` sets
/// `queued.min.messages` (see `LoopConfig::read_ahead_records`). Commands and replies are a few
/// hundred bytes, so the read-ahead's byte bound never binds and librdkafka's default of
/// 100,000 records let a role restarted on a backlog hold tens of MiB of queued records
/// (docs/benchmarks.md, "Saga roles' read-ahead counted in records").
pub const READ_AHEAD_RECORDS: u32 = 2_000;

pub mod definition;
pub mod demo;
pub mod detached;
pub mod http;
pub mod instance;
pub mod machine;
pub mod messages;
pub mod metrics;
pub mod ops;
pub mod orchestrator;
pub mod participant;
pub mod store;
pub mod timer;

/// Why a saga process cannot start or a message cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// A subject this saga writes is missing or out of date.
    #[error(transparent)]
    Subject(#[from] sluice_schemas::subject::SubjectError),
    #[error("no schema was resolved for {event_type} on {topic}")]
    Unresolved { topic: String, event_type: String },
    #[error("cannot encode {event_type}: {reason}")]
    Encode { event_type: String, reason: String },
    #[error("{0}")]
    Definition(String),
    #[error("the topology has no saga named `{0}`")]
    UnknownSaga(String),
    #[error("no saga participant handles role `{0}` (see the `participant` of each saga step)")]
    UnknownRole(String),
    #[error(transparent)]
    Changelog(#[from] sluice_stream::state::StateError),
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Writes one output outside any transaction (the timer, operator requests) and waits for
/// its acknowledgement; returns (partition, offset).
pub async fn produce(
    producer: &rdkafka::producer::FutureProducer,
    o: &sluice_stream::Output,
) -> Result<(i32, i64), rdkafka::error::KafkaError> {
    producer
        .send(o.record(), std::time::Duration::from_secs(10))
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| e)
}

/// The partition librdkafka's default partitioner (`consistent_random`) picks for a non-empty
/// key: CRC-32 of the key modulo the partition count. Everything sluice writes to a saga's
/// replies topic uses this explicitly, and records that arrive elsewhere are forwarded here.
pub fn home_partition(key: &[u8], partitions: i32) -> i32 {
    (crc32(key) % partitions.max(1) as u32) as i32
}

/// CRC-32 (IEEE 802.3, reflected), as zlib and librdkafka compute it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(home_partition(b"123456789", 6), (0xCBF4_3926u32 % 6) as i32);
    }
}
