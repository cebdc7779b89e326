//! `sluice saga bench`: the order-fulfillment saga at full speed against the live stack.
//!
//! In one run, on fresh topics under a prefix of its own:
//! 1. **Raw ceiling**: the same chain of hops through the broker with plain rdkafka clients
//!    (no transactions, no state, no Avro): client → "orchestrator" → its own inbox (the
//!    trigger hand-off) → three command/reply round trips with a "participant" → done.
//!    Nine produce→consume hops, like a saga.
//! 2. **Memory**: `sluice saga run` as a process, with no participant yet: twice N sagas
//!    started and left waiting on their first step; the orchestrator's resident memory growth
//!    over the second N, per in-flight saga.
//! 3. **Sagas**: `sluice saga participant --role all` joins (the waiting sagas complete and
//!    warm everything up); then N OrderPlaced events published at once: completed sagas per
//!    second, and saga duration (end to end as the client sees it, and start to completion
//!    as the orchestrator measures it); then a paced run below saturation for latency
//!    without queueing.
//! 4. **Backlog** (`--backlog N`): both roles stopped, N orders queued, both started again:
//!    the drain rate and each role's memory over it (see [`super::backlog`]).
//! 5. **Peer** (`--peer restate`): the same saga on Restate, with the ratios against sluice's
//!    figures (see [`super::restate`]).

use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::future::join_all;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::TopicPartitionList;
use sluice_producers::publish::Publisher;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_sagas::demo::{scratch_topology, Scratch};
use sluice_schemas::codec::ReaderSchema;
use sluice_schemas::{AvroCodec, RecordLocation, RegistryClient};
use sluice_stream::state::kafka as compacted;
use sluice_topology::{naming, Topology};

use super::chain::{self, Mode};
use super::{hops, phases, ChildProcess};

pub(super) const SAGA: &str = "order-fulfillment";
const ORDER_PLACED: &str = "dev.sluice.events.commerce.OrderPlaced";
pub(super) const COMPLETED: &str = "dev.sluice.events.sagas.SagaCompleted";
pub(super) const STARTED: &str = "dev.sluice.events.sagas.SagaStarted";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The topology whose order-fulfillment saga is benchmarked (under a prefix of its own).
    #[arg(long)]
    pub topology: Option<std::path::PathBuf>,
    /// Sagas per phase.
    #[arg(long, default_value_t = 5_000)]
    pub sagas: usize,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Sagas per second of the paced phase, which measures latency below saturation (0: skip).
    #[arg(long, default_value_t = 200)]
    pub paced_rate: usize,
    /// Keep the run's topics and schema subjects (removed by default: a shared registry lists
    /// only so many subjects).
    #[arg(long)]
    pub keep: bool,
    /// Skip the memory phase.
    #[arg(long)]
    pub no_memory: bool,
    /// Orders queued while the saga roles are down, then drained (0: skip the phase).
    #[arg(long, default_value_t = 0)]
    pub backlog: usize,
    /// Passed to the orchestrator (its default when absent).
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Measure the two chains only (the ceilings), not the sagas.
    #[arg(long)]
    pub ceilings_only: bool,
    /// Also run the same saga on another engine, on this machine, and print its figures and
    /// the ratios beside sluice's (installs it into the sluice cache on first use).
    #[arg(long, value_enum)]
    pub peer: Option<super::restate::Peer>,
    /// The Restate peer's files (package.json, package-lock.json, services.mjs, run).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/dev/restate"))]
    pub restate_dir: std::path::PathBuf,
    /// Passed to the orchestrator and the participants.
    #[command(flatten)]
    pub batching: crate::cli::saga::Batching,
}

/// A saga role as a child process (stopped when dropped), with the admin address its
/// metrics are scraped from.
pub(super) struct Child(ChildProcess, std::net::SocketAddr);

impl Child {
    fn spawn(args: &[&str], instance: &str) -> anyhow::Result<Self> {
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], super::free_port()?));
        let child = super::spawn_self(
            args,
            &[
                ("SLUICE_INSTANCE_ID", instance.to_string()),
                ("SLUICE_ADMIN__LISTEN", admin.to_string()),
                ("RUST_LOG", "error".to_string()),
            ],
        )?;
        Ok(Self(child, admin))
    }

    /// Peak resident set size so far (Linux `VmHWM`), in MiB.
    pub(super) fn peak_rss_mib(&self) -> Option<f64> {
        self.0.peak_rss_mib()
    }

    /// Resident set size now (Linux `VmRSS`), in MiB.
    pub(super) fn rss_mib(&self) -> Option<f64> {
        self.0.rss_mib()
    }
}

/// A record's CloudEvents type (its `ce_type` header).
pub(super) fn ce_type<H: Headers>(headers: &H) -> Option<&[u8]> {
    headers.iter().find(|h| h.key == "ce_type")?.value
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Throughput and latency of one phase.
pub(super) struct Run {
    pub n: usize,
    pub elapsed: Duration,
    /// Milliseconds, sorted.
    pub latencies: Vec<f64>,
}

impl Run {
    pub(super) fn rate(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64()
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "{} in {:.2}s = {:.0}/s; end-to-end p50 {:.0} ms, p99 {:.0} ms",
            self.n,
            self.elapsed.as_secs_f64(),
            self.rate(),
            percentile(&self.latencies, 0.5),
            percentile(&self.latencies, 0.99)
        )
    }
}

pub async fn run(config: &SluiceConfig, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.sagas == 0 {
        bail!("--sagas must be at least 1");
    }
    let (catalog, reference) = crate::cli::load(config, args.topology.clone())?;
    let prefix = format!("bench{}", sluice_schemas::metadata::now_ms());
    let clients = KafkaClients::new(config.kafka.clone());
    let registry = RegistryClient::new(&config.registry)?;
    let file = std::env::temp_dir().join(format!("{prefix}-topology.yaml"));
    std::fs::write(&file, bench_topology(&reference, &prefix, args.partitions)?)?;
    let types = catalog.event_types().map(str::to_string).collect();
    let topology = Topology::load(&file, &types)?;
    super::deploy_scratch(&clients, &registry, &catalog, &topology).await?;
    println!(
        "saga bench: {} sagas per phase, {} partitions, max batch {}, prefix {prefix}",
        args.sagas, args.partitions, args.batching.max_batch
    );

    let ceilings = ceilings(&clients, &prefix, &args).await?;
    if args.ceilings_only {
        super::remove_scratch(config, &clients, &topology).await?;
        let _ = std::fs::remove_file(&file);
        return Ok(ExitCode::SUCCESS);
    }
    let raw = ceilings.raw;

    let path = file.display().to_string();
    let max_batch = args.batching.max_batch.to_string();
    let mut tuning = vec!["--max-batch", max_batch.as_str()];
    if let Some(l) = &args.batching.linger {
        tuning.extend(["--linger", l.as_str()]);
    }
    let max_in_flight = args.max_in_flight.map(|m| m.to_string());
    let mut orchestrator_args = [&["saga", "run", "--topology", &path][..], &tuning].concat();
    if let Some(m) = &max_in_flight {
        orchestrator_args.extend(["--max-in-flight", m.as_str()]);
    }
    let participant_args = [
        &["saga", "participant", "--role", "all", "--topology", &path][..],
        &tuning,
    ]
    .concat();
    let orchestrator = Child::spawn(&orchestrator_args, "bench")?;
    let publisher = Publisher::new(&clients, &registry, &catalog, &topology).await?;
    let events = naming::events_topic(&prefix, "sagas");
    let codec = AvroCodec::new(registry.clone());
    let completed_schema = ReaderSchema::new(catalog.latest(COMPLETED)?.schema.clone())?;

    // Memory first, on a fresh orchestrator: sagas started with nobody to answer them wait
    // on their first step.
    let first = publish(&publisher, &format!("{prefix}-first-"), 1).await?;
    wait_for(
        &clients,
        &events,
        STARTED,
        &first,
        Duration::from_secs(90),
        None,
        None,
    )
    .await?;
    let mut waiting = BTreeSet::new();
    if !args.no_memory {
        // Two rounds of N waiting sagas: the first also fills the Kafka clients' buffers and
        // the allocator's arenas, so the second round's growth is what an instance costs.
        let mut rss = vec![];
        for round in 0..2 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss.push(
                orchestrator
                    .rss_mib()
                    .context("reading the orchestrator's RSS")?,
            );
            let ids = publish(&publisher, &format!("{prefix}-mem{round}-"), args.sagas).await?;
            let timeout = Duration::from_secs(600);
            wait_for(&clients, &events, STARTED, &ids, timeout, None, None).await?;
            waiting.extend(ids);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push(
            orchestrator
                .rss_mib()
                .context("reading the orchestrator's RSS")?,
        );
        let state = naming::saga_state_topic(&prefix, SAGA);
        let (mut bytes, mut records) = (0usize, 0usize);
        let all: Vec<i32> = (0..args.partitions).collect();
        let c = clients.clone();
        tokio::task::block_in_place(|| {
            compacted::read_partitions(&c, &state, &all, |_, _, v| {
                bytes += v.map_or(0, <[u8]>::len);
                records += 1;
            })
        })?;
        // Growth in KiB per saga (MiB × 1024 / sagas), never below zero.
        let per_saga = |from: f64, to: f64| (to - from).max(0.0) * 1024.0 / args.sagas as f64;
        println!(
            "memory      orchestrator RSS {:.1} MiB, {:.1} MiB with {n} sagas waiting on their first step, {:.1} MiB with {}: {:.2} KiB per in-flight saga (second round; first round {:.2} KiB, including client buffers); a state record averages {:.2} KiB of JSON",
            rss[0],
            rss[1],
            rss[2],
            2 * args.sagas,
            per_saga(rss[1], rss[2]),
            per_saga(rss[0], rss[1]),
            bytes as f64 / records.max(1) as f64 / 1024.0,
            n = args.sagas,
        );
    }

    // The participants arrive: the waiting sagas complete, which also warms everything up.
    let participants = Child::spawn(&participant_args, "bench")?;
    waiting.extend(first);
    wait_for(
        &clients,
        &events,
        COMPLETED,
        &waiting,
        Duration::from_secs(600),
        None,
        None,
    )
    .await?;

    let decode = (&codec, &completed_schema);
    let burst = format!("{prefix}-run-");
    let (sagas, inside) = measure(
        &publisher, &clients, &events, decode, &burst, args.sagas, None,
    )
    .await?;
    println!(
        "sagas       (exactly-once, 3 steps, all at once): {}",
        sagas.describe()
    );
    println!(
        "            start → completed as the orchestrator measures it: p50 {:.0} ms, p99 {:.0} ms (queueing included)",
        percentile(&inside, 0.5),
        percentile(&inside, 0.99)
    );
    println!(
        "            {:.0}% of the raw chain's rate; targets: ≥1000 sagas/s and ≥40%",
        100.0 * sagas.rate() / raw.rate()
    );
    println!(
        "            {:.0}% of the transactional chain's rate",
        100.0 * sagas.rate() / ceilings.transactional.rate()
    );
    let mut paced_run = None;
    if args.paced_rate > 0 {
        let n = args.paced_rate * 5;
        let paced = format!("{prefix}-paced-");
        let per_tick = Some((args.paced_rate / 20).max(1));
        let saga_topics = [
            naming::events_topic(&prefix, "commerce"),
            naming::saga_replies_topic(&prefix, SAGA),
            naming::saga_commands_topic(&prefix, SAGA),
        ];
        let saga_topics: Vec<&str> = saga_topics.iter().map(String::as_str).collect();
        let from = tokio::task::block_in_place(|| hops::mark(&clients, &saga_topics))?;
        let loops = [&orchestrator, &participants];
        let before = join_all(loops.map(|c| phases::scrape(c.1))).await;
        let (run, inside) =
            measure(&publisher, &clients, &events, decode, &paced, n, per_tick).await?;
        let after = join_all(loops.map(|c| phases::scrape(c.1))).await;
        let mut by_hop = tokio::task::block_in_place(|| hops::read(&clients, &from, &paced))?;
        println!(
            "sagas       ({}/s for 5 s, below saturation): end-to-end p50 {:.0} ms, p99 {:.0} ms; start → completed p50 {:.0} ms, p99 {:.0} ms",
            args.paced_rate,
            percentile(&run.latencies, 0.5),
            percentile(&run.latencies, 0.99),
            percentile(&inside, 0.5),
            percentile(&inside, 0.99)
        );
        println!("            hop by hop (record timestamps; each hop includes the upstream commit and the fetch):");
        for line in hops::describe(&mut by_hop) {
            println!("{line}");
        }
        println!("            the loops' batches meanwhile (handle, produce until acknowledged, offsets, commit; pickup: oldest record's age when taken):");
        for (before, after) in before.into_iter().zip(after) {
            for line in phases::describe(&before?, &after?) {
                println!("{line}");
            }
        }
        paced_run = Some(run);
    }
    drop(orchestrator);
    drop(participants);
    if args.backlog > 0 {
        let start = || {
            Ok((
                Child::spawn(&orchestrator_args, "bench")?,
                Child::spawn(&participant_args, "bench")?,
            ))
        };
        let (drain, (orchestrator, _participants)) =
            super::backlog::drain(&publisher, &clients, &events, &prefix, args.backlog, start)
                .await?;
        for line in drain.describe() {
            println!("{line}");
        }
        let spawn = || Child::spawn(&orchestrator_args, "bench");
        let restart = super::backlog::restart(
            orchestrator,
            spawn,
            &publisher,
            &clients,
            &events,
            &prefix,
            args.backlog,
        )
        .await?;
        println!("{}", restart.describe());
    }
    if args.keep {
        println!("kept the topics under `{prefix}.` and their subjects");
    } else {
        super::remove_scratch(config, &clients, &topology).await?;
        let _ = std::fs::remove_file(&file);
        println!("removed the topics under `{prefix}.` and their subjects");
    }
    if args.peer == Some(super::restate::Peer::Restate) {
        let peer = super::restate::measure(&args.restate_dir, args.sagas, args.paced_rate).await?;
        let beside = super::restate::Beside {
            burst: &sagas,
            paced: paced_run.as_ref(),
            paced_rate: args.paced_rate,
        };
        super::restate::report(&peer, &beside);
    }
    Ok(ExitCode::SUCCESS)
}

/// The reference's order-fulfillment saga under `prefix`, with timeouts no benchmark
/// reaches: every saga completes, however long it queues.
pub(super) fn bench_topology(
    reference: &Topology,
    prefix: &str,
    partitions: i32,
) -> anyhow::Result<String> {
    Ok(scratch_topology(
        reference,
        SAGA,
        &Scratch {
            prefix,
            partitions,
            timeout: "120s",
            timeouts: &[],
            retry: None,
            compensation_retry: "{max_attempts: 5, backoff: 1s}",
        },
    )?)
}

pub(super) async fn publish(
    publisher: &Publisher,
    prefix: &str,
    n: usize,
) -> anyhow::Result<BTreeSet<String>> {
    Ok(publish_timed(publisher, prefix, n, None)
        .await?
        .into_keys()
        .collect())
}

/// Publishes `n` orders, all at once or `per_tick` every 50 ms; returns order id → when it
/// was sent.
async fn publish_timed(
    publisher: &Publisher,
    prefix: &str,
    n: usize,
    per_tick: Option<usize>,
) -> anyhow::Result<HashMap<String, Instant>> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let mut out = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for chunk in ids.chunks(per_tick.unwrap_or(1000).max(1)) {
        if per_tick.is_some() {
            tick.tick().await;
        }
        let sends = chunk.iter().map(|id| async move {
            let sent = Instant::now();
            publisher
                .publish(
                    ORDER_PLACED,
                    crate::cli::saga::demo_order(id, &["SKU-1".to_string()]),
                )
                .await
                .map(|_| sent)
        });
        for (id, r) in chunk.iter().zip(join_all(sends).await) {
            out.insert(id.clone(), r.with_context(|| format!("publishing {id}"))?);
        }
    }
    Ok(out)
}

/// Publishes orders (see [`publish_timed`]) and waits for their sagas to complete.
pub(super) async fn measure(
    publisher: &Publisher,
    clients: &KafkaClients,
    events: &str,
    decode: (&AvroCodec, &ReaderSchema),
    prefix: &str,
    n: usize,
    per_tick: Option<usize>,
) -> anyhow::Result<(Run, Vec<f64>)> {
    let from = tokio::task::block_in_place(|| hops::mark(clients, &[events]))?;
    // Completions are read while orders are still being sent, so a paced run's first sagas
    // are not measured late.
    let wanted: BTreeSet<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let timeout = Duration::from_secs(600);
    let (ids, seen) = tokio::join!(
        publish_timed(publisher, prefix, n, per_tick),
        wait_for(
            clients,
            events,
            COMPLETED,
            &wanted,
            timeout,
            Some(decode),
            Some(from),
        )
    );
    let (ids, seen) = (ids?, seen?);
    let first_sent = *ids.values().min().expect("at least one saga");
    let last = seen.values().map(|s| s.0).max().expect("completions");
    let mut end_to_end: Vec<f64> = seen
        .iter()
        .map(|(id, (at, _))| at.duration_since(ids[id]).as_secs_f64() * 1000.0)
        .collect();
    end_to_end.sort_by(f64::total_cmp);
    let mut inside: Vec<f64> = seen
        .values()
        .filter_map(|(_, d)| *d)
        .map(|d| d as f64)
        .collect();
    inside.sort_by(f64::total_cmp);
    let run = Run {
        n: seen.len(),
        elapsed: last.duration_since(first_sent),
        latencies: end_to_end,
    };
    Ok((run, inside))
}

/// Reads `topic` (from the start, or from `from`) until every id in `wanted` has an event of `event_type`;
/// returns when each was seen and, with a codec, its `duration_ms`.
pub(super) async fn wait_for(
    clients: &KafkaClients,
    topic: &str,
    event_type: &str,
    wanted: &BTreeSet<String>,
    timeout: Duration,
    decode: Option<(&AvroCodec, &ReaderSchema)>,
    from: Option<TopicPartitionList>,
) -> anyhow::Result<HashMap<String, (Instant, Option<i64>)>> {
    let consumer: StreamConsumer = clients
        .consumer_config("bench", &format!("bench-{}", uuid::Uuid::new_v4().simple()))?
        .create()?;
    match from {
        Some(offsets) => consumer.assign(&offsets)?,
        None => consumer.subscribe(&[topic])?,
    }
    let deadline = Instant::now() + timeout;
    let mut seen = HashMap::new();
    while seen.len() < wanted.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "only {} of {} sagas reached {event_type} within {timeout:?}",
                seen.len(),
                wanted.len()
            );
        }
        let Ok(m) = tokio::time::timeout(left.min(Duration::from_secs(1)), consumer.recv()).await
        else {
            continue;
        };
        let m = m?;
        let at = Instant::now();
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let is_type = ce_type(m.headers().context("no headers")?) == Some(event_type.as_bytes());
        if !is_type || !wanted.contains(&key) {
            continue;
        }
        let duration = match decode {
            Some((codec, reader)) => {
                let v = codec
                    .decode_as(
                        m.payload().unwrap_or_default(),
                        reader,
                        &RecordLocation::default(),
                    )
                    .await?;
                match v.value {
                    apache_avro::types::Value::Record(fields) => fields
                        .into_iter()
                        .find(|(k, _)| k == "duration_ms")
                        .and_then(|(_, v)| match v {
                            apache_avro::types::Value::Long(l) => Some(l),
                            _ => None,
                        }),
                    _ => None,
                }
            }
            None => None,
        };
        seen.entry(key).or_insert((at, duration));
    }
    Ok(seen)
}

/// The chains' burst runs a saga is measured against (the transactional chain's paced run
/// is printed as it ends).
struct Ceilings {
    raw: Run,
    transactional: Run,
}

async fn ceilings(
    clients: &KafkaClients,
    prefix: &str,
    args: &BenchArgs,
) -> anyhow::Result<Ceilings> {
    let (raw, _) = chain::run(
        clients,
        prefix,
        args.partitions,
        Mode::Raw,
        args.sagas,
        None,
    )
    .await?;
    println!("raw chain   (9 hops, no transactions): {}", raw.describe());
    let (transactional, times) = chain::run(
        clients,
        &format!("{prefix}.burst"),
        args.partitions,
        Mode::Transactional,
        args.sagas,
        None,
    )
    .await?;
    println!(
        "tx chain    (9 hops, each a transaction, read_committed): {}",
        transactional.describe()
    );
    println!("            {}", times.describe());
    if args.paced_rate > 0 {
        let per_tick = Some((args.paced_rate / 20).max(1));
        let (paced, times) = chain::run(
            clients,
            &format!("{prefix}.paced"),
            args.partitions,
            Mode::Transactional,
            args.paced_rate * 5,
            per_tick,
        )
        .await?;
        println!(
            "tx chain    ({}/s for 5 s): {}",
            args.paced_rate,
            chain::describe_paced(&paced, &times)
        );
    }
    Ok(Ceilings { raw, transactional })
}
