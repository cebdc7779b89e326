//! `sluice outbox init|relay`: the outbox table's DDL, and the relay that publishes it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_outbox::metrics::RelayMetrics;
use sluice_outbox::records::Routes;
use sluice_outbox::relay::{Relay, Settings};
use sluice_outbox::{create_statements, TableName};
use sluice_runtime::config::OutboxConfig;
use sluice_runtime::SluiceConfig;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Print the outbox table's DDL (idempotent `CREATE … IF NOT EXISTS`); `--apply` runs it
    /// against `outbox.dsn`.
    Init(InitArgs),
    /// Relay the outbox to Kafka until SIGTERM/SIGINT: exactly once, in order per aggregate.
    Relay(RelayArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Run the statements instead of printing them.
    #[arg(long)]
    pub apply: bool,
    /// The table (default: `outbox.table`).
    #[arg(long)]
    pub table: Option<String>,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    #[arg(long)]
    pub topology: Option<PathBuf>,
}

pub async fn run(config: &SluiceConfig, cmd: OutboxCommand) -> anyhow::Result<ExitCode> {
    let outbox = config.outbox.clone().unwrap_or_default();
    match cmd {
        OutboxCommand::Init(args) => init(&outbox, args).await,
        OutboxCommand::Relay(args) => relay(config, &outbox, args).await,
    }
}

async fn init(outbox: &OutboxConfig, args: InitArgs) -> anyhow::Result<ExitCode> {
    let table = TableName::parse(args.table.as_deref().unwrap_or(&outbox.table))?;
    let sql = create_statements(&table, outbox.lanes);
    if !args.apply {
        print!("{sql}");
        return Ok(ExitCode::SUCCESS);
    }
    let client = connect(outbox).await?;
    client
        .batch_execute(&sql)
        .await
        .with_context(|| format!("creating the outbox table {table}"))?;
    println!("outbox table {table} is ready");
    Ok(ExitCode::SUCCESS)
}

/// The connection string, which holds the password: never logged.
fn dsn(outbox: &OutboxConfig) -> anyhow::Result<String> {
    outbox
        .dsn
        .resolve()
        .context("reading outbox.dsn (set SLUICE_OUTBOX_DSN or outbox.dsn)")
}

/// A connection for one-off statements; the DSN (and its password) stays out of errors.
pub async fn connect(outbox: &OutboxConfig) -> anyhow::Result<tokio_postgres::Client> {
    let dsn = dsn(outbox)?;
    let config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e| anyhow::anyhow!("outbox.dsn is not a valid connection string ({e})"))?;
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the outbox database")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn relay(
    config: &SluiceConfig,
    outbox: &OutboxConfig,
    args: RelayArgs,
) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_config(outbox)?;
    let dsn = dsn(outbox)?;
    let (catalog, topology) = super::load(config, args.topology)?;
    let process = super::Process::start(config, "outbox", &[]).await?;
    let routes = Routes::resolve(&catalog, &process.registry, &topology)
        .await
        .context("resolving the routes' schemas")?;
    let metrics = RelayMetrics::new(&process.metrics_registry)?;
    let relay = Relay::new(
        settings,
        process.clients.clone(),
        routes,
        &topology.prefix,
        metrics,
    )
    .await
    .context("the outbox state topic (run `sluice topology apply`)")?;
    process.readiness.set("outbox", true);
    tracing::info!(table = %relay.settings.table, lanes = relay.settings.lanes, "outbox relay running");
    Arc::new(relay).run(dsn, process.shutdown.clone()).await;
    Ok(ExitCode::SUCCESS)
}
