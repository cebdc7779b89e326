//! `sluice bench poll`: a backfill of N items (1,000,000 by default) from the local list API
//! (`dev/api.py --generated N`) into a raw topic of its own, by `sluice poll` as a process.
//!
//! Each run, on fresh topics:
//! 1. **API ceiling**: the same pages fetched by a plain HTTP client that does nothing with
//!    them: the API's own serving rate on this machine, now.
//! 2. **Backfill**, once per `--pages-per-transaction` and `--overlap-commit` value:
//!    `sluice poll` from the first item to the last (the pages of a Kafka transaction with
//!    their (id, version) pairs and the cursor of the last one, committed before or while the
//!    next page is fetched): items/s, its ratio to the ceiling, and the poller's
//!    resident memory sampled through the backfill (flat: the (id, version) store keeps
//!    only what the lookback can return again).
//! 3. **Resume** (first run only), once per setting: a second backfill SIGKILLed half-way and
//!    started again: how many items the API served twice, in pages, and that every item is
//!    written.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_schemas::{Catalog, RegistryClient};
use sluice_topology::Topology;

use super::{deploy_scratch, free_port, remove_scratch, spawn_self, ChildProcess};

#[derive(Debug, Args)]
pub struct PollBench {
    /// Items of the backfill.
    #[arg(long, default_value_t = 1_000_000)]
    pub items: usize,
    /// Items per page.
    #[arg(long, default_value_t = 1_000)]
    pub page_size: usize,
    /// Runs (each with its own ceiling and backfills).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The source's `pages_per_transaction`, a backfill for each value in every run.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    pub pages_per_transaction: Vec<u32>,
    /// The source's `overlap_commit`, a backfill for each value with each
    /// `--pages-per-transaction`.
    #[arg(long, value_delimiter = ',', default_value = "false,true")]
    pub overlap_commit: Vec<bool>,
    /// The list API script.
    #[arg(long, default_value = "dev/api.py")]
    pub api: String,
    /// Keep the runs' topics.
    #[arg(long)]
    pub keep: bool,
}

/// `dev/api.py --generated N` on a free port.
struct Api {
    _child: ChildProcess,
    base: String,
}

impl Api {
    async fn start(script: &str, items: usize) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = std::process::Command::new("python3")
            .args([script, "--port", &port.to_string(), "--items", "0"])
            .args(["--generated", &items.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting python3 {script}"))?;
        let api = Self {
            _child: ChildProcess(child),
            base: format!("http://127.0.0.1:{port}"),
        };
        let end = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/_admin/stats", api.base))
            .await
            .is_err()
        {
            if Instant::now() > end {
                bail!("{script} did not start listening");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(api)
    }

    async fn items_served(&self) -> anyhow::Result<u64> {
        let stats: serde_json::Value = reqwest::get(format!("{}/_admin/stats", self.base))
            .await?
            .json()
            .await?;
        Ok(stats["items_served"].as_u64().unwrap_or(0))
    }
}

/// Every page fetched by a client that does nothing else: items per second.
async fn api_ceiling(api: &Api, page_size: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut cursor: Option<String> = None;
    let mut items = 0usize;
    loop {
        let mut url = format!("{}/cursor/items?limit={page_size}", api.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = http.get(&url).send().await?.json().await?;
        items += page["data"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    Ok(items as f64 / started.elapsed().as_secs_f64())
}

/// A backfill's transaction settings: `pages_per_transaction` and `overlap_commit`.
#[derive(Debug, Clone, Copy)]
struct Commits {
    per_tx: u32,
    overlap: bool,
}

impl std::fmt::Display for Commits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let overlap = if self.overlap { ", overlapped" } else { "" };
        write!(f, "{} page(s) per transaction{overlap}", self.per_tx)
    }
}

fn topology_yaml(prefix: &str, api: &Api, page_size: usize, commits: Commits) -> String {
    format!(
        "prefix: {prefix}\ntopics:\n  - {{name: {prefix}.raw.backfill, partitions: 6}}\nsources:\n  - name: backfill\n    raw_topic: {prefix}.raw.backfill\n    poll: {{url: '{}/cursor/items', interval: 1h, items: data, version: updated_at, \
         since: {{param: updated_since, lookback: 60s, start: '2000-01-01T00:00:00Z'}}, \
         pagination: {{type: cursor, param: cursor, path: next_cursor}}, page_size: {{param: limit, value: {page_size}}}, \
         pages_per_transaction: {}, overlap_commit: {}}}\n",
        api.base, commits.per_tx, commits.overlap
    )
}

/// A `sluice poll` process with its admin port.
struct Poller {
    child: ChildProcess,
    admin: String,
}

impl Poller {
    fn start(topology: &std::path::Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let path = topology.display().to_string();
        let child = spawn_self(
            &[
                "poll",
                "--outbound-allow",
                "127.0.0.1/32",
                "--topology",
                &path,
            ],
            &[
                ("SLUICE_ADMIN__LISTEN", format!("127.0.0.1:{port}")),
                // `sluice_poll=debug` shows where each transaction's time goes.
                (
                    "RUST_LOG",
                    std::env::var("SLUICE_BENCH_POLL_LOG").unwrap_or_else(|_| "warn".into()),
                ),
            ],
        )?;
        Ok(Self {
            child,
            admin: format!("http://127.0.0.1:{port}"),
        })
    }

    /// `sluice_poll_items_total` (0 until the admin server answers).
    async fn items(&self) -> f64 {
        let Ok(r) = reqwest::get(format!("{}/metrics", self.admin)).await else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("sluice_poll_items_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn rss_mib(&self) -> Option<f64> {
        self.child.rss_mib()
    }

    fn kill(mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}

/// What one backfill measured.
struct Backfill {
    items_per_sec: f64,
    /// RSS at 10%, 25%, 50%, 75% and 100% of the items.
    rss: Vec<f64>,
}

/// Waits until `poller` wrote `until` items (of `total`), sampling its rate and memory.
async fn follow(poller: &Poller, until: usize, total: usize) -> anyhow::Result<Backfill> {
    let marks = [0.10, 0.25, 0.50, 0.75, 1.0];
    let mut rss = Vec::new();
    let mut first: Option<(Instant, f64)> = None;
    let mut last_progress = (Instant::now(), 0.0);
    loop {
        let n = poller.items().await;
        let now = Instant::now();
        if n > 0.0 && first.is_none() {
            first = Some((now, n));
        }
        while rss.len() < marks.len() && n >= marks[rss.len()] * total as f64 {
            rss.push(poller.rss_mib().unwrap_or(f64::NAN));
        }
        if n >= until as f64 {
            let (t0, n0) = first.unwrap_or((now, 0.0));
            let secs = now.duration_since(t0).as_secs_f64().max(1e-3);
            return Ok(Backfill {
                items_per_sec: (n - n0) / secs,
                rss,
            });
        }
        if n > last_progress.1 {
            last_progress = (now, n);
        } else if now.duration_since(last_progress.0) > Duration::from_secs(60) {
            bail!("the backfill stalled at {n} of {until} items");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(config: &SluiceConfig, b: PollBench) -> anyhow::Result<ExitCode> {
    println!(
        "poll backfill: {} items, {} per page, {} runs",
        b.items, b.page_size, b.runs
    );
    let settings: Vec<Commits> = b
        .pages_per_transaction
        .iter()
        .flat_map(|&per_tx| {
            b.overlap_commit
                .iter()
                .map(move |&overlap| Commits { per_tx, overlap })
        })
        .collect();
    let mut ratios = vec![Vec::new(); settings.len()];
    for run in 1..=b.runs {
        let api = Api::start(&b.api, b.items).await?;
        let ceiling = api_ceiling(&api, b.page_size).await?;
        println!("run {run}: API serves {ceiling:.0} items/s alone");
        for (i, &commits) in settings.iter().enumerate() {
            let ratio = backfill(config, &api, &b, commits, ceiling).await?;
            ratios[i].push(ratio);
        }
        if run == 1 {
            for &commits in &settings {
                resume(config, &api, &b, commits).await?;
            }
        }
    }
    for (ratios, commits) in ratios.iter_mut().zip(&settings) {
        ratios.sort_by(f64::total_cmp);
        println!(
            "{commits}: ratio to the API's own rate: median {:.2} (target >= 0.7)",
            ratios[ratios.len() / 2]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A deployed scratch topology holding the backfill source, and its file.
struct Scratch {
    clients: KafkaClients,
    topology: Topology,
    prefix: String,
    file: std::path::PathBuf,
}

impl Scratch {
    async fn deploy(
        config: &SluiceConfig,
        api: &Api,
        b: &PollBench,
        commits: Commits,
        stem: &str,
    ) -> anyhow::Result<Self> {
        let clients = KafkaClients::new(config.kafka.clone());
        let registry = RegistryClient::new(&config.registry)?;
        let catalog = Catalog::embedded()?;
        let types = catalog.event_types().map(str::to_string).collect();
        let prefix = format!("{stem}{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let yaml = topology_yaml(&prefix, api, b.page_size, commits);
        let topology = Topology::parse("bench-poll.yaml", &yaml, &types)?;
        deploy_scratch(&clients, &registry, &catalog, &topology).await?;
        let file = std::env::temp_dir().join(format!("{prefix}.yaml"));
        std::fs::write(&file, &yaml)?;
        Ok(Self {
            clients,
            topology,
            prefix,
            file,
        })
    }

    async fn remove(self, config: &SluiceConfig, keep: bool) -> anyhow::Result<()> {
        if !keep {
            remove_scratch(config, &self.clients, &self.topology).await?;
        }
        let _ = std::fs::remove_file(&self.file);
        Ok(())
    }
}

/// One backfill on fresh topics: its ratio to `ceiling`.
async fn backfill(
    config: &SluiceConfig,
    api: &Api,
    b: &PollBench,
    commits: Commits,
    ceiling: f64,
) -> anyhow::Result<f64> {
    let scratch = Scratch::deploy(config, api, b, commits, "benchpoll").await?;
    let poller = Poller::start(&scratch.file)?;
    let backfill = follow(&poller, b.items, b.items).await;
    poller.kill();
    let backfill = backfill?;
    let ratio = backfill.items_per_sec / ceiling;
    let rss: Vec<String> = backfill.rss.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "  {commits}: sluice poll writes {:.0} items/s ({:.2} of it); RSS MiB at 10/25/50/75/100%: {}",
        backfill.items_per_sec,
        ratio,
        rss.join(" / ")
    );
    scratch.remove(config, b.keep).await?;
    Ok(ratio)
}

/// A backfill SIGKILLed half-way and started again: items served twice, in pages.
async fn resume(
    config: &SluiceConfig,
    api: &Api,
    b: &PollBench,
    commits: Commits,
) -> anyhow::Result<()> {
    let scratch = Scratch::deploy(config, api, b, commits, "benchpollr").await?;
    let served_before = api.items_served().await?;
    let first = Poller::start(&scratch.file)?;
    follow(&first, b.items / 2, b.items).await?;
    first.kill(); // SIGKILL, mid-backfill
    let killed = Instant::now();
    let second = Poller::start(&scratch.file)?;
    while second.items().await < 1.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed_in = killed.elapsed();
    // Done when the second process stops writing.
    let mut last = (Instant::now(), 0.0);
    while last.0.elapsed() < Duration::from_secs(3) {
        let n = second.items().await;
        if n > last.1 {
            last = (Instant::now(), n);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.kill();
    let served = api.items_served().await? - served_before;
    let raw = format!("{}.raw.backfill", scratch.prefix);
    let c = scratch.clients.clone();
    let (records, distinct) = tokio::task::spawn_blocking(move || count_items(&c, &raw)).await??;
    let again = served as i64 - b.items as i64;
    println!(
        "  resume ({commits}) after a SIGKILL half-way: writing again {:.1} s after the kill; items served twice {again} ({:.2} pages); raw topic: {records} records, {distinct} distinct items of {}",
        resumed_in.as_secs_f64(),
        again as f64 / b.page_size as f64,
        b.items
    );
    scratch.remove(config, b.keep).await
}

/// Committed records of `topic` and how many distinct keys (item ids) they have.
fn count_items(clients: &KafkaClients, topic: &str) -> anyhow::Result<(usize, usize)> {
    let mut keys = std::collections::HashSet::new();
    let records = sluice_stream::state::kafka::read_partitions(
        clients,
        topic,
        &(0..6).collect::<Vec<_>>(),
        |_, key, _| {
            keys.insert(key.to_vec());
        },
    )?;
    Ok((records, keys.len()))
}
