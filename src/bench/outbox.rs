//! Outbox benchmark (`sluice bench outbox`): `sluice outbox relay` against a raw idempotent
//! producer writing the same events, and against Debezium's PostgreSQL connector with its
//! outbox event router (embedded engine, `dev/debezium/run`), in the same run.
//!
//! Each relay gets an outbox table of its own (sluice's DDL) and a topic of its own, and two
//! phases:
//!
//! - **rate**: a backlog of `--events` rows committed in one transaction while the relay is
//!   idle; events per second from that commit until the last event is readable
//!   (`read_committed`) on the relay's topic;
//! - **latency**: services committing `--rate` events per second (a transaction every 10 ms)
//!   for `--seconds`; per event, the time from its transaction's commit returning to the event
//!   being readable.
//!
//! The raw ceiling republishes sluice's relayed records (same keys, values and headers) with
//! an idempotent `acks=all` producer and no database. Debezium polls as often as sluice's
//! relay (`outbox.poll_interval_ms`), so neither waits longer by configuration alone.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use sluice_outbox::{create_statements, TableName};
use sluice_runtime::config::OutboxConfig;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_schemas::{Catalog, RegistryClient};
use sluice_topology::Topology;

use super::stats::{ms, Samples};
use super::{deploy_scratch, free_port, remove_scratch, spawn_self, ChildProcess};

const ORDER: &str = "dev.sluice.events.commerce.OrderPlaced";
/// Lanes of the sluice relay under test (its default).
const LANES: u32 = 8;
/// How often the latency phase commits a transaction.
const TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Args)]
pub struct OutboxBench {
    /// Rows of the backlog each relay drains in the rate phase.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Aggregates the backlog's rows belong to (each gets `events / aggregates` in sequence);
    /// as many as `--events` gives every row an aggregate of its own, which is what the
    /// relay's memory bound (`outbox.aggregates_in_memory`) is about.
    #[arg(long, default_value_t = 1_000)]
    pub aggregates: usize,
    /// Events per second the services commit in the latency phase.
    #[arg(long, default_value_t = 1_000)]
    pub rate: usize,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Rounds, one after the other; each is printed, then the medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The PostgreSQL database (libpq URL); default: `outbox.dsn` when configured, else the
    /// local stack's (`SLUICE_POSTGRES_PORT`, `SLUICE_POSTGRES_PASSWORD`).
    #[arg(long, env = "SLUICE_BENCH_OUTBOX_DSN", hide_env_values = true)]
    pub dsn: Option<String>,
    /// The script that runs Debezium's embedded engine.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/dev/debezium/run"))]
    pub debezium: PathBuf,
    /// Leave Debezium out (e.g. where Maven Central cannot be reached).
    #[arg(long)]
    pub no_debezium: bool,
}

/// One relay's figures in one round.
#[derive(Debug, Clone, Copy)]
struct Figures {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    achieved: f64,
    missing: usize,
    /// The relay's peak resident set over both phases (sluice's; Debezium's is not read).
    peak_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Round {
    raw: f64,
    sluice: Figures,
    debezium: Option<Figures>,
}

pub async fn run(config: &SluiceConfig, b: OutboxBench) -> anyhow::Result<ExitCode> {
    if b.rounds == 0 || b.events == 0 || b.aggregates == 0 || b.rate < 100 {
        bail!("--rounds, --events and --aggregates must be at least 1, --rate at least 100");
    }
    let dsn = b.dsn.clone().map_or_else(|| default_dsn(config), Ok)?;
    println!(
        "outbox benchmark: backlog {} events of {} aggregates, latency at {} events/s for {} s, {} rounds, loopback, broker and PostgreSQL on this machine",
        b.events, b.aggregates, b.rate, b.seconds, b.rounds
    );
    let mut rounds = Vec::with_capacity(b.rounds);
    for n in 1..=b.rounds {
        let round = run_round(config, &b, &dsn).await?;
        print_round(n, &round);
        rounds.push(round);
    }
    print_medians(&rounds);
    Ok(ExitCode::SUCCESS)
}

/// `outbox.dsn` when it is configured, else the local stack's database.
fn default_dsn(config: &SluiceConfig) -> anyhow::Result<String> {
    if let Some(outbox) = &config.outbox {
        return outbox
            .dsn
            .resolve()
            .context("reading outbox.dsn (or pass --dsn)");
    }
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    Ok(format!(
        "postgres://sluice:{}@127.0.0.1:{}/sluice",
        env("SLUICE_POSTGRES_PASSWORD", "sluice"),
        env("SLUICE_POSTGRES_PORT", "15432")
    ))
}

/// One round's scratch deployment: topics, subjects and two outbox tables.
struct Scratch {
    prefix: String,
    topology_path: PathBuf,
    topology: Topology,
    sluice_table: TableName,
    debezium_table: TableName,
}

impl Scratch {
    fn topic(&self, what: &str) -> String {
        format!("{}.events.{what}", self.prefix)
    }
}

async fn prepare(config: &SluiceConfig, db: &tokio_postgres::Client) -> anyhow::Result<Scratch> {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let prefix = format!("benchoutbox{tag}");
    let p = &prefix;
    let yaml = format!(
        r#"prefix: {p}
topics:
  - {{name: {p}.events.commerce, partitions: 6}}
  - {{name: {p}.events.raw, partitions: 6}}
  - {{name: {p}.events.debezium, partitions: 6}}
  - {{name: {p}.state.outbox, partitions: 2, config: {{cleanup.policy: compact}}}}
  - {{name: {p}.dlq.outbox, partitions: 1}}
routes:
  - {{event_type: {ORDER}, topic: {p}.events.commerce}}
"#
    );
    let catalog = Catalog::embedded()?;
    let types = catalog.event_types().map(str::to_string).collect();
    let topology_path = std::env::temp_dir().join(format!("{prefix}-topology.yaml"));
    std::fs::write(&topology_path, yaml)?;
    let topology = Topology::load(&topology_path, &types)?;
    let clients = KafkaClients::new(config.kafka.clone());
    let registry = RegistryClient::new(&config.registry)?;
    deploy_scratch(&clients, &registry, &catalog, &topology).await?;
    let sluice_table = TableName::parse(&format!("bench_outbox_{tag}"))?;
    let debezium_table = TableName::parse(&format!("bench_outbox_{tag}_dbz"))?;
    for t in [&sluice_table, &debezium_table] {
        db.batch_execute(&create_statements(t, LANES))
            .await
            .with_context(|| format!("creating {t}"))?;
    }
    Ok(Scratch {
        prefix,
        topology_path,
        topology,
        sluice_table,
        debezium_table,
    })
}

async fn cleanup(config: &SluiceConfig, db: &tokio_postgres::Client, s: &Scratch) {
    let clients = KafkaClients::new(config.kafka.clone());
    if let Err(e) = remove_scratch(config, &clients, &s.topology).await {
        eprintln!(
            "  (could not remove the scratch topics: {})",
            crate::cli::error_text::chain(&e)
        );
    }
    for t in [&s.sluice_table, &s.debezium_table] {
        let _ = db
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {t}; DROP FUNCTION IF EXISTS {t}_stamp_xid(), {t}_notify()"
            ))
            .await;
    }
    let _ = std::fs::remove_file(&s.topology_path);
}

async fn run_round(config: &SluiceConfig, b: &OutboxBench, dsn: &str) -> anyhow::Result<Round> {
    let db = connect(dsn).await?;
    let s = prepare(config, &db).await?;
    let result = measure_round(config, b, dsn, &db, &s).await;
    cleanup(config, &db, &s).await;
    result
}

async fn measure_round(
    config: &SluiceConfig,
    b: &OutboxBench,
    dsn: &str,
    db: &tokio_postgres::Client,
    s: &Scratch,
) -> anyhow::Result<Round> {
    let clients = KafkaClients::new(config.kafka.clone());
    let poll_ms = OutboxConfig::default().poll_interval_ms;

    let relay = start_sluice_relay(s, dsn).await?;
    let phases = Phases {
        clients: &clients,
        db,
        dsn,
        b,
    };
    let (mut sluice, relayed) = phases
        .measure(&s.sluice_table, &s.topic("commerce"), "ce_id")
        .await
        .context("sluice relay")?;
    sluice.peak_rss_mib = relay.peak_rss_mib();
    drop(relay);

    // The raw ceiling: the same records, no database.
    let raw = raw_producer(&clients, &s.topic("raw"), &relayed).await?;

    let debezium = if b.no_debezium {
        None
    } else {
        let slot = format!("{}_slot", s.debezium_table.as_str());
        let measured = match Debezium::start(config, b, dsn, s, &slot, poll_ms).await {
            Ok(_engine) => phases
                .measure(&s.debezium_table, &s.topic("debezium"), "id")
                .await
                .context("Debezium"),
            Err(e) => Err(e.context("starting Debezium (or pass --no-debezium)")),
        };
        drop_slot(db, &slot).await;
        Some(measured?.0)
    };
    Ok(Round {
        raw,
        sluice,
        debezium,
    })
}

async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .context("connecting to the outbox database (is the stack up? `dev/stack up`)")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Starts `sluice outbox relay` on the sluice table and waits until it owns every lane.
async fn start_sluice_relay(s: &Scratch, dsn: &str) -> anyhow::Result<ChildProcess> {
    let admin = free_port()?;
    let topology = s.topology_path.to_string_lossy().into_owned();
    let child = spawn_self(
        &["outbox", "relay", "--topology", &topology],
        &[
            ("SLUICE_OUTBOX__DSN__ENV", "SLUICE_BENCH_RELAY_DSN".into()),
            ("SLUICE_BENCH_RELAY_DSN", dsn.into()),
            ("SLUICE_OUTBOX__TABLE", s.sluice_table.to_string()),
            ("SLUICE_OUTBOX__LANES", LANES.to_string()),
            ("SLUICE_ADMIN__LISTEN", format!("127.0.0.1:{admin}")),
            // `sluice_outbox=debug` shows where each batch's time goes.
            (
                "RUST_LOG",
                std::env::var("SLUICE_BENCH_RELAY_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ],
    )?;
    let url = format!("http://127.0.0.1:{admin}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = reqwest::get(&url).await.and_then(|r| r.error_for_status()) {
            let owned = text.text().await.unwrap_or_default();
            if metric(&owned, "sluice_outbox_lanes_owned") >= f64::from(LANES) {
                return Ok(child);
            }
        }
        if Instant::now() > deadline {
            bail!("the sluice relay did not claim its {LANES} lanes within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What both relays go through, in this order.
struct Phases<'a> {
    clients: &'a KafkaClients,
    db: &'a tokio_postgres::Client,
    dsn: &'a str,
    b: &'a OutboxBench,
}

impl Phases<'_> {
    /// The rate phase, then the latency phase, on the relay of `table` publishing to
    /// `topic` with each event's id in header `id_header`.
    async fn measure(
        &self,
        table: &TableName,
        topic: &str,
        id_header: &'static str,
    ) -> anyhow::Result<(Figures, Vec<Record>)> {
        let (rate, records) = drain_backlog(
            self.clients,
            self.db,
            table,
            topic,
            self.b.events,
            self.b.aggregates,
            id_header,
        )
        .await
        .context("rate phase")?;
        let figures = latency(
            self.clients,
            self.dsn,
            table,
            topic,
            self.b,
            id_header,
            rate,
        )
        .await
        .context("latency phase")?;
        Ok((figures, records))
    }
}

/// A metric's value summed over its labels.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The payload of an `OrderPlaced` for `aggregate` at `sequence`, in SQL (for the backlog).
const PAYLOAD_SQL: &str = "jsonb_build_object('order_id', a, 'total', jsonb_build_object('amount', s::text || '.00', 'currency', 'EUR'), 'line_items', '[]'::jsonb, 'provider', 'shop')";

/// Commits `n` rows in one transaction over 1,000 aggregates (each with its sequence 1, 2, …)
/// and reads the relay's topic until all are readable. Returns events/s from the commit, and
/// the records (for the raw ceiling).
async fn drain_backlog(
    clients: &KafkaClients,
    db: &tokio_postgres::Client,
    table: &TableName,
    topic: &str,
    n: usize,
    aggregates: usize,
    id_header: &'static str,
) -> anyhow::Result<(f64, Vec<Record>)> {
    let reader = Reader::start(clients, topic, id_header, "o-")?;
    let sql = format!(
        "INSERT INTO {table} (aggregate_type, aggregate_id, sequence, event_type, payload) \
         SELECT 'order', a, s, $1, {PAYLOAD_SQL} FROM \
         (SELECT 'o-' || (i % $3) AS a, i / $3 + 1 AS s FROM generate_series(0, $2::bigint - 1) AS i) AS rows"
    );
    db.execute(&sql, &[&ORDER, &(n as i64), &(aggregates as i64)])
        .await
        .with_context(|| format!("writing the backlog into {table}"))?;
    let committed = Instant::now();
    let records = reader.until(n, Duration::from_secs(300)).await?;
    let last = records.iter().map(|r| r.seen).max().unwrap_or(committed);
    let rate = n as f64 / (last - committed).as_secs_f64().max(1e-6);
    Ok((rate, records))
}

/// Services committing `b.rate` events/s (unique aggregates, a transaction per tick) for
/// `b.seconds`; commit-to-readable latency per event.
async fn latency(
    clients: &KafkaClients,
    dsn: &str,
    table: &TableName,
    topic: &str,
    b: &OutboxBench,
    id_header: &'static str,
    backlog_rate: f64,
) -> anyhow::Result<Figures> {
    let db = connect(dsn).await?;
    let reader = Reader::start(clients, topic, id_header, "l-")?;
    let sql = format!(
        "INSERT INTO {table} (event_id, aggregate_type, aggregate_id, sequence, event_type, payload) \
         SELECT id::uuid, 'order', a, s, $2, {PAYLOAD_SQL} FROM \
         (SELECT id, 'l-' || id AS a, 1 AS s FROM unnest($1::text[]) AS id) AS rows"
    );
    let insert = db.prepare(&sql).await?;
    let mut committed: HashMap<String, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let total = b.rate * b.seconds as usize;
    while committed.len() < total {
        ticker.tick().await;
        // As many as keep the average at `b.rate`, even when a commit took longer than a tick.
        let due = ((started.elapsed().as_secs_f64() * b.rate as f64) as usize).min(total);
        let ids: Vec<String> = (committed.len()..due)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        db.execute(&insert, &[&ids, &ORDER]).await?;
        let at = Instant::now();
        committed.extend(ids.into_iter().map(|id| (id, at)));
    }
    let achieved = committed.len() as f64 / started.elapsed().as_secs_f64();
    let records = reader
        .until(committed.len(), Duration::from_secs(60))
        .await
        .unwrap_or_default();
    let mut samples = Samples::default();
    for r in &records {
        if let Some(at) = committed.remove(&r.id) {
            samples.record(r.seen.saturating_duration_since(at));
        }
    }
    Ok(Figures {
        rate: backlog_rate,
        p50_ms: ms(samples.quantile(0.5)),
        p99_ms: ms(samples.quantile(0.99)),
        achieved,
        missing: committed.len(),
        peak_rss_mib: None,
    })
}

/// One record read back, with when it became readable.
#[derive(Debug, Clone)]
struct Record {
    id: String,
    seen: Instant,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Reads a topic from its start, `read_committed`, on a thread of its own.
struct Reader {
    done: mpsc::Sender<usize>,
    records: mpsc::Receiver<anyhow::Result<Vec<Record>>>,
}

impl Reader {
    /// Keeps the records whose key starts with `key_prefix` (the phase's aggregates). Returns
    /// once the consumer has its partitions, so nothing relayed after is missed.
    fn start(
        clients: &KafkaClients,
        topic: &str,
        id_header: &'static str,
        key_prefix: &'static str,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = clients
            .consumer_config(
                "bench-outbox-read",
                &format!("bench-{}", uuid::Uuid::new_v4()),
            )?
            .set("fetch.wait.max.ms", "5")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let (done, want) = mpsc::channel::<usize>();
        let (send, records) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = send.send(read_until(&consumer, &want, id_header, key_prefix));
        });
        Ok(Self { done, records })
    }

    /// Waits until `n` records were read (or `timeout` passed: an error).
    async fn until(self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Record>> {
        self.done.send(n).ok();
        let records = self.records;
        tokio::task::spawn_blocking(move || {
            records
                .recv_timeout(timeout)
                .context("the reader did not finish")?
        })
        .await?
    }
}

/// Reads until the number sent on `want` is reached; records before that number is known
/// are kept too.
fn read_until(
    consumer: &BaseConsumer,
    want: &mpsc::Receiver<usize>,
    id_header: &str,
    key_prefix: &str,
) -> anyhow::Result<Vec<Record>> {
    let mut target: Option<usize> = None;
    let mut out = Vec::new();
    let deadline_after_target = Duration::from_secs(300);
    let mut target_at = None;
    loop {
        if target.is_none() {
            if let Ok(n) = want.try_recv() {
                target = Some(n);
                target_at = Some(Instant::now());
            }
        }
        if target.is_some_and(|n| out.len() >= n) {
            return Ok(out);
        }
        if target_at.is_some_and(|t: Instant| t.elapsed() > deadline_after_target) {
            bail!("only {} of {:?} records arrived", out.len(), target);
        }
        let Some(m) = consumer.poll(Duration::from_millis(20)) else {
            continue;
        };
        let m = m?;
        let seen = Instant::now();
        if !m
            .key()
            .unwrap_or_default()
            .starts_with(key_prefix.as_bytes())
        {
            continue;
        }
        let headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
            .collect();
        let id = headers
            .iter()
            .find(|(k, _)| k == id_header)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        out.push(Record {
            id,
            seen,
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
}

/// Republishes `records` with an idempotent `acks=all` producer; records/s.
async fn raw_producer(
    clients: &KafkaClients,
    topic: &str,
    records: &[Record],
) -> anyhow::Result<f64> {
    let producer: rdkafka::producer::FutureProducer =
        clients.producer_config("bench-outbox-raw")?.create()?;
    let Some((first, rest)) = records.split_first() else {
        bail!("no records to republish");
    };
    // Warm: metadata and the idempotent producer id, as the relay's lanes have by then.
    let warm = producer
        .send_result(raw_record(topic, first))
        .map_err(|(e, _)| e)?;
    if !matches!(warm.await, Ok(Ok(_))) {
        bail!("the raw producer's first send failed");
    }
    let started = Instant::now();
    let mut sends = std::collections::VecDeque::with_capacity(rest.len());
    for r in rest {
        loop {
            match producer.send_result(raw_record(topic, r)) {
                Ok(send) => {
                    sends.push_back(send);
                    break;
                }
                // A backlog larger than librdkafka's queue: wait for the oldest send.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    let oldest = sends
                        .pop_front()
                        .context("the producer's queue is full with nothing in flight")?;
                    delivered(oldest.await)?;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    for d in join_all(sends).await {
        delivered(d)?;
    }
    Ok(rest.len() as f64 / started.elapsed().as_secs_f64())
}

fn delivered(
    d: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> anyhow::Result<()> {
    if !matches!(d, Ok(Ok(_))) {
        bail!("the raw producer's send failed: {d:?}");
    }
    Ok(())
}

/// `r` as a record for `topic`: same key, value and headers.
fn raw_record<'a>(topic: &'a str, r: &'a Record) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in &r.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(k) = &r.key {
        rec = rec.key(k);
    }
    if let Some(v) = &r.value {
        rec = rec.payload(v);
    }
    rec
}

/// Debezium's embedded engine, stopped (SIGTERM, so it drops its slot) when dropped.
struct Debezium(Child);

impl Debezium {
    async fn start(
        config: &SluiceConfig,
        b: &OutboxBench,
        dsn: &str,
        s: &Scratch,
        slot: &str,
        poll_ms: u64,
    ) -> anyhow::Result<Self> {
        let pg: tokio_postgres::Config = dsn.parse().context("the outbox DSN")?;
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => bail!("Debezium needs a TCP host in the DSN"),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let table = match s.debezium_table.as_str().contains('.') {
            true => s.debezium_table.to_string(),
            false => format!("public.{}", s.debezium_table),
        };
        let offsets = std::env::temp_dir().join(format!("{slot}.offsets"));
        let mut child = std::process::Command::new(&b.debezium)
            .env("DBZ_PG_HOST", host)
            .env("DBZ_PG_PORT", port.to_string())
            .env("DBZ_PG_USER", pg.get_user().unwrap_or("postgres"))
            .env("DBZ_PG_PASSWORD", password)
            .env("DBZ_PG_DB", pg.get_dbname().unwrap_or("postgres"))
            .env("DBZ_TABLE", table)
            .env("DBZ_SLOT", slot)
            .env("DBZ_TOPIC", s.topic("debezium"))
            .env("DBZ_BOOTSTRAP", &config.kafka.bootstrap_servers)
            .env("DBZ_OFFSETS", &offsets)
            .env("DBZ_POLL_MS", poll_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", b.debezium.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let engine = Self(child);
        let streaming = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains("debezium streaming"))
        });
        match tokio::time::timeout(Duration::from_secs(300), streaming).await {
            Ok(Ok(true)) => Ok(engine),
            Ok(_) => bail!("Debezium exited before streaming (its errors are above)"),
            Err(_) => bail!("Debezium did not start streaming within 300 s"),
        }
    }
}

impl Drop for Debezium {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Drops Debezium's slot and publication if its engine left them (a slot nobody reads keeps
/// WAL forever).
async fn drop_slot(db: &tokio_postgres::Client, slot: &str) {
    let _ = db
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await;
    let _ = db
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {slot}"))
        .await;
}

fn print_round(n: usize, r: &Round) {
    println!("round {n}");
    println!(
        "  raw idempotent producer (same records)   {:>9.0} events/s   (ceiling)",
        r.raw
    );
    print_relay("sluice outbox relay (exactly once)", &r.sluice, r.raw);
    if let Some(d) = &r.debezium {
        print_relay("Debezium 3.6.1 outbox router (at least once)", d, r.raw);
        println!(
            "  sluice / Debezium rate                   {:>9.2}",
            r.sluice.rate / d.rate
        );
    }
}

fn print_relay(name: &str, f: &Figures, raw: f64) {
    println!("  {name}");
    println!(
        "    backlog drained                        {:>9.0} events/s   ratio to raw {:.2}",
        f.rate,
        f.rate / raw
    );
    println!(
        "    commit-to-readable at {:>5.0} events/s   p50 {:>7.1} ms   p99 {:>7.1} ms   not readable after 60 s: {}",
        f.achieved, f.p50_ms, f.p99_ms, f.missing
    );
    if let Some(rss) = f.peak_rss_mib {
        println!("    peak RSS                               {rss:>9.0} MiB");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_medians(rounds: &[Round]) {
    let of = |f: &dyn Fn(&Round) -> Option<f64>| {
        let v: Vec<f64> = rounds.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    println!("medians over {} rounds", rounds.len());
    let row = |name: &str,
               rate: Option<f64>,
               ratio: Option<f64>,
               p50: Option<f64>,
               p99: Option<f64>| {
        if let (Some(rate), Some(ratio), Some(p50), Some(p99)) = (rate, ratio, p50, p99) {
            println!(
                "  {name:<10} {rate:>9.0} events/s   ratio to raw {ratio:.2}   p50 {p50:>7.1} ms   p99 {p99:>7.1} ms"
            );
        }
    };
    println!(
        "  raw        {:>9.0} events/s",
        of(&|r| Some(r.raw)).unwrap_or(f64::NAN)
    );
    row(
        "sluice",
        of(&|r| Some(r.sluice.rate)),
        of(&|r| Some(r.sluice.rate / r.raw)),
        of(&|r| Some(r.sluice.p50_ms)),
        of(&|r| Some(r.sluice.p99_ms)),
    );
    row(
        "Debezium",
        of(&|r| r.debezium.map(|d| d.rate)),
        of(&|r| r.debezium.map(|d| d.rate / r.raw)),
        of(&|r| r.debezium.map(|d| d.p50_ms)),
        of(&|r| r.debezium.map(|d| d.p99_ms)),
    );
}
