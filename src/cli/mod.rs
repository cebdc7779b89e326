//! The operator CLI: argument parsing and the commands that run or operate a deployment.
//! Each module is one command family; the libraries do the work, these modules print.
//! Benchmarks live in `bench/`, demo traffic in `demo/`.

pub mod deliver;
pub mod deliveries;
pub mod dlq;
pub mod doctor;
pub mod endpoints;
pub mod error_text;
pub mod gateway;
pub mod lag;
pub mod normalize;
pub mod outbox;
pub mod poll;
pub mod printable;
pub mod renamed;
pub mod run;
pub mod saga;
pub mod schemas;
pub mod tail;
pub mod topology;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use sluice_runtime::admin::{self, Readiness};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::{Shutdown, SluiceConfig};
use sluice_schemas::{Catalog, RegistryClient};
use sluice_topology::Topology;

/// What to run when the local stack is not reachable.
pub const START_STACK_HINT: &str = "start the local stack with `make stack` (or `dev/stack up`)";

/// Where the topology is read from when the config does not say.
pub const DEFAULT_TOPOLOGY: &str = "topology/topology.yaml";

pub fn topology_path(config: &SluiceConfig, flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| config.topology.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOPOLOGY))
}

/// The embedded catalog and the validated topology that refers to it.
pub fn load(config: &SluiceConfig, flag: Option<PathBuf>) -> anyhow::Result<(Catalog, Topology)> {
    let catalog = Catalog::embedded().context("loading the embedded schema catalog")?;
    let types: BTreeSet<String> = catalog.event_types().map(str::to_string).collect();
    let path = topology_path(config, flag);
    let topology = Topology::load(&path, &types)?;
    // The producers' record limit is part of this process's config, not of the topology.
    let producer_max = KafkaClients::new(config.kafka.clone()).producer_max_message_bytes();
    let errors = topology.size_problems(producer_max);
    if !errors.is_empty() {
        return Err(sluice_topology::TopologyError::Invalid {
            file: path.display().to_string(),
            errors,
        }
        .into());
    }
    Ok((catalog, topology))
}

/// Kafka clients for a processing loop with static group membership (`group.instance.id` =
/// the instance id): an instance restarted after a crash takes its partitions back at once
/// instead of leaving them idle until its old session times out. Two processes must not
/// share an instance id within one group.
pub fn static_member(config: &SluiceConfig, instance: &str) -> KafkaClients {
    let mut kafka = config.kafka.clone();
    kafka
        .properties
        .entry("group.instance.id".into())
        .or_insert_with(|| instance.to_string());
    KafkaClients::new(kafka)
}

/// Waits while the schema registry cannot be reached (a timeout, a refused connection, a 5xx),
/// retrying with a backoff up to 5 s, so that a role started during a registry outage starts
/// once the registry is back instead of exiting; returns at once when it answers, whatever
/// the answer, and early on shutdown. Roles resolve their schemas right after this.
pub async fn wait_for_registry(registry: &RegistryClient, shutdown: &Shutdown) {
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        match registry.subjects().await {
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?delay, "the schema registry is unreachable; waiting for it before starting");
            }
            _ => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return,
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Fences each (group, instance) exactly-once member's previous incarnation (see
/// [`sluice_stream::fence_predecessor`]); a failure is only logged, since the
/// loop initialises transactions again and fails there if it must.
pub async fn fence_predecessors(clients: &KafkaClients, predecessors: &[(String, String)]) {
    for (group, instance) in predecessors {
        let fenced = sluice_stream::fence_predecessor(clients, group, instance);
        if let Err(e) = fenced.await {
            tracing::warn!(group, instance, error = %e, "could not fence the previous instance yet");
        }
    }
}

/// What a long-running role process starts with: signal handling, the admin server (metrics
/// and readiness, `check` not ready yet) and its clients.
pub struct Process {
    pub shutdown: Shutdown,
    pub metrics_registry: prometheus::Registry,
    pub readiness: Readiness,
    pub clients: KafkaClients,
    pub registry: RegistryClient,
}

impl Process {
    /// Also waits while the registry is unreachable (see [`wait_for_registry`]); before that
    /// it fences `predecessors`, the (group, instance) of each exactly-once loop the process
    /// will run, so a predecessor's open transaction does not hold up downstream readers
    /// while this one waits.
    pub async fn start(
        config: &SluiceConfig,
        check: &str,
        predecessors: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let shutdown = Shutdown::on_signals();
        let metrics_registry = prometheus::Registry::new();
        let readiness = Readiness::default();
        readiness.set(check, false);
        admin::serve(
            &config.admin.listen,
            metrics_registry.clone(),
            readiness.clone(),
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("starting the admin server on {}", config.admin.listen))?;
        let registry = RegistryClient::new(&config.registry)?;
        let clients = KafkaClients::new(config.kafka.clone());
        fence_predecessors(&clients, predecessors).await;
        wait_for_registry(&registry, &shutdown).await;
        Ok(Self {
            shutdown,
            metrics_registry,
            readiness,
            clients,
            registry,
        })
    }
}
