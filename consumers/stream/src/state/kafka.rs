//! Reading compacted state topics back from Kafka: the one way every piece of state a loop
//! keeps in Kafka comes back (the normalizer's dedup keys, held keys under per-key ordering,
//! saga instances, saga participants' handled commands).
//!
//! The rules, the same for all of them:
//! - only committed records are read (`read_committed`): state written by an aborted
//!   transaction, or by a fenced zombie's open one, never comes back;
//! - a partition is read to its *stable* end: while a predecessor that died mid-batch still
//!   has a transaction open on it, a committed read would stop short of state that is about
//!   to commit, so the read first waits for the open transaction to end;
//! - one deadline, [`READ_DEADLINE`], for waiting and reading together; past it the read
//!   fails with what is missing, and the loop stops rather than run on partial state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::{KafkaClients, ReadToEnd};

use super::{StateError, StateLog, Visit};

/// The production [`StateLog`]: state topics on the cluster `clients` reach.
#[derive(Debug, Clone)]
pub struct KafkaStateLog {
    clients: KafkaClients,
}

impl KafkaStateLog {
    pub fn new(clients: KafkaClients) -> Self {
        Self { clients }
    }
}

impl StateLog for KafkaStateLog {
    fn read(&self, topic: &str, ps: &[i32], f: &mut Visit<'_>) -> Result<usize, StateError> {
        read_partitions(&self.clients, topic, ps, f)
    }
}

/// How long a restore may take, waiting for open transactions included.
pub const READ_DEADLINE: Duration = Duration::from_secs(120);

/// Reads `partitions` of `topic` from their start to their stable end, calling `f(partition,
/// key, value)` for each keyed record in offset order per partition (`None` value: a
/// tombstone). Returns the number of records read. Blocking: call from a blocking context.
pub fn read_partitions(
    clients: &KafkaClients,
    topic: &str,
    partitions: &[i32],
    f: impl FnMut(i32, &[u8], Option<&[u8]>),
) -> Result<usize, StateError> {
    read_partitions_within(clients, topic, partitions, TimeWindow::ALL, f)
}

/// The part of a partition a read visits, by record timestamps (epoch ms).
///
/// The start is found with the broker's time index (the first offset whose timestamp is at
/// or after `from_ms`; every record before it is older), so a read of the last hour of a
/// topic kept for weeks costs an hour of records. A partition is left at the first record
/// stamped after `to_ms`: timestamps are only roughly ordered within a partition (each
/// producer stamps with its own clock), so callers widen `to_ms` by the skew they allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl TimeWindow {
    /// Every record.
    pub const ALL: TimeWindow = TimeWindow {
        from_ms: None,
        to_ms: None,
    };

    fn ends_before(&self, timestamp_ms: Option<i64>) -> bool {
        matches!((self.to_ms, timestamp_ms), (Some(to), Some(t)) if t > to)
    }
}

/// [`read_partitions`], visiting only the records of `window`.
pub fn read_partitions_within(
    clients: &KafkaClients,
    topic: &str,
    partitions: &[i32],
    window: TimeWindow,
    mut f: impl FnMut(i32, &[u8], Option<&[u8]>),
) -> Result<usize, StateError> {
    let fail = |reason: String| StateError::Read {
        topic: topic.to_string(),
        reason,
    };
    let deadline = Instant::now() + READ_DEADLINE;
    let consumer = clients
        .read_to_end_consumer("state-restore", "sluice-state-restore")
        .map_err(|e| fail(e.to_string()))?;
    let ends = stable_ends(clients, &consumer, topic, partitions, deadline).map_err(fail)?;
    let starts = start_offsets(&consumer, topic, &ends, window.from_ms).map_err(fail)?;
    let mut tpl = TopicPartitionList::new();
    for (p, start) in &starts {
        tpl.add_partition_offset(topic, *p, *start)
            .map_err(|e| fail(e.to_string()))?;
    }
    let mut open: BTreeSet<i32> = starts.keys().copied().collect();
    if open.is_empty() {
        return Ok(0);
    }
    consumer.assign(&tpl).map_err(|e| fail(e.to_string()))?;
    let mut n = 0;
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(fail(format!(
                "partitions {open:?} did not reach their end within {READ_DEADLINE:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                if !open.contains(&m.partition()) {
                    continue;
                }
                if window.ends_before(m.timestamp().to_millis()) {
                    open.remove(&m.partition());
                    continue;
                }
                if let Some(key) = m.key() {
                    f(m.partition(), key, m.payload());
                    n += 1;
                }
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    open.remove(&m.partition());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(fail(e.to_string())),
            None => {}
        }
    }
    Ok(n)
}

/// Where each partition's read starts: its beginning, or with `from_ms` the first offset
/// stamped at or after it. Partitions with nothing from then on are left out.
fn start_offsets(
    consumer: &BaseConsumer<ReadToEnd>,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    from_ms: Option<i64>,
) -> Result<BTreeMap<i32, Offset>, String> {
    let Some(from_ms) = from_ms else {
        return Ok(ends.keys().map(|p| (*p, Offset::Beginning)).collect());
    };
    let mut query = TopicPartitionList::new();
    for p in ends.keys() {
        query
            .add_partition_offset(topic, *p, Offset::Offset(from_ms))
            .map_err(|e| e.to_string())?;
    }
    let found = consumer
        .offsets_for_times(query, Duration::from_secs(10))
        .map_err(|e| format!("finding offsets by time: {e}"))?;
    let mut starts = BTreeMap::new();
    for (p, end) in ends {
        let offset = found
            .find_partition(topic, *p)
            .map(|e| e.offset())
            .ok_or_else(|| format!("partition {p}: no answer when finding offsets by time"))?;
        // `End` (or an offset at the stable end): nothing stamped from `from_ms` on.
        if let Offset::Offset(o) = offset {
            if o < *end {
                starts.insert(*p, Offset::Offset(o));
            }
        }
    }
    Ok(starts)
}

/// Each of `partitions` that holds records, with its end once no transaction is open on it.
fn stable_ends(
    clients: &KafkaClients,
    committed: &BaseConsumer<ReadToEnd>,
    topic: &str,
    partitions: &[i32],
    deadline: Instant,
) -> Result<BTreeMap<i32, i64>, String> {
    let everything: BaseConsumer = clients
        .base("state-restore")
        .map_err(|e| e.to_string())?
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(|e| e.to_string())?;
    let watermarks = |c: &dyn Fn(i32) -> rdkafka::error::KafkaResult<(i64, i64)>, p: i32| {
        c(p).map_err(|e| format!("partition {p}: {e}"))
    };
    let mut ends = BTreeMap::new();
    for &p in partitions {
        let (low, high) = watermarks(
            &|p| everything.fetch_watermarks(topic, p, Duration::from_secs(10)),
            p,
        )?;
        loop {
            let (_, stable) = watermarks(
                &|p| committed.fetch_watermarks(topic, p, Duration::from_secs(10)),
                p,
            )?;
            if stable >= high {
                if stable > low {
                    ends.insert(p, stable);
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "partition {p}: a transaction stayed open on it (stable offset {stable}, end {high}); \
                     if it never ends, `kafka-transactions.sh find-hanging` names it and \
                     `kafka-transactions.sh abort` ends it"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(ends)
}

/// The number of partitions of `topic`. Blocking.
pub fn partition_count(clients: &KafkaClients, topic: &str) -> Result<i32, StateError> {
    let fail = |reason: String| StateError::Read {
        topic: topic.to_string(),
        reason,
    };
    let consumer: BaseConsumer = clients
        .base("state-metadata")
        .map_err(|e| fail(e.to_string()))?
        .create()
        .map_err(|e| fail(e.to_string()))?;
    // A topic that `sluice topology apply` created a moment ago may not be in the broker's
    // metadata yet, so a missing topic is asked for again for a few seconds before it is an error.
    let deadline = Instant::now() + TOPIC_APPEARS_WITHIN;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| fail(e.to_string()))?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                return Ok(t.partitions().len() as i32);
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(250)),
            _ => {
                return Err(fail(
                    "the topic does not exist; run `sluice topology apply`".into(),
                ))
            }
        }
    }
}

/// How long a state topic may take to show up in the metadata after it was created.
const TOPIC_APPEARS_WITHIN: Duration = Duration::from_secs(5);
