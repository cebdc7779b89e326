//! Lag that nobody can read: transaction markers.
//!
//! Every exactly-once commit appends a control record (the commit marker) after the data it
//! commits. A caught-up read_committed consumer commits the offset after the last data
//! record, so the marker stays between its committed offset and the log end: Kafka's tool
//! (and sluice's lag column) show a lag of 1 that never falls, and a naive window rule would
//! call an idle exactly-once group STALL. Aborted records do the same, in larger numbers.
//!
//! For a small lag whose committed offset did not move since the previous pass, the
//! collector asks the log itself: a read_committed consumer positioned at the committed
//! offset either gets a record (the lag is real) or reaches the end of the partition without
//! one (the lag is only markers or aborted records: the group is *settled*). Answers are cached by (partition, committed
//! offset, log end): a log only grows, and any commit or abort moves its end.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::KafkaClients;

use super::collect::TopicPartition;

/// Lags up to this size are checked; a larger lag is never only markers in practice.
pub const MAX_CHECKED_LAG: i64 = 64;

/// A partition, a committed offset on it and its log end.
pub type Position = (TopicPartition, i64, i64);

/// Positions probed per pass at most, so a cluster with many small stuck lags is covered
/// over a few passes instead of slowing every pass down.
pub const MAX_PROBES_PER_PASS: usize = 64;

/// Remembers which positions were found settled, and checks new ones.
#[derive(Debug, Default)]
pub struct SettledCheck {
    known: HashMap<Position, bool>,
    /// The previous pass's (partition, committed offset) pairs with a small lag: only an
    /// offset that stayed put is worth a probe (a moving one is not stuck).
    previous: HashSet<(TopicPartition, i64)>,
}

impl SettledCheck {
    /// Of `positions` (with `0 < log end - committed <= MAX_CHECKED_LAG`), the (partition,
    /// committed offset) pairs that have nothing readable before the log end. Spends at most
    /// `budget` reading; positions it could not decide count as readable.
    pub fn check(
        &mut self,
        clients: &KafkaClients,
        positions: BTreeSet<Position>,
        budget: Duration,
    ) -> BTreeSet<(TopicPartition, i64)> {
        self.known.retain(|p, _| positions.contains(p));
        let previous = std::mem::replace(
            &mut self.previous,
            positions
                .iter()
                .map(|(tp, c, _)| (tp.clone(), *c))
                .collect(),
        );
        let unknown: Vec<&Position> = positions
            .iter()
            .filter(|p| !self.known.contains_key(*p) && previous.contains(&(p.0.clone(), p.1)))
            .take(MAX_PROBES_PER_PASS)
            .collect();
        if !unknown.is_empty() {
            match probe(clients, &unknown, budget) {
                Ok(found) => {
                    for p in unknown {
                        if let Some(&settled) = found.get(&(p.0.clone(), p.1)) {
                            self.known.insert(p.clone(), settled);
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "checking lag for markers failed"),
            }
        }
        positions
            .into_iter()
            .filter(|p| self.known.get(p) == Some(&true))
            .map(|(tp, committed, _)| (tp, committed))
            .collect()
    }
}

/// Reads from each position until a record (readable) or the partition's end (settled).
/// One topic at a time, because librdkafka's end-of-partition event names only the
/// partition; and one committed offset per partition per round.
fn probe(
    clients: &KafkaClients,
    positions: &[&Position],
    budget: Duration,
) -> Result<BTreeMap<(TopicPartition, i64), bool>, KafkaError> {
    let mut rounds: Vec<BTreeMap<&str, BTreeMap<i32, i64>>> = Vec::new();
    for ((topic, partition), committed, _) in positions {
        let free = rounds.iter_mut().find(|r| {
            !r.get(topic.as_str())
                .is_some_and(|ps| ps.contains_key(partition))
        });
        let round = match free {
            Some(r) => r,
            None => {
                rounds.push(BTreeMap::new());
                rounds.last_mut().expect("just pushed")
            }
        };
        round
            .entry(topic.as_str())
            .or_default()
            .insert(*partition, *committed);
    }
    let deadline = Instant::now() + budget;
    let mut found = BTreeMap::new();
    for (topic, partitions) in rounds.iter().flat_map(|r| r.iter()) {
        if Instant::now() >= deadline {
            break;
        }
        // A client per topic, so an end-of-partition event cannot be taken for another
        // topic's partition with the same number.
        let consumer = clients
            .read_to_end_consumer("lag-settled", "sluice-lag-settled-probe")
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in partitions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))?;
        }
        consumer.assign(&tpl)?;
        let mut pending: BTreeMap<i32, i64> = partitions.clone();
        while !pending.is_empty() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.topic() == *topic => {
                    if let Some(offset) = pending.remove(&m.partition()) {
                        found.insert(((topic.to_string(), m.partition()), offset), false);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(offset) = pending.remove(&p) {
                        found.insert(((topic.to_string(), p), offset), true);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(found)
}
