//! `sluice deliver`: outbound webhook delivery (docs/delivery.md). One process runs both
//! halves: the fan-out (event topics → one task per matching enabled endpoint, a stream
//! loop, at-least-once) and the dispatcher (tasks and retry tiers → signed POSTs). Several
//! processes share the work as two consumer groups.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_delivery::dispatch::ops_events::OpsEvents;
use sluice_delivery::dispatch::{DeliveryMetrics, Dispatcher, DispatcherConfig, Tiers};
use sluice_delivery::endpoints::EndpointTable;
use sluice_delivery::fanout::{Fanout, FanoutTopics};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::outbound::{
    ClientConfig, EndpointSettings, Endpoints, Outbound, OutboundClient, OutboundMetrics,
    RetrySchedule,
};
use sluice_runtime::Shutdown;
use sluice_schemas::{AvroCodec, Catalog, RegistryClient};
use sluice_stream::metrics::LoopMetrics;
use sluice_stream::{FailureRouter, Guarantee, LoopConfig, RetryTier};
use sluice_topology::{naming, Topology};

#[derive(Debug, Clone, Args)]
pub struct DeliverArgs {
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Stable name of this instance; two instances in one group need different names.
    #[arg(long, env = "SLUICE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Non-public addresses deliveries may reach nevertheless (CIDRs such as 10.1.0.0/16 or
    /// 127.0.0.1/32); everything but the public internet is refused otherwise.
    #[arg(
        long = "allow-address",
        env = "SLUICE_DELIVER_ALLOW",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,
    /// The retry schedule of endpoints without their own: the delay before each attempt.
    #[arg(long, default_value = sluice_runtime::outbound::retry::DEFAULT_WEBHOOK_SCHEDULE)]
    pub default_schedule: String,
    /// Longest `Retry-After` honoured.
    #[arg(long, default_value = "1h")]
    pub retry_after_cap: String,
    /// Time to connect to an endpoint.
    #[arg(long, default_value = "5s")]
    pub connect_timeout: String,
    /// Time for a whole attempt.
    #[arg(long, default_value = "15s")]
    pub timeout: String,
    /// Disable an endpoint that has failed continuously (no success since its first
    /// failure) for this long.
    #[arg(long, default_value = "5d")]
    pub disable_after: String,
    /// How long an endpoint with more than its share of tasks waiting may hold the rest of
    /// its partitions unread (other endpoints' tasks behind it wait as long) before its
    /// surplus is parked in the shortest retry tier instead.
    #[arg(long, default_value = "500ms")]
    pub hot_hold: String,
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    naming::parse_duration(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

/// The consumer group of the dispatcher; the fan-out's is this with `-fanout`.
pub fn group(prefix: &str) -> String {
    format!("{prefix}-deliver")
}

/// The outbound client and schedule the flags describe (checked before any network work).
fn outbound(args: &DeliverArgs) -> anyhow::Result<(ClientConfig, RetrySchedule)> {
    let cap = duration("retry-after-cap", &args.retry_after_cap)?;
    let client = ClientConfig {
        connect_timeout: duration("connect-timeout", &args.connect_timeout)?,
        total_timeout: duration("timeout", &args.timeout)?,
        retry_after_cap: cap,
        allow: args.allow.clone(),
        ..ClientConfig::default()
    };
    let schedule = RetrySchedule::parse(&args.default_schedule)
        .map_err(|e| anyhow::anyhow!("--default-schedule: {e}"))?
        .with_retry_after_cap(cap);
    Ok((client, schedule))
}

/// The retry policy of `name` in the topology, or a clear error.
fn policy<'t>(
    topology: &'t Topology,
    name: &str,
) -> anyhow::Result<&'t sluice_topology::model::RetryPolicySpec> {
    topology
        .retry_policies
        .iter()
        .find(|p| p.name == name)
        .with_context(|| format!("the topology has no retry policy named `{name}`"))
}

/// Runs the fan-out and the dispatcher until shutdown.
pub async fn serve(
    config: &sluice_runtime::SluiceConfig,
    topology: &Topology,
    args: DeliverArgs,
    clients: KafkaClients,
    registry: RegistryClient,
    metrics_registry: &prometheus::Registry,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (client_config, schedule) = outbound(&args)?;
    let disable_after = duration("disable-after", &args.disable_after)?;
    let prefix = &topology.prefix;
    let instance = args
        .instance_id
        .clone()
        .unwrap_or_else(|| super::normalize::default_instance_id("deliver"));
    let deliveries = policy(topology, naming::DELIVERY_POLICY)?;
    let tiers = Tiers::new(
        deliveries
            .tiers
            .iter()
            .map(|d| RetryTier {
                topic: naming::delivery_retry_topic(prefix, d.0),
                delay: d.0,
            })
            .collect(),
    )?;
    let endpoints_topic = naming::endpoints_topic(prefix);
    let (table, follower) = {
        let c = clients.clone();
        tokio::task::spawn_blocking(move || EndpointTable::load(&c, &endpoints_topic)).await??
    };
    tokio::spawn(follower.run(shutdown.clone()));

    let client = OutboundClient::new(client_config)?;
    let outbound = Outbound::new(client, Endpoints::new(EndpointSettings::default()))
        .with_metrics(OutboundMetrics::new(metrics_registry)?);
    let mut dispatch_config = DispatcherConfig::new(prefix, &group(prefix), tiers);
    dispatch_config.default_schedule = schedule;
    dispatch_config.disable_after = disable_after;
    dispatch_config.hot_hold = duration("hot-hold", &args.hot_hold)?;
    // Records of the tasks topic that are not tasks are system failures, like the fan-out's.
    dispatch_config.topics.invalid = policy(topology, naming::DELIVERY_FANOUT_POLICY)?
        .dlq_topic
        .clone();
    // Operational events only where the topology declares their topic: writing to a missing
    // one would hold every delivery's settlement.
    let ops_events = naming::delivery_events_topic(prefix);
    if topology.topics.iter().any(|t| t.name == ops_events) {
        let catalog = Catalog::embedded()?;
        let naming = topology.subjects.naming;
        dispatch_config.ops_events =
            Some(OpsEvents::resolve(&catalog, &registry, naming, &ops_events).await?);
    } else {
        tracing::info!(topic = %ops_events, "not declared in the topology: no operational delivery events");
    }
    // Held keys of `per_key` endpoints only where the topology declares their topic;
    // without it per-key order holds within one dispatcher's memory, not across retries.
    let held = naming::held_topic(prefix, naming::DELIVERY_POLICY);
    if topology.topics.iter().any(|t| t.name == held) {
        dispatch_config.topics.held = Some(held);
    } else {
        tracing::warn!(topic = %held, "not declared in the topology: per_key endpoints keep their order only until a delivery waits in a retry tier");
    }
    // The failing-since clocks survive restarts only where the topology declares their topic.
    let health = naming::delivery_health_topic(prefix);
    if topology.topics.iter().any(|t| t.name == health) {
        dispatch_config.topics.health = Some(health);
    } else {
        tracing::warn!(topic = %health, "not declared in the topology: a restart starts failing endpoints' disable clock again");
    }
    let dispatcher = Dispatcher::new(
        &super::static_member(config, &format!("{instance}-dispatch")),
        outbound,
        table.clone(),
        dispatch_config,
        Some(DeliveryMetrics::new(metrics_registry)?),
        shutdown.clone(),
    )?;
    let dispatching = tokio::spawn(dispatcher.run());

    let fanout_group = format!("{}-fanout", group(prefix));
    let router = FailureRouter::from_policy(
        prefix,
        &fanout_group,
        policy(topology, naming::DELIVERY_FANOUT_POLICY)?,
    );
    let mut topics: Vec<String> = topology.routes.iter().map(|r| r.topic.clone()).collect();
    topics.sort();
    topics.dedup();
    topics.extend(router.tiers.iter().map(|t| t.topic.clone()));
    let handler = Fanout::new(
        table,
        AvroCodec::new(registry),
        FanoutTopics::for_prefix(prefix),
    );
    let loop_config = LoopConfig::new(
        &fanout_group,
        &format!("{instance}-fanout"),
        topics,
        Guarantee::AtLeastOnce,
    );
    let fanout = sluice_stream::run(
        &super::static_member(config, &format!("{instance}-fanout")),
        loop_config,
        router,
        Arc::new(handler),
        LoopMetrics::new(metrics_registry)?,
        shutdown.clone(),
    )
    .await;
    // The fan-out ends on shutdown (or failure): stop the dispatcher too, and let it settle.
    shutdown.trigger();
    dispatching.await??;
    fanout?;
    Ok(())
}

pub async fn run(
    config: &sluice_runtime::SluiceConfig,
    args: DeliverArgs,
) -> anyhow::Result<ExitCode> {
    let (_catalog, topology) = super::load(config, args.topology.clone())?;
    outbound(&args)?;
    duration("disable-after", &args.disable_after)?;
    duration("hot-hold", &args.hot_hold)?;
    let super::Process {
        shutdown,
        metrics_registry,
        readiness,
        clients,
        registry,
    } = super::Process::start(config, "deliver", &[]).await?;
    if shutdown.is_triggered() {
        return Ok(ExitCode::SUCCESS);
    }
    readiness.set("deliver", true);
    serve(
        config,
        &topology,
        args,
        clients,
        registry,
        &metrics_registry,
        shutdown,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
