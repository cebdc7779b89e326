//! The loop's batch handling against state in a [`MemoryLog`]: what a committed batch leaves,
//! what an aborted one does not, failure routing, per-key holds and refused outputs. The
//! "transaction" here is the log itself: a committed batch's outputs are appended to it, an
//! aborted batch's are not, as Kafka's `read_committed` readers would see them.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::failure::RetryTier;
use crate::ordering::PerKey;
use crate::state::{MemoryLog, StateLog, StateTable};
use crate::Assigned;

const INPUT: &str = "in";
const EVENTS: &str = "counted";
const STATE: &str = "state";

/// Counts each key's records in a state table, partitioned like its input, and writes the
/// running count as an event. A record whose value is `fail` fails transiently, `bad`
/// permanently, `huge` makes an output no producer would take.
#[derive(Debug)]
struct Counter {
    log: Arc<MemoryLog>,
    table: StateTable<u64>,
}

impl Counter {
    fn new(log: Arc<MemoryLog>) -> Self {
        Self {
            log,
            table: StateTable::new(STATE),
        }
    }
}

impl Handler for Counter {
    /// `later` is not taken for now, as by a handler at its in-flight cap.
    fn admit(&self, r: &Record) -> Admit {
        match r.value.as_deref() {
            Some(b"later") => Admit::Later(Duration::from_secs(30)),
            _ => Admit::Now,
        }
    }

    async fn handle(&self, r: &Record) -> Result<Vec<Output>, HandlerError> {
        let value = r.value.as_deref().unwrap_or_default();
        match value {
            b"fail" => {
                return Err(HandlerError::transient(
                    ErrorClass::RegistryUnavailable,
                    "the registry timed out",
                ))
            }
            b"bad" => return Err(HandlerError::permanent(ErrorClass::InvalidJson, "not JSON")),
            _ => {}
        }
        let key = std::str::from_utf8(r.key.as_deref().unwrap_or_default()).unwrap();
        let n = self.table.get(r.partition, key).unwrap_or(0) + 1;
        let payload = if value == b"huge" {
            vec![b'x'; 100 * 1024]
        } else {
            n.to_string().into_bytes()
        };
        Ok(vec![
            Output {
                topic: EVENTS.into(),
                partition: None,
                key: r.key.clone(),
                value: Some(payload),
                headers: Vec::new(),
            },
            self.table.put(r.partition, key, n),
        ])
    }

    async fn on_assigned(&self, partitions: &Assigned) -> Result<(), HandlerError> {
        let log: &dyn StateLog = &*self.log;
        self.table
            .assign(log, partitions, |t| t == INPUT)
            .map(|_| ())
            .map_err(|e| HandlerError::transient(ErrorClass::DedupRestore, e.to_string()))
    }

    fn on_revoked(&self, partitions: &Assigned) {
        self.table.revoke(partitions);
    }

    fn on_batch_end(&self, committed: bool) {
        self.table.finish(committed);
    }
}

fn router() -> FailureRouter {
    FailureRouter {
        group: "g".into(),
        tiers: vec![RetryTier {
            topic: "t0".into(),
            delay: Duration::from_secs(60),
        }],
        max_attempts: 3,
        dlq_topic: "dlq".into(),
    }
}

/// One consumer instance: its handler, its key ordering when asked for, and its metrics.
struct Instance {
    shared: Shared<Counter>,
    log: Arc<MemoryLog>,
}

impl Instance {
    async fn start(log: &Arc<MemoryLog>, per_key: bool, partitions: &[i32]) -> Self {
        let metrics = LoopMetrics::new(&prometheus::Registry::new()).unwrap();
        let ordering = per_key.then(|| {
            let per_key = PerKey {
                policy: "p".into(),
                held_topic: "held".into(),
            };
            Arc::new(KeyOrdering::new(per_key, router()))
        });
        let shared = Shared {
            handler: Arc::new(Counter::new(log.clone())),
            router: router(),
            ordering,
            refusals: Arc::new(Refusals::default()),
            metrics,
            group: "g".into(),
            max_record: 64 * 1024,
        };
        let assigned: Assigned = partitions.iter().map(|p| (INPUT.into(), *p)).collect();
        shared.handler.on_assigned(&assigned).await.unwrap();
        if let Some(o) = &shared.ordering {
            o.restore(&**log, &partitions.iter().copied().collect())
                .unwrap();
        }
        Self {
            shared,
            log: log.clone(),
        }
    }

    /// Handles `records` as one batch, then commits it (its outputs reach the log) or not.
    async fn batch(&self, records: Vec<Record>, commit: bool) -> (Vec<Output>, Ended) {
        let batch = handle(&self.shared, records, None).await.unwrap();
        assert!(batch.refused.is_none(), "{:?}", batch.refused);
        let outputs: Vec<Output> = batch.outputs.iter().map(|(_, o)| o.clone()).collect();
        if commit {
            self.log.commit(&outputs);
        }
        (outputs, batch.end(&self.shared, commit))
    }

    fn counted(&self, outcome: &str) -> u64 {
        self.shared
            .metrics
            .records
            .with_label_values(&["g", INPUT, outcome])
            .get()
    }

    fn transactions(&self, outcome: &str) -> u64 {
        self.shared
            .metrics
            .transactions
            .with_label_values(&["g", outcome])
            .get()
    }
}

fn record(partition: i32, offset: i64, key: &str, value: &str) -> Record {
    Record {
        topic: INPUT.into(),
        partition,
        offset,
        timestamp_ms: Some(1),
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: Vec::new(),
    }
}

/// What the loop would consume back from a topic an output was written to.
fn consumed(out: &Output, offset: i64) -> Record {
    Record {
        topic: out.topic.clone(),
        partition: out.partition.unwrap_or(0),
        offset,
        timestamp_ms: Some(2),
        key: out.key.clone(),
        value: out.value.clone(),
        headers: out.headers.clone(),
    }
}

fn events(outputs: &[Output]) -> Vec<(String, String)> {
    outputs
        .iter()
        .filter(|o| o.topic == EVENTS)
        .map(|o| {
            let s = |b: &Option<Vec<u8>>| String::from_utf8(b.clone().unwrap()).unwrap();
            (s(&o.key), s(&o.value))
        })
        .collect()
}

fn on(outputs: &[Output], topic: &str) -> Vec<Output> {
    outputs
        .iter()
        .filter(|o| o.topic == topic)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_batch_writes_outputs_and_state_commits_offsets_and_counts_once() {
    let log = Arc::new(MemoryLog::default());
    let i = Instance::start(&log, false, &[0, 1]).await;
    let (outputs, ended) = i
        .batch(
            vec![
                record(0, 10, "a", "x"),
                record(0, 11, "a", "x"),
                record(1, 5, "b", "x"),
            ],
            true,
        )
        .await;
    assert_eq!(
        events(&outputs),
        [
            ("a".into(), "1".into()),
            ("a".into(), "2".into()),
            ("b".into(), "1".into())
        ]
    );
    assert_eq!(
        on(&outputs, STATE).len(),
        3,
        "each change is written with the batch"
    );
    assert_eq!(
        ended,
        Ended::Committed {
            offsets: vec![((INPUT.into(), 0), 12), ((INPUT.into(), 1), 6)],
            to_pause: vec![],
        }
    );
    assert_eq!(i.counted("ok"), 3);
    assert_eq!(i.transactions("committed"), 1);

    // Another instance taking the partitions over goes on from the committed counts.
    let next = Instance::start(&log, false, &[0, 1]).await;
    let (outputs, _) = next.batch(vec![record(0, 12, "a", "x")], true).await;
    assert_eq!(events(&outputs), [("a".into(), "3".into())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_batch_leaves_no_state_counts_nothing_and_rewinds_to_its_start() {
    let log = Arc::new(MemoryLog::default());
    let i = Instance::start(&log, false, &[0, 1]).await;
    i.batch(vec![record(0, 1, "a", "x")], true).await;
    let batch = || vec![record(0, 2, "a", "x"), record(1, 7, "b", "x")];

    let (outputs, ended) = i.batch(batch(), false).await;
    assert_eq!(
        events(&outputs),
        [("a".into(), "2".into()), ("b".into(), "1".into())]
    );
    assert_eq!(
        ended,
        Ended::Aborted {
            rewind: vec![((INPUT.into(), 0), 2), ((INPUT.into(), 1), 7)]
        }
    );
    assert_eq!(i.counted("ok"), 1, "only the first, committed batch counts");
    assert_eq!(i.transactions("aborted"), 1);
    assert_eq!(
        log.len(STATE),
        1,
        "nothing of the aborted batch reached the log"
    );

    // The same records come round again: the counts go on from the committed state, not
    // from the aborted batch's, and each record is counted once.
    let (outputs, _) = i.batch(batch(), true).await;
    assert_eq!(
        events(&outputs),
        [("a".into(), "2".into()), ("b".into(), "1".into())]
    );
    assert_eq!(i.counted("ok"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_go_to_their_tier_or_the_dead_letter_topic_and_are_counted_on_commit() {
    let log = Arc::new(MemoryLog::default());
    let i = Instance::start(&log, false, &[0]).await;
    let records = vec![
        record(0, 1, "a", "fail"),
        record(0, 2, "b", "bad"),
        record(0, 3, "c", "x"),
    ];
    let (outputs, _) = i.batch(records.clone(), false).await;
    assert_eq!(
        i.counted("retried") + i.counted("dead_lettered"),
        0,
        "aborted"
    );

    let (outputs_again, ended) = i.batch(records, true).await;
    let routes = |os: &[Output]| -> Vec<(String, Option<Vec<u8>>)> {
        os.iter()
            .map(|o| (o.topic.clone(), o.key.clone()))
            .collect()
    };
    assert_eq!(
        routes(&outputs),
        routes(&outputs_again),
        "handling is repeatable"
    );
    let retried = on(&outputs, "t0");
    let dead = on(&outputs, "dlq");
    assert_eq!((retried.len(), dead.len()), (1, 1));
    assert_eq!(retried[0].key.as_deref(), Some(b"a".as_slice()));
    assert_eq!(dead[0].key.as_deref(), Some(b"b".as_slice()));
    let header = |o: &Output, name: &str| {
        o.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        header(&dead[0], h::EXCEPTION_FQCN).as_deref(),
        Some("InvalidJson")
    );
    assert_eq!(
        header(&retried[0], h::ORIGINAL_TOPIC).as_deref(),
        Some(INPUT)
    );
    assert_eq!(
        events(&outputs),
        [("c".into(), "1".into())],
        "the others are not held up"
    );
    assert!(
        matches!(ended, Ended::Committed { ref offsets, .. } if offsets == &[((INPUT.into(), 0), 4)])
    );
    assert_eq!(
        (
            i.counted("retried"),
            i.counted("dead_lettered"),
            i.counted("ok")
        ),
        (1, 1, 1)
    );

    // The retry copy is not due for a minute: its tier partition is held at it, unhandled.
    let (_, ended) = i.batch(vec![consumed(&retried[0], 40)], true).await;
    let Ended::Committed { offsets, to_pause } = ended else {
        panic!("committed")
    };
    assert!(
        offsets.is_empty(),
        "nothing after the held record is committed"
    );
    assert_eq!(to_pause.len(), 1);
    assert_eq!(
        (to_pause[0].0.clone(), to_pause[0].1),
        (("t0".into(), 0), 40)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_not_admitted_holds_its_partition_at_it_and_the_others_go_on() {
    let log = Arc::new(MemoryLog::default());
    let i = Instance::start(&log, false, &[0, 1]).await;
    let before = now_ms();
    let (outputs, ended) = i
        .batch(
            vec![
                record(0, 1, "a", "x"),
                record(0, 2, "a", "later"),
                record(0, 3, "b", "x"),
                record(1, 1, "c", "x"),
            ],
            true,
        )
        .await;
    assert_eq!(
        events(&outputs),
        [("a".into(), "1".into()), ("c".into(), "1".into())],
        "nothing at or after the record not admitted is handled"
    );
    let Ended::Committed {
        mut offsets,
        to_pause,
    } = ended
    else {
        panic!("committed")
    };
    offsets.sort();
    assert_eq!(
        offsets,
        [((INPUT.into(), 0), 2), ((INPUT.into(), 1), 2)],
        "committed up to the record not admitted, which is read again"
    );
    assert_eq!(to_pause.len(), 1);
    let ((tp, offset, due), after) = (&to_pause[0], now_ms());
    assert_eq!((tp, *offset), (&(INPUT.into(), 0), 2));
    assert!(
        (before + 30_000..=after + 30_000).contains(due),
        "held for the delay asked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_key_holds_its_later_records_and_stays_held_across_an_instance_change() {
    let log = Arc::new(MemoryLog::default());
    let i = Instance::start(&log, true, &[0]).await;
    let (outputs, _) = i
        .batch(
            vec![
                record(0, 1, "a", "fail"),
                record(0, 2, "a", "x"),
                record(0, 3, "b", "x"),
            ],
            true,
        )
        .await;
    assert_eq!(
        events(&outputs),
        [("b".into(), "1".into())],
        "b is not held up"
    );
    let to_tier = on(&outputs, "t0");
    assert_eq!(
        to_tier.len(),
        2,
        "a's head is retried and its follower waits behind it"
    );
    assert_eq!(
        on(&outputs, "held").len(),
        1,
        "a's hold is written with the batch"
    );

    // Another instance restores the hold: a new record of `a` still waits.
    let next = Instance::start(&log, true, &[0]).await;
    let (outputs, _) = next.batch(vec![record(0, 4, "a", "x")], true).await;
    assert!(events(&outputs).is_empty(), "a is still held");
    assert_eq!(on(&outputs, "t0").len(), 1);

    // An aborted batch leaves the hold as it was committed.
    let i3 = Instance::start(&log, true, &[0]).await;
    let (outputs, _) = i3.batch(vec![record(0, 5, "a", "x")], false).await;
    assert!(events(&outputs).is_empty());
    assert_eq!(i3.shared.ordering.as_ref().unwrap().held(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_no_producer_would_take_fails_the_batch_and_is_dead_lettered_next_time() {
    let log = Arc::new(MemoryLog::default());
    let i = Instance::start(&log, false, &[0]).await;
    let records = vec![
        record(0, 1, "a", "x"),
        record(0, 2, "b", "huge"),
        record(0, 3, "c", "x"),
    ];
    let batch = handle(&i.shared, records.clone(), None).await.unwrap();
    let refused = batch.refused.as_ref().expect("the batch cannot commit");
    assert!(refused.to_string().contains("in/0@2"), "{refused}");
    let ended = batch.end(&i.shared, false);
    assert!(matches!(ended, Ended::Aborted { .. }));

    // Round again: the record that made it is dead-lettered unhandled, the rest go through.
    let (outputs, ended) = i.batch(records, true).await;
    assert_eq!(
        events(&outputs),
        [("a".into(), "1".into()), ("c".into(), "1".into())]
    );
    let dead = on(&outputs, "dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key.as_deref(), Some(b"b".as_slice()));
    assert!(matches!(ended, Ended::Committed { .. }));
    assert_eq!((i.counted("ok"), i.counted("dead_lettered")), (2, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn records_consumed_but_never_handled_are_rewound_to_not_skipped() {
    // The broker is down when the batch's transaction should begin: nothing is handled,
    // and every partition goes back to its first record.
    let log = Arc::new(MemoryLog::default());
    let i = Instance::start(&log, false, &[0, 1]).await;
    let records = vec![
        record(1, 8, "b", "x"),
        record(0, 3, "a", "x"),
        record(0, 4, "a", "x"),
    ];
    let ended = Batch::unhandled(&records).end(&i.shared, false);
    assert_eq!(
        ended,
        Ended::Aborted {
            rewind: vec![((INPUT.into(), 0), 3), ((INPUT.into(), 1), 8)]
        }
    );
    assert_eq!(i.counted("ok"), 0);
}
