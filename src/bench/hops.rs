//! A saga's time hop by hop, read back from the records it left.
//!
//! Every record carries its producer's timestamp, taken when the output was handed to the
//! producer. A saga's records on its trigger, replies, commands and events topics, in time
//! order, are its hops: trigger → start control (the orchestrator's hand-off to the saga's
//! partition) → first command → its reply → … → completion. The time between two is one
//! hop: the upstream transaction finishing and committing, the commit becoming visible, the
//! fetch, the wait for the loop and the handling until the output is produced.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::KafkaClients;
use sluice_stream::state::kafka as compacted;

use super::saga::{ce_type, percentile};

/// Where each of `topics` ends now, so that only later records are read.
pub(super) fn mark(clients: &KafkaClients, topics: &[&str]) -> anyhow::Result<TopicPartitionList> {
    let consumer: BaseConsumer = clients.base("bench-mark")?.create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        for p in 0..compacted::partition_count(clients, topic)? {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
    }
    Ok(tpl)
}

/// One hop between two kinds of record: (event type before, event type after) → samples in
/// milliseconds.
pub(super) type Hops = BTreeMap<(usize, String), Vec<f64>>;

/// Reads every record from `from` to the current end, keeps those whose key starts with
/// `ids`, and measures the hops of each saga (keyed by the record key, the saga id).
pub(super) fn read(
    clients: &KafkaClients,
    from: &TopicPartitionList,
    ids: &str,
) -> anyhow::Result<Hops> {
    let consumer: BaseConsumer = clients
        .consumer_config(
            "bench-hops",
            &format!("bench-hops-{}", uuid::Uuid::new_v4().simple()),
        )?
        .create()?;
    let mut ends = HashMap::new();
    for e in from.elements() {
        let (_, high) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))?;
        if Some(high) > e.offset().to_raw() {
            ends.insert((e.topic().to_string(), e.partition()), high);
        }
    }
    consumer.assign(from)?;
    // Saga id → (timestamp, event type) of each of its records.
    let mut records: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m?;
        let tp = (m.topic().to_string(), m.partition());
        if ends.get(&tp).is_some_and(|end| m.offset() + 1 >= *end) {
            ends.remove(&tp);
        }
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let (Some(at), true) = (m.timestamp().to_millis(), key.starts_with(ids)) else {
            continue;
        };
        let kind = m.headers().and_then(ce_type).map(|v| {
            String::from_utf8_lossy(v)
                .rsplit('.')
                .next()
                .unwrap_or("")
                .to_string()
        });
        if let Some(kind) = kind {
            records.entry(key).or_default().push((at, kind));
        }
    }
    Ok(hops(records))
}

/// Orders each saga's records in time and measures the gaps between consecutive ones; a
/// hop is named by its two kinds and numbered by its place in the saga.
fn hops(records: HashMap<String, Vec<(i64, String)>>) -> Hops {
    let mut out = Hops::new();
    for (_, mut rs) in records {
        rs.sort();
        for (i, pair) in rs.windows(2).enumerate() {
            let name = format!("{} → {}", pair[0].1, pair[1].1);
            out.entry((i, name))
                .or_default()
                .push((pair[1].0 - pair[0].0) as f64);
        }
    }
    out
}

/// The hops as lines: place, name, p50 and p99, for those most sagas share.
pub(super) fn describe(hops: &mut Hops) -> Vec<String> {
    let most = hops.values().map(Vec::len).max().unwrap_or(0);
    hops.iter_mut()
        .filter(|(_, v)| v.len() * 2 > most)
        .map(|((i, name), v)| {
            v.sort_by(f64::total_cmp);
            format!(
                "  hop {}: {name:<45} p50 {:>4.0} ms, p99 {:>4.0} ms ({} sagas)",
                i + 1,
                percentile(v, 0.5),
                percentile(v, 0.99),
                v.len()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_are_the_gaps_between_a_sagas_records_in_time_order() {
        let mut records = HashMap::new();
        records.insert(
            "s1".to_string(),
            vec![
                (130, "Reply".to_string()),
                (100, "Trigger".to_string()),
                (110, "Command".to_string()),
            ],
        );
        records.insert(
            "s2".to_string(),
            vec![(0, "Trigger".to_string()), (30, "Command".to_string())],
        );
        let hops = hops(records);
        assert_eq!(
            hops[&(0, "Trigger → Command".to_string())]
                .iter()
                .sum::<f64>(),
            40.0
        );
        assert_eq!(hops[&(1, "Command → Reply".to_string())], vec![20.0]);
        assert_eq!(hops.len(), 2);
    }
}
