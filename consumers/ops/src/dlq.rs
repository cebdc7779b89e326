//! Dead-letter topic tooling for operators: scan, inspect, replay and purge.
//!
//! Replay is idempotent per DLQ record: each replayed copy and a marker naming its DLQ
//! position (`<topic>/<partition>@<offset>`) are written in one Kafka transaction, and the
//! markers live in a compacted topic. A replay that is interrupted and run again skips every
//! record it already sent, whatever filters either run used.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::{KafkaClients, ReadToEnd};

use sluice_stream::headers as h;
use sluice_stream::Record;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Client(#[from] sluice_runtime::kafka::ClientError),
    #[error(transparent)]
    Config(#[from] sluice_runtime::ConfigError),
    #[error("{what}: {source}")]
    Kafka { what: String, source: KafkaError },
    #[error("topic `{0}` does not exist")]
    NoSuchTopic(String),
    #[error("a blocking Kafka task failed: {0}")]
    Task(String),
    #[error("no record at {topic}/{partition}@{offset}")]
    NoSuchRecord {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error(
        "{topic}/{partition}@{offset} has no `{}` header and no --to was given",
        h::ORIGINAL_TOPIC
    )]
    NoDestination {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// A scan that did not reach the end of every partition in time. Its records are not a
    /// complete picture: replaying against an incomplete set of markers would replay twice.
    #[error(
        "reading {topic} did not reach the end within {}s: partition(s) {} not read to the end after {read} record(s); nothing was done. Run again (a busy broker), or allow longer with --scan-timeout",
        .limit.as_secs_f64(),
        .unfinished.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    )]
    ScanIncomplete {
        topic: String,
        limit: Duration,
        unfinished: Vec<i32>,
        read: usize,
    },
    /// A replay destination the topology does not declare.
    #[error(
        "{what} `{topic}` is not a topic of the topology (prefix {prefix}; its topics: {}); replay there anyway with --force",
        .known.join(", ")
    )]
    NotInTopology {
        what: String,
        topic: String,
        prefix: String,
        known: Vec<String>,
    },
}

/// How long a scan may take by default before it fails as incomplete.
pub const DEFAULT_SCAN_LIMIT: Duration = Duration::from_secs(120);

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> DlqError {
    let what = what.into();
    move |source| DlqError::Kafka { what, source }
}

/// One dead letter, with accessors that decode its provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter(pub Record);

impl std::ops::Deref for DeadLetter {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.0
    }
}

impl DeadLetter {
    fn text(&self, name: &str) -> Option<String> {
        self.header_bytes(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn original_topic(&self) -> Option<String> {
        self.text(h::ORIGINAL_TOPIC)
    }

    pub fn original_partition(&self) -> Option<i32> {
        self.header_bytes(h::ORIGINAL_PARTITION)
            .and_then(h::read_int)
    }

    pub fn original_offset(&self) -> Option<i64> {
        self.header_bytes(h::ORIGINAL_OFFSET).and_then(h::read_long)
    }

    pub fn error_class(&self) -> String {
        self.text(h::EXCEPTION_FQCN)
            .unwrap_or_else(|| "unknown".into())
    }

    pub fn error_message(&self) -> String {
        self.text(h::EXCEPTION_MESSAGE).unwrap_or_default()
    }

    pub fn attempts(&self) -> Option<u32> {
        self.text(h::ATTEMPTS)?.parse().ok()
    }

    /// Where the whole original sits (`<topic>/<partition>@<offset>`) when this copy's
    /// payload was cut to fit the DLQ (see `runtime::refusals`).
    pub fn truncated_original(&self) -> Option<String> {
        self.header_bytes(sluice_stream::refusals::TRUNCATED_ORIGINAL_BYTES)?;
        Some(
            self.text(sluice_stream::refusals::TRUNCATED_ORIGINAL_AT)
                .unwrap_or_else(|| "unknown".into()),
        )
    }

    /// `topic/partition@offset`, the identity replay markers use.
    pub fn position(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }

    /// Headers shown to an operator: provenance integers decoded, the rest as text.
    pub fn readable_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(k, v)| {
                let text = match k.as_str() {
                    h::ORIGINAL_PARTITION => h::read_int(v).map(|i| i.to_string()),
                    h::ORIGINAL_OFFSET | h::ORIGINAL_TIMESTAMP => {
                        h::read_long(v).map(|i| i.to_string())
                    }
                    _ => None,
                }
                .unwrap_or_else(|| String::from_utf8_lossy(v).into_owned());
                (k.clone(), text)
            })
            .collect()
    }
}

/// Which dead letters a replay takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub error_class: Option<String>,
    /// Only records dead-lettered at or after this time (epoch ms).
    pub since_ms: Option<i64>,
}

impl Filter {
    pub fn matches(&self, d: &DeadLetter) -> bool {
        self.error_class
            .as_ref()
            .is_none_or(|c| &d.error_class() == c)
            && self
                .since_ms
                .is_none_or(|since| d.timestamp_ms.is_some_and(|t| t >= since))
    }
}

fn reader(clients: &KafkaClients) -> Result<BaseConsumer<ReadToEnd>, DlqError> {
    Ok(clients.read_to_end_consumer("dlq", "sluice-dlq-tool")?)
}

fn partitions(consumer: &BaseConsumer<ReadToEnd>, topic: &str) -> Result<Vec<i32>, DlqError> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka(format!("reading metadata of {topic}")))?;
    let t = md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| DlqError::NoSuchTopic(topic.to_string()))?;
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// Reads every record of `topic` present now (committed records only), failing with
/// [`DlqError::ScanIncomplete`] unless every partition is read to its end within `limit`.
/// Blocking.
pub fn scan(
    clients: &KafkaClients,
    topic: &str,
    limit: Duration,
) -> Result<Vec<DeadLetter>, DlqError> {
    let consumer = reader(clients)?;
    let mut tpl = TopicPartitionList::new();
    let mut unfinished: Vec<i32> = Vec::new();
    for p in partitions(&consumer, topic)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(kafka("reading watermarks"))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(kafka("assigning"))?;
            unfinished.push(p);
        }
    }
    let mut out = Vec::new();
    if unfinished.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(kafka("assigning"))?;
    let deadline = std::time::Instant::now() + limit;
    while !unfinished.is_empty() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push(DeadLetter(Record::from_message(&m))),
            Some(Err(KafkaError::PartitionEOF(p))) => unfinished.retain(|x| *x != p),
            Some(Err(e)) => return Err(kafka("reading")(e)),
            None => {}
        }
    }
    complete(topic, limit, unfinished, out.len())?;
    out.sort_by_key(|d| (d.partition, d.offset));
    Ok(out)
}

/// Whether a scan that stopped with `unfinished` partitions left is usable: only when none
/// is left. A partial read is never returned as if it were everything.
fn complete(
    topic: &str,
    limit: Duration,
    mut unfinished: Vec<i32>,
    read: usize,
) -> Result<(), DlqError> {
    if unfinished.is_empty() {
        return Ok(());
    }
    unfinished.sort_unstable();
    Err(DlqError::ScanIncomplete {
        topic: topic.to_string(),
        limit,
        unfinished,
        read,
    })
}

/// Checks a replay destination against the topology's topics (`known`), unless `force`.
/// `what` names where the destination came from, for the error.
pub fn check_destination(
    what: &str,
    topic: &str,
    prefix: &str,
    known: &[String],
    force: bool,
) -> Result<(), DlqError> {
    if force || known.iter().any(|k| k == topic) {
        return Ok(());
    }
    Err(DlqError::NotInTopology {
        what: what.to_string(),
        topic: topic.to_string(),
        prefix: prefix.to_string(),
        known: known.to_vec(),
    })
}

/// One record, by position. Blocking.
pub fn fetch(
    clients: &KafkaClients,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<DeadLetter, DlqError> {
    let consumer = reader(clients)?;
    if !partitions(&consumer, topic)?.contains(&partition) {
        return Err(DlqError::NoSuchRecord {
            topic: topic.into(),
            partition,
            offset,
        });
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(kafka("assigning"))?;
    consumer.assign(&tpl).map_err(kafka("assigning"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) if m.offset() == offset => return Ok(DeadLetter(Record::from_message(&m))),
            Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(kafka("reading")(e)),
            None => {}
        }
    }
    Err(DlqError::NoSuchRecord {
        topic: topic.into(),
        partition,
        offset,
    })
}

/// Counts and one sample position per group.
pub fn group_by(
    records: &[DeadLetter],
    by_original_topic: bool,
) -> BTreeMap<String, (usize, String)> {
    let mut groups: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for d in records {
        let key = if by_original_topic {
            d.original_topic().unwrap_or_else(|| "(unknown)".into())
        } else {
            d.error_class()
        };
        let e = groups.entry(key).or_insert((0, d.position()));
        e.0 += 1;
    }
    groups
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub replayed: usize,
    pub already_replayed: usize,
    pub filtered_out: usize,
    /// Matching dead letters whose payload was cut to fit the DLQ, left where they are:
    /// their position, and where the whole original sits. Replaying a cut payload would
    /// lose what was cut.
    pub truncated: Vec<(String, String)>,
}

/// Positions already replayed, from the marker topic, read to its end within `limit`.
/// Blocking.
pub fn replayed_positions(
    clients: &KafkaClients,
    marker_topic: &str,
    limit: Duration,
) -> Result<HashSet<String>, DlqError> {
    Ok(scan(clients, marker_topic, limit)?
        .into_iter()
        .filter(|m| m.value.is_some())
        .filter_map(|m| m.0.key.map(|k| String::from_utf8_lossy(&k).into_owned()))
        .collect())
}

/// Where replayed records may go: the topology's topics, unless forced.
#[derive(Debug, Clone)]
pub struct Destinations {
    pub prefix: String,
    pub topics: Vec<String>,
    /// Replay to topics the topology does not declare (`--force`).
    pub force: bool,
}

/// What a replay takes and where it sends it.
#[derive(Debug, Clone)]
pub struct ReplayPlan<'a> {
    pub topic: &'a str,
    pub marker_topic: &'a str,
    pub filter: &'a Filter,
    /// Every record here instead of its original topic.
    pub to: Option<&'a str>,
    pub dry_run: bool,
    pub destinations: &'a Destinations,
    /// How long reading the dead letters and the markers (each) may take; a scan that does
    /// not reach the end in time fails the replay before anything is sent.
    pub scan_limit: Duration,
}

/// Replays the matching dead letters of `topic` to their original topic (or `to`), each at
/// most once across runs. `progress` is called after every record with (done, total).
/// Every destination is checked against the topology before the first record is sent.
pub async fn replay(
    clients: &KafkaClients,
    plan: &ReplayPlan<'_>,
    mut progress: impl FnMut(usize, usize),
) -> Result<ReplayReport, DlqError> {
    let ReplayPlan {
        topic,
        marker_topic,
        filter,
        to,
        dry_run,
        destinations,
        scan_limit,
    } = *plan;
    let allowed = |what: &str, dest: &str| {
        check_destination(
            what,
            dest,
            &destinations.prefix,
            &destinations.topics,
            destinations.force,
        )
    };
    if let Some(t) = to {
        allowed("--to", t)?;
    }
    let (c, t, m) = (clients.clone(), topic.to_string(), marker_topic.to_string());
    let (records, done) = tokio::task::spawn_blocking(move || -> Result<_, DlqError> {
        // The markers first: they are what must be complete for at-most-once.
        let done = replayed_positions(&c, &m, scan_limit)?;
        Ok((scan(&c, &t, scan_limit)?, done))
    })
    .await
    .map_err(|e| DlqError::Task(e.to_string()))??;
    let mut report = ReplayReport::default();
    let mut todo = Vec::new();
    for d in records {
        if !filter.matches(&d) {
            report.filtered_out += 1;
        } else if done.contains(&d.position()) {
            report.already_replayed += 1;
        } else if let Some(original) = d.truncated_original() {
            report.truncated.push((d.position(), original));
        } else {
            let dest = match to {
                Some(t) => t.to_string(),
                None => {
                    let original = d.original_topic().ok_or_else(|| DlqError::NoDestination {
                        topic: d.topic.clone(),
                        partition: d.partition,
                        offset: d.offset,
                    })?;
                    // The header is as untrusted as the record it came with.
                    allowed(
                        &format!("the original topic of {}", d.position()),
                        &original,
                    )?;
                    original
                }
            };
            todo.push((d, dest));
        }
    }
    if dry_run {
        report.replayed = todo.len();
        return Ok(report);
    }
    let producer: FutureProducer = clients
        .transactional_producer_config("dlq-replay", &format!("dlq-replay-{topic}"))?
        .create()
        .map_err(kafka("creating the replay producer"))?;
    let p = producer.clone();
    tokio::task::block_in_place(|| p.init_transactions(Duration::from_secs(30)))
        .map_err(kafka("initialising transactions"))?;
    let total = todo.len();
    for (i, (d, dest)) in todo.into_iter().enumerate() {
        producer
            .begin_transaction()
            .map_err(kafka("beginning a transaction"))?;
        let position = d.position();
        let mut headers = OwnedHeaders::new();
        for (k, v) in &d.headers {
            if k != h::DUE_AT && k != h::REPLAYED_FROM {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
        }
        headers = headers.insert(Header {
            key: h::REPLAYED_FROM,
            value: Some(position.as_str()),
        });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dest).headers(headers);
        if let Some(k) = &d.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &d.value {
            record = record.payload(v.as_slice());
        }
        let sent = producer
            .send_result(record)
            .map_err(|(e, _)| kafka("sending a replay")(e));
        let marked = producer
            .send_result(
                FutureRecord::<str, str>::to(marker_topic)
                    .key(position.as_str())
                    .payload(&dest),
            )
            .map_err(|(e, _)| kafka("writing the replay marker")(e));
        let p = producer.clone();
        let result = match (sent, marked) {
            (Ok(_), Ok(_)) => {
                sluice_runtime::kafka::commit_transaction(&p, Duration::from_secs(30))
                    .await
                    .map_err(kafka("committing the replay"))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(e) = result {
            let _ =
                sluice_runtime::kafka::abort_transaction(&producer, Duration::from_secs(30)).await;
            return Err(e);
        }
        report.replayed += 1;
        progress(i + 1, total);
    }
    Ok(report)
}

/// Deletes every record of `topic` older than `before_ms` (Kafka's DeleteRecords, up to the
/// first offset at or after that time). Returns (partition, new low watermark) per partition
/// changed.
pub async fn purge(
    clients: &KafkaClients,
    topic: &str,
    before_ms: i64,
) -> Result<Vec<(i32, i64)>, DlqError> {
    let consumer = reader(clients)?;
    let mut query = TopicPartitionList::new();
    let parts = partitions(&consumer, topic)?;
    for p in &parts {
        query
            .add_partition_offset(topic, *p, Offset::Offset(before_ms))
            .map_err(kafka("building the time query"))?;
    }
    let found = consumer
        .offsets_for_times(query, Duration::from_secs(10))
        .map_err(kafka("looking up offsets by time"))?;
    let mut delete = TopicPartitionList::new();
    let mut planned = Vec::new();
    for e in found.elements() {
        let (_, high) = consumer
            .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
            .map_err(kafka("reading watermarks"))?;
        // No record at or after the time: everything in the partition is older.
        let upto = match e.offset() {
            Offset::Offset(o) => o,
            _ => high,
        };
        if upto > 0 {
            delete
                .add_partition_offset(topic, e.partition(), Offset::Offset(upto))
                .map_err(kafka("building the delete request"))?;
            planned.push((e.partition(), upto));
        }
    }
    if planned.is_empty() {
        return Ok(planned);
    }
    let admin = clients.admin()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let result = admin
        .delete_records(&delete, &opts)
        .await
        .map_err(kafka("deleting records"))?;
    for e in result.elements() {
        if let Err(err) = e.error() {
            return Err(kafka(format!(
                "deleting records of {topic}/{}",
                e.partition()
            ))(err));
        }
    }
    Ok(planned)
}

/// Records held in `topic` now: log end minus log start over its partitions (transaction
/// markers included, so slightly more than the records under exactly-once). Blocking.
pub fn depth(clients: &KafkaClients, topic: &str) -> Result<i64, DlqError> {
    let consumer = reader(clients)?;
    let mut total = 0;
    for p in partitions(&consumer, topic)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(kafka("reading watermarks"))?;
        total += high - low;
    }
    Ok(total)
}

/// Exports `sluice_dlq_depth{topic}` for `topics`, refreshed every `every` until shutdown.
pub fn spawn_depth_gauge(
    clients: KafkaClients,
    topics: Vec<String>,
    registry: &prometheus::Registry,
    every: Duration,
    shutdown: sluice_runtime::Shutdown,
) -> prometheus::Result<tokio::task::JoinHandle<()>> {
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "sluice_dlq_depth",
            "Records held in a dead-letter topic (log end minus log start).",
        ),
        &["topic"],
    )?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(tokio::spawn(async move {
        while !shutdown.is_triggered() {
            for t in &topics {
                let (c, topic) = (clients.clone(), t.clone());
                match tokio::task::spawn_blocking(move || depth(&c, &topic)).await {
                    Ok(Ok(n)) => gauge.with_label_values(&[t]).set(n),
                    Ok(Err(e)) => tracing::warn!(topic = t, error = %e, "cannot read DLQ depth"),
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(class: &str, ts: i64) -> DeadLetter {
        DeadLetter(Record {
            topic: "dlq".into(),
            partition: 0,
            offset: ts,
            timestamp_ms: Some(ts),
            key: None,
            value: None,
            headers: vec![
                (h::EXCEPTION_FQCN.into(), class.as_bytes().to_vec()),
                (h::ORIGINAL_TOPIC.into(), b"raw".to_vec()),
                (h::ORIGINAL_PARTITION.into(), h::int(4)),
                (h::ORIGINAL_OFFSET.into(), h::long(99)),
            ],
        })
    }

    #[test]
    fn filters_groups_and_decodes_provenance() {
        let all = vec![
            letter("InvalidJson", 10),
            letter("InvalidJson", 20),
            letter("UnmappedEventType", 30),
        ];
        let f = Filter {
            error_class: Some("InvalidJson".into()),
            since_ms: Some(15),
        };
        assert_eq!(all.iter().filter(|d| f.matches(d)).count(), 1);
        let groups = group_by(&all, false);
        assert_eq!(groups["InvalidJson"], (2, "dlq/0@10".to_string()));
        assert_eq!(group_by(&all, true)["raw"].0, 3);
        let d = &all[0];
        assert_eq!(
            (d.original_partition(), d.original_offset()),
            (Some(4), Some(99))
        );
        let readable = d.readable_headers();
        assert!(readable.contains(&(h::ORIGINAL_OFFSET.to_string(), "99".to_string())));
    }

    #[test]
    fn a_scan_that_did_not_reach_every_end_is_an_error_naming_what_is_missing() {
        assert!(complete("m", DEFAULT_SCAN_LIMIT, vec![], 5).is_ok());
        let e = complete("markers", Duration::from_secs(120), vec![2, 0], 7).unwrap_err();
        assert!(matches!(&e, DlqError::ScanIncomplete { unfinished, .. } if unfinished == &[0, 2]));
        let text = e.to_string();
        assert!(
            text.contains("reading markers did not reach the end within 120s")
                && text.contains("partition(s) 0, 2")
                && text.contains("after 7 record(s)")
                && text.contains("--scan-timeout"),
            "{text}"
        );
    }

    #[test]
    fn destinations_must_be_topology_topics_unless_forced() {
        let known = vec!["p.raw".to_string(), "p.events".to_string()];
        assert!(check_destination("--to", "p.raw", "p", &known, false).is_ok());
        assert!(check_destination("--to", "elsewhere", "p", &known, true).is_ok());
        let text = check_destination("--to", "elsewhere", "p", &known, false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "--to `elsewhere` is not a topic of the topology (prefix p; its topics: p.raw, p.events); replay there anyway with --force"
        );
    }
}
