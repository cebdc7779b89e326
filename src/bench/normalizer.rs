//! Normalizer benchmark: the same raw deliveries (real Stripe and GitHub payloads) through
//! `sluice normalize` in exactly-once and in at-least-once mode, and through a raw
//! consume→produce passthrough that neither decodes nor encodes, as the ceiling.
//!
//! Each run uses fresh topics under its own prefix, so dedup state from one run cannot
//! make another look fast.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::future::join_all;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_schemas::metadata::{now_ms, raw, rfc3339_ms};
use sluice_schemas::{Catalog, RegistryClient};
use sluice_topology::{apply, plan, Topology};

use super::{fixtures, spawn_self};

#[derive(Debug, Args)]
pub struct NormalizerBench {
    /// Raw deliveries per run.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Rounds of passthrough, exactly-once and at-least-once runs, one after the other; each
    /// round's ratios are against its own passthrough, and the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Passed to `sluice normalize` (its default when absent).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Passed to `sluice normalize` (its default when absent).
    #[arg(long)]
    pub max_batch_bytes: Option<usize>,
    /// Passed to `sluice normalize` (its default when absent).
    #[arg(long)]
    pub linger_ms: Option<u64>,
}

fn topology_yaml(prefix: &str) -> String {
    format!(
        r#"prefix: {prefix}
topics:
  - {{name: {prefix}.raw.stripe, partitions: 6}}
  - {{name: {prefix}.raw.github, partitions: 6}}
  - {{name: {prefix}.events.payments, partitions: 6}}
  - {{name: {prefix}.events.scm, partitions: 6}}
  - {{name: {prefix}.events.passthrough, partitions: 6}}
  - {{name: {prefix}.dlq.normalizer, partitions: 1}}
  - {{name: {prefix}.state.dedup, partitions: 6, config: {{cleanup.policy: compact}}}}
sources:
  - {{name: stripe, provider: {{type: stripe}}, secrets: [{{env: X}}], raw_topic: {prefix}.raw.stripe}}
  - {{name: github, provider: {{type: github}}, secrets: [{{env: X}}], raw_topic: {prefix}.raw.github}}
routes:
  - {{event_type: dev.sluice.events.payments.PaymentSucceeded, topic: {prefix}.events.payments}}
  - {{event_type: dev.sluice.events.scm.CodePushed, topic: {prefix}.events.scm}}
retry_policies:
  - {{name: normalizer, tiers: [5s], max_attempts: 2, dlq_topic: {prefix}.dlq.normalizer}}
"#
    )
}

/// Creates the run's topics and registers its schemas.
async fn prepare(
    config: &SluiceConfig,
    prefix: &str,
) -> anyhow::Result<(std::path::PathBuf, Vec<String>)> {
    let catalog = Catalog::embedded()?;
    let types: BTreeSet<String> = catalog.event_types().map(str::to_string).collect();
    let path = std::env::temp_dir().join(format!("{prefix}-topology.yaml"));
    std::fs::write(&path, topology_yaml(prefix))?;
    let topology = Topology::load(&path, &types)?;
    let clients = KafkaClients::new(config.kafka.clone());
    let admin = clients.admin()?;
    let live = apply::live_topics(&admin, &topology.prefix).await?;
    apply::apply(&admin, &plan::plan(&topology.all_topics(), &live, false)).await?;
    let registry = RegistryClient::new(&config.registry)?;
    for r in &topology.routes {
        let subject = topology.subjects.naming.subject(&r.topic, &r.event_type);
        registry
            .register(&subject, &catalog.latest(&r.event_type)?.json)
            .await?;
    }
    Ok((
        path,
        vec![
            format!("{prefix}.raw.stripe"),
            format!("{prefix}.raw.github"),
        ],
    ))
}

/// Writes raw deliveries `from..to` (unique ids) to the run's raw topics.
async fn load(config: &SluiceConfig, prefix: &str, from: usize, to: usize) -> anyhow::Result<()> {
    let clients = KafkaClients::new(config.kafka.clone());
    let producer: FutureProducer = clients
        .producer_config("bench-load")?
        .set("linger.ms", "20")
        .create()?;
    let stripe: serde_json::Value = serde_json::from_slice(fixtures::STRIPE_PAYMENT_SUCCEEDED)?;
    let received = rfc3339_ms(now_ms());
    let mut pending = Vec::with_capacity(LOAD_IN_FLIGHT);
    for i in from..to {
        if pending.len() == LOAD_IN_FLIGHT {
            await_loaded(std::mem::take(&mut pending)).await?;
        }
        let (topic, source, id, event, body) = if i % 2 == 0 {
            let mut v = stripe.clone();
            v["id"] = format!("evt_{i}").into();
            v["data"]["object"]["id"] = format!("pi_{i}").into();
            (
                format!("{prefix}.raw.stripe"),
                "stripe",
                format!("evt_{i}"),
                "payment_intent.succeeded",
                serde_json::to_vec(&v)?,
            )
        } else {
            (
                format!("{prefix}.raw.github"),
                "github",
                format!("gh-{i}"),
                "push",
                fixtures::GITHUB_PUSH.to_vec(),
            )
        };
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: raw::SOURCE,
                value: Some(source),
            })
            .insert(Header {
                key: raw::PROVIDER,
                value: Some(source),
            })
            .insert(Header {
                key: raw::DELIVERY_ID,
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: raw::EVENT_TYPE,
                value: Some(event),
            })
            .insert(Header {
                key: raw::RECEIVED_AT,
                value: Some(received.as_str()),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            });
        let record = FutureRecord::to(&topic)
            .key(&id)
            .payload(&body)
            .headers(headers);
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    await_loaded(pending).await
}

/// Deliveries the loader leaves unacknowledged at most: below the producer's queue limit
/// (`queue.buffering.max.messages`, 100,000), so a backlog of a million loads in steps.
const LOAD_IN_FLIGHT: usize = 50_000;

async fn await_loaded(pending: Vec<rdkafka::producer::DeliveryFuture>) -> anyhow::Result<()> {
    for r in join_all(pending).await {
        if !matches!(r, Ok(Ok(_))) {
            bail!("loading raw deliveries failed");
        }
    }
    Ok(())
}

/// Records `group` has committed on `topics` (6 partitions each).
async fn committed(consumer: &StreamConsumer, topics: &[String]) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..6 {
            tpl.add_partition(t, p);
        }
    }
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(c.elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .sum())
}

/// What one run measured.
struct Measured {
    /// Steady-state records per second.
    rate: f64,
    /// The role's RSS (MiB) when 0%, 10%, …, 100% of the backlog was committed; empty for
    /// the passthrough, which runs inside the bench.
    rss: Vec<f64>,
}

/// Steady-state rate of `group` over `total` preloaded records: measured from the moment it
/// has committed 10% of them to the moment it has committed all, so process start-up, group
/// join and state restore are left out. With `role`, its RSS is sampled at every tenth of
/// the backlog, so memory over the run shows whether it follows the backlog.
async fn measure(
    config: &SluiceConfig,
    group: &str,
    topics: &[String],
    total: usize,
    role: Option<&super::ChildProcess>,
) -> anyhow::Result<Measured> {
    let mut rss = Vec::new();
    let watcher: StreamConsumer = KafkaClients::new(config.kafka.clone())
        .consumer_config("bench-watch", group)?
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(1200);
    let mut first: Option<(Instant, i64)> = None;
    while Instant::now() < deadline {
        let done = committed(&watcher, topics).await?;
        while let Some(child) = role {
            if rss.len() > 10 || (done as usize) * 10 < rss.len() * total {
                break;
            }
            rss.push(child.rss_mib().unwrap_or(f64::NAN));
        }
        if first.is_none() && done as usize >= total / 10 {
            first = Some((Instant::now(), done));
        }
        if done as usize >= total {
            let (t1, c1) = first.expect("10% comes before 100%");
            if c1 >= done {
                bail!("group {group} committed everything between two samples; run with more --records");
            }
            let rate = (done - c1) as f64 / t1.elapsed().as_secs_f64();
            return Ok(Measured { rate, rss });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("group {group} did not finish within 20 minutes")
}

async fn normalizer_run(
    config: &SluiceConfig,
    b: &NormalizerBench,
    guarantee: &str,
) -> anyhow::Result<(Measured, Option<f64>)> {
    let n = b.records;
    let prefix = format!("bench{}", &uuid_like());
    let (path, topics) = prepare(config, &prefix).await?;
    load(config, &prefix, 0, n).await?;
    let path = path.display().to_string();
    let mut args = vec![
        "normalize".to_string(),
        "--topology".into(),
        path,
        "--guarantee".into(),
        guarantee.into(),
    ];
    if let Some(m) = b.max_batch {
        args.extend(["--max-batch".into(), m.to_string()]);
    }
    if let Some(m) = b.max_batch_bytes {
        args.extend(["--max-batch-bytes".into(), m.to_string()]);
    }
    if let Some(l) = b.linger_ms {
        args.extend(["--linger-ms".into(), l.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = spawn_self(&args, &[("SLUICE_INSTANCE_ID", format!("bench-{prefix}"))])?;
    let measured = measure(
        config,
        &format!("{prefix}-normalizer"),
        &topics,
        n,
        Some(&child),
    )
    .await?;
    Ok((measured, child.peak_rss_mib()))
}

async fn passthrough(config: &SluiceConfig, n: usize) -> anyhow::Result<f64> {
    let prefix = format!("bench{}", &uuid_like());
    let (_, topics) = prepare(config, &prefix).await?;
    load(config, &prefix, 0, n).await?;
    let worker = tokio::spawn(passthrough_loop(
        config.clone(),
        prefix.clone(),
        topics.clone(),
        n,
    ));
    let measured = measure(config, &format!("{prefix}-passthrough"), &topics, n, None).await?;
    worker.await??;
    Ok(measured.rate)
}

/// Raw consume → produce → commit, the same batching as the at-least-once loop, no decode.
async fn passthrough_loop(
    config: SluiceConfig,
    prefix: String,
    topics: Vec<String>,
    n: usize,
) -> anyhow::Result<()> {
    let clients = KafkaClients::new(config.kafka.clone());
    let out = format!("{prefix}.events.passthrough");
    super::passthrough(&clients, &format!("{prefix}-passthrough"), &topics, &out, n).await?;
    Ok(())
}

fn uuid_like() -> String {
    format!("{:x}", now_ms()).chars().rev().take(8).collect()
}

pub async fn run(config: &SluiceConfig, b: NormalizerBench) -> anyhow::Result<ExitCode> {
    if b.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    println!(
        "normalizer benchmark ({} preloaded raw deliveries per run, half Stripe payment_intent.succeeded, half GitHub push; steady-state rate from 10% to 100% committed; {} rounds)",
        b.records, b.rounds
    );
    println!(
        "  round  passthrough/s  exactly-once/s  ratio  at-least-once/s  ratio  peak RSS EOS/ALO"
    );
    let (mut eos_ratios, mut alo_ratios) = (Vec::new(), Vec::new());
    for round in 1..=b.rounds {
        let pass = passthrough(config, b.records)
            .await
            .context("passthrough run")?;
        let (eos_run, eos_rss) = normalizer_run(config, &b, "exactly-once")
            .await
            .context("exactly-once run")?;
        let (alo_run, alo_rss) = normalizer_run(config, &b, "at-least-once")
            .await
            .context("at-least-once run")?;
        let (eos, alo) = (eos_run.rate, alo_run.rate);
        eos_ratios.push(eos / pass);
        alo_ratios.push(alo / pass);
        println!(
            "  {round:>5}  {pass:>13.0}  {eos:>14.0}  {:>5.2}  {alo:>15.0}  {:>5.2}  {:.0}/{:.0} MiB",
            eos / pass,
            alo / pass,
            eos_rss.unwrap_or(f64::NAN),
            alo_rss.unwrap_or(f64::NAN)
        );
        for (mode, run) in [("exactly-once", &eos_run), ("at-least-once", &alo_run)] {
            let mib: Vec<String> = run.rss.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "         {mode} RSS (MiB) at 0, 10, …, 100% committed: {}",
                mib.join(" ")
            );
        }
    }
    println!(
        "  median ratio: exactly-once {:.2} (target 0.60), at-least-once {:.2} (target 0.75)",
        median(&mut eos_ratios),
        median(&mut alo_ratios)
    );
    Ok(ExitCode::SUCCESS)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
