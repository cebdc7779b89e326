//! `sluice bench saga-http`: the order-fulfillment saga with its payment step as an HTTP
//! call (the built-in HTTP participant, through the outbound client) against the same saga
//! with a Kafka participant for that step, in the same run.
//!
//! Two scratch deployments under prefixes of their own, each with its orchestrator and
//! participants as processes: `kafka` (the demo participants answer every step) and `http`
//! (the payment step and its refund are calls to a fast local upstream served by this
//! process: `201` with a charge id, no work). Each round publishes N orders to one and waits
//! for every saga to complete, then the same to the other, alternating which goes first, so
//! both see the same machine; the figure is completed sagas per second and the ratio
//! HTTP / Kafka (target ≥ 0.8).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::routing::post;
use clap::Args;
use sluice_producers::publish::Publisher;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_sagas::http::payments::with_http_payments;
use sluice_schemas::codec::ReaderSchema;
use sluice_schemas::{AvroCodec, Catalog, RegistryClient};
use sluice_topology::{naming, Topology};

use super::saga::{bench_topology, measure, percentile, publish, wait_for, COMPLETED};
use super::ChildProcess;

#[derive(Debug, Args)]
pub struct SagaHttpBench {
    /// The topology whose order-fulfillment saga is benchmarked (under prefixes of its own).
    #[arg(long)]
    pub topology: Option<std::path::PathBuf>,
    /// Sagas per measured phase.
    #[arg(long, default_value_t = 10_000)]
    pub sagas: usize,
    /// Rounds (one Kafka and one HTTP phase each, alternating which runs first).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Keep the run's topics and schema subjects.
    #[arg(long)]
    pub keep: bool,
    /// Passed to the orchestrators and the participants.
    #[command(flatten)]
    pub batching: crate::cli::saga::Batching,
}

/// Which participant answers the payment step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Kafka,
    Http,
}

impl Variant {
    fn as_str(self) -> &'static str {
        match self {
            Variant::Kafka => "kafka",
            Variant::Http => "http",
        }
    }
}

/// One variant's deployment: its topology, orchestrator, participants and publisher.
struct Deployment {
    variant: Variant,
    topology: Topology,
    file: std::path::PathBuf,
    publisher: Publisher,
    _processes: [ChildProcess; 2],
}

pub async fn run(config: &SluiceConfig, args: SagaHttpBench) -> anyhow::Result<ExitCode> {
    if args.sagas == 0 || args.rounds == 0 {
        bail!("--sagas and --rounds must be at least 1");
    }
    let (catalog, reference) = crate::cli::load(config, args.topology.clone())?;
    let clients = KafkaClients::new(config.kafka.clone());
    let registry = RegistryClient::new(&config.registry)?;
    let upstream = serve_upstream().await?;
    let base = format!("bench{}", sluice_schemas::metadata::now_ms());
    println!(
        "saga-http bench: {} sagas per phase, {} rounds, {} partitions, upstream {upstream}, prefix {base}",
        args.sagas, args.rounds, args.partitions
    );
    let mut deployments = Vec::new();
    for variant in [Variant::Kafka, Variant::Http] {
        let d = deploy(
            &clients, &registry, &catalog, &reference, &args, &base, variant, &upstream,
        )
        .await
        .with_context(|| format!("deploying the {} variant", variant.as_str()))?;
        deployments.push(d);
    }
    let codec = AvroCodec::new(registry.clone());
    let completed = ReaderSchema::new(catalog.latest(COMPLETED)?.schema.clone())?;
    let decode = (&codec, &completed);

    // Warm-up: every process connected, assigned and past its first transactions.
    for d in &deployments {
        let ids = publish(&d.publisher, &format!("{}-warm-", d.topology.prefix), 200).await?;
        let events = naming::events_topic(&d.topology.prefix, "sagas");
        wait_for(
            &clients,
            &events,
            COMPLETED,
            &ids,
            Duration::from_secs(300),
            None,
            None,
        )
        .await
        .with_context(|| format!("warming up the {} variant", d.variant.as_str()))?;
    }

    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        let mut order: Vec<&Deployment> = deployments.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for d in order {
            let events = naming::events_topic(&d.topology.prefix, "sagas");
            let prefix = format!("{}-r{round}-", d.topology.prefix);
            let (run, inside) = measure(
                &d.publisher,
                &clients,
                &events,
                decode,
                &prefix,
                args.sagas,
                None,
            )
            .await?;
            println!(
                "round {round} {:<5} {}; start → completed p50 {:.0} ms, p99 {:.0} ms",
                d.variant.as_str(),
                run.describe(),
                percentile(&inside, 0.5),
                percentile(&inside, 0.99)
            );
            rates[usize::from(d.variant == Variant::Http)].push(run.rate());
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (kafka, http) = (mean(&rates[0]), mean(&rates[1]));
    // Each round's ratio compares phases run back to back, so a disturbance on the shared
    // machine moves one round, and the median of the rounds shrugs it off.
    let mut ratios: Vec<f64> = rates[1].iter().zip(&rates[0]).map(|(h, k)| h / k).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "sagas/s     kafka participant {kafka:.0}, HTTP step {http:.0} (mean of {} rounds): HTTP / Kafka = {:.2}",
        args.rounds,
        http / kafka
    );
    println!(
        "ratio       per round {}; median {:.2} (target ≥ 0.80)",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        percentile(&ratios, 0.5)
    );
    println!(
        "upstream    {} calls answered",
        upstream_calls().load(Ordering::Relaxed)
    );
    for d in deployments {
        let (topology, file) = (d.topology.clone(), d.file.clone());
        drop(d);
        if !args.keep {
            super::remove_scratch(config, &clients, &topology).await?;
            let _ = std::fs::remove_file(&file);
        }
    }
    println!(
        "{} the topics under `{base}-kafka.` and `{base}-http.` and their subjects",
        if args.keep { "kept" } else { "removed" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes, validates and deploys `variant`'s scratch topology, and starts its processes.
#[allow(clippy::too_many_arguments)]
async fn deploy(
    clients: &KafkaClients,
    registry: &RegistryClient,
    catalog: &Catalog,
    reference: &Topology,
    args: &SagaHttpBench,
    base: &str,
    variant: Variant,
    upstream: &str,
) -> anyhow::Result<Deployment> {
    let prefix = format!("{base}-{}", variant.as_str());
    let yaml = bench_topology(reference, &prefix, args.partitions)?;
    let yaml = match variant {
        Variant::Kafka => yaml,
        Variant::Http => with_http_payments(&yaml, None),
    };
    let file = std::env::temp_dir().join(format!("{prefix}-topology.yaml"));
    std::fs::write(&file, yaml)?;
    let types = catalog.event_types().map(str::to_string).collect();
    let topology = Topology::load(&file, &types)?;
    super::deploy_scratch(clients, registry, catalog, &topology).await?;
    let path = file.display().to_string();
    let max_batch = args.batching.max_batch.to_string();
    let mut tuning = vec!["--max-batch", max_batch.as_str()];
    if let Some(l) = &args.batching.linger {
        tuning.extend(["--linger", l.as_str()]);
    }
    let env = vec![
        ("SLUICE_INSTANCE_ID", format!("bench-{}", variant.as_str())),
        ("RUST_LOG", "error".to_string()),
        ("PAYMENTS_URL", upstream.to_string()),
        ("PAYMENTS_KEY", "sk_bench_key".to_string()),
        ("SLUICE_OUTBOUND_ALLOW", "127.0.0.1/32".to_string()),
    ];
    let orchestrator = super::spawn_self(
        &[&["saga", "run", "--topology", &path][..], &tuning].concat(),
        &env,
    )?;
    let participants = super::spawn_self(
        &[
            &["saga", "participant", "--role", "all", "--topology", &path][..],
            &tuning,
        ]
        .concat(),
        &env,
    )?;
    let publisher = Publisher::new(clients, registry, catalog, &topology).await?;
    Ok(Deployment {
        variant,
        topology,
        file,
        publisher,
        _processes: [orchestrator, participants],
    })
}

/// Calls the local upstream answered.
fn upstream_calls() -> &'static AtomicU64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    &CALLS
}

/// A payment provider that does no work: every charge and refund succeeds at once. Returns
/// its base URL.
async fn serve_upstream() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let ids = Arc::new(AtomicU64::new(0));
    let answer = move |kind: &'static str| {
        let ids = ids.clone();
        move || async move {
            upstream_calls().fetch_add(1, Ordering::Relaxed);
            let id = format!("{kind}_{}", ids.fetch_add(1, Ordering::Relaxed));
            (
                axum::http::StatusCode::CREATED,
                axum::Json(serde_json::json!({"id": id, "status": "succeeded"})),
            )
        }
    };
    let app = axum::Router::new()
        .route("/v1/charges", post(answer("ch")))
        .route("/v1/refunds", post(answer("re")));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the bench's upstream stopped");
        }
    });
    Ok(base)
}
