//! `sluice saga bench --peer restate`: the same order-fulfillment saga on Restate, a durable
//! execution engine, measured in the same run as sluice's, so the two can be compared on one
//! machine at one moment.
//!
//! The peer lives in `dev/restate/`: `package.json` and `package-lock.json` pin the Restate
//! server and TypeScript SDK from the npm registry, `services.mjs` holds the saga (an
//! orchestrator and the three demo participants, each a Restate service, so each step is a
//! durable call through the server like sluice's command/reply hop through Kafka), and `run`
//! installs them into the sluice cache on first use and starts them. This module starts the
//! server (data in a temporary directory) and the services as child processes on free
//! loopback ports, registers the deployment through the admin API, checks that a saga both
//! completes and compensates, then drives sagas through the HTTP ingress from this process
//! (each request returns when its saga is done: end to end as a client sees it):
//! - bursts of N sagas with 128 and then 512 in flight (the ingress needs a bounded number of
//!   open requests, where sluice takes N events at once), with the CPU each process used;
//! - light load: 4 sagas in flight, and the sagas-per-second pacing of sluice's paced phase.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};

use super::saga::{percentile, Run};
use super::{free_port, ChildProcess};

/// What `dev/restate/package-lock.json` pins, for the report.
const PINNED: &str = "restate-server 1.7.12, @restatedev/restate-sdk 1.17.2";
/// Sagas in flight during the bursts.
const BURSTS: [usize; 2] = [128, 512];
/// Sagas in flight at light load, and how many it runs.
const LIGHT_IN_FLIGHT: usize = 4;
const LIGHT_SAGAS: usize = 500;
/// Linux reports process CPU time in USER_HZ ticks, 100 per second on every architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// A saga engine run beside sluice by `sluice saga bench --peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// Restate 1.7 with its TypeScript SDK, installed from npm by `dev/restate/run`.
    Restate,
}

/// One burst: its run and the CPU each process used during it, in cores.
pub(super) struct Burst {
    pub(super) in_flight: usize,
    pub(super) run: Run,
    pub(super) server_cores: f64,
    pub(super) services_cores: f64,
}

/// Everything measured on the peer.
pub(super) struct Figures {
    pub(super) bursts: Vec<Burst>,
    /// `LIGHT_IN_FLIGHT` sagas in flight.
    pub(super) light: Run,
    /// Paced at sluice's paced rate, when it has one.
    pub(super) paced: Option<Run>,
    pub(super) node: String,
}

/// sluice's figures from the same run, for the ratio line.
pub(super) struct Beside<'a> {
    pub(super) burst: &'a Run,
    pub(super) paced: Option<&'a Run>,
    pub(super) paced_rate: usize,
}

/// Installs the peer when missing, starts it, measures it and stops it.
pub(super) async fn measure(
    dir: &Path,
    sagas: usize,
    paced_rate: usize,
) -> anyhow::Result<Figures> {
    let runner = dir.join("run");
    let status = tokio::task::block_in_place(|| Command::new(&runner).arg("install").status())
        .with_context(|| format!("running {} install", runner.display()))?;
    if !status.success() {
        bail!("{} install failed ({status})", runner.display());
    }
    let node = tokio::task::block_in_place(|| Command::new("node").arg("--version").output())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let peer = Restate::start(&runner).await?;
    let ingress = peer.ingress.clone();
    let prefix = format!("bench{}-", sluice_schemas::metadata::now_ms());
    ingress.check_shape(&format!("{prefix}check-")).await?;
    closed_loop(&ingress, &format!("{prefix}warm-"), sagas.min(1000), 128).await?;
    let mut bursts = vec![];
    for in_flight in BURSTS {
        let cpu = (cpu_seconds(&peer.server), cpu_seconds(&peer.services));
        let run = closed_loop(
            &ingress,
            &format!("{prefix}burst{in_flight}-"),
            sagas,
            in_flight,
        )
        .await?;
        let cores = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(b), Some(a)) => (a - b) / run.elapsed.as_secs_f64(),
            _ => f64::NAN,
        };
        bursts.push(Burst {
            in_flight,
            server_cores: cores(cpu.0, cpu_seconds(&peer.server)),
            services_cores: cores(cpu.1, cpu_seconds(&peer.services)),
            run,
        });
    }
    let light = closed_loop(
        &ingress,
        &format!("{prefix}light-"),
        LIGHT_SAGAS,
        LIGHT_IN_FLIGHT,
    )
    .await?;
    let paced = match paced_rate {
        0 => None,
        rate => Some(paced(&ingress, &format!("{prefix}paced-"), rate).await?),
    };
    drop(peer);
    Ok(Figures {
        bursts,
        light,
        paced,
        node,
    })
}

/// Prints the peer's figures and the ratios against sluice's from the same run.
pub(super) fn report(f: &Figures, sluice: &Beside<'_>) {
    println!(
        "peer restate ({PINNED} on Node {}; the same saga, participants as Restate services; driven over its HTTP ingress from this process, idempotency key = order id)",
        f.node
    );
    for b in &f.bursts {
        println!(
            "            burst, {} in flight: {}; CPU: server {:.0}% of a core, services {:.0}%",
            b.in_flight,
            b.run.describe(),
            100.0 * b.server_cores,
            100.0 * b.services_cores
        );
    }
    println!(
        "            light load, {LIGHT_IN_FLIGHT} in flight: {}",
        f.light.describe()
    );
    if let Some(p) = &f.paced {
        println!("            paced, {}/s for 5 s: {}", p.n / 5, p.describe());
    }
    let best = f.bursts.iter().map(|b| b.run.rate()).fold(0.0, f64::max);
    println!(
        "ratio       burst: sluice {:.1}× Restate ({:.0}/s against Restate's best, {:.0}/s)",
        sluice.burst.rate() / best,
        sluice.burst.rate(),
        best
    );
    let Some(s) = sluice.paced else { return };
    let ms = |r: &Run, p: f64| percentile(&r.latencies, p);
    let against = |how: String, r: &Run| {
        println!(
            "            end to end, sluice paced at {}/s against Restate {how}: p50 {:.0} / {:.0} ms ({:.1}×), p99 {:.0} / {:.0} ms ({:.1}×)",
            sluice.paced_rate,
            ms(s, 0.5),
            ms(r, 0.5),
            ms(s, 0.5) / ms(r, 0.5),
            ms(s, 0.99),
            ms(r, 0.99),
            ms(s, 0.99) / ms(r, 0.99)
        )
    };
    let light = format!("with {LIGHT_IN_FLIGHT} in flight ({:.0}/s)", f.light.rate());
    against(light, &f.light);
    if let Some(r) = &f.paced {
        // Below 90% of the asked rate, the peer queued: its latency is no longer light load's.
        let behind = match r.rate() < 0.9 * sluice.paced_rate as f64 {
            true => format!(", fell behind at {:.0}/s", r.rate()),
            false => String::new(),
        };
        against(format!("paced the same{behind}"), r);
    }
}

/// The Restate server and the saga's services, stopped and their data removed when dropped.
struct Restate {
    // Children before the data directory, so they stop before it goes.
    server: ChildProcess,
    services: ChildProcess,
    ingress: Ingress,
    _data: DataDir,
}

impl Restate {
    async fn start(runner: &Path) -> anyhow::Result<Self> {
        let data = DataDir(std::env::temp_dir().join(format!(
            "sluice-restate-{}-{}",
            std::process::id(),
            sluice_schemas::metadata::now_ms()
        )));
        std::fs::create_dir_all(&data.0)?;
        let (ingress_port, admin_port, node_port, services_port) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        let addr = |port: u16| format!("127.0.0.1:{port}");
        // One file for a child's stdout and stderr.
        let log = |name: &str| -> anyhow::Result<(Stdio, Stdio)> {
            let file = std::fs::File::create(data.0.join(name))?;
            Ok((file.try_clone()?.into(), file.into()))
        };
        let (server_out, server_err) = log("server.log")?;
        let (services_out, services_err) = log("services.log")?;
        let server = Command::new(runner)
            .args(["server", "--no-logo", "--node-name", "bench", "--base-dir"])
            .arg(&data.0)
            .env("RESTATE_INGRESS__BIND_ADDRESS", addr(ingress_port))
            .env("RESTATE_ADMIN__BIND_ADDRESS", addr(admin_port))
            .env("RESTATE_BIND_ADDRESS", addr(node_port))
            .env("RESTATE_LISTEN_MODE", "tcp")
            .env("RESTATE_DISABLE_TELEMETRY", "true")
            .env("RESTATE_LOG_DISABLE_ANSI_CODES", "true")
            .env("RESTATE_TRACING_FILTER", "warn")
            .stdout(server_out)
            .stderr(server_err)
            .spawn()
            .context("starting restate-server")?;
        let services = Command::new(runner)
            .args(["services", &services_port.to_string()])
            .stdout(services_out)
            .stderr(services_err)
            .spawn()
            .context("starting the saga's Restate services")?;
        let mut peer = Self {
            server: ChildProcess(server),
            services: ChildProcess(services),
            ingress: Ingress {
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()?,
                url: format!("http://{}", addr(ingress_port)),
            },
            _data: data,
        };
        let admin = format!("http://{}", addr(admin_port));
        peer.wait_until_up(&format!("{admin}/health"), services_port)
            .await?;
        let deployment = json!({"uri": format!("http://{}", addr(services_port))});
        let r = peer
            .ingress
            .http
            .post(format!("{admin}/deployments"))
            .json(&deployment)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "registering the saga's services with Restate: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(peer)
    }

    /// Waits for the admin API to answer and the services to listen (60 s at most).
    async fn wait_until_up(&mut self, health: &str, services_port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (child, log) in [
                (&mut self.server, "server.log"),
                (&mut self.services, "services.log"),
            ] {
                if let Some(status) = child.0.try_wait()? {
                    bail!(
                        "the Restate peer stopped ({status}); the end of its log:\n{}",
                        tail(&self._data.0.join(log))
                    );
                }
            }
            let admin_up = self
                .ingress
                .http
                .get(health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let services_up = tokio::net::TcpStream::connect(("127.0.0.1", services_port))
                .await
                .is_ok();
            if admin_up && services_up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the Restate peer was not up within 60 s; the end of its log:\n{}",
                    tail(&self._data.0.join("server.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// CPU time a child has used so far (all its threads, user and system), in seconds.
fn cpu_seconds(child: &ChildProcess) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.0.id())).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SECOND)
}

/// The Restate server's HTTP ingress.
#[derive(Clone)]
struct Ingress {
    http: reqwest::Client,
    url: String,
}

impl Ingress {
    /// Runs one saga for order `id` to its end and returns its result.
    async fn saga(&self, id: &str, skus: &[&str]) -> anyhow::Result<Value> {
        let skus: Vec<String> = skus.iter().map(|s| s.to_string()).collect();
        let r = self
            .http
            .post(format!("{}/OrderFulfillment/run", self.url))
            .header("idempotency-key", id)
            .json(&crate::cli::saga::demo_order(id, &skus))
            .send()
            .await
            .with_context(|| format!("saga {id} on Restate"))?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() {
            bail!("saga {id}: Restate answered {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("saga {id}: Restate answered {body}"))
    }

    /// One saga that must complete; returns how long it took.
    async fn completed(&self, id: String) -> anyhow::Result<f64> {
        let sent = Instant::now();
        let result = self.saga(&id, &["SKU-1"]).await?;
        if result["status"] != "completed" {
            bail!("saga {id} on Restate did not complete: {result}");
        }
        Ok(sent.elapsed().as_secs_f64() * 1000.0)
    }

    /// A saga completes with the three steps' results, and one whose shipment fails is
    /// compensated in reverse order; retried while the new deployment reaches the ingress.
    async fn check_shape(&self, prefix: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ok = loop {
            match self.saga(&format!("{prefix}ok"), &["SKU-1"]).await {
                Ok(v) => break v,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let steps = ["reserve-inventory", "charge-payment", "create-shipment"];
        if ok["status"] != "completed" || steps.iter().any(|s| ok["results"][s].is_null()) {
            bail!("Restate's saga did not complete its three steps: {ok}");
        }
        let undo = self
            .saga(&format!("{prefix}undo"), &["FAIL-SHIPPING"])
            .await?;
        let expected = json!({"status": "compensated", "failed": "create-shipment",
            "undone": ["charge-payment", "reserve-inventory"]});
        if ["status", "failed", "undone"]
            .iter()
            .any(|k| undo[k] != expected[k])
        {
            bail!("Restate's saga did not compensate as expected: {undo}");
        }
        Ok(())
    }
}

/// `n` sagas with at most `in_flight` at a time; the run lasts from the first sent to the
/// last completed.
async fn closed_loop(
    ingress: &Ingress,
    prefix: &str,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut latencies: Vec<f64> = stream::iter(0..n)
        .map(|i| ingress.completed(format!("{prefix}{i}")))
        .buffer_unordered(in_flight)
        .try_collect()
        .await?;
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    Ok(Run {
        n,
        elapsed,
        latencies,
    })
}

/// `rate` sagas per second for 5 s, `rate / 20` every 50 ms, as sluice's paced phase
/// publishes them, each sent without waiting for the others.
async fn paced(ingress: &Ingress, prefix: &str, rate: usize) -> anyhow::Result<Run> {
    let n = rate * 5;
    let per_tick = (rate / 20).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let started = Instant::now();
    let mut sagas = Vec::with_capacity(n);
    for first in (0..n).step_by(per_tick) {
        tick.tick().await;
        for i in first..(first + per_tick).min(n) {
            let ingress = ingress.clone();
            let id = format!("{prefix}{i}");
            sagas.push(tokio::spawn(async move { ingress.completed(id).await }));
        }
    }
    let mut latencies = Vec::with_capacity(n);
    for saga in sagas {
        latencies.push(saga.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    Ok(Run {
        n,
        elapsed,
        latencies,
    })
}

/// The peer's data directory, removed when dropped.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
