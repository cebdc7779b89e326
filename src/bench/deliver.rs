//! `sluice bench deliver`: outbound webhook delivery (`sluice deliver`, a child process)
//! to a fast local receiver served by this process, against a raw HTTP client posting the
//! same bodies to the same receiver with the same concurrency and pool, in the same run.
//!
//! Each round measures, on scratch deployments of their own:
//! - **throughput**: a burst of events fanned out to `--endpoints` endpoints, deliveries/s
//!   from the first to the last 2xx, then the raw client's requests/s (target ≥ 0.5 of raw);
//! - **latency**: events published at half that rate; from the event's `ce_time` (stamped
//!   by the publisher just before the produce, so a little before the commit) to its
//!   arrival at the receiver, which answers 200 at once (target p99 ≤ 50 ms);
//! - **memory**: 10,000 endpoints, a few events to each, the deliverer's peak RSS
//!   (target ≤ 256 MiB);
//! - **isolation**: 100 endpoints, drained and then paced, once with all answering and once
//!   with one of them hanging; the other 99's deliveries/s (target ≥ 0.9 of the run without)
//!   and p99 (target within 20%).
//!
//! Latency is measured at the receiver, on arrival: it answers 200 without work, so arrival
//! and the 2xx the deliverer sees differ by one loopback round trip.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{Path, State};
use axum::routing::post;
use clap::Args;
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_delivery::endpoints::{Endpoint, EndpointSpec};
use sluice_producers::publish::Publisher;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_schemas::{Catalog, RegistryClient};
use sluice_topology::Topology;

use super::stats::{ms, Samples};
use super::ChildProcess;

const PAYMENT: &str = "dev.sluice.events.payments.PaymentSucceeded";
/// The per-endpoint in-flight cap a deliverer uses when an endpoint names none.
const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// Endpoints of the memory scenario.
const MANY_ENDPOINTS: usize = 10_000;
/// Endpoints of the isolation scenario, one of which hangs in its second half.
const ISOLATION_ENDPOINTS: usize = 100;

#[derive(Debug, Args)]
pub struct DeliverBench {
    /// Endpoints of the throughput and latency scenarios (all on the local receiver).
    #[arg(long, default_value_t = 8)]
    pub endpoints: usize,
    /// Events of a throughput burst (each goes to every endpoint).
    #[arg(long, default_value_t = 2_000)]
    pub events: usize,
    /// Seconds of paced publishing in the latency phases.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Events to each of the 10,000 endpoints in the memory scenario.
    #[arg(long, default_value_t = 3)]
    pub memory_events: usize,
    /// Events of an isolation burst (each goes to all 100 endpoints).
    #[arg(long, default_value_t = 200)]
    pub isolation_events: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Partitions of the event and task topics.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Keep the run's topics and schema subjects.
    #[arg(long)]
    pub keep: bool,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    endpoint: usize,
    at: Instant,
    /// The event's time (ms since the epoch).
    event_ms: i64,
    /// Arrival minus the event's time.
    latency: Duration,
}

/// The fast local receiver: `POST /e/{n}` answers 200 at once and records the arrival;
/// `POST /hang` never answers (the deliverer's timeout ends it).
#[derive(Clone, Default)]
struct Receiver {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
}

impl Receiver {
    async fn serve(&self) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/e/{n}", post(arrive))
            .route(
                "/hang",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    axum::http::StatusCode::OK
                }),
            )
            .with_state(self.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the bench's receiver stopped");
            }
        });
        Ok(base)
    }

    /// Arrivals of events stamped at or after `since_ms`.
    fn since(&self, since_ms: i64) -> Vec<Arrival> {
        let all = self.arrivals.lock().expect("receiver lock");
        all.iter()
            .filter(|a| a.event_ms >= since_ms)
            .copied()
            .collect()
    }

    /// Waits until `n` arrivals of events since `since_ms` pass `keep`, or `limit` passes.
    async fn wait_for(
        &self,
        since_ms: i64,
        n: usize,
        keep: impl Fn(&Arrival) -> bool,
        limit: Duration,
    ) -> anyhow::Result<Vec<Arrival>> {
        let deadline = Instant::now() + limit;
        loop {
            let got: Vec<Arrival> = self.since(since_ms).into_iter().filter(&keep).collect();
            if got.len() >= n {
                return Ok(got);
            }
            if Instant::now() > deadline {
                bail!("{} of {n} deliveries arrived within {limit:?}", got.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn arrive(
    State(receiver): State<Receiver>,
    Path(n): Path<usize>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let at = Instant::now();
    let now_ms = sluice_schemas::metadata::now_ms();
    let Some(event_ms) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|b| b["timestamp"].as_str()?.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
    else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let latency = Duration::from_millis(u64::try_from(now_ms - event_ms).unwrap_or(0));
    receiver
        .arrivals
        .lock()
        .expect("receiver lock")
        .push(Arrival {
            endpoint: n,
            at,
            event_ms,
            latency,
        });
    axum::http::StatusCode::OK
}

/// Per second from the first to the last arrival.
fn rate(arrivals: &[Arrival]) -> f64 {
    let first = arrivals.iter().map(|a| a.at).min();
    let last = arrivals.iter().map(|a| a.at).max();
    match (first, last) {
        (Some(f), Some(l)) if l > f => arrivals.len() as f64 / (l - f).as_secs_f64(),
        _ => 0.0,
    }
}

fn p99(arrivals: &[Arrival]) -> Duration {
    let mut s = Samples::default();
    for a in arrivals {
        s.record(a.latency);
    }
    s.quantile(0.99)
}

/// A scratch deployment with its own `sluice deliver` and endpoints on the receiver.
struct Deployment {
    topology: Topology,
    file: std::path::PathBuf,
    publisher: Arc<Publisher>,
    producer: FutureProducer,
    endpoints: Vec<Endpoint>,
    deliver: Option<ChildProcess>,
}

fn topology_yaml(p: &str, partitions: i32) -> String {
    format!(
        r#"prefix: {p}
topics:
  - {{name: {p}.events.payments, partitions: {partitions}}}
  - {{name: {p}.state.endpoints, partitions: 1, config: {{cleanup.policy: compact}}}}
  - {{name: {p}.deliveries, partitions: {partitions}}}
  - {{name: {p}.deliveries.attempts, partitions: {partitions}}}
  - {{name: {p}.deliveries.events, partitions: 1}}
  - {{name: {p}.state.delivery-status, partitions: {partitions}, config: {{cleanup.policy: compact}}}}
  - {{name: {p}.dlq.deliveries, partitions: {partitions}}}
  - {{name: {p}.state.held-deliveries, partitions: {partitions}, config: {{cleanup.policy: compact}}}}
  - {{name: {p}.state.delivery-health, partitions: {partitions}, config: {{cleanup.policy: compact}}}}
  - {{name: {p}.dlq.delivery-fanout, partitions: 1}}
routes:
  - {{event_type: {PAYMENT}, topic: {p}.events.payments}}
retry_policies:
  - {{name: deliveries, tiers: [5s], max_attempts: 3, dlq_topic: {p}.dlq.deliveries}}
  - {{name: delivery-fanout, tiers: [5s], max_attempts: 2, dlq_topic: {p}.dlq.delivery-fanout}}
"#
    )
}

impl Deployment {
    async fn new(
        clients: &KafkaClients,
        registry: &RegistryClient,
        catalog: &Catalog,
        prefix: &str,
        partitions: i32,
    ) -> anyhow::Result<Self> {
        let file = std::env::temp_dir().join(format!("{prefix}-topology.yaml"));
        std::fs::write(&file, topology_yaml(prefix, partitions))?;
        let types = catalog.event_types().map(str::to_string).collect();
        let topology = Topology::load(&file, &types)?;
        super::deploy_scratch(clients, registry, catalog, &topology).await?;
        let publisher = Arc::new(Publisher::new(clients, registry, catalog, &topology).await?);
        Ok(Self {
            topology,
            file,
            publisher,
            producer: clients.producer("bench-endpoints")?,
            endpoints: Vec::new(),
            deliver: None,
        })
    }

    /// Adds `n` endpoints subscribed to payments, the i-th at `<base>/e/<i>`.
    async fn add_endpoints(&mut self, base: &str, n: usize) -> anyhow::Result<()> {
        let now = jiff::Timestamp::now();
        let mut created = Vec::with_capacity(n);
        for i in 0..n {
            let spec: EndpointSpec = serde_json::from_value(serde_json::json!({
                "url": format!("{base}/e/{i}"), "event_types": [PAYMENT]
            }))?;
            let (endpoint, _secret) =
                Endpoint::create(spec, sluice_delivery::endpoints::new_id(), now)?;
            created.push(endpoint);
        }
        for chunk in created.chunks(1_000) {
            for r in join_all(chunk.iter().map(|e| self.write_endpoint(e))).await {
                r?;
            }
        }
        self.endpoints.extend(created);
        Ok(())
    }

    /// Writes an endpoint record, as the management API does.
    async fn write_endpoint(&self, endpoint: &Endpoint) -> anyhow::Result<()> {
        let value = serde_json::to_vec(endpoint)?;
        let topic = format!("{}.state.endpoints", self.topology.prefix);
        self.producer
            .send(
                FutureRecord::to(&topic).key(&endpoint.id).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    /// Points endpoint `i` at `url` (the deliverer follows the endpoints topic).
    async fn repoint(&mut self, i: usize, url: String) -> anyhow::Result<()> {
        self.endpoints[i].url = url;
        self.write_endpoint(&self.endpoints[i]).await
    }

    /// Starts this deployment's `sluice deliver`.
    fn start_deliver(&mut self) -> anyhow::Result<()> {
        let path = self.file.display().to_string();
        let instance = format!("{}-bench", self.topology.prefix);
        self.deliver = Some(super::spawn_self(
            &[
                "deliver",
                "--topology",
                &path,
                "--allow-address",
                "127.0.0.1/32",
                "--instance-id",
                &instance,
            ],
            &[("RUST_LOG", "error".to_string())],
        )?);
        Ok(())
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        self.deliver.as_ref().and_then(ChildProcess::peak_rss_mib)
    }

    /// Publishes `n` payments at once (many in flight); returns when all are acknowledged.
    async fn burst(&self, n: usize) -> anyhow::Result<()> {
        let mut sends = Vec::with_capacity(n);
        for i in 0..n {
            let publisher = self.publisher.clone();
            sends.push(tokio::spawn(async move {
                publisher.publish(PAYMENT, payment(i)).await
            }));
        }
        for s in sends {
            s.await??;
        }
        Ok(())
    }

    /// Publishes payments at `per_sec` for `seconds`; returns how many.
    async fn paced(&self, per_sec: f64, seconds: u64) -> anyhow::Result<usize> {
        let tick = Duration::from_millis(10);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let start = Instant::now();
        let mut sent = 0usize;
        let mut sends = Vec::new();
        while start.elapsed() < Duration::from_secs(seconds) {
            interval.tick().await;
            let due = (start.elapsed().as_secs_f64() * per_sec) as usize;
            while sent < due {
                let publisher = self.publisher.clone();
                sends.push(tokio::spawn(async move {
                    publisher.publish(PAYMENT, payment(sent)).await
                }));
                sent += 1;
            }
        }
        for s in sends {
            s.await??;
        }
        Ok(sent)
    }
}

fn payment(i: usize) -> serde_json::Value {
    serde_json::json!({
        "subject": format!("pi_{i}"),
        "payment_id": format!("pi_{i}"),
        "customer_id": "cus_bench",
        "amount": {"amount": "20.50", "currency": "EUR"},
        "provider": "stripe"
    })
}

/// The raw ceiling: `n` POSTs of a delivery-shaped body to the receiver's endpoints,
/// `concurrency` at a time, through a client with the deliverer's pool and timeouts.
async fn raw(base: &str, endpoints: usize, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let defaults = sluice_runtime::outbound::ClientConfig::default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(defaults.pool_max_idle_per_host)
        .pool_idle_timeout(defaults.pool_idle_timeout)
        .connect_timeout(defaults.connect_timeout)
        .timeout(defaults.total_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..concurrency).map(|_| {
        let (client, next, base) = (client.clone(), next.clone(), base.to_string());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let body = raw_body(i);
                client
                    .post(format!("{base}/e/{}", i % endpoints))
                    .header("content-type", "application/json")
                    .header("webhook-id", format!("evt_raw_{i}"))
                    .header("webhook-timestamp", "1700000000")
                    .header("webhook-signature", "v1,cmF3")
                    .body(body)
                    .send()
                    .await?
                    .error_for_status()?;
            }
        })
    });
    for w in join_all(workers).await {
        w??;
    }
    Ok(())
}

/// A body shaped like a delivered payment event (the same fields and sizes).
fn raw_body(i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": uuid::Uuid::now_v7().to_string(),
        "type": PAYMENT,
        "timestamp": jiff::Timestamp::now().to_string(),
        "source": "urn:sluice:publisher",
        "subject": format!("pi_{i}"),
        "data": {
            "payment_id": format!("pi_{i}"), "customer_id": "cus_bench",
            "amount": {"amount": "20.50", "currency": "EUR"}, "provider": "stripe",
            "subject": format!("pi_{i}")
        }
    }))
    .expect("a JSON body")
}

/// One round's figures.
#[derive(Debug, Default, Clone)]
struct Round {
    deliver_rate: f64,
    raw_rate: f64,
    paced_rate: f64,
    p99: Duration,
    rss_many: f64,
    many_rate: f64,
    iso_rate: [f64; 2],
    iso_p99: [Duration; 2],
}

pub async fn run(config: &SluiceConfig, args: DeliverBench) -> anyhow::Result<ExitCode> {
    if args.rounds == 0 || args.endpoints == 0 || args.events == 0 {
        bail!("--rounds, --endpoints and --events must be at least 1");
    }
    let catalog = Catalog::embedded()?;
    let clients = KafkaClients::new(config.kafka.clone());
    let registry = RegistryClient::new(&config.registry)?;
    let receiver = Receiver::default();
    let base = receiver.serve().await?;
    let stamp = format!("bench{}", sluice_schemas::metadata::now_ms());
    println!(
        "deliver bench: {} endpoints × {} events per burst, {} s paced, {} rounds, receiver {base}, prefix {stamp}",
        args.endpoints, args.events, args.seconds, args.rounds
    );
    let mut fast = Deployment::new(
        &clients,
        &registry,
        &catalog,
        &format!("{stamp}-fast"),
        args.partitions,
    )
    .await?;
    fast.add_endpoints(&base, args.endpoints).await?;
    let mut iso = Deployment::new(
        &clients,
        &registry,
        &catalog,
        &format!("{stamp}-iso"),
        args.partitions,
    )
    .await?;
    iso.add_endpoints(&base, ISOLATION_ENDPOINTS).await?;
    fast.start_deliver()?;
    iso.start_deliver()?;
    warm_up(&fast, &receiver, args.endpoints)
        .await
        .context("warming up")?;
    warm_up(&iso, &receiver, ISOLATION_ENDPOINTS)
        .await
        .context("warming up")?;

    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let mut r = Round::default();
        throughput(&fast, &receiver, &base, &args, &mut r).await?;
        isolation(&mut iso, &receiver, &base, &args, &mut r).await?;
        memory(
            config,
            &clients,
            &registry,
            &catalog,
            &receiver,
            &base,
            &args,
            &format!("{stamp}-many{round}"),
            &mut r,
        )
        .await?;
        println!(
            "round {round}: deliver {:.0}/s raw {:.0}/s ({:.2}); p99 {:.1} ms at {:.0}/s; 10k endpoints RSS {:.0} MiB ({:.0}/s); 99 of 100: {:.0}/s vs {:.0}/s, p99 {:.1} vs {:.1} ms",
            r.deliver_rate, r.raw_rate, r.deliver_rate / r.raw_rate, ms(r.p99), r.paced_rate,
            r.rss_many, r.many_rate, r.iso_rate[1], r.iso_rate[0], ms(r.iso_p99[1]), ms(r.iso_p99[0])
        );
        rounds.push(r);
    }
    print_table(&rounds);
    drop(fast.deliver.take());
    drop(iso.deliver.take());
    if !args.keep {
        for d in [&fast, &iso] {
            super::remove_scratch(config, &clients, &d.topology).await?;
            let _ = std::fs::remove_file(&d.file);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every endpoint of `d` has had a delivery: the deliverer is assigned and connected.
async fn warm_up(d: &Deployment, receiver: &Receiver, endpoints: usize) -> anyhow::Result<()> {
    let since = sluice_schemas::metadata::now_ms();
    d.burst(5).await?;
    receiver
        .wait_for(since, 5 * endpoints, |_| true, Duration::from_secs(120))
        .await?;
    Ok(())
}

/// A burst through the deliverer, the same through the raw client, then paced latency.
async fn throughput(
    d: &Deployment,
    receiver: &Receiver,
    base: &str,
    args: &DeliverBench,
    r: &mut Round,
) -> anyhow::Result<()> {
    let n = args.events * args.endpoints;
    let since = sluice_schemas::metadata::now_ms();
    d.burst(args.events).await?;
    let got = receiver
        .wait_for(
            since,
            n,
            |a| a.endpoint < args.endpoints,
            Duration::from_secs(300),
        )
        .await
        .context("the throughput burst")?;
    r.deliver_rate = rate(&got);

    let since = sluice_schemas::metadata::now_ms();
    raw(
        base,
        args.endpoints,
        n,
        args.endpoints * DEFAULT_MAX_IN_FLIGHT,
    )
    .await?;
    r.raw_rate = rate(&receiver.since(since));

    r.paced_rate = r.deliver_rate / 2.0;
    let since = sluice_schemas::metadata::now_ms();
    let sent = d
        .paced(r.paced_rate / args.endpoints as f64, args.seconds)
        .await?;
    let got = receiver
        .wait_for(
            since,
            sent * args.endpoints,
            |_| true,
            Duration::from_secs(120),
        )
        .await
        .context("the paced phase")?;
    r.p99 = p99(&got);
    Ok(())
}

/// 100 endpoints, all answering, then endpoint 99 hanging: the other 99's rate and p99.
async fn isolation(
    d: &mut Deployment,
    receiver: &Receiver,
    base: &str,
    args: &DeliverBench,
    r: &mut Round,
) -> anyhow::Result<()> {
    let others = ISOLATION_ENDPOINTS - 1;
    for (slot, hanging) in [false, true].into_iter().enumerate() {
        let url = if hanging {
            format!("{base}/hang")
        } else {
            format!("{base}/e/{others}")
        };
        d.repoint(others, url).await?;
        // The deliverer follows the endpoints topic; give it a moment to see the change.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let since = sluice_schemas::metadata::now_ms();
        d.burst(args.isolation_events).await?;
        let got = receiver
            .wait_for(
                since,
                args.isolation_events * others,
                |a| a.endpoint < others,
                Duration::from_secs(300),
            )
            .await
            .with_context(|| format!("the isolation burst (hanging: {hanging})"))?;
        r.iso_rate[slot] = rate(&got);
        // Paced at half the rate of the run without the hanging endpoint, both times.
        let per_sec = r.iso_rate[0] / 2.0 / others as f64;
        let since = sluice_schemas::metadata::now_ms();
        let sent = d.paced(per_sec, args.seconds).await?;
        let got = receiver
            .wait_for(
                since,
                sent * others,
                |a| a.endpoint < others,
                Duration::from_secs(120),
            )
            .await
            .with_context(|| format!("the isolation paced phase (hanging: {hanging})"))?;
        r.iso_p99[slot] = p99(&got);
    }
    d.repoint(others, format!("{base}/e/{others}")).await?;
    Ok(())
}

/// 10,000 endpoints on a fresh deployment and deliverer: its peak RSS once every endpoint
/// has had its events.
#[allow(clippy::too_many_arguments)]
async fn memory(
    config: &SluiceConfig,
    clients: &KafkaClients,
    registry: &RegistryClient,
    catalog: &Catalog,
    receiver: &Receiver,
    base: &str,
    args: &DeliverBench,
    prefix: &str,
    r: &mut Round,
) -> anyhow::Result<()> {
    let mut d = Deployment::new(clients, registry, catalog, prefix, args.partitions).await?;
    d.add_endpoints(base, MANY_ENDPOINTS).await?;
    d.start_deliver()?;
    let since = sluice_schemas::metadata::now_ms();
    d.burst(args.memory_events).await?;
    let got = receiver
        .wait_for(
            since,
            args.memory_events * MANY_ENDPOINTS,
            |_| true,
            Duration::from_secs(600),
        )
        .await
        .context("the 10,000-endpoint phase")?;
    r.many_rate = rate(&got);
    r.rss_many = d.peak_rss_mib().unwrap_or(f64::NAN);
    drop(d.deliver.take());
    if !args.keep {
        super::remove_scratch(config, clients, &d.topology)
            .await
            .ok();
        let _ = std::fs::remove_file(&d.file);
    }
    Ok(())
}

fn print_table(rounds: &[Round]) {
    println!();
    println!("| round | deliver/s | raw/s | ratio (≥ 0.5) | p99 at half rate (≤ 50 ms) | RSS 10k endpoints (≤ 256 MiB) | 99 of 100 with one hanging: rate ratio (≥ 0.9) | p99 without / with (within 20%) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "| {i} | {:.0} | {:.0} | {:.2} | {:.1} ms at {:.0}/s | {:.0} MiB | {:.0} / {:.0} = {:.2} | {:.1} / {:.1} ms ({:+.0}%) |",
            r.deliver_rate,
            r.raw_rate,
            r.deliver_rate / r.raw_rate,
            ms(r.p99),
            r.paced_rate,
            r.rss_many,
            r.iso_rate[1],
            r.iso_rate[0],
            r.iso_rate[1] / r.iso_rate[0],
            ms(r.iso_p99[0]),
            ms(r.iso_p99[1]),
            (ms(r.iso_p99[1]) / ms(r.iso_p99[0]) - 1.0) * 100.0
        );
    }
}
