//! `sluice run`: every role, supervised. The gateway and the normalizer run in this process,
//! sharing one admin server, metrics registry and shutdown; the saga orchestrator, the demo
//! participants, the lag exporter and webhook delivery run as child processes
//! (`sluice saga run`, `sluice saga participant`, `sluice lag --export`, `sluice deliver`)
//! that are restarted when they exit, each with its own admin port (this process's admin
//! port + 1, + 2, …, in that order). Each role can also run
//! on its own, to scale out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use sluice_normalizer::Normalizer;
use sluice_producers::gateway::Gateway;
use sluice_runtime::admin::{self, Readiness};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::{Shutdown, SluiceConfig};
use sluice_schemas::RegistryClient;
use sluice_stream::metrics::LoopMetrics;
use sluice_stream::{Guarantee, LoopConfig};
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Gateway,
    Normalizer,
    Sagas,
    Participants,
    LagExporter,
    /// The transactional outbox relay; in the default roles when `outbox` is configured.
    Outbox,
    /// Outbound webhook delivery (`sluice deliver`).
    Delivery,
    /// Polling sources (`sluice poll`); in the default roles when the topology has any.
    Poll,
}

impl Role {
    /// The `sluice` arguments of a role that runs as a child process.
    fn child_args(self) -> Option<&'static [&'static str]> {
        match self {
            Role::Sagas => Some(&["saga", "run"]),
            Role::Participants => Some(&["saga", "participant", "--role", "all"]),
            Role::LagExporter => Some(&["lag", "--export"]),
            Role::Outbox => Some(&["outbox", "relay"]),
            Role::Delivery => Some(&["deliver"]),
            Role::Poll => Some(&["poll"]),
            Role::Gateway | Role::Normalizer => None,
        }
    }
}

/// Runs `sluice <args>` as a child, restarting it whenever it exits, until shutdown; then
/// stops it (SIGTERM via `kill`, which the child handles as a graceful stop).
async fn supervise(
    role: Role,
    args: Vec<String>,
    env: Vec<(String, String)>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    while !shutdown.is_triggered() {
        let mut child = tokio::process::Command::new(&exe)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {role:?}"))?;
        tokio::select! {
            status = child.wait() => {
                tracing::warn!(?role, ?status, "child role exited; restarting it in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ = shutdown.wait() => {
                if let Some(pid) = child.id() {
                    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
                }
                if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Roles to host; all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub roles: Vec<Role>,
    /// Once running, send the demo traffic and print a summary (then keep running).
    #[arg(long)]
    pub demo: bool,
    #[arg(long, env = "SLUICE_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

pub async fn run(
    config: &SluiceConfig,
    config_path: Option<&std::path::Path>,
    args: RunArgs,
) -> anyhow::Result<ExitCode> {
    let topology_path = super::topology_path(config, args.topology.clone());
    let (catalog, topology) = super::load(config, args.topology)?;
    let roles = if args.roles.is_empty() {
        let mut all = vec![
            Role::Gateway,
            Role::Normalizer,
            Role::Sagas,
            Role::Participants,
            Role::LagExporter,
        ];
        if config.outbox.is_some() {
            all.push(Role::Outbox);
        }
        // Delivery runs wherever the topology has its topics.
        if topology
            .retry_policies
            .iter()
            .any(|p| p.name == sluice_topology::naming::DELIVERY_POLICY)
        {
            all.push(Role::Delivery);
        }
        if topology.sources.iter().any(|s| s.poll.is_some()) {
            all.push(Role::Poll);
        }
        all
    } else {
        args.roles
    };
    let shutdown = Shutdown::on_signals();
    let metrics = prometheus::Registry::new();
    let readiness = Readiness::default();
    let admin_addr = admin::serve(
        &config.admin.listen,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("starting the admin server on {}", config.admin.listen))?;
    let clients = KafkaClients::new(config.kafka.clone());
    let registry = RegistryClient::new(&config.registry)?;
    let instance = args
        .instance_id
        .unwrap_or_else(|| super::normalize::default_instance_id("run"));
    let normalizer_member = (
        sluice_normalizer::group(&topology.prefix),
        format!("{instance}-normalizer"),
    );
    if roles.contains(&Role::Normalizer) {
        // As `Process::start` does: fence the previous normalizer's open transaction first.
        super::fence_predecessors(&clients, std::slice::from_ref(&normalizer_member)).await;
        super::wait_for_registry(&registry, &shutdown).await;
        if shutdown.is_triggered() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let loop_metrics = LoopMetrics::new(&metrics)?;
    let mut tasks: JoinSet<(Role, anyhow::Result<()>)> = JoinSet::new();

    let mut gateway_addr = None;
    if roles.contains(&Role::Gateway) {
        let gateway = Gateway::build(
            &config.gateway,
            &clients,
            &registry,
            &catalog,
            &topology,
            &metrics,
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(&config.gateway.listen)
            .await
            .with_context(|| format!("binding the gateway to {}", config.gateway.listen))?;
        gateway_addr = Some(listener.local_addr()?);
        gateway.spawn_kafka_probe(readiness.clone(), shutdown.clone());
        let s = shutdown.clone();
        tasks.spawn(async move {
            (
                Role::Gateway,
                gateway.serve(listener, s).await.map_err(Into::into),
            )
        });
    }
    if roles.contains(&Role::Normalizer) {
        let window = Duration::from_secs(7 * 24 * 3600);
        let handler = Normalizer::new(
            clients.clone(),
            &registry,
            &catalog,
            &topology,
            window,
            &metrics,
        )
        .await?;
        let router = super::normalize::failure_router(&topology)?;
        sluice_ops::dlq::spawn_depth_gauge(
            clients.clone(),
            vec![router.dlq_topic.clone()],
            &metrics,
            std::time::Duration::from_secs(30),
            shutdown.clone(),
        )?;
        let handler = handler.with_dead_letters(router.clone());
        let mut topics = handler.raw_topics();
        topics.extend(router.tiers.iter().map(|t| t.topic.clone()));
        let (group, member) = &normalizer_member;
        let mut loop_config = LoopConfig::new(group, member, topics, Guarantee::ExactlyOnce);
        loop_config.per_key = super::normalize::per_key(&topology, sluice_normalizer::RETRY_POLICY);
        let c = super::static_member(config, member);
        let (m, s) = (loop_metrics.clone(), shutdown.clone());
        tasks.spawn(async move {
            let r = sluice_stream::run(&c, loop_config, router, Arc::new(handler), m, s).await;
            (Role::Normalizer, r.map_err(Into::into))
        });
    }
    let admin_port = admin_addr.port();
    for (n, role) in roles
        .iter()
        .filter(|r| r.child_args().is_some())
        .enumerate()
    {
        let mut child_args: Vec<String> = Vec::new();
        if let Some(p) = config_path {
            child_args.extend(["--config".to_string(), p.display().to_string()]);
        }
        child_args.extend(
            role.child_args()
                .unwrap_or_default()
                .iter()
                .map(|s| s.to_string()),
        );
        if *role != Role::LagExporter {
            child_args.extend([
                "--topology".to_string(),
                topology_path.display().to_string(),
            ]);
        }
        if args.demo && *role == Role::Delivery {
            // The demo's webhook receiver listens on loopback, which the SSRF guard refuses
            // unless it is named.
            child_args.extend(["--allow-address".to_string(), "127.0.0.1/32".to_string()]);
        }
        let env = vec![
            (
                crate::SUPERVISOR_PID_ENV.to_string(),
                std::process::id().to_string(),
            ),
            (
                "SLUICE_ADMIN__LISTEN".to_string(),
                format!("{}:{}", admin_addr.ip(), admin_port + 1 + n as u16),
            ),
            (
                "SLUICE_INSTANCE_ID".to_string(),
                format!("{instance}-{role:?}").to_lowercase(),
            ),
        ];
        let (role, s) = (*role, shutdown.clone());
        tasks.spawn(async move { (role, supervise(role, child_args, env, s).await) });
    }
    readiness.set("roles", true);
    tracing::info!(?roles, %admin_addr, ?gateway_addr, "sluice running; Ctrl-C stops everything");

    if args.demo {
        let gateway = gateway_addr.context("--demo needs the gateway role")?;
        let summary =
            crate::demo::traffic::drive(config, &topology, &format!("http://{gateway}")).await?;
        summary.print(&format!("http://{admin_addr}/metrics"), &topology);
        println!("\nstill running: Ctrl-C stops every role cleanly");
    }

    // A role that stops on its own stops the others too: a supervisor restarts the process.
    let mut failed = false;
    while let Some(done) = tasks.join_next().await {
        let (role, result) = done.context("a role panicked")?;
        match result {
            Ok(()) => tracing::info!(?role, "role stopped"),
            Err(e) => {
                tracing::error!(?role, error = %crate::cli::error_text::chain(&e), "role failed; stopping the others");
                failed = true;
            }
        }
        shutdown.trigger();
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
