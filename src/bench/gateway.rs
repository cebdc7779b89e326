//! Gateway benchmark: closed-loop at the maximum rate, then open-loop at half of it, over
//! loopback; then a raw idempotent acks=all producer writing the same bodies to the same
//! raw topics with the same concurrency, as the ceiling.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::producer::FutureRecord;
use sluice_producers::sign;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_schemas::metadata::now_ms;
use tokio::sync::Semaphore;

use super::stats::{ms, Samples};
use super::{fixtures, free_port, spawn_self};

#[derive(Debug, Args)]
pub struct GatewayBench {
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Requests in flight in the closed-loop phases.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

pub const SECRET: &str = "whsec_bench_secret";

/// One prepared request: path, headers, body, and the raw topic it lands on.
struct Prepared {
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    topic: &'static str,
    key: String,
}

fn prepare(n: usize) -> Vec<Prepared> {
    let stripe: serde_json::Value =
        serde_json::from_slice(fixtures::STRIPE_PAYMENT_SUCCEEDED).expect("fixture");
    let now = now_ms() / 1000;
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                let mut v = stripe.clone();
                v["id"] = format!("evt_bench_{i}").into();
                let body = serde_json::to_vec(&v).expect("json");
                Prepared {
                    path: "/webhooks/stripe",
                    headers: sign::stripe(SECRET, now, &body),
                    body,
                    topic: "sluice.raw.stripe",
                    key: format!("evt_bench_{i}"),
                }
            } else {
                let body = fixtures::GITHUB_PUSH.to_vec();
                let id = format!("bench-{i}");
                Prepared {
                    path: "/webhooks/github",
                    headers: sign::github(SECRET, "push", &id, &body),
                    body,
                    topic: "sluice.raw.github",
                    key: id,
                }
            }
        })
        .collect()
}

/// The environment a gateway listening on `port` needs: a secret for every source of the
/// reference topology.
pub fn gateway_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("SLUICE_GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
        ("SLUICE_SECRET_STRIPE", SECRET.to_string()),
        (
            "SLUICE_SECRET_STRIPE_PREVIOUS",
            "whsec_unused_previous".to_string(),
        ),
        ("SLUICE_SECRET_GITHUB", SECRET.to_string()),
        ("SLUICE_SECRET_SHOPIFY", SECRET.to_string()),
        ("SLUICE_SENDGRID_PUBLIC_KEY", SENDGRID_TEST_KEY.to_string()),
        ("SLUICE_SECRET_SLACK", SECRET.to_string()),
        (
            "SLUICE_SECRET_STANDARD_WEBHOOKS",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".to_string(),
        ),
        ("SLUICE_SECRET_GENERIC", SECRET.to_string()),
    ]
}

pub async fn run(config: &SluiceConfig, b: GatewayBench) -> anyhow::Result<ExitCode> {
    let port = free_port()?;
    let gateway = spawn_self(&["gateway"], &gateway_env(port))?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(b.concurrency * 2)
        .build()?;
    wait_ready(&http, &base).await?;
    let requests = Arc::new(prepare(4096));

    // Warm up connections and the producer.
    closed_loop(
        &http,
        &base,
        &requests,
        b.concurrency,
        Duration::from_secs(2),
    )
    .await?;
    let (mut max, elapsed) = closed_loop(
        &http,
        &base,
        &requests,
        b.concurrency,
        Duration::from_secs(b.seconds),
    )
    .await?;
    let max_rate = max.count() as f64 / elapsed.as_secs_f64();
    let mut half = open_loop(
        &http,
        &base,
        &requests,
        max_rate / 2.0,
        Duration::from_secs(b.seconds),
    )
    .await?;
    let half_rate = half.count() as f64 / b.seconds as f64;
    let rss = gateway.peak_rss_mib();
    drop(gateway);

    let raw = raw_producer(
        config,
        &requests,
        b.concurrency,
        Duration::from_secs(b.seconds),
    )
    .await?;

    println!(
        "gateway benchmark ({}s per phase, {} in flight, loopback, broker on this machine)",
        b.seconds, b.concurrency
    );
    println!("  raw producer (acks=all, same bytes) {raw:>10.0} records/s   (ceiling)");
    println!(
        "  gateway at max rate                 {max_rate:>10.0} req/s       p50 {:.2} ms  p99 {:.2} ms  errors {}",
        ms(max.quantile(0.5)),
        ms(max.quantile(0.99)),
        max.errors
    );
    println!(
        "  gateway at 50% of max               {half_rate:>10.0} req/s       p50 {:.2} ms  p99 {:.2} ms  errors {}",
        ms(half.quantile(0.5)),
        ms(half.quantile(0.99)),
        half.errors
    );
    println!(
        "  gateway peak RSS                    {:>10.1} MiB",
        rss.unwrap_or(f64::NAN)
    );
    println!(
        "  ratio gateway / raw producer        {:>10.2}",
        max_rate / raw
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        // An unknown source answers 404 as soon as the gateway serves.
        if let Ok(r) = http.post(format!("{base}/webhooks/nope")).send().await {
            if r.status() == 404 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the gateway did not start on {base}; is the topology applied (`sluice topology apply`)?")
}

async fn send(http: &reqwest::Client, base: &str, p: &Prepared) -> bool {
    post_signed(http, base, p.path, &p.headers, &p.body).await
}

/// POSTs a signed JSON delivery; true on a 2xx.
pub async fn post_signed(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    headers: &[(&'static str, String)],
    body: &[u8],
) -> bool {
    let mut req = http
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    matches!(req.send().await, Ok(r) if r.status().is_success())
}

async fn closed_loop(
    http: &reqwest::Client,
    base: &str,
    requests: &Arc<Vec<Prepared>>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Samples, Duration)> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (http, base, requests) = (http.clone(), base.to_string(), requests.clone());
        workers.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let mut i = w;
            while Instant::now() < deadline {
                let t = Instant::now();
                if send(&http, &base, &requests[i % requests.len()]).await {
                    s.record(t.elapsed());
                } else {
                    s.errors += 1;
                }
                i += concurrency;
            }
            s
        }));
    }
    let mut all = Samples::default();
    for w in workers {
        all.merge(w.await?);
    }
    Ok((all, start.elapsed()))
}

async fn open_loop(
    http: &reqwest::Client,
    base: &str,
    requests: &Arc<Vec<Prepared>>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Samples> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let limit = Arc::new(Semaphore::new(4096));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    let mut i = 0usize;
    while Instant::now() < deadline {
        ticker.tick().await;
        let permit = limit.clone().acquire_owned().await?;
        let (http, base, requests) = (http.clone(), base.to_string(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t = Instant::now();
            let ok = send(&http, &base, &requests[i % requests.len()]).await;
            (ok, t.elapsed())
        }));
        i += 1;
    }
    let mut s = Samples::default();
    for t in tasks {
        match t.await? {
            (true, d) => s.record(d),
            (false, _) => s.errors += 1,
        }
    }
    Ok(s)
}

async fn raw_producer(
    config: &SluiceConfig,
    requests: &Arc<Vec<Prepared>>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let producer = KafkaClients::new(config.kafka.clone())
        .producer("bench-raw")
        .context("creating the raw producer")?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (producer, requests) = (producer.clone(), requests.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0usize;
            let mut i = w;
            while Instant::now() < deadline {
                let p = &requests[i % requests.len()];
                let record = FutureRecord::to(p.topic).key(&p.key).payload(&p.body);
                if producer.send(record, Duration::from_secs(10)).await.is_ok() {
                    n += 1;
                }
                i += concurrency;
            }
            n
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// SendGrid's published test public key (base64 DER, from the signature vectors in
/// tests/fixtures), so the topology's SendGrid source can start; the bench sends
/// no SendGrid traffic.
const SENDGRID_TEST_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
