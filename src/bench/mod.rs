//! Benchmarks: `sluice bench …` (the HTTP saga step in [`saga_http`]) and `sluice saga
//! bench` ([`saga`]). Throughput and latency
//! against the live stack, each reported next to a raw rdkafka ceiling measured in the same
//! run, because absolute numbers on a shared or small machine mean little on their own.
//!
//! Kept apart from the operator commands in `cli/`: benches create scratch topics, start
//! sluice roles as child processes and measure them; they operate nothing.

pub mod backlog;
pub mod chain;
pub mod deliver;
pub mod e2e;
pub mod gateway;
pub mod hops;
pub mod normalizer;
pub mod outbox;
pub mod phases;
pub mod poll;
pub mod restate;
pub mod saga;
pub mod saga_http;
pub mod stats;

use std::process::ExitCode;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::TopicPartitionList;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_schemas::{Catalog, RegistryClient};
use sluice_topology::{apply, plan, Topology};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Signed Stripe and GitHub deliveries through `sluice gateway`, against a raw
    /// producer writing the same bytes with the same acks=all.
    Gateway(gateway::GatewayBench),
    /// The normalizer in exactly-once and at-least-once mode, against a raw
    /// consume→produce passthrough.
    Normalizer(normalizer::NormalizerBench),
    /// The whole path: signed deliveries → gateway → raw topic → normalizer → normalized
    /// events → saga trigger → saga completion, against a raw producer and a raw
    /// passthrough.
    E2e(e2e::E2eBench),
    /// The order-fulfillment saga with its payment step as an HTTP call to a fast local
    /// upstream, against the same saga with a Kafka participant for it, in the same run.
    SagaHttp(saga_http::SagaHttpBench),
    /// The transactional outbox relay against a raw idempotent producer writing the same
    /// events, and against Debezium's PostgreSQL connector with its outbox event router.
    Outbox(outbox::OutboxBench),
    /// A polling source's backfill from the local list API (`dev/api.py`), against the
    /// API's own serving rate; memory through the backfill; resume after a SIGKILL.
    Poll(poll::PollBench),
    /// `sluice deliver` to a fast local receiver against a raw HTTP client, in the same
    /// run; latency at half that rate; 10,000 endpoints' memory; one hanging endpoint of 100.
    Deliver(deliver::DeliverBench),
}

pub async fn run(config: &SluiceConfig, cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    until_interrupted(async {
        match cmd {
            BenchCommand::Gateway(b) => gateway::run(config, b).await,
            BenchCommand::Normalizer(b) => normalizer::run(config, b).await,
            BenchCommand::E2e(b) => e2e::run(config, b).await,
            BenchCommand::SagaHttp(b) => saga_http::run(config, b).await,
            BenchCommand::Outbox(b) => outbox::run(config, b).await,
            BenchCommand::Poll(b) => poll::run(config, b).await,
            BenchCommand::Deliver(b) => deliver::run(config, b).await,
        }
    })
    .await
}

/// Runs a bench until it ends or SIGTERM/SIGINT arrives. On a signal the bench is dropped,
/// and with it every [`ChildProcess`] it started: killed by a signal, the bench would leave
/// its roles running (a `timeout` or `kill` reaches only this process), and they would load
/// the machine under the next measurement.
pub async fn until_interrupted(
    bench: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let interrupted = sluice_runtime::Shutdown::on_signals();
    tokio::select! {
        result = bench => result,
        _ = interrupted.wait() => {
            eprintln!("bench interrupted: its child processes are stopped, its topics left");
            Ok(ExitCode::from(130))
        }
    }
}

/// The real webhook payloads the benches send (see tests/fixtures/webhooks/README.md).
pub mod fixtures {
    pub const STRIPE_PAYMENT_SUCCEEDED: &[u8] =
        include_bytes!("../../tests/fixtures/webhooks/stripe/payment_intent.succeeded.json");
    pub const GITHUB_PUSH: &[u8] = include_bytes!("../../tests/fixtures/webhooks/github/push.json");
}

/// Starts another `sluice` process (this binary) with extra environment, for benches that
/// measure a role's own RSS.
///
/// `SLUICE_BENCH_WRAPPER` (e.g. `heaptrack`) runs each child under that program, to profile
/// a role in the bench's own load; the RSS figures are then the wrapper's.
pub fn spawn_self(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<ChildProcess> {
    let mut cmd = self_command()?;
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env("SLUICE_ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(ChildProcess(cmd.spawn()?))
}

/// This binary as a command, under `SLUICE_BENCH_WRAPPER` when set (see [`spawn_self`]).
pub fn self_command() -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe()?;
    Ok(match std::env::var_os("SLUICE_BENCH_WRAPPER") {
        Some(wrapper) => {
            let mut cmd = std::process::Command::new(wrapper);
            cmd.arg(exe);
            cmd
        }
        None => std::process::Command::new(exe),
    })
}

/// A child process stopped when dropped.
pub struct ChildProcess(pub std::process::Child);

impl ChildProcess {
    /// Peak resident set size so far (Linux `VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        peak_rss_mib(self.0.id())
    }

    /// Resident set size now (Linux `VmRSS`), in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        proc_status_mib(self.0.id(), "VmRSS:")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    proc_status_mib(pid, "VmHWM:")
}

/// A `/proc/PID/status` line given in KiB (`VmHWM:`, `VmRSS:`), in MiB.
fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Creates a scratch topology's topics and registers its subjects, for a bench run on topics
/// of its own.
pub async fn deploy_scratch(
    clients: &KafkaClients,
    registry: &RegistryClient,
    catalog: &Catalog,
    topology: &Topology,
) -> anyhow::Result<()> {
    let admin = clients.admin()?;
    let live = apply::live_topics(&admin, &topology.prefix).await?;
    apply::apply(&admin, &plan::plan(&topology.all_topics(), &live, false)).await?;
    for (topic, event_type) in topology.registrations() {
        let subject = topology.subjects.naming.subject(&topic, &event_type);
        registry
            .register(&subject, &catalog.latest(&event_type)?.json)
            .await
            .with_context(|| format!("registering {subject}"))?;
    }
    Ok(())
}

/// Deletes a scratch topology's topics and its subjects (soft, then permanently).
pub async fn remove_scratch(
    config: &SluiceConfig,
    clients: &KafkaClients,
    topology: &Topology,
) -> anyhow::Result<()> {
    let admin = clients.admin()?;
    let live = apply::live_topics(&admin, &topology.prefix).await?;
    apply::apply(&admin, &plan::plan(&[], &live, true)).await?;
    let http = reqwest::Client::new();
    for (topic, event_type) in topology.registrations() {
        let subject = topology.subjects.naming.subject(&topic, &event_type);
        for query in ["", "?permanent=true"] {
            http.delete(format!("{}/subjects/{subject}{query}", config.registry.url))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("deleting subject {subject}"))?;
        }
    }
    Ok(())
}

/// The raw ceiling for consumers: consume → produce → commit over `n` records from `from`
/// to `to`, with the at-least-once loop's batching and no decode or encode. Returns records
/// per second from the first record seen.
pub async fn passthrough(
    clients: &KafkaClients,
    group: &str,
    from: &[String],
    to: &str,
    n: usize,
) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = clients.consumer_config("bench-pass", group)?.create()?;
    let refs: Vec<&str> = from.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    let producer = clients.producer("bench-pass")?;
    let mut seen = 0;
    let mut start = None;
    while seen < n {
        let first = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("the passthrough saw no records for 60 s")??;
        start.get_or_insert_with(Instant::now);
        let mut batch = vec![first.detach()];
        while batch.len() < 500 {
            match tokio::time::timeout(Duration::from_millis(20), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }
        let mut offsets = TopicPartitionList::new();
        let mut sends = Vec::with_capacity(batch.len());
        for m in &batch {
            offsets.add_partition_offset(
                m.topic(),
                m.partition(),
                rdkafka::Offset::Offset(m.offset() + 1),
            )?;
            let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(to);
            if let Some(k) = m.key() {
                r = r.key(k);
            }
            if let Some(v) = m.payload() {
                r = r.payload(v);
            }
            sends.push(producer.send_result(r).map_err(|(e, _)| e)?);
        }
        for d in join_all(sends).await {
            if !matches!(d, Ok(Ok(_))) {
                bail!("passthrough produce failed");
            }
        }
        consumer.commit(&offsets, CommitMode::Sync)?;
        seen += batch.len();
    }
    Ok(n as f64 / start.map_or(1.0, |s| s.elapsed().as_secs_f64()))
}
