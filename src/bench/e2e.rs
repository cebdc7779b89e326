//! `sluice bench e2e`: the whole path a delivery takes, on topics of its own.
//!
//! Half the deliveries are Shopify `orders/create` webhooks (each order starts the
//! order-fulfillment saga, answered by the demo participants), half are Stripe
//! `payment_intent.succeeded` webhooks. All are signed and sent to a real `sluice gateway`;
//! `sluice normalize` (exactly-once), `sluice saga run` and
//! `sluice saga participant --role all` run as their own processes. A reader watches the
//! normalized topics (by `ce_id`, which is derived from the delivery id) and the saga
//! lifecycle topic (by saga id, the order id).
//!
//! Reported: accepted deliveries/s; sustained deliveries/s through to the last saga
//! completion; latency from the 2xx to the normalized event and to saga completion; each
//! process's peak RSS; CPU seconds of the broker, the registry, each sluice process and the
//! load generator; and the sustained rate against a raw producer and a raw
//! consume→produce passthrough measured in the same run with the same bodies.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use sluice_producers::sign;
use sluice_runtime::kafka::{create_topic_if_missing, KafkaClients};
use sluice_runtime::SluiceConfig;
use sluice_schemas::metadata::now_ms;
use sluice_schemas::RegistryClient;
use sluice_topology::{naming, Topology};

use super::gateway::{gateway_env, post_signed, wait_ready, SECRET};
use super::stats::{ms, Samples};
use super::{
    deploy_scratch, fixtures, free_port, passthrough, remove_scratch, spawn_self, ChildProcess,
};

const COMPLETED: &str = "dev.sluice.events.sagas.SagaCompleted";
const ORDERS_CREATE: &[u8] =
    include_bytes!("../../tests/fixtures/webhooks/shopify/orders.create.json");

#[derive(Debug, Args)]
pub struct E2eBench {
    /// The reference topology, run under a prefix of its own.
    #[arg(long)]
    pub topology: Option<std::path::PathBuf>,
    /// Deliveries to send (half of them orders that each start a saga).
    #[arg(long, default_value_t = 4_000)]
    pub deliveries: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Keep the run's topics and schema subjects (removed by default).
    #[arg(long)]
    pub keep: bool,
}

/// One signed delivery and what it should become downstream.
struct Delivery {
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// `ce_id` of the normalized event it yields.
    event_id: String,
    /// The saga it starts (the order id), if any.
    saga: Option<String>,
}

fn deliveries(n: usize, run: &str) -> anyhow::Result<Vec<Delivery>> {
    let order: serde_json::Value = serde_json::from_slice(ORDERS_CREATE)?;
    let payment: serde_json::Value = serde_json::from_slice(fixtures::STRIPE_PAYMENT_SUCCEEDED)?;
    let base: u64 = now_ms().try_into()?;
    let now = now_ms() / 1000;
    Ok((0..n)
        .map(|i| {
            if i % 2 == 0 {
                let mut v = order.clone();
                let order_id = base * 1_000 + i as u64;
                v["id"] = order_id.into();
                let body = serde_json::to_vec(&v).unwrap_or_default();
                let webhook_id = format!("{run}-{i}");
                Delivery {
                    path: "/webhooks/shopify",
                    headers: sign::shopify(SECRET, "orders/create", &webhook_id, &body),
                    event_id: sluice_normalizer::mappings::event_id("shopify", &webhook_id, 0),
                    body,
                    saga: Some(order_id.to_string()),
                }
            } else {
                let mut v = payment.clone();
                let id = format!("evt_{run}_{i}");
                v["id"] = id.clone().into();
                let body = serde_json::to_vec(&v).unwrap_or_default();
                Delivery {
                    path: "/webhooks/stripe",
                    headers: sign::stripe(SECRET, now, &body),
                    event_id: sluice_normalizer::mappings::event_id("stripe", &id, 0),
                    body,
                    saga: None,
                }
            }
        })
        .collect())
}

/// The reference topology with every topic renamed under `prefix`.
fn rescoped(reference: &str, prefix: &str) -> String {
    reference
        .replace("prefix: sluice\n", &format!("prefix: {prefix}\n"))
        .replace(" sluice.", &format!(" {prefix}."))
}

/// User plus system CPU time of a process, in seconds (Linux `/proc/<pid>/stat`, whose
/// clock ticks are USER_HZ = 100 on every Linux ABI).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) / 100.0)
}

/// The dev stack's broker and registry processes, from the pid files `dev/stack` writes.
fn stack_pids(config: &SluiceConfig) -> Vec<(&'static str, u32)> {
    let cache = std::env::var("SLUICE_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/sluice",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let port = config
        .kafka
        .bootstrap_servers
        .rsplit(':')
        .next()
        .unwrap_or("9092")
        .to_string();
    ["broker", "registry"]
        .into_iter()
        .filter_map(|name| {
            let pid = std::fs::read_to_string(format!("{cache}/stack-{port}/{name}.pid")).ok()?;
            Some((name, pid.trim().parse().ok()?))
        })
        .collect()
}

/// When each normalized event and each saga completion was first seen.
#[derive(Default)]
struct Seen {
    events: HashMap<String, Instant>,
    completed: HashMap<String, Instant>,
}

/// Reads the normalized topics and the saga lifecycle topic until `stop`.
fn watch(
    clients: &KafkaClients,
    topics: Vec<String>,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let consumer: StreamConsumer = clients
        .consumer_config(
            "bench-e2e",
            &format!("bench-e2e-{}", uuid::Uuid::new_v4().simple()),
        )?
        .create()?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(m) = consumer.recv().await else {
                continue;
            };
            let at = Instant::now();
            let header = |name: &str| {
                m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            let mut seen = seen.lock().expect("seen lock");
            if m.topic().ends_with(".events.sagas") {
                if header("ce_type").as_deref() == Some(COMPLETED) {
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    seen.completed.entry(key).or_insert(at);
                }
            } else if let Some(id) = header("ce_id") {
                seen.events.entry(id).or_insert(at);
            }
        }
    }))
}

/// A raw idempotent acks=all producer writing the same bodies, `concurrency` in flight.
async fn raw_producer(
    clients: &KafkaClients,
    topic: &str,
    all: &Arc<Vec<Delivery>>,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let producer = clients.producer("bench-raw")?;
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (producer, all, topic) = (producer.clone(), all.clone(), topic.to_string());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while i < all.len() {
                let d = &all[i];
                let record = FutureRecord::to(&topic).key(&d.event_id).payload(&d.body);
                if producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .is_err()
                {
                    return Err(anyhow::anyhow!("raw produce failed"));
                }
                i += concurrency;
            }
            Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(all.len() as f64 / start.elapsed().as_secs_f64())
}

/// Sends every delivery, `concurrency` in flight; returns when each was accepted.
async fn drive(
    http: &reqwest::Client,
    base: &str,
    all: &Arc<Vec<Delivery>>,
    concurrency: usize,
) -> anyhow::Result<Vec<Option<Instant>>> {
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (http, base, all) = (http.clone(), base.to_string(), all.clone());
        workers.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut i = w;
            while i < all.len() {
                let d = &all[i];
                let ok = post_signed(&http, &base, d.path, &d.headers, &d.body).await;
                accepted.push((i, ok.then(Instant::now)));
                i += concurrency;
            }
            accepted
        }));
    }
    let mut at = vec![None; all.len()];
    for w in workers {
        for (i, t) in w.await? {
            at[i] = t;
        }
    }
    Ok(at)
}

pub async fn run(config: &SluiceConfig, b: E2eBench) -> anyhow::Result<ExitCode> {
    if b.deliveries < 2 || b.concurrency == 0 {
        bail!("--deliveries must be at least 2 and --concurrency at least 1");
    }
    let reference_path = crate::cli::topology_path(config, b.topology.clone());
    let reference = std::fs::read_to_string(&reference_path)
        .with_context(|| format!("reading {}", reference_path.display()))?;
    let run_id = format!("e2e{}", now_ms());
    let file = std::env::temp_dir().join(format!("{run_id}-topology.yaml"));
    std::fs::write(&file, rescoped(&reference, &run_id))?;
    let path = file.display().to_string();
    let (catalog, topology): (_, Topology) = crate::cli::load(config, Some(file.clone()))?;
    let clients = KafkaClients::new(config.kafka.clone());
    let registry = RegistryClient::new(&config.registry)?;
    deploy_scratch(&clients, &registry, &catalog, &topology).await?;
    println!(
        "end-to-end bench: {} deliveries ({} orders → sagas, the rest Stripe payments), {} in flight, prefix {run_id}",
        b.deliveries,
        b.deliveries.div_ceil(2),
        b.concurrency
    );

    let all = Arc::new(deliveries(b.deliveries, &run_id)?);
    let sagas = all.iter().filter(|d| d.saga.is_some()).count();

    // The raw ceilings first, on scratch topics the pipeline does not read.
    let admin = clients.admin()?;
    let (ceiling_in, ceiling_out) = (
        format!("{run_id}.ceiling.in"),
        format!("{run_id}.ceiling.out"),
    );
    for t in [&ceiling_in, &ceiling_out] {
        create_topic_if_missing(&admin, t, 6).await?;
    }
    let raw_rate = raw_producer(&clients, &ceiling_in, &all, b.concurrency).await?;
    let pass_rate = passthrough(
        &clients,
        &format!("{run_id}-passthrough"),
        std::slice::from_ref(&ceiling_in),
        &ceiling_out,
        all.len(),
    )
    .await?;

    // The pipeline, one process per role.
    let port = free_port()?;
    let instance = [("SLUICE_INSTANCE_ID", run_id.clone())];
    let mut env = gateway_env(port);
    env.extend(instance.iter().cloned());
    let roles: Vec<(&str, ChildProcess)> = vec![
        (
            "gateway",
            spawn_self(&["gateway", "--topology", &path], &env)?,
        ),
        (
            "normalizer",
            spawn_self(&["normalize", "--topology", &path], &instance)?,
        ),
        (
            "orchestrator",
            spawn_self(&["saga", "run", "--topology", &path], &instance)?,
        ),
        (
            "participants",
            spawn_self(
                &["saga", "participant", "--role", "all", "--topology", &path],
                &instance,
            )?,
        ),
    ];
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(b.concurrency * 2)
        .build()?;
    wait_ready(&http, &base).await?;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let watched = vec![
        naming::events_topic(&run_id, "commerce"),
        naming::events_topic(&run_id, "payments"),
        naming::events_topic(&run_id, "sagas"),
    ];
    let watcher = watch(&clients, watched, seen.clone())?;

    // Warm-up: a few orders through to completion, so every role has joined its group.
    let warm = Arc::new(deliveries(20, &format!("{run_id}w"))?);
    drive(&http, &base, &warm, 4).await?;
    let warm_sagas: Vec<String> = warm.iter().filter_map(|d| d.saga.clone()).collect();
    wait_until(&seen, Duration::from_secs(120), |s| {
        warm_sagas.iter().all(|id| s.completed.contains_key(id))
    })
    .await
    .context("warm-up sagas did not complete")?;

    let mut pids: Vec<(String, u32)> = stack_pids(config)
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
    pids.extend(roles.iter().map(|(n, c)| (n.to_string(), c.0.id())));
    pids.push(("load generator".into(), std::process::id()));
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|(_, p)| cpu_seconds(*p)).collect();

    let start = Instant::now();
    let accepted_at = drive(&http, &base, &all, b.concurrency).await?;
    let sending = start.elapsed();
    let accepted = accepted_at.iter().filter(|a| a.is_some()).count();
    let wanted_events: Vec<&str> = all
        .iter()
        .zip(&accepted_at)
        .filter(|(_, a)| a.is_some())
        .map(|(d, _)| d.event_id.as_str())
        .collect();
    let wanted_sagas: Vec<&str> = all
        .iter()
        .zip(&accepted_at)
        .filter(|(_, a)| a.is_some())
        .filter_map(|(d, _)| d.saga.as_deref())
        .collect();
    let done = wait_until(&seen, Duration::from_secs(600), |s| {
        wanted_events.iter().all(|e| s.events.contains_key(*e))
            && wanted_sagas.iter().all(|id| s.completed.contains_key(*id))
    })
    .await;
    let cpu_after: Vec<Option<f64>> = pids.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    watcher.abort();
    let seen = std::mem::take(&mut *seen.lock().expect("seen lock"));
    let last = all
        .iter()
        .filter_map(|d| {
            let e = seen.events.get(&d.event_id);
            let s = d.saga.as_ref().and_then(|id| seen.completed.get(id));
            e.max(s).copied()
        })
        .max()
        .unwrap_or_else(Instant::now);
    let (mut to_event, mut to_saga) = (Samples::default(), Samples::default());
    for (d, at) in all.iter().zip(&accepted_at) {
        let Some(at) = at else { continue };
        if let Some(t) = seen.events.get(&d.event_id) {
            to_event.record(t.saturating_duration_since(*at));
        }
        if let Some(t) = d.saga.as_ref().and_then(|id| seen.completed.get(id)) {
            to_saga.record(t.saturating_duration_since(*at));
        }
    }
    let rss: Vec<(&str, Option<f64>)> = roles.iter().map(|(n, c)| (*n, c.peak_rss_mib())).collect();
    drop(roles);

    let sustained = accepted as f64 / last.saturating_duration_since(start).as_secs_f64();
    println!("  raw producer (acks=all, same bodies)   {raw_rate:>9.0} records/s   (ceiling)");
    println!("  raw consume→produce passthrough        {pass_rate:>9.0} records/s   (ceiling)");
    println!(
        "  accepted by the gateway                {:>9.0} deliveries/s ({accepted} of {}, {:.1} s)",
        accepted as f64 / sending.as_secs_f64(),
        all.len(),
        sending.as_secs_f64()
    );
    println!(
        "  sustained through saga completion      {sustained:>9.0} deliveries/s  ratio {:.2} of raw producer, {:.2} of passthrough",
        sustained / raw_rate,
        sustained / pass_rate
    );
    println!(
        "  2xx → normalized event                 p50 {:>8.1} ms  p99 {:>8.1} ms  ({} events)",
        ms(to_event.quantile(0.5)),
        ms(to_event.quantile(0.99)),
        to_event.count()
    );
    println!(
        "  2xx → saga completed                   p50 {:>8.1} ms  p99 {:>8.1} ms  ({} of {sagas} sagas)",
        ms(to_saga.quantile(0.5)),
        ms(to_saga.quantile(0.99)),
        to_saga.count()
    );
    for (name, mib) in &rss {
        println!(
            "  peak RSS {name:<14}                {:>9.1} MiB",
            mib.unwrap_or(f64::NAN)
        );
    }
    let used: Vec<(String, f64)> = pids
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .filter_map(|((name, _), (b, a))| Some((name.clone(), (*a)? - (*b)?)))
        .collect();
    let total: f64 = used.iter().map(|(_, s)| s).sum();
    for (name, secs) in &used {
        println!(
            "  CPU {name:<16}                   {secs:>9.1} s   {:>5.1}%",
            100.0 * secs / total.max(f64::MIN_POSITIVE)
        );
    }

    if !b.keep {
        remove_scratch(config, &clients, &topology).await?;
        let _ = std::fs::remove_file(&file);
    }
    if let Err(e) = done {
        bail!(
            "{e}: {} of {} events and {} of {} sagas seen",
            to_event.count(),
            wanted_events.len(),
            to_saga.count(),
            wanted_sagas.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_until(
    seen: &Arc<Mutex<Seen>>,
    timeout: Duration,
    done: impl Fn(&Seen) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done(&seen.lock().expect("seen lock")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not everything arrived within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescoping_renames_topics_but_not_event_types() {
        let yaml = "prefix: sluice\ntopics:\n  - {name: sluice.raw.stripe}\nroutes:\n  - {event_type: dev.sluice.events.payments.PaymentSucceeded, topic: sluice.events.payments}\n";
        let out = rescoped(yaml, "e2e1");
        assert!(out.starts_with("prefix: e2e1\n"));
        assert!(out.contains("{name: e2e1.raw.stripe}"));
        assert!(out
            .contains("dev.sluice.events.payments.PaymentSucceeded, topic: e2e1.events.payments"));
        assert!(!out.contains(" sluice."));
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        assert!(cpu_seconds(std::process::id()).is_some_and(|s| s >= 0.0));
    }
}
