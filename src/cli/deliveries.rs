//! `sluice deliveries list|show|resend|recover`: the delivery log of one endpoint, read
//! from Kafka (see `sluice_delivery::log` for what that costs), and sending events again.
//! `resend` and `recover` rebuild each task from its event (`sluice_delivery::resend`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use rdkafka::producer::FutureProducer;
use sluice_delivery::status::{DeliveryStatus, StatusRecord};
use sluice_delivery::{log, resend};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_schemas::metadata::{now_ms, parse_rfc3339_ms};
use sluice_schemas::{AvroCodec, RegistryClient};
use sluice_topology::naming;

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// The latest status of each delivery to an endpoint, oldest first.
    List {
        #[arg(long)]
        endpoint: String,
        /// Only deliveries updated since this time (RFC 3339, or a duration ago like `2h`).
        #[arg(long)]
        since: Option<String>,
        /// Only deliveries in this status (delivered, retrying, parked, failed, gone,
        /// endpoint_disabled).
        #[arg(long)]
        status: Option<DeliveryStatus>,
        /// One JSON status record per line.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        topology: Option<PathBuf>,
    },
    /// One delivery: its status and every attempt, as JSON.
    Show(OneDelivery),
    /// Deliver one event to the endpoint again: same webhook-id, a fresh schedule.
    Resend(OneDelivery),
    /// Deliver again every event recorded failed, gone or endpoint_disabled for the endpoint
    /// since a time (e.g. what arrived while it was disabled).
    Recover {
        #[arg(long)]
        endpoint: String,
        /// RFC 3339 time, or a duration ago like `2h`.
        #[arg(long)]
        since: String,
        /// Print what would be sent, send nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        topology: Option<PathBuf>,
    },
}

/// `--since` as epoch ms.
/// One delivery: an endpoint and an event.
#[derive(Debug, Args)]
pub struct OneDelivery {
    #[arg(long)]
    pub endpoint: String,
    /// The event's id (its webhook-id).
    #[arg(long)]
    pub event: String,
    #[arg(long)]
    pub topology: Option<PathBuf>,
}

fn parse_since(text: &str) -> anyhow::Result<jiff::Timestamp> {
    let ms = match parse_rfc3339_ms(text) {
        Some(ms) => ms,
        None => naming::parse_duration(text)
            .map(|d| now_ms() - d.as_millis() as i64)
            .map_err(|_| anyhow::anyhow!("--since: `{text}` is neither an RFC 3339 UTC time (2026-11-22T10:00:00Z) nor a duration (90m, 7d)"))?,
    };
    jiff::Timestamp::from_millisecond(ms)
        .map_err(|_| anyhow::anyhow!("--since: `{text}` is out of range"))
}

async fn statuses(
    clients: &KafkaClients,
    prefix: &str,
    endpoint: &str,
    since: Option<jiff::Timestamp>,
) -> anyhow::Result<Vec<StatusRecord>> {
    let (c, p, e) = (clients.clone(), prefix.to_string(), endpoint.to_string());
    Ok(tokio::task::spawn_blocking(move || log::statuses(&c, &p, &e, since)).await??)
}

async fn status_of(
    clients: &KafkaClients,
    prefix: &str,
    endpoint: &str,
    event: &str,
) -> anyhow::Result<StatusRecord> {
    statuses(clients, prefix, endpoint, None)
        .await?
        .into_iter()
        .find(|s| s.webhook_id == event)
        .with_context(|| {
            format!("no delivery of event `{event}` to endpoint `{endpoint}` is recorded")
        })
}

/// Sends deliveries again, each rebuilt from its event.
struct Resender {
    rebuild: resend::Resender,
    producer: FutureProducer,
}

impl Resender {
    fn new(config: &SluiceConfig, clients: &KafkaClients, prefix: &str) -> anyhow::Result<Self> {
        let codec = AvroCodec::new(RegistryClient::new(&config.registry)?);
        Ok(Self {
            rebuild: resend::Resender::new(clients.clone(), codec, prefix),
            producer: clients.producer("deliveries")?,
        })
    }

    async fn resend(&self, status: &StatusRecord) -> anyhow::Result<()> {
        let out = self.rebuild.task(status).await?;
        self.producer
            .send(out.record(), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("writing the task to {}: {e}", out.topic))?;
        Ok(())
    }
}

fn line(s: &StatusRecord) -> String {
    let code = s
        .last_status_code
        .map(|c| c.to_string())
        .unwrap_or_else(|| "-".into());
    format!(
        "{}  {:<17} attempts={} last={} {}  {}",
        s.updated_at,
        s.status.as_str(),
        s.attempts,
        code,
        s.webhook_id,
        s.event_type
    )
}

pub async fn run(config: &SluiceConfig, cmd: DeliveriesCommand) -> anyhow::Result<ExitCode> {
    let clients = KafkaClients::new(config.kafka.clone());
    match cmd {
        DeliveriesCommand::List {
            endpoint,
            since,
            status,
            json,
            topology,
        } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let (_, topology) = super::load(config, topology)?;
            for s in statuses(&clients, &topology.prefix, &endpoint, since).await? {
                if status.is_some_and(|w| s.status != w) {
                    continue;
                }
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    println!("{}", line(&s));
                }
            }
        }
        DeliveriesCommand::Show(OneDelivery {
            endpoint,
            event,
            topology,
        }) => {
            let (_, topology) = super::load(config, topology)?;
            let prefix = topology.prefix.clone();
            let status = status_of(&clients, &prefix, &endpoint, &event).await?;
            let (c, of) = (clients.clone(), status.clone());
            let attempts =
                tokio::task::spawn_blocking(move || log::attempts(&c, &prefix, &of)).await??;
            let shown = serde_json::json!({"status": status, "attempts": attempts});
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        DeliveriesCommand::Resend(OneDelivery {
            endpoint,
            event,
            topology,
        }) => {
            let (_, topology) = super::load(config, topology)?;
            let status = status_of(&clients, &topology.prefix, &endpoint, &event).await?;
            Resender::new(config, &clients, &topology.prefix)?
                .resend(&status)
                .await?;
            println!("resent {event} to {endpoint}");
        }
        DeliveriesCommand::Recover {
            endpoint,
            since,
            dry_run,
            topology,
        } => {
            let since = parse_since(&since)?;
            let (_, topology) = super::load(config, topology)?;
            let due: Vec<StatusRecord> =
                statuses(&clients, &topology.prefix, &endpoint, Some(since))
                    .await?
                    .into_iter()
                    .filter(|s| s.status.is_recoverable())
                    .collect();
            let resender = Resender::new(config, &clients, &topology.prefix)?;
            let mut failed = 0;
            for s in &due {
                if dry_run {
                    println!("would resend {}", line(s));
                    continue;
                }
                match resender.resend(s).await {
                    Ok(()) => println!("resent {}", line(s)),
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {}", crate::cli::error_text::chain(&e));
                    }
                }
            }
            println!("{} of {} deliveries resent", due.len() - failed, due.len());
            if failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
