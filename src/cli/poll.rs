//! `sluice poll`: runs the topology's polling sources (or `--source` ones) until
//! SIGTERM/SIGINT; `sluice sources status`: each polling source's cursor, last success,
//! items written, items/s and errors, from the committed state topic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_poll::fetch::Fetcher;
use sluice_poll::{PollMetrics, Settings, Shared};
use sluice_runtime::outbound::{
    Budgets, ClientConfig, EndpointSettings, Endpoints, Outbound, OutboundClient, OutboundMetrics,
    Rate,
};
use sluice_runtime::SluiceConfig;
use sluice_stream::state::kafka::partition_count;
use sluice_topology::Topology;

#[derive(Debug, Args)]
pub struct PollArgs {
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Poll only these sources (default: every source with `poll:`).
    #[arg(long, value_delimiter = ',')]
    pub source: Vec<String>,
    /// Addresses the API may be at although not public (CIDRs, e.g. `127.0.0.1/32` for a
    /// local API); everything else non-public is refused by the SSRF guard.
    #[arg(
        long = "outbound-allow",
        env = "SLUICE_POLL_OUTBOUND_ALLOW",
        value_delimiter = ','
    )]
    pub outbound_allow: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// Each source: webhook, or polling with its cursor, last success, items, items/s and
    /// errors.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The topology's polling sources, as settings (credentials read).
fn polled(topology: &Topology, only: &[String]) -> anyhow::Result<Vec<Settings>> {
    for name in only {
        anyhow::ensure!(
            topology
                .sources
                .iter()
                .any(|s| &s.name == name && s.poll.is_some()),
            "`{name}` is not a polling source of the topology"
        );
    }
    topology
        .sources
        .iter()
        .enumerate()
        .filter(|(_, s)| s.poll.is_some() && (only.is_empty() || only.contains(&s.name)))
        .map(|(i, s)| Settings::from_spec(i, s).map_err(Into::into))
        .collect()
}

pub async fn run(config: &SluiceConfig, args: PollArgs) -> anyhow::Result<ExitCode> {
    let (_, topology) = super::load(config, args.topology.clone())?;
    let sources = polled(&topology, &args.source)?;
    anyhow::ensure!(!sources.is_empty(), "the topology has no polling sources");
    let process = super::Process::start(config, "poll", &[]).await?;
    // The one outbound client: pool, SSRF guard, per-host breaker; budgets per host and
    // per credential on top.
    let client = OutboundClient::new(ClientConfig {
        allow: args.outbound_allow.clone(),
        keep_headers: sluice_poll::kept_headers(),
        total_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    })?;
    let outbound = Outbound::new(client, Endpoints::new(EndpointSettings::default()))
        .with_metrics(OutboundMetrics::new(&process.metrics_registry)?);
    let budgets = Budgets::new();
    for s in &sources {
        let limits = &s.spec.limits;
        if let Some(per_sec) = limits.host_rate_per_sec {
            budgets.set_rate(
                &s.host_key,
                Rate {
                    per_sec,
                    burst: limits.host_burst,
                },
            );
        }
        if let (Some(key), Some(per_sec)) = (&s.credential_key, limits.credential_rate_per_sec) {
            budgets.set_rate(
                key,
                Rate {
                    per_sec,
                    burst: limits.credential_burst,
                },
            );
        }
    }
    let state_topic = sluice_poll::state_topic(&topology.prefix);
    let (c, t) = (process.clients.clone(), state_topic.clone());
    let state_partitions = tokio::task::spawn_blocking(move || partition_count(&c, &t))
        .await?
        .context("the polling state topic (run `sluice topology apply`)")?;
    let shared = Arc::new(Shared {
        clients: process.clients.clone(),
        fetcher: Fetcher {
            outbound,
            budgets,
            metrics: PollMetrics::new(&process.metrics_registry)?,
        },
        state_topic,
        state_partitions,
        dlq_topic: sluice_poll::dlq_topic(&topology.prefix),
        refused: Default::default(),
    });
    let names: Vec<String> = sources.iter().map(|s| s.source.clone()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for s in sources {
        tasks.spawn(sluice_poll::run_source(
            s,
            Arc::clone(&shared),
            process.shutdown.clone(),
        ));
    }
    process.readiness.set("poll", true);
    tracing::info!(sources = names.join(","), "polling");
    while tasks.join_next().await.is_some() {}
    Ok(ExitCode::SUCCESS)
}

pub async fn sources(config: &SluiceConfig, cmd: SourcesCommand) -> anyhow::Result<ExitCode> {
    let SourcesCommand::Status(args) = cmd;
    let (_, topology) = super::load(config, args.topology)?;
    let polled: Vec<String> = topology
        .sources
        .iter()
        .filter(|s| s.poll.is_some())
        .map(|s| s.name.clone())
        .collect();
    let statuses = if polled.is_empty() {
        Vec::new()
    } else {
        let clients = sluice_runtime::kafka::KafkaClients::new(config.kafka.clone());
        let topic = sluice_poll::state_topic(&topology.prefix);
        let names = polled.clone();
        tokio::task::spawn_blocking(move || sluice_poll::status::read(&clients, &topic, &names))
            .await?
            .map_err(|e| anyhow::anyhow!("reading the polling state: {e}"))?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", sluice_poll::status::table(&statuses));
    for s in topology.sources.iter().filter(|s| s.poll.is_none()) {
        println!(
            "{}\twebhook ({})\t-\t-\t-\t-\t-",
            s.name,
            s.provider_type().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}
