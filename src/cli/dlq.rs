//! `sluice dlq …`: what is in a dead-letter topic, one record in detail, replay, purge.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use sluice_ops::dlq::{self, Filter};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_schemas::json::to_json_with_schema;
use sluice_schemas::metadata::{now_ms, parse_rfc3339_ms, rfc3339_ms};
use sluice_schemas::{AvroCodec, RecordLocation, RegistryClient};
use sluice_topology::naming;

use super::printable;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GroupBy {
    Error,
    OriginalTopic,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Counts and a sample position per error class (or original topic).
    List {
        topic: String,
        #[arg(long, value_enum, default_value = "error")]
        group_by: GroupBy,
        /// Fail when the topic is not read to its end within this long.
        #[arg(long, default_value = "120s")]
        scan_timeout: String,
    },
    /// One dead letter: provenance, error, headers and decoded payload.
    Show {
        topic: String,
        /// `PARTITION:OFFSET`
        position: String,
    },
    /// Send dead letters back to their original topic (or --to). Each record is replayed
    /// at most once, even across interrupted runs.
    Replay {
        topic: String,
        /// `error_class=NAME`
        #[arg(long)]
        filter: Option<String>,
        /// Only records dead-lettered since this time (RFC 3339, or a duration ago like `2h`).
        #[arg(long)]
        since: Option<String>,
        /// Replay every record to this topic instead of its original one. It must be a
        /// topic of the topology, unless --force.
        #[arg(long)]
        to: Option<String>,
        /// Replay to topics the topology does not declare (--to, or original topics).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Reading the dead letters and the replay markers must reach their end within this
        /// long each; otherwise the replay fails before sending anything (an incomplete set of
        /// markers would replay records twice).
        #[arg(long, default_value = "120s")]
        scan_timeout: String,
    },
    /// Delete records older than a time with Kafka's DeleteRecords.
    Purge {
        topic: String,
        /// RFC 3339 time, or a duration ago like `7d`.
        #[arg(long)]
        before: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `--scan-timeout`.
fn scan_limit(text: &str) -> anyhow::Result<std::time::Duration> {
    naming::parse_duration(text).map_err(|e| anyhow::anyhow!("--scan-timeout: {e}"))
}

/// `2026-11-22T10:00:00Z` or `90m` (that long ago).
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Some(ms) = parse_rfc3339_ms(text) {
        return Ok(ms);
    }
    naming::parse_duration(text)
        .map(|d| now_ms() - d.as_millis() as i64)
        .map_err(|_| anyhow::anyhow!("`{text}` is neither an RFC 3339 UTC time (2026-11-22T10:00:00Z) nor a duration (90m, 7d)"))
}

pub async fn run(config: &SluiceConfig, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let clients = KafkaClients::new(config.kafka.clone());
    match cmd {
        DlqCommand::List {
            topic,
            group_by,
            scan_timeout,
        } => {
            let limit = scan_limit(&scan_timeout)?;
            let c = clients.clone();
            let t = topic.clone();
            let records = tokio::task::spawn_blocking(move || dlq::scan(&c, &t, limit)).await??;
            let groups = dlq::group_by(&records, matches!(group_by, GroupBy::OriginalTopic));
            let label = match group_by {
                GroupBy::Error => "error class",
                GroupBy::OriginalTopic => "original topic",
            };
            println!("{topic}: {} dead letters", records.len());
            println!("{label:<40} {:>8}  sample", "count");
            for (k, (n, sample)) in groups {
                // Error classes and original topics are header text, written by anyone.
                let k = printable::line(&k);
                println!("{k:<40} {n:>8}  {sample}");
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { topic, position } => {
            let (p, o) = position
                .split_once(':')
                .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)))
                .with_context(|| format!("`{position}` is not PARTITION:OFFSET"))?;
            let c = clients.clone();
            let t = topic.clone();
            let d = tokio::task::spawn_blocking(move || dlq::fetch(&c, &t, p, o)).await??;
            println!("position      {}", d.position());
            if let Some(ts) = d.timestamp_ms {
                println!("dead-lettered {}", rfc3339_ms(ts));
            }
            println!(
                "original      {}/{}@{}",
                printable::line(&d.original_topic().unwrap_or_else(|| "?".into())),
                d.original_partition().map_or("?".into(), |x| x.to_string()),
                d.original_offset().map_or("?".into(), |x| x.to_string())
            );
            println!(
                "error         {}: {}",
                printable::line(&d.error_class()),
                printable::text(&d.error_message())
            );
            println!(
                "attempts      {}",
                d.attempts().map_or("?".into(), |a| a.to_string())
            );
            println!(
                "key           {}",
                d.key.as_deref().map_or("(none)".into(), printable::bytes)
            );
            println!("headers");
            for (k, v) in d.readable_headers() {
                println!(
                    "  {}: {}",
                    printable::line(&k),
                    printable::text(&v).replace('\n', "\n    ")
                );
            }
            println!("payload");
            let value = d.value.clone().unwrap_or_default();
            if value.first() == Some(&0) && value.len() > 5 {
                let codec = AvroCodec::new(RegistryClient::new(&config.registry)?);
                let at = RecordLocation::new(&d.topic, d.partition, d.offset);
                match codec.decode(&value, &at).await {
                    Ok(decoded) => {
                        let schema = codec.writer_schema(decoded.schema_id, &at).await?;
                        let json = to_json_with_schema(&decoded.value, &schema);
                        println!("{}", printable::json(&json, true));
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) => println!(
                        "  (not decodable as Avro: {})",
                        printable::line(&e.to_string())
                    ),
                }
            }
            // Control characters escaped, newlines kept; bytes that are not UTF-8 as \xNN.
            if std::str::from_utf8(&value).is_err() {
                println!("  ({} bytes, not UTF-8)", value.len());
            }
            println!("{}", printable::bytes(&value));
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay {
            topic,
            filter,
            since,
            to,
            force,
            dry_run,
            topology,
            scan_timeout,
        } => {
            let scan_limit = scan_limit(&scan_timeout)?;
            let mut f = Filter::default();
            if let Some(spec) = filter {
                match spec.split_once('=') {
                    Some(("error_class", v)) => f.error_class = Some(v.to_string()),
                    _ => bail!("--filter `{spec}`: expected error_class=NAME"),
                }
            }
            if let Some(s) = since {
                f.since_ms = Some(parse_time(&s)?);
            }
            let (_, topo) = super::load(config, topology)?;
            let markers = naming::state_topic(&topo.prefix, "dlq-replays");
            let bar = std::io::stderr().is_terminal().then(|| {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} replayed ({eta} left)",
                    )
                    .expect("progress template"),
                );
                b
            });
            let destinations = dlq::Destinations {
                prefix: topo.prefix.clone(),
                topics: topo.topics.iter().map(|t| t.name.clone()).collect(),
                force,
            };
            let plan = dlq::ReplayPlan {
                topic: &topic,
                marker_topic: &markers,
                filter: &f,
                to: to.as_deref(),
                dry_run,
                destinations: &destinations,
                scan_limit,
            };
            let report = dlq::replay(&clients, &plan, |done, total| {
                if let Some(b) = &bar {
                    b.set_length(total as u64);
                    b.set_position(done as u64);
                }
            })
            .await?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            println!(
                "{}{} replayed, {} already replayed before, {} not matching the filter",
                if dry_run { "dry run: would have " } else { "" },
                report.replayed,
                report.already_replayed,
                report.filtered_out
            );
            if report.truncated.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "{} dead letters were not replayed: their payload was cut to fit the DLQ (replay the original instead, see docs/runbook.md, \"Oversized and refused records\"):",
                report.truncated.len()
            );
            for (position, original) in &report.truncated {
                eprintln!("  {position}: the whole original is at {original}");
            }
            Ok(ExitCode::FAILURE)
        }
        DlqCommand::Purge { topic, before, yes } => {
            let before_ms = parse_time(&before)?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!("purge deletes data: confirm on a terminal or pass --yes");
                }
                print!(
                    "delete every record of {topic} older than {}? [y/N] ",
                    rfc3339_ms(before_ms)
                );
                std::io::stdout().flush()?;
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    println!("nothing deleted");
                    return Ok(ExitCode::FAILURE);
                }
            }
            let done = dlq::purge(&clients, &topic, before_ms).await?;
            if done.is_empty() {
                println!("nothing older than {} in {topic}", rfc3339_ms(before_ms));
            }
            for (p, upto) in done {
                println!("{topic}/{p}: records before offset {upto} deleted");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
