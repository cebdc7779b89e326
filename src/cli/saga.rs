//! `sluice saga …`: `saga run` (the orchestrator), operators' list/show/retry/abort, the
//! demo participants and a demo trigger. (`saga bench` lives in `bench/saga.rs`.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::outbound::{
    ClientConfig, EndpointSettings, Endpoints, Outbound, OutboundClient, OutboundMetrics,
};
use sluice_runtime::SluiceConfig;
use sluice_sagas::demo::{DemoParticipant, Faults, Rule};
use sluice_sagas::http::{recorded_calls, HttpParticipant};
use sluice_sagas::instance::{Instance, ParkReason, Status};
use sluice_sagas::messages::Action;
use sluice_sagas::messages::Command;
use sluice_sagas::metrics::ParticipantMetrics;
use sluice_sagas::ops::{self, OpsError};
use sluice_sagas::orchestrator::{self, Orchestrator};
use sluice_sagas::participant::{Outcome, Participant, ParticipantHandler, RoleSpec};
use sluice_sagas::timer;
use sluice_schemas::metadata::{now_ms, rfc3339_ms};
use sluice_schemas::RegistryClient;
use sluice_stream::metrics::LoopMetrics;
use sluice_stream::HandlerError;
use sluice_stream::{FailureRouter, Guarantee, LoopConfig};
use sluice_topology::{naming, Topology};

use super::printable;

#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Run only these sagas (default: every saga in the topology).
    #[arg(long = "saga")]
    pub sagas: Vec<String>,
    /// Stable name of this instance; two instances need different names.
    #[arg(long, env = "SLUICE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// How often deadlines are checked.
    #[arg(long, default_value = "100ms")]
    pub tick: String,
    /// How long a finished instance's state is kept: a repeated trigger within it is
    /// ignored; after it the state record is deleted (tombstoned) from the state topic.
    #[arg(long, default_value = "7d")]
    pub keep_finished: String,
    /// Most sagas running or compensating at once; triggers beyond it wait unread in their
    /// partitions, so memory follows this, not the backlog of orders.
    #[arg(long, default_value_t = orchestrator::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    #[command(flatten)]
    pub batching: Batching,
}

/// Inputs per transaction of the saga roles unless `--max-batch` says otherwise.
pub const SAGA_MAX_BATCH: usize = 5_000;

/// How many records one transaction may take, and how long to wait for them.
#[derive(Debug, Clone, Args)]
pub struct Batching {
    /// Most inputs per transaction. An input is small but writes several times its size
    /// (the instance's state, a command, events), all held until the transaction commits:
    /// draining 1,000,000 queued orders, batches of 10,000 peaked at 249–262 MiB in the
    /// orchestrator, 5,000 at 210–221, 2,000 at 202 but draining a sixth slower
    /// (docs/benchmarks.md).
    #[arg(long, default_value_t = SAGA_MAX_BATCH)]
    pub max_batch: usize,
    /// How long to wait for more inputs before a partial batch (e.g. 20ms).
    #[arg(long)]
    pub linger: Option<String>,
}

impl Batching {
    fn apply(&self, config: &mut LoopConfig) -> anyhow::Result<()> {
        config.max_batch = self.max_batch.max(1);
        if let Some(l) = &self.linger {
            config.linger =
                naming::parse_duration(l).map_err(|e| anyhow::anyhow!("--linger: {e}"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    Running,
    Compensating,
    Completed,
    Compensated,
    Parked,
}

impl From<StateArg> for Status {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Running => Status::Running,
            StateArg::Compensating => Status::Compensating,
            StateArg::Completed => Status::Completed,
            StateArg::Compensated => Status::Compensated,
            StateArg::Parked => Status::Parked,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Run the saga orchestrator: triggers and replies in, commands and state out, each
    /// transition one Kafka transaction.
    Run(OrchestratorArgs),
    /// List saga instances from the state topics.
    List {
        #[arg(long)]
        topology: Option<PathBuf>,
        #[arg(long)]
        saga: Option<String>,
        /// Only instances in these states (repeatable).
        #[arg(long, value_enum)]
        state: Vec<StateArg>,
        /// Only instances started longer ago than this (e.g. 10m, 2h).
        #[arg(long)]
        older_than: Option<String>,
    },
    /// One instance's state and its timeline of commands, replies and transitions.
    Show {
        id: String,
        #[arg(long)]
        saga: Option<String>,
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Print the state record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume a parked instance. One parked after its compensation ran out of attempts
    /// tries that compensation again; one parked because the topology changed under it
    /// (`definition_changed`) continues under the current definition: forward from its
    /// first step not yet done (the step in flight is resent under the same command id), or,
    /// if it was compensating, with the compensations the definition still has.
    Retry(RequestArgs),
    /// Compensate a running instance now, or one parked because its definition changed
    /// (what the current definition can compensate is; it ends compensated).
    Abort {
        #[command(flatten)]
        request: RequestArgs,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run participants: sluice's HTTP participant for roles whose steps are `http:` calls,
    /// demo participants (inventory, payments, shipping) built on the participant API for
    /// the others.
    Participant(ParticipantArgs),
    /// Publish demo OrderPlaced events that start order-fulfillment sagas.
    Trigger(TriggerArgs),
    /// Completed three-step sagas per second and saga latency, against a raw request→reply
    /// chain through the broker with as many hops; memory per in-flight saga.
    Bench(crate::bench::saga::BenchArgs),
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    pub id: String,
    #[arg(long)]
    pub saga: Option<String>,
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Wait this long for the orchestrator to apply the request (0: do not wait).
    #[arg(long, default_value = "30s")]
    pub wait: String,
    /// Who asks, recorded in the timeline (default: $USER).
    #[arg(long)]
    pub by: Option<String>,
}

#[derive(Debug, Args)]
pub struct ParticipantArgs {
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Roles to run (repeatable), or `all`.
    #[arg(long, required = true)]
    pub role: Vec<String>,
    /// Probability that an action fails.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Probability that an action gets no reply (the saga times out).
    #[arg(long, default_value_t = 0.0)]
    pub timeout_rate: f64,
    /// Probability that a compensation fails (it is retried, then parked).
    #[arg(long, default_value_t = 0.0)]
    pub compensation_fail_rate: f64,
    /// `CommandName=SUFFIX`: fail commands of that name (or `*`) whose correlation id ends in
    /// SUFFIX (repeatable).
    #[arg(long)]
    pub fail_when: Vec<Rule>,
    /// `CommandName=SUFFIX`: leave such commands without reply (repeatable).
    #[arg(long)]
    pub timeout_when: Vec<Rule>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Append a line per executed command to this file.
    #[arg(long)]
    pub effects_log: Option<PathBuf>,
    /// Non-public addresses HTTP steps may call (CIDRs like `127.0.0.1/32`; repeatable or
    /// comma-separated). Everything else private stays refused by the SSRF guard.
    #[arg(long, env = "SLUICE_OUTBOUND_ALLOW", value_delimiter = ',')]
    pub outbound_allow: Vec<String>,
    #[arg(long, env = "SLUICE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    #[command(flatten)]
    pub batching: Batching,
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    #[arg(long)]
    pub topology: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Order ids are this prefix plus a number (default: `demo-<time>-`).
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// SKUs of the order lines (e.g. FAIL-PAYMENTS to make the payment fail).
    #[arg(long, default_values_t = ["SKU-1".to_string()])]
    pub sku: Vec<String>,
}

pub async fn run_orchestrator(
    config: &SluiceConfig,
    args: OrchestratorArgs,
) -> anyhow::Result<ExitCode> {
    let (catalog, topology) = super::load(config, args.topology)?;
    let tick = naming::parse_duration(&args.tick).map_err(|e| anyhow::anyhow!("--tick: {e}"))?;
    let keep_finished = naming::parse_duration(&args.keep_finished)
        .map_err(|e| anyhow::anyhow!("--keep-finished: {e}"))?;
    let instance = args
        .instance_id
        .unwrap_or_else(|| super::normalize::default_instance_id("sagas"));
    let group = orchestrator::group(&topology.prefix);
    let super::Process {
        shutdown,
        metrics_registry,
        readiness,
        clients,
        registry,
    } = super::Process::start(config, "sagas", &[(group.clone(), instance.clone())]).await?;
    let mut orchestrator = Orchestrator::new(
        clients.clone(),
        &registry,
        &catalog,
        &topology,
        &args.sagas,
        &metrics_registry,
    )
    .await?;
    orchestrator.keep_finished_ms = i64::try_from(keep_finished.as_millis())?;
    orchestrator.max_in_flight = args.max_in_flight.max(1);
    let orchestrator = Arc::new(orchestrator);
    let router = failure_router(&topology);
    let mut topics = orchestrator.input_topics();
    topics.extend(router.tiers.iter().map(|t| t.topic.clone()));
    let mut loop_config = LoopConfig::new(&group, &instance, topics, Guarantee::ExactlyOnce);
    args.batching.apply(&mut loop_config)?;
    loop_config.per_key = super::normalize::per_key(&topology, orchestrator::RETRY_POLICY);
    loop_config.read_ahead_records = Some(sluice_sagas::READ_AHEAD_RECORDS);
    let metrics = LoopMetrics::new(&metrics_registry)?;
    let timer_task = tokio::spawn(timer::run(
        orchestrator.clone(),
        clients.producer("saga-timer")?,
        tick,
        shutdown.clone(),
    ));
    readiness.set("sagas", true);
    tracing::info!(instance, sagas = ?orchestrator.sagas().iter().map(|s| &s.def.name).collect::<Vec<_>>(), "saga orchestrator running");
    let result = sluice_stream::run(
        &super::static_member(config, &instance),
        loop_config,
        router,
        orchestrator,
        metrics,
        shutdown.clone(),
    )
    .await;
    shutdown.trigger();
    let _ = timer_task.await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The orchestrator's failure routing: the topology's `sagas` retry policy when it has one,
/// else straight to `<prefix>.dlq.sagas`.
fn failure_router(topology: &Topology) -> FailureRouter {
    let group = orchestrator::group(&topology.prefix);
    match topology
        .retry_policies
        .iter()
        .find(|p| p.name == orchestrator::RETRY_POLICY)
    {
        Some(policy) => FailureRouter::from_policy(&topology.prefix, &group, policy),
        None => FailureRouter {
            group,
            tiers: Vec::new(),
            max_attempts: 1,
            dlq_topic: naming::dlq_topic(&topology.prefix, "sagas"),
        },
    }
}

pub async fn run(config: &SluiceConfig, cmd: SagaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SagaCommand::Run(args) => run_orchestrator(config, args).await,
        SagaCommand::List {
            topology,
            saga,
            state,
            older_than,
        } => list(config, topology, saga, state, older_than).await,
        SagaCommand::Show {
            id,
            saga,
            topology,
            json,
        } => show(config, topology, saga, &id, json).await,
        SagaCommand::Retry(r) => request(config, r, Action::Retry, None).await,
        SagaCommand::Abort { request: r, reason } => {
            request(config, r, Action::Abort, reason).await
        }
        SagaCommand::Participant(args) => participants(config, args).await,
        SagaCommand::Trigger(args) => trigger(config, args).await,
        SagaCommand::Bench(args) => {
            crate::bench::until_interrupted(crate::bench::saga::run(config, args)).await
        }
    }
}

fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

async fn list(
    config: &SluiceConfig,
    topology: Option<PathBuf>,
    saga: Option<String>,
    state: Vec<StateArg>,
    older_than: Option<String>,
) -> anyhow::Result<ExitCode> {
    let (_, topology) = super::load(config, topology)?;
    let older = older_than
        .map(|d| naming::parse_duration(&d).map(|d| d.as_millis() as i64))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--older-than: {e}"))?;
    let states: Vec<Status> = state.into_iter().map(Status::from).collect();
    let clients = KafkaClients::new(config.kafka.clone());
    let all = tokio::task::block_in_place(|| ops::list(&clients, &topology, saga.as_deref()))?;
    let now = now_ms();
    let mut shown: Vec<&Instance> = all
        .iter()
        .filter(|i| ops::matches(i, &states, older, now))
        .collect();
    shown.sort_by_key(|i| i.started_at);
    println!(
        "{:<20} {:<28} {:<13} {:<20} {:>8}  updated",
        "saga", "id", "state", "step", "age"
    );
    for i in &shown {
        // A parked instance says why, after the columns every row has.
        let why = i
            .park_reason()
            .map(|r| format!("  {}", r.as_str()))
            .unwrap_or_default();
        println!(
            "{:<20} {:<28} {:<13} {:<20} {:>8}  {}{why}",
            i.saga,
            printable::line(&i.id),
            i.status.as_str(),
            i.current_step().unwrap_or("-"),
            age(now - i.started_at),
            rfc3339_ms(i.updated_at)
        );
    }
    let counts: Vec<String> = ops::summary(&shown.iter().map(|i| (*i).clone()).collect::<Vec<_>>())
        .into_iter()
        .map(|((saga, state), n)| format!("{saga} {state} {n}"))
        .collect();
    println!(
        "{} instance(s){}{}",
        shown.len(),
        if counts.is_empty() { "" } else { ": " },
        counts.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

async fn show(
    config: &SluiceConfig,
    topology: Option<PathBuf>,
    saga: Option<String>,
    id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (_, topology) = super::load(config, topology)?;
    let clients = KafkaClients::new(config.kafka.clone());
    let i =
        match tokio::task::block_in_place(|| ops::find(&clients, &topology, saga.as_deref(), id)) {
            Ok(i) => i,
            Err(e @ (OpsError::UnknownId { .. } | OpsError::Ambiguous { .. })) => {
                eprintln!("error: {}", printable::line(&e.to_string()));
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => return Err(e.into()),
        };
    if json {
        println!("{}", printable::json(&serde_json::to_value(&i)?, true));
        return Ok(ExitCode::SUCCESS);
    }
    // Ids, reasons and results come from triggers and participants: escaped, lines kept.
    print!("{}", printable::text(&timeline(&i)));
    Ok(ExitCode::SUCCESS)
}

/// The human-readable view of an instance that `sluice saga show` prints.
fn timeline(i: &Instance) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let state = match (&i.failure, i.status) {
        (Some(f), s) if !matches!(s, Status::Completed) => format!(
            "{} ({} at {}: {})",
            s.as_str(),
            f.kind.as_str(),
            f.step.as_deref().unwrap_or("-"),
            f.reason
        ),
        (_, s) => s.as_str().to_string(),
    };
    let _ = writeln!(out, "saga         {}", i.saga);
    let _ = writeln!(out, "id           {}", i.id);
    let _ = writeln!(out, "state        {state}");
    if let Some(reason) = i.park_reason() {
        let detail = i.parked.as_ref().map_or("", |p| p.detail.as_str());
        let _ = writeln!(out, "parked       {}: {detail}", reason.as_str());
    }
    let _ = writeln!(out, "started      {}", rfc3339_ms(i.started_at));
    let _ = writeln!(out, "updated      {}", rfc3339_ms(i.updated_at));
    let _ = writeln!(
        out,
        "trigger      {} {}",
        i.trigger.event_type,
        i.trigger.location.as_deref().unwrap_or("")
    );
    let steps = |d: &[sluice_sagas::instance::Done]| {
        if d.is_empty() {
            "-".to_string()
        } else {
            d.iter()
                .map(|d| d.step.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let _ = writeln!(out, "completed    {}", steps(&i.completed));
    let _ = writeln!(out, "compensated  {}", steps(&i.compensated));
    match &i.pending {
        Some(p) => {
            let _ = writeln!(
                out,
                "pending      {} {} {} attempt {} ({})",
                p.step,
                p.kind.as_str(),
                p.command_id,
                p.attempt,
                match p.wait {
                    sluice_sagas::instance::Wait::Reply { deadline } =>
                        format!("reply due {}", rfc3339_ms(deadline)),
                    sluice_sagas::instance::Wait::Backoff { until } =>
                        format!("resend at {}", rfc3339_ms(until)),
                    sluice_sagas::instance::Wait::Operator => match i.park_reason() {
                        Some(ParkReason::DefinitionChanged) =>
                            "waiting for `sluice saga retry` or `sluice saga abort`".to_string(),
                        _ => "waiting for `sluice saga retry`".to_string(),
                    },
                }
            );
        }
        None => {
            let _ = writeln!(out, "pending      -");
        }
    }
    let calls = http_calls(i);
    if !calls.is_empty() {
        let _ = writeln!(out, "http calls");
        out.push_str(&calls);
    }
    let _ = writeln!(out, "timeline");
    for e in &i.history {
        let _ = writeln!(
            out,
            "  {} {:>+8}ms  {:<13} {:<20} {:<44} {}{}",
            rfc3339_ms(e.at),
            e.at - i.started_at,
            e.event,
            e.step.as_deref().unwrap_or(""),
            e.command_id.as_deref().unwrap_or(""),
            e.attempt
                .map(|a| format!("attempt {a} "))
                .unwrap_or_default(),
            e.detail.as_deref().unwrap_or("")
        );
    }
    out
}

/// The HTTP calls the instance recorded, one line each (the URL without secrets).
fn http_calls(i: &Instance) -> String {
    recorded_calls(i)
        .iter()
        .map(|c| format!("  {c}\n"))
        .collect()
}

async fn request(
    config: &SluiceConfig,
    args: RequestArgs,
    action: Action,
    reason: Option<String>,
) -> anyhow::Result<ExitCode> {
    let (catalog, topology) = super::load(config, args.topology)?;
    let wait = naming::parse_duration(&args.wait).map_err(|e| anyhow::anyhow!("--wait: {e}"))?;
    let by = args
        .by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    let clients = KafkaClients::new(config.kafka.clone());
    let registry = RegistryClient::new(&config.registry)?;
    let sent = ops::request(
        &clients,
        &registry,
        &catalog,
        &topology,
        &ops::Request {
            saga: args.saga.as_deref(),
            id: &args.id,
            action,
            reason,
            by: &by,
        },
    )
    .await;
    let (instance, request_id) = match sent {
        Ok(r) => r,
        Err(
            e @ (OpsError::UnknownId { .. }
            | OpsError::Ambiguous { .. }
            | OpsError::WrongState { .. }),
        ) => {
            eprintln!("error: {}", printable::line(&e.to_string()));
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "{} requested for {} {} (request {request_id})",
        action.as_str(),
        instance.saga,
        printable::line(&instance.id)
    );
    if wait.is_zero() {
        return Ok(ExitCode::SUCCESS);
    }
    match ops::wait_applied(
        &clients,
        &topology,
        &instance.saga,
        &instance.id,
        &request_id,
        wait,
    )
    .await?
    {
        Some(now) => {
            println!(
                "applied: {} {} is {}",
                now.saga,
                printable::line(&now.id),
                now.status.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        None => bail!(
            "the request was not applied within {}; is `sluice saga run` running?",
            args.wait
        ),
    }
}

async fn participants(config: &SluiceConfig, args: ParticipantArgs) -> anyhow::Result<ExitCode> {
    let (catalog, topology) = super::load(config, args.topology)?;
    let roles = if args.role.iter().any(|r| r == "all") {
        RoleSpec::roles(&topology)
    } else {
        args.role.clone()
    };
    if roles.is_empty() {
        bail!("the topology's sagas name no participant roles");
    }
    let specs = roles
        .iter()
        .map(|role| RoleSpec::from_topology(&topology, role))
        .collect::<Result<Vec<_>, _>>()?;
    for (name, rate) in [
        ("--fail-rate", args.fail_rate),
        ("--timeout-rate", args.timeout_rate),
        ("--compensation-fail-rate", args.compensation_fail_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            bail!("{name} must be between 0 and 1, got {rate}");
        }
    }
    let faults = Faults {
        fail_rate: args.fail_rate,
        timeout_rate: args.timeout_rate,
        compensation_fail_rate: args.compensation_fail_rate,
        fail_when: args.fail_when.clone(),
        timeout_when: args.timeout_when.clone(),
        seed: args.seed,
    };
    let instance = args
        .instance_id
        .unwrap_or_else(|| super::normalize::default_instance_id("participant"));
    let predecessors: Vec<(String, String)> = specs
        .iter()
        .map(|spec| (spec.group.clone(), format!("{instance}-{}", spec.role)))
        .collect();
    let super::Process {
        shutdown,
        metrics_registry,
        readiness,
        clients,
        registry,
    } = super::Process::start(config, "participants", &predecessors).await?;
    let loop_metrics = LoopMetrics::new(&metrics_registry)?;
    let participant_metrics = ParticipantMetrics::new(&metrics_registry)?;
    // One outbound client (one pool, one breaker and rate limit per upstream) for every
    // HTTP role of this process.
    let outbound = Outbound::new(
        OutboundClient::new(ClientConfig {
            allow: args.outbound_allow.clone(),
            ..ClientConfig::default()
        })?,
        Endpoints::new(EndpointSettings::default()),
    )
    .with_metrics(OutboundMetrics::new(&metrics_registry)?);
    HttpParticipant::configure_upstreams(&topology, &outbound);
    let mut loops = tokio::task::JoinSet::new();
    for spec in specs {
        let role = spec.role.clone();
        let participant = if HttpParticipant::is_http_role(&topology, &role) {
            RoleParticipant::Http(HttpParticipant::from_topology(
                &topology,
                &role,
                outbound.clone(),
            )?)
        } else {
            RoleParticipant::Demo(
                DemoParticipant::new(&role, faults.clone(), args.effects_log.as_deref())
                    .with_context(|| format!("opening the effects log for {role}"))?,
            )
        };
        let handler = ParticipantHandler::new(
            spec.clone(),
            participant,
            clients.clone(),
            &registry,
            &catalog,
            &topology,
            participant_metrics.clone(),
        )
        .await?;
        let member = format!("{instance}-{role}");
        let mut loop_config = LoopConfig::new(
            &spec.group,
            &member,
            spec.command_topics.clone(),
            Guarantee::ExactlyOnce,
        );
        args.batching.apply(&mut loop_config)?;
        loop_config.read_ahead_records = Some(sluice_sagas::READ_AHEAD_RECORDS);
        let (metrics, shutdown, clients) = (
            loop_metrics.clone(),
            shutdown.clone(),
            super::static_member(config, &member),
        );
        tracing::info!(role, topics = ?spec.command_topics, "saga participant running");
        loops.spawn(async move {
            let router = spec.failure_router();
            sluice_stream::run(
                &clients,
                loop_config,
                router,
                Arc::new(handler),
                metrics,
                shutdown,
            )
            .await
            .with_context(|| format!("participant {role}"))
        });
    }
    readiness.set("participants", true);
    // Whichever role's loop fails first (a producer fenced after a broker restart) stops the
    // others, so the process exits and its supervisor restarts it; waiting on the loops in
    // order would leave a dead role unnoticed behind one that never ends.
    let mut failed = None;
    while let Some(done) = loops.join_next().await {
        if let Err(e) = done? {
            shutdown.trigger();
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// What answers a role's commands: sluice's HTTP participant for roles whose steps are
/// `http:` calls, the demo participants for the others.
enum RoleParticipant {
    Http(HttpParticipant),
    Demo(DemoParticipant),
}

impl Participant for RoleParticipant {
    async fn handle(&self, command: &Command) -> Result<Outcome, HandlerError> {
        match self {
            RoleParticipant::Http(http) => http.handle(command).await,
            RoleParticipant::Demo(demo) => demo.handle(command).await,
        }
    }

    fn patience(&self) -> Option<std::time::Duration> {
        match self {
            RoleParticipant::Http(http) => http.patience(),
            RoleParticipant::Demo(demo) => demo.patience(),
        }
    }

    fn unanswered_may_have_run(&self) -> bool {
        match self {
            RoleParticipant::Http(http) => http.unanswered_may_have_run(),
            RoleParticipant::Demo(demo) => demo.unanswered_may_have_run(),
        }
    }
}

/// A demo OrderPlaced for order `id`.
pub fn demo_order(id: &str, skus: &[String]) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = skus
        .iter()
        .map(|sku| {
            serde_json::json!({
                "sku": sku,
                "title": format!("Demo item {sku}"),
                "quantity": 1,
                "unit_price": {"amount": "19.9900", "currency": "EUR"},
            })
        })
        .collect();
    serde_json::json!({
        "subject": id,
        "order_id": id,
        "order_number": format!("#{id}"),
        "customer_id": "cust-demo",
        "customer_email": "demo@example.com",
        "total": {"amount": format!("{:.4}", 19.99 * skus.len() as f64), "currency": "EUR"},
        "line_items": lines,
        "provider": "sluice-demo",
    })
}

async fn trigger(config: &SluiceConfig, args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let (catalog, topology) = super::load(config, args.topology)?;
    const ORDER_PLACED: &str = "dev.sluice.events.commerce.OrderPlaced";
    if !topology
        .sagas
        .iter()
        .any(|s| s.trigger.event_type == ORDER_PLACED)
    {
        bail!("no saga in the topology is triggered by {ORDER_PLACED}");
    }
    let clients = KafkaClients::new(config.kafka.clone());
    let registry = RegistryClient::new(&config.registry)?;
    let publisher =
        sluice_producers::publish::Publisher::new(&clients, &registry, &catalog, &topology)
            .await
            .context("starting the publisher")?;
    let prefix = args
        .id_prefix
        .unwrap_or_else(|| format!("demo-{}-", now_ms()));
    let ids: Vec<String> = (1..=args.count).map(|n| format!("{prefix}{n}")).collect();
    for chunk in ids.chunks(500) {
        let sent = futures::future::join_all(
            chunk
                .iter()
                .map(|id| publisher.publish(ORDER_PLACED, demo_order(id, &args.sku))),
        )
        .await;
        for (id, r) in chunk.iter().zip(sent) {
            let p = r.with_context(|| format!("publishing order {id}"))?;
            if args.count <= 20 {
                println!(
                    "order {id} placed: {}/{}@{}",
                    p.topic, p.partition, p.offset
                );
            }
        }
    }
    println!(
        "{} order(s) placed (ids {prefix}1..{prefix}{})",
        args.count, args.count
    );
    Ok(ExitCode::SUCCESS)
}
