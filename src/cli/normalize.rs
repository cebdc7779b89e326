//! `sluice normalize`: the normalizer consumer (raw deliveries → canonical Avro events),
//! including its retry tiers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use sluice_normalizer::Normalizer;
use sluice_runtime::SluiceConfig;
use sluice_stream::metrics::LoopMetrics;
use sluice_stream::{FailureRouter, Guarantee, LoopConfig, PerKey};
use sluice_topology::{naming, Topology};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GuaranteeArg {
    ExactlyOnce,
    AtLeastOnce,
}

#[derive(Debug, Args)]
pub struct NormalizeArgs {
    #[arg(long)]
    pub topology: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "exactly-once")]
    pub guarantee: GuaranteeArg,
    /// Stable name of this instance; two instances in one group need different names.
    #[arg(long, env = "SLUICE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// How long a delivery id is remembered for dedup.
    #[arg(long, default_value = "7d")]
    pub dedup_window: String,
    /// Most records per transaction (exactly-once) or commit (at-least-once); larger batches
    /// amortise the transaction's round trips, smaller ones bound latency and memory.
    #[arg(long, default_value_t = sluice_stream::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Most bytes of raw keys and bodies per batch, which bounds the batch's memory whatever
    /// the deliveries' size.
    #[arg(long, default_value_t = sluice_stream::DEFAULT_MAX_BATCH_BYTES)]
    pub max_batch_bytes: usize,
    /// How long to wait for a batch to fill, in milliseconds.
    #[arg(long, default_value_t = sluice_stream::DEFAULT_LINGER.as_millis() as u64)]
    pub linger_ms: u64,
}

/// The failure routing of the normalizer, from the topology's `normalizer` retry policy.
pub fn failure_router(topology: &Topology) -> anyhow::Result<FailureRouter> {
    let policy = topology
        .retry_policies
        .iter()
        .find(|p| p.name == sluice_normalizer::RETRY_POLICY)
        .with_context(|| {
            format!(
                "the topology has no retry policy named `{}`",
                sluice_normalizer::RETRY_POLICY
            )
        })?;
    Ok(FailureRouter::from_policy(
        &topology.prefix,
        &sluice_normalizer::group(&topology.prefix),
        policy,
    ))
}

/// Per-key ordering of retry policy `policy`, when the topology asks for it.
pub fn per_key(topology: &Topology, policy: &str) -> Option<PerKey> {
    topology
        .retry_policies
        .iter()
        .find(|p| p.name == policy)
        .and_then(|p| PerKey::for_policy(&topology.prefix, p))
}

pub fn default_instance_id(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into());
    format!("{role}-{host}")
}

pub async fn run(config: &SluiceConfig, args: NormalizeArgs) -> anyhow::Result<ExitCode> {
    let (catalog, topology) = super::load(config, args.topology)?;
    let window = naming::parse_duration(&args.dedup_window)
        .map_err(|e| anyhow::anyhow!("--dedup-window: {e}"))?;
    let instance = args
        .instance_id
        .unwrap_or_else(|| default_instance_id("normalizer"));
    let group = sluice_normalizer::group(&topology.prefix);
    let guarantee = match args.guarantee {
        GuaranteeArg::ExactlyOnce => Guarantee::ExactlyOnce,
        GuaranteeArg::AtLeastOnce => Guarantee::AtLeastOnce,
    };
    // A configuration that cannot run is refused before any network work.
    let ordering = per_key(&topology, sluice_normalizer::RETRY_POLICY);
    if let Some(o) = &ordering {
        o.check_guarantee(guarantee)?;
    }
    let predecessors = match guarantee {
        Guarantee::ExactlyOnce => vec![(group.clone(), instance.clone())],
        Guarantee::AtLeastOnce => vec![],
    };
    let super::Process {
        shutdown,
        metrics_registry,
        readiness,
        clients,
        registry,
    } = super::Process::start(config, "normalizer", &predecessors).await?;
    if shutdown.is_triggered() {
        return Ok(ExitCode::SUCCESS);
    }
    let handler = Normalizer::new(
        clients.clone(),
        &registry,
        &catalog,
        &topology,
        window,
        &metrics_registry,
    )
    .await?;
    let router = failure_router(&topology)?;
    sluice_ops::dlq::spawn_depth_gauge(
        clients.clone(),
        vec![router.dlq_topic.clone()],
        &metrics_registry,
        std::time::Duration::from_secs(30),
        shutdown.clone(),
    )?;
    let handler = handler.with_dead_letters(router.clone());
    let mut topics = handler.raw_topics();
    topics.extend(router.tiers.iter().map(|t| t.topic.clone()));
    let mut loop_config = LoopConfig::new(&group, &instance, topics, guarantee);
    loop_config.max_batch = args.max_batch.max(1);
    loop_config.max_batch_bytes = args.max_batch_bytes.max(1);
    loop_config.linger = std::time::Duration::from_millis(args.linger_ms);
    loop_config.per_key = ordering;
    let metrics = LoopMetrics::new(&metrics_registry)?;
    readiness.set("normalizer", true);
    tracing::info!(instance, ?guarantee, "normalizer running");
    sluice_stream::run(
        &super::static_member(config, &instance),
        loop_config,
        router,
        Arc::new(handler),
        metrics,
        shutdown,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
