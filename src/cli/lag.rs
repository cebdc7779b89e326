//! `sluice lag`: consumer lag of every group on the cluster, as a table, JSON, a live view
//! (`--watch`) or a Prometheus exporter (`--export`).
//!
//! Status is evaluated over a window of samples, so even a one-shot run samples the cluster
//! `--window` times, `--interval` apart (by default 3 samples 1 s apart: about 2 s).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_ops::lag::history::Estimate;
use sluice_ops::lag::{self, GroupFilter, LagMetrics, LagMonitor, LagReport};
use sluice_runtime::admin::{self, Readiness};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::{Shutdown, SluiceConfig};
use sluice_topology::naming::parse_duration;

#[derive(Debug, Args)]
pub struct LagArgs {
    /// Only these groups: exact names, or prefixes written `prefix*`. Repeatable.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Refresh every --interval (in place on a terminal) until interrupted.
    #[arg(long, conflicts_with = "export")]
    pub watch: bool,
    /// JSON instead of a table (one document per line with --watch).
    #[arg(long, conflicts_with = "export")]
    pub json: bool,
    /// Serve the lag metrics on the admin server (`admin.listen`) until SIGTERM/SIGINT.
    #[arg(long)]
    pub export: bool,
    /// Time between samples [default: 1s one-shot, 5s with --watch, 30s with --export].
    #[arg(long, value_parser = duration)]
    pub interval: Option<Duration>,
    /// Samples in a status window [default: 3 one-shot, 10 with --watch or --export].
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..))]
    pub window: Option<u16>,
}

/// Samples a one-shot run takes: enough for a trend, short enough to wait for.
const ONE_SHOT_WINDOW: usize = 3;

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|d| {
        if d.is_zero() {
            Err("the interval must be above zero".into())
        } else {
            Ok(d)
        }
    })
}

pub async fn run(config: &SluiceConfig, args: LagArgs) -> anyhow::Result<ExitCode> {
    let (default_interval, default_window) = if args.export {
        (Duration::from_secs(30), lag::tracker::DEFAULT_WINDOW)
    } else if args.watch {
        (Duration::from_secs(5), lag::tracker::DEFAULT_WINDOW)
    } else {
        (Duration::from_secs(1), ONE_SHOT_WINDOW)
    };
    let interval = args.interval.unwrap_or(default_interval);
    let window = args.window.map_or(default_window, usize::from);
    let clients = KafkaClients::new(config.kafka.clone());
    let monitor = LagMonitor::new(clients, GroupFilter::new(args.groups), window)
        .context("creating the lag collector")?;
    let shutdown = Shutdown::on_signals();
    if args.export {
        return export(config, monitor, interval, shutdown).await;
    }
    if args.watch {
        return watch(monitor, interval, args.json, shutdown).await;
    }
    let mut monitor = monitor;
    let report = monitor
        .sample_window(interval, &shutdown)
        .await
        .context("collecting consumer lag")?;
    print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

async fn export(
    config: &SluiceConfig,
    monitor: LagMonitor,
    interval: Duration,
    shutdown: Shutdown,
) -> anyhow::Result<ExitCode> {
    let registry = prometheus::Registry::new();
    let metrics = LagMetrics::new(&registry)?;
    let readiness = Readiness::default();
    let addr = admin::serve(
        &config.admin.listen,
        registry,
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("starting the admin server on {}", config.admin.listen))?;
    tracing::info!(%addr, ?interval, "lag exporter running");
    lag::run_exporter(monitor, metrics, interval, readiness, shutdown).await;
    Ok(ExitCode::SUCCESS)
}

async fn watch(
    mut monitor: LagMonitor,
    interval: Duration,
    json: bool,
    shutdown: Shutdown,
) -> anyhow::Result<ExitCode> {
    let in_place = !json && std::io::stdout().is_terminal();
    loop {
        let report = monitor.sample().await.context("collecting consumer lag")?;
        if in_place {
            // Home the cursor and clear the screen, so each pass replaces the previous one.
            print!("\x1b[H\x1b[2J");
        }
        print(&report, json)?;
        if !json && !in_place {
            println!();
        }
        std::io::stdout().flush()?;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn print(report: &LagReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", table(report));
    }
    Ok(())
}

/// The report as text: a header line and a table per group.
fn table(report: &LagReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if report.groups.is_empty() {
        out.push_str("no consumer groups\n");
    }
    for g in &report.groups {
        let members = match g.members {
            1 => "1 member".to_string(),
            n => format!("{n} members"),
        };
        let window = if g.complete {
            String::new()
        } else {
            let samples = g.partitions.iter().map(|p| p.samples).min().unwrap_or(0);
            format!(" (window {samples}/{} samples)", report.window)
        };
        let _ = writeln!(
            out,
            "GROUP {}  {}, {members}  status {}{window}",
            g.group, g.state, g.status
        );
        if let Some(e) = &g.error {
            let _ = writeln!(out, "  error: {e}");
        }
        let mut rows = vec![[
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "LOG-END",
            "LAG",
            "TIME-LAG",
            "STATUS",
            "OWNER",
        ]
        .map(String::from)];
        for p in &g.partitions {
            rows.push([
                p.topic.clone(),
                p.partition.to_string(),
                p.committed_offset.to_string(),
                opt(p.log_end_offset),
                opt(p.lag),
                time_lag(p.lag_seconds, p.lag_seconds_estimate),
                p.status.to_string(),
                p.owner.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        let widths: Vec<usize> = (0..8)
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
        }
        for p in g.partitions.iter().filter(|p| p.waits_on_transaction) {
            if let Some(note) = transaction_wait(report, p) {
                let _ = writeln!(out, "  {note}");
            }
        }
        out.push('\n');
    }
    out
}

/// A note under a group's table for a partition whose lag waits behind a transaction seen
/// open over more than one pass: on a busy exactly-once topic some transaction is open at
/// any instant, and each commit moves the stable offset on.
fn transaction_wait(report: &LagReport, p: &lag::report::PartitionLag) -> Option<String> {
    let open = report
        .topics
        .iter()
        .find(|t| t.topic == p.topic && t.partition == p.partition)
        .and_then(|t| t.open_transaction_seconds)
        .filter(|s| *s > 0.0)?;
    let mut note = format!(
        "{}/{}: read up to offset {}; the rest waits behind a transaction still open there \
         (seen open for {})",
        p.topic,
        p.partition,
        opt(p.stable_offset),
        time_lag(Some(open), None)
    );
    if open >= lag::open_transactions::HANGING_AFTER_SECONDS {
        note.push_str(
            "; longer than any transaction may last: a hanging transaction? \
             `kafka-transactions.sh find-hanging` names it, `kafka-transactions.sh abort` ends it",
        );
    }
    Some(note)
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// `12.5s`, `3m05s`, `2h01m`; `~` marks an extrapolation, `>=` a lower bound.
fn time_lag(seconds: Option<f64>, estimate: Option<Estimate>) -> String {
    let Some(s) = seconds else {
        return "-".into();
    };
    let mark = match estimate {
        Some(Estimate::Extrapolated) => "~",
        Some(Estimate::LowerBound) => ">=",
        _ => "",
    };
    let whole = s.round() as u64;
    let text = if s < 60.0 {
        format!("{s:.1}s")
    } else if whole < 3_600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3_600, whole % 3_600 / 60)
    };
    format!("{mark}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_waiting_on_a_transaction_gets_a_note() {
        use sluice_ops::lag::collect::{GroupOffsets, PartitionOffsets, Snapshot};
        let tp = ("orders".to_string(), 2);
        let snapshot = |at_ms| Snapshot {
            taken_at_ms: at_ms,
            groups: vec![GroupOffsets {
                group: "g".into(),
                state: "Empty".into(),
                committed: [(tp.clone(), 40)].into(),
                ..GroupOffsets::default()
            }],
            partitions: [(
                tp.clone(),
                PartitionOffsets {
                    oldest: Some(0),
                    log_end: Some(55),
                    stable_end: Some(40),
                },
            )]
            .into(),
            settled: Default::default(),
        };
        let mut tracker = lag::tracker::Tracker::new(2);
        let first = table(&tracker.observe(&snapshot(0)));
        assert!(
            !first.contains("waits behind"),
            "one sighting is no wait yet: {first}"
        );
        let text = table(&tracker.observe(&snapshot(1_000_000)));
        assert!(
            text.contains(
                "orders/2: read up to offset 40; the rest waits behind a transaction still open \
                 there (seen open for 16m40s); longer than any transaction may last"
            ),
            "{text}"
        );
    }

    #[test]
    fn time_lags_read_at_a_glance() {
        assert_eq!(time_lag(None, None), "-");
        assert_eq!(time_lag(Some(0.0), Some(Estimate::Exact)), "0.0s");
        assert_eq!(time_lag(Some(12.46), Some(Estimate::Interpolated)), "12.5s");
        assert_eq!(
            time_lag(Some(185.0), Some(Estimate::Extrapolated)),
            "~3m05s"
        );
        assert_eq!(
            time_lag(Some(7_290.0), Some(Estimate::LowerBound)),
            ">=2h01m"
        );
    }
}
