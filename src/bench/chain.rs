//! The ceilings `sluice saga bench` measures sagas against: the saga's chain of nine
//! produce→consume hops through the broker with plain rdkafka clients, no state, no Avro.
//!
//! client → "orchestrator" → its own inbox (the trigger hand-off) → three command/reply
//! round trips with a "participant" → done. Two ways:
//! - [`Mode::Raw`]: each hop a plain idempotent produce, read `read_uncommitted`;
//! - [`Mode::Transactional`]: each hop a consume-transform-produce transaction, outputs and
//!   input offsets committed together and read `read_committed`, as sluice's loops do. This
//!   is the like-for-like ceiling, and its paced run breaks a hop's time down by step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::future::join_all;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::{create_topic_if_missing, KafkaClients};

use super::saga::{percentile, Run};

/// How each hop of the chain is written and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Raw,
    Transactional,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Transactional => "tx",
        }
    }

    fn isolation(self) -> &'static str {
        match self {
            Mode::Raw => "read_uncommitted",
            Mode::Transactional => "read_committed",
        }
    }
}

/// The chain's topics under a run's prefix.
#[derive(Clone)]
struct Topics {
    triggers: String,
    inbox: String,
    commands: String,
    done: String,
}

impl Topics {
    fn new(prefix: &str, mode: Mode) -> Self {
        let topic = |t: &str| format!("{prefix}.{}.{t}", mode.name());
        Self {
            triggers: topic("triggers"),
            inbox: topic("inbox"),
            commands: topic("commands"),
            done: topic("done"),
        }
    }

    fn all(&self) -> [&String; 4] {
        [&self.triggers, &self.inbox, &self.commands, &self.done]
    }

    /// The orchestrator's next output for a record of `topic` with `body`.
    fn orchestrate(&self, topic: &str, body: &[u8]) -> (String, Vec<u8>) {
        if topic == self.triggers {
            return (self.inbox.clone(), b"start".to_vec());
        }
        match body {
            b"start" => (self.commands.clone(), b"1".to_vec()),
            b"r1" => (self.commands.clone(), b"2".to_vec()),
            b"r2" => (self.commands.clone(), b"3".to_vec()),
            _ => (self.done.clone(), b"done".to_vec()),
        }
    }

    /// The participant's reply to a command.
    fn reply(&self, body: &[u8]) -> (String, Vec<u8>) {
        (self.inbox.clone(), [b"r".as_slice(), body].concat())
    }
}

/// Where a transactional hop's time goes, summed over every transaction of a run.
#[derive(Debug, Default)]
pub struct HopTimes {
    transactions: u64,
    records: u64,
    /// `begin_transaction` until every output is acknowledged.
    produce: Duration,
    /// `send_offsets_to_transaction`.
    offsets: Duration,
    /// `commit_transaction`.
    commit: Duration,
    /// From a transaction's commit returning to its output reaching the next loop, per
    /// record seen.
    visible: Duration,
    visible_count: u64,
}

impl HopTimes {
    /// One line, in milliseconds per transaction (and per record for visibility).
    pub fn describe(&self) -> String {
        let per_tx = |d: Duration| d.as_secs_f64() * 1000.0 / self.transactions.max(1) as f64;
        format!(
            "{} transactions ({:.1} records each): produce+ack {:.1} ms, offsets {:.1} ms, commit {:.1} ms; commit → seen by the next hop {:.1} ms",
            self.transactions,
            self.records as f64 / self.transactions.max(1) as f64,
            per_tx(self.produce),
            per_tx(self.offsets),
            per_tx(self.commit),
            self.visible.as_secs_f64() * 1000.0 / self.visible_count.max(1) as f64,
        )
    }
}

/// When each output's transaction committed, keyed by (key, body): the next hop's reader
/// looks its record up to time the visibility of a commit.
type Commits = Arc<Mutex<HashMap<(Vec<u8>, Vec<u8>), Instant>>>;

/// Runs `n` flows through the chain, all at once, or `per_tick` every 50 ms when paced.
pub(super) async fn run(
    clients: &KafkaClients,
    prefix: &str,
    partitions: i32,
    mode: Mode,
    n: usize,
    per_tick: Option<usize>,
) -> anyhow::Result<(Run, HopTimes)> {
    let topics = Topics::new(prefix, mode);
    let admin = clients.admin()?;
    for t in topics.all() {
        create_topic_if_missing(&admin, t, partitions).await?;
    }
    let consumer = |topics: &[&str]| -> anyhow::Result<StreamConsumer> {
        let c: StreamConsumer = clients
            .consumer_config(
                "bench-chain",
                &format!("bench-chain-{}", uuid::Uuid::new_v4().simple()),
            )?
            .set("isolation.level", mode.isolation())
            .create()?;
        c.subscribe(topics)?;
        Ok(c)
    };
    let orchestrator = consumer(&[&topics.triggers, &topics.inbox])?;
    let participant = consumer(&[&topics.commands])?;
    let results = consumer(&[&topics.done])?;
    for c in [&orchestrator, &participant, &results] {
        wait_for_assignment(c).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let times = Arc::new(Mutex::new(HopTimes::default()));
    let commits: Commits = Arc::default();
    let producer: FutureProducer = clients.producer("bench-chain")?;
    let loops = match mode {
        Mode::Raw => {
            let t = topics.clone();
            let o = raw_hop(orchestrator, producer.clone(), stop.clone(), move |m| {
                t.orchestrate(m.topic(), m.payload().unwrap_or_default())
            });
            let t = topics.clone();
            let p = raw_hop(participant, producer.clone(), stop.clone(), move |m| {
                t.reply(m.payload().unwrap_or_default())
            });
            [o, p]
        }
        Mode::Transactional => {
            let hop =
                |name: &str| TxHop::new(clients, prefix, name, stop.clone(), &times, &commits);
            let t = topics.clone();
            let o = hop("orchestrator")?.spawn(orchestrator, move |m| {
                t.orchestrate(m.topic(), m.payload().unwrap_or_default())
            });
            let t = topics.clone();
            let p = hop("participant")?.spawn(participant, move |m| {
                t.reply(m.payload().unwrap_or_default())
            });
            [o, p]
        }
    };
    let flows = drive(&producer, &topics, &results, n, per_tick, prefix).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    let (elapsed, mut latencies) = flows?;
    latencies.sort_by(f64::total_cmp);
    let times = std::mem::take(&mut *times.lock().expect("hop times"));
    Ok((
        Run {
            n,
            elapsed,
            latencies,
        },
        times,
    ))
}

/// Sends the flows' triggers and waits until each flow is done; returns the time from the
/// first send to the last completion and each flow's end-to-end milliseconds.
async fn drive(
    producer: &FutureProducer,
    topics: &Topics,
    results: &StreamConsumer,
    n: usize,
    per_tick: Option<usize>,
    prefix: &str,
) -> anyhow::Result<(Duration, Vec<f64>)> {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sender = {
        let (producer, triggers, sent) = (producer.clone(), topics.triggers.clone(), sent.clone());
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let keys: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
            for chunk in keys.chunks(per_tick.unwrap_or(n).max(1)) {
                if per_tick.is_some() {
                    tick.tick().await;
                }
                let sends = chunk.iter().map(|key| {
                    sent.lock()
                        .expect("sent")
                        .insert(key.clone(), Instant::now());
                    producer.send(
                        FutureRecord::to(&triggers).key(key).payload("order"),
                        Duration::from_secs(30),
                    )
                });
                join_all(sends).await;
            }
        })
    };
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    let mut last = started;
    let deadline = Instant::now() + Duration::from_secs(300);
    while latencies.len() < n && Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), results.recv()).await else {
            continue;
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        if let Some(at) = sent.lock().expect("sent").remove(&key) {
            last = Instant::now();
            latencies.push(last.duration_since(at).as_secs_f64() * 1000.0);
        }
    }
    let _ = sender.await;
    if latencies.len() < n {
        bail!("the chain completed only {} of {n} flows", latencies.len());
    }
    Ok((last.duration_since(started), latencies))
}

async fn wait_for_assignment(c: &StreamConsumer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment().map_or(0, |a| a.count()) == 0 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), c.recv()).await;
    }
}

/// A raw hop: each record read is answered with a fire-and-forget produce.
fn raw_hop(
    consumer: StreamConsumer,
    producer: FutureProducer,
    stop: Arc<AtomicBool>,
    next: impl Fn(&BorrowedMessage<'_>) -> (String, Vec<u8>) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
            else {
                continue;
            };
            let (topic, body) = next(&m);
            let key = m.key().unwrap_or_default().to_vec();
            let p = producer.clone();
            tokio::spawn(async move {
                let _ = p
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&body),
                        Duration::from_secs(30),
                    )
                    .await;
            });
        }
    })
}

/// A transactional hop: read what is there, produce its outputs, commit them with the
/// input offsets, as sluice's exactly-once loop does.
struct TxHop {
    producer: FutureProducer,
    stop: Arc<AtomicBool>,
    times: Arc<Mutex<HopTimes>>,
    commits: Commits,
}

impl TxHop {
    fn new(
        clients: &KafkaClients,
        prefix: &str,
        name: &str,
        stop: Arc<AtomicBool>,
        times: &Arc<Mutex<HopTimes>>,
        commits: &Commits,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer = clients
            .loop_producer_config("bench-chain", &format!("{prefix}-{name}"))?
            .create()?;
        tokio::task::block_in_place(|| producer.init_transactions(Duration::from_secs(30)))?;
        Ok(Self {
            producer,
            stop,
            times: times.clone(),
            commits: commits.clone(),
        })
    }

    fn spawn(
        self,
        consumer: StreamConsumer,
        next: impl Fn(&BorrowedMessage<'_>) -> (String, Vec<u8>) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while !self.stop.load(Ordering::Relaxed) {
                let Ok(Ok(first)) =
                    tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
                else {
                    continue;
                };
                let mut outputs = vec![];
                let mut offsets = TopicPartitionList::new();
                let mut take = |m: &BorrowedMessage<'_>| {
                    self.seen(m);
                    let (topic, body) = next(m);
                    outputs.push((topic, m.key().unwrap_or_default().to_vec(), body));
                    let _ = offsets.add_partition_offset(
                        m.topic(),
                        m.partition(),
                        Offset::Offset(m.offset() + 1),
                    );
                };
                take(&first);
                drop(first);
                // Whatever else is already fetched joins the batch; nothing waits for more.
                while let Ok(Ok(m)) = tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                    take(&m);
                }
                if let Err(e) = self.commit(&consumer, outputs, offsets).await {
                    tracing::error!(error = %e, "chain transaction failed");
                    return;
                }
            }
        })
    }

    /// Notes how long `m` took to be seen after its transaction committed.
    fn seen(&self, m: &BorrowedMessage<'_>) {
        let key = (
            m.key().unwrap_or_default().to_vec(),
            m.payload().unwrap_or_default().to_vec(),
        );
        if let Some(at) = self.commits.lock().expect("commits").remove(&key) {
            let mut t = self.times.lock().expect("hop times");
            t.visible += at.elapsed();
            t.visible_count += 1;
        }
    }

    async fn commit(
        &self,
        consumer: &StreamConsumer,
        outputs: Vec<(String, Vec<u8>, Vec<u8>)>,
        offsets: TopicPartitionList,
    ) -> anyhow::Result<()> {
        let begun = Instant::now();
        self.producer.begin_transaction()?;
        let sends = outputs.iter().map(|(topic, key, body)| {
            self.producer.send(
                FutureRecord::to(topic).key(key).payload(body),
                Duration::from_secs(30),
            )
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
        let acked = Instant::now();
        let metadata = consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("no group metadata"))?;
        tokio::task::block_in_place(|| {
            self.producer
                .send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))
        })?;
        let offsets_sent = Instant::now();
        // As the sluice loops commit (see `sluice_runtime::kafka::commit_transaction`).
        sluice_runtime::kafka::commit_transaction(&self.producer, Duration::from_secs(60)).await?;
        let committed = Instant::now();
        {
            let mut commits = self.commits.lock().expect("commits");
            for (_, key, body) in &outputs {
                commits.insert((key.clone(), body.clone()), committed);
            }
        }
        let mut t = self.times.lock().expect("hop times");
        t.transactions += 1;
        t.records += outputs.len() as u64;
        t.produce += acked - begun;
        t.offsets += offsets_sent - acked;
        t.commit += committed - offsets_sent;
        Ok(())
    }
}

/// One line for a chain's paced run: end-to-end percentiles and the per-hop breakdown.
pub(super) fn describe_paced(run: &Run, times: &HopTimes) -> String {
    format!(
        "end-to-end p50 {:.0} ms, p99 {:.0} ms ({:.1} ms per hop at p50); {}",
        percentile(&run.latencies, 0.5),
        percentile(&run.latencies, 0.99),
        percentile(&run.latencies, 0.5) / 9.0,
        times.describe()
    )
}
