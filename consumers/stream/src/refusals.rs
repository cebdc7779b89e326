//! Records whose outputs Kafka refuses, and how the loop gets past them.
//!
//! An output can be refused for the record itself, not for the state of the cluster: it is
//! larger than the producer's `message.max.bytes` or the topic's `max.message.bytes`, its
//! topic does not exist, the broker calls it invalid. Retrying the batch cannot help; left
//! alone, the batch aborts and rewinds onto the same record forever and every record behind
//! it waits. So a refusal is pinned on the record it came from ([`Origin`]), the batch is
//! rewound once, and the next time round the loop dead-letters that record without handling
//! it (no handler state to undo: the handler never sees it again). If the dead-letter copy
//! is refused too, the next copy carries a truncated payload, then none, each with headers
//! that say so and where the original still sits.

use crate::ErrorClass;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::headers as h;
use super::{HandlerError, Output, Record};

/// Why Kafka will not take a record's output. The strings are DLQ reasons
/// (`kafka_dlt-exception-fqcn`) and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalClass {
    RecordTooLarge,
    UnknownTopic,
    InvalidRecord,
}

impl From<RefusalClass> for ErrorClass {
    fn from(class: RefusalClass) -> Self {
        match class {
            RefusalClass::RecordTooLarge => ErrorClass::RecordTooLarge,
            RefusalClass::UnknownTopic => ErrorClass::UnknownTopic,
            RefusalClass::InvalidRecord => ErrorClass::InvalidRecord,
        }
    }
}

impl RefusalClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalClass::RecordTooLarge => "RecordTooLarge",
            RefusalClass::UnknownTopic => "UnknownTopic",
            RefusalClass::InvalidRecord => "InvalidRecord",
        }
    }

    /// The class of a produce error that is about the record itself; `None` for errors
    /// that are about the cluster (a broker down, a fenced producer), which a retry of the
    /// batch can outlive.
    pub fn of(error: &KafkaError) -> Option<Self> {
        use RDKafkaErrorCode as C;
        let code = match error {
            KafkaError::MessageProduction(code) => *code,
            other => other.rdkafka_error_code()?,
        };
        match code {
            C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
                Some(RefusalClass::RecordTooLarge)
            }
            C::UnknownTopic | C::UnknownTopicOrPartition | C::InvalidTopic => {
                Some(RefusalClass::UnknownTopic)
            }
            C::InvalidRecord | C::InvalidMessage => Some(RefusalClass::InvalidRecord),
            _ => None,
        }
    }
}

/// The failed records to blame for their failure, each with its class: those whose error is
/// about the record itself (`record` gives its topic and size; `None` for a write that is
/// not about one record). The broker refuses a whole produce request when one record in it
/// is too large, so every record that shared it fails alike: only the largest failed record
/// of each topic is blamed for that. Each pass removes at least one culprit, and a record
/// that merely shared a request with it goes through on the next.
pub fn blame<'a, T>(
    failed: &'a [(T, KafkaError)],
    record: impl Fn(&'a T) -> Option<(&'a str, u64)>,
) -> Vec<(&'a T, &'a KafkaError, RefusalClass)> {
    let mut largest: BTreeMap<&str, (&T, &KafkaError, u64)> = BTreeMap::new();
    let mut blamed = Vec::new();
    for (t, e) in failed {
        let (Some(class), Some((topic, size))) = (RefusalClass::of(e), record(t)) else {
            continue;
        };
        if class != RefusalClass::RecordTooLarge {
            blamed.push((t, e, class));
        } else if largest.get(topic).is_none_or(|c| c.2 < size) {
            largest.insert(topic, (t, e, size));
        }
    }
    blamed.extend(
        largest
            .into_values()
            .map(|(t, e, _)| (t, e, RefusalClass::RecordTooLarge)),
    );
    blamed
}

/// The input record an output was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Set when the output is the record's retry or dead-letter copy rather than something
    /// its handler made: the failure the copy carries.
    pub copy_of: Option<HandlerError>,
}

impl Origin {
    /// An output the handler made for `record`.
    pub fn output(record: &Record) -> Self {
        Self {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            copy_of: None,
        }
    }

    /// `record`'s copy carrying `error` to a retry tier or the DLQ.
    pub fn failure_copy(record: &Record, error: &HandlerError) -> Self {
        Self {
            copy_of: Some(error.clone()),
            ..Self::output(record)
        }
    }

    pub fn is_failure_copy(&self) -> bool {
        self.copy_of.is_some()
    }
}

/// What the loop remembers about one refused record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What it is dead-lettered with: the refusal itself (`RecordTooLarge`, …) when its
    /// handler's output was refused, else the failure its refused copy carried, made
    /// permanent (a cut copy must never be retried as if it were whole).
    pub error: HandlerError,
    /// How many of its failure copies were refused: each one makes the next copy smaller.
    pub copies_refused: u32,
}

type Key = (String, i32, i64);

/// Refusals by input record, kept until the record's offset is committed.
#[derive(Debug, Default)]
pub struct Refusals {
    by_record: Mutex<HashMap<Key, Refusal>>,
}

impl Refusals {
    /// Pins a refusal on the record `origin` names.
    pub fn note(&self, origin: &Origin, class: RefusalClass, detail: String) {
        let key = (origin.topic.clone(), origin.partition, origin.offset);
        let mut map = self.by_record.lock().expect("refusals lock");
        match map.get_mut(&key) {
            Some(r) if origin.is_failure_copy() => r.copies_refused += 1,
            Some(_) => {}
            None => {
                let error = match &origin.copy_of {
                    Some(cause) => HandlerError::permanent(cause.class().clone(), cause.message()),
                    None => HandlerError::permanent(class.into(), detail),
                };
                map.insert(
                    key,
                    Refusal {
                        error,
                        copies_refused: u32::from(origin.is_failure_copy()),
                    },
                );
            }
        }
    }

    pub fn get(&self, record: &Record) -> Option<Refusal> {
        let key = (record.topic.clone(), record.partition, record.offset);
        self.by_record
            .lock()
            .expect("refusals lock")
            .get(&key)
            .cloned()
    }

    /// Drops what is no longer needed: refusals of `topic`/`partition` below `next_offset`
    /// (committed past).
    pub fn committed(&self, topic: &str, partition: i32, next_offset: i64) {
        self.by_record
            .lock()
            .expect("refusals lock")
            .retain(|(t, p, o), _| !(t == topic && *p == partition && *o < next_offset));
    }

    pub fn len(&self) -> usize {
        self.by_record.lock().expect("refusals lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes an output takes in a produce request before framing: key, value and headers.
pub fn output_size(o: &Output) -> u64 {
    let headers: usize = o.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    (o.key.as_ref().map_or(0, Vec::len) + o.value.as_ref().map_or(0, Vec::len) + headers) as u64
}

/// Set on a failure copy whose payload was cut: the original's size in bytes, decimal.
pub const TRUNCATED_ORIGINAL_BYTES: &str = "sluice_truncated_original_bytes";
/// Set with [`TRUNCATED_ORIGINAL_BYTES`]: where the whole original still sits,
/// `<topic>/<partition>@<offset>`.
pub const TRUNCATED_ORIGINAL_AT: &str = "sluice_truncated_original_at";

/// What is kept of a payload after its first refused copy: enough to see what it was.
pub const TRUNCATED_KEEP_BYTES: usize = 64 * 1024;
/// Room left for framing when a copy is cut to fit a limit.
const FRAMING_ROOM: u64 = 1024;

/// Makes `copy` (a failure copy, as [`super::FailureRouter::route`] makes it) small enough to
/// be taken: cut to fit `max_bytes` when it is larger, to [`TRUNCATED_KEEP_BYTES`] after one
/// refused copy, to nothing after two. A cut copy says so in its headers, and where the whole
/// original sits (from the provenance the copy already carries).
pub fn fit_failure_copy(copy: &mut Output, max_bytes: u64, copies_refused: u32) {
    let original = copy.value.as_ref().map_or(0, Vec::len);
    let others = output_size(copy) - original as u64;
    let fits = max_bytes.saturating_sub(others + FRAMING_ROOM) as usize;
    let keep = match copies_refused {
        0 => fits,
        1 => fits.min(TRUNCATED_KEEP_BYTES),
        _ => 0,
    };
    if original <= keep {
        return;
    }
    if let Some(v) = copy.value.as_mut() {
        v.truncate(keep);
    }
    let provenance = |name: &str| {
        copy.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    let at = format!(
        "{}/{}@{}",
        String::from_utf8_lossy(provenance(h::ORIGINAL_TOPIC).unwrap_or_default()),
        provenance(h::ORIGINAL_PARTITION)
            .and_then(h::read_int)
            .unwrap_or_default(),
        provenance(h::ORIGINAL_OFFSET)
            .and_then(h::read_long)
            .unwrap_or_default()
    );
    copy.headers
        .retain(|(k, _)| k != TRUNCATED_ORIGINAL_BYTES && k != TRUNCATED_ORIGINAL_AT);
    copy.headers.push((
        TRUNCATED_ORIGINAL_BYTES.into(),
        original.to_string().into_bytes(),
    ));
    copy.headers
        .push((TRUNCATED_ORIGINAL_AT.into(), at.into_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: usize) -> Record {
        Record {
            topic: "sluice.raw.a".into(),
            partition: 2,
            offset: 15,
            key: Some(b"k".to_vec()),
            value: Some(vec![b'x'; value]),
            headers: vec![("sluice_source".into(), b"a".to_vec())],
            timestamp_ms: None,
        }
    }

    /// `r`'s dead-letter copy, with its provenance, as the loop makes it.
    fn copy_of(r: &Record) -> Output {
        let router = super::super::FailureRouter {
            group: "g".into(),
            tiers: Vec::new(),
            max_attempts: 1,
            dlq_topic: "sluice.dlq.n".into(),
        };
        let error = HandlerError::permanent(ErrorClass::InvalidJson, "not json");
        router.route(r, &error, 1_000).1
    }

    #[test]
    fn produce_errors_about_the_record_are_told_from_errors_about_the_cluster() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(RefusalClass::of(&e), Some(RefusalClass::RecordTooLarge));
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert_eq!(RefusalClass::of(&e), Some(RefusalClass::UnknownTopic));
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(RefusalClass::of(&e), None);
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::InvalidProducerEpoch);
        assert_eq!(RefusalClass::of(&e), None);
    }

    #[test]
    fn a_refused_request_blames_its_largest_record_per_topic_and_other_refusals_each() {
        let too_large = || KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let failed = vec![
            (("events", 100, "small neighbour"), too_large()),
            (("events", 900_000, "culprit"), too_large()),
            (("events", 200, "later neighbour"), too_large()),
            (("dlq", 50, "dlq culprit"), too_large()),
            (("state", 10, "not about a record"), too_large()),
            (
                ("events", 10, "unknown topic"),
                KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition),
            ),
            (
                ("events", 10, "timed out"),
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            ),
        ];
        let blamed = blame(&failed, |(topic, size, name)| {
            (*name != "not about a record").then_some((*topic, *size as u64))
        });
        let names: Vec<(&str, RefusalClass)> =
            blamed.iter().map(|(t, _, class)| (t.2, *class)).collect();
        assert_eq!(
            names,
            [
                ("unknown topic", RefusalClass::UnknownTopic),
                ("dlq culprit", RefusalClass::RecordTooLarge),
                ("culprit", RefusalClass::RecordTooLarge),
            ]
        );
    }

    #[test]
    fn a_copy_that_fits_is_left_alone() {
        let r = record(1000);
        let mut c = copy_of(&r);
        fit_failure_copy(&mut c, 1_000_000, 0);
        assert_eq!(c, copy_of(&r));
    }

    #[test]
    fn copies_shrink_to_the_limit_then_to_64_kib_then_to_nothing_and_say_where_the_original_is() {
        let r = record(999_000);
        let mut c = copy_of(&r);
        fit_failure_copy(&mut c, 500_000, 0);
        assert!(output_size(&c) <= 500_000, "{}", output_size(&c));
        assert!(c.value.as_ref().unwrap().len() > 400_000);
        let header = |c: &Output, name: &str| {
            c.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(
            header(&c, TRUNCATED_ORIGINAL_BYTES).as_deref(),
            Some("999000")
        );
        assert_eq!(
            header(&c, TRUNCATED_ORIGINAL_AT).as_deref(),
            Some("sluice.raw.a/2@15")
        );

        let mut c = copy_of(&r);
        fit_failure_copy(&mut c, 500_000, 1);
        assert_eq!(c.value.as_ref().unwrap().len(), TRUNCATED_KEEP_BYTES);
        let mut c = copy_of(&r);
        fit_failure_copy(&mut c, 500_000, 2);
        assert_eq!(c.value.as_ref().unwrap().len(), 0);
        assert_eq!(
            c.headers
                .iter()
                .filter(|(k, _)| k == TRUNCATED_ORIGINAL_BYTES)
                .count(),
            1
        );
    }

    #[test]
    fn a_copy_refusal_counts_up_keeps_its_cause_and_commits_forget_refusals() {
        let refusals = Refusals::default();
        let r = record(1);
        refusals.note(
            &Origin::output(&r),
            RefusalClass::RecordTooLarge,
            "too big".into(),
        );
        let cause = HandlerError::permanent(ErrorClass::InvalidJson, "not json");
        refusals.note(
            &Origin::failure_copy(&r, &cause),
            RefusalClass::RecordTooLarge,
            "x".into(),
        );
        let got = refusals.get(&r).unwrap();
        assert_eq!(got.copies_refused, 1);
        assert_eq!(
            got.error,
            HandlerError::permanent(ErrorClass::RecordTooLarge, "too big")
        );

        // A refused copy keeps the failure it carried, made permanent.
        let other = Record {
            offset: 16,
            ..record(1)
        };
        let transient = HandlerError::transient(ErrorClass::RegistryUnavailable, "down");
        refusals.note(
            &Origin::failure_copy(&other, &transient),
            RefusalClass::RecordTooLarge,
            "x".into(),
        );
        let got = refusals.get(&other).unwrap();
        assert_eq!(
            (got.error, got.copies_refused),
            (
                HandlerError::permanent(ErrorClass::RegistryUnavailable, "down"),
                1
            )
        );
        refusals.committed("sluice.raw.a", 2, 16);
        assert_eq!(refusals.len(), 1, "offset 16 is not committed past yet");
        refusals.committed("sluice.raw.a", 2, 17);
        assert!(refusals.is_empty());
    }
}
