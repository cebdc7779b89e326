//! `sluice doctor`: can this process reach the broker and the registry (and the outbox
//! database, when an outbox is configured), and what do they run?

use std::process::ExitCode;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_runtime::kafka::api_versions::{self, api_name};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_schemas::RegistryClient;

use super::START_STACK_HINT;

const TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(config: &SluiceConfig) -> anyhow::Result<ExitCode> {
    let kafka_ok = check_kafka(config).await;
    let registry_ok = check_registry(config).await;
    let outbox_ok = match &config.outbox {
        Some(outbox) => check_outbox(outbox).await,
        None => true,
    };
    if kafka_ok && registry_ok && outbox_ok {
        println!("\nall checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\nsome checks failed: {START_STACK_HINT}, or fix the addresses in the config");
        Ok(ExitCode::FAILURE)
    }
}

async fn check_kafka(config: &SluiceConfig) -> bool {
    let bootstrap = config.kafka.bootstrap_servers.clone();
    println!("kafka     {bootstrap}");
    let clients = KafkaClients::new(config.kafka.clone());
    let consumer: BaseConsumer = match clients.base("doctor").and_then(|c| {
        c.create()
            .map_err(|e| sluice_runtime::ConfigError::Invalid {
                origin: "kafka".into(),
                message: e.to_string(),
            })
    }) {
        Ok(c) => c,
        Err(e) => {
            println!("  FAIL    cannot create a Kafka client: {e}");
            return false;
        }
    };
    let metadata = tokio::task::spawn_blocking(move || {
        let md = consumer.fetch_metadata(None, TIMEOUT);
        let cluster = consumer.client().fetch_cluster_id(TIMEOUT);
        md.map(|m| {
            let brokers: Vec<String> = m
                .brokers()
                .iter()
                .map(|b| format!("{}@{}:{}", b.id(), b.host(), b.port()))
                .collect();
            (brokers, m.topics().len(), cluster)
        })
    })
    .await
    .expect("metadata task");
    match metadata {
        Ok((brokers, topics, cluster)) => {
            println!(
                "  ok      cluster id {}",
                cluster.as_deref().unwrap_or("(not reported)")
            );
            println!("  ok      brokers {}; {topics} topics", brokers.join(", "));
        }
        Err(e) => {
            println!("  FAIL    cannot reach Kafka at {bootstrap}: {e}");
            return false;
        }
    }
    let first = bootstrap
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    if config.kafka.properties.contains_key("security.protocol") {
        println!("  skip    ApiVersions probe (not done over SASL/SSL listeners)");
        return true;
    }
    match api_versions::probe(&first, TIMEOUT).await {
        Ok(apis) => {
            let features: Vec<String> = apis
                .finalized_features
                .iter()
                .map(|(n, l)| format!("{n}={l}"))
                .collect();
            println!(
                "  ok      {} APIs; finalized features: {}",
                apis.apis.len(),
                if features.is_empty() {
                    "none".into()
                } else {
                    features.join(", ")
                }
            );
            let needed = [0i16, 1, 3, 8, 21, 22, 24, 26, 28];
            let summary: Vec<String> = needed
                .iter()
                .map(|k| match apis.max_version(*k) {
                    Some(v) => format!("{} v{v}", api_name(*k)),
                    None => format!("{} MISSING", api_name(*k)),
                })
                .collect();
            println!("  ok      {}", summary.join(", "));
            let transactions = [22i16, 24, 26, 28]
                .iter()
                .all(|k| apis.max_version(*k).is_some());
            println!(
                "  {}      transactions (exactly-once) {}",
                if transactions { "ok" } else { "FAIL" },
                if transactions {
                    "supported"
                } else {
                    "NOT supported"
                }
            );
            transactions
        }
        Err(e) => {
            println!("  FAIL    ApiVersions: {e}");
            false
        }
    }
}

async fn check_registry(config: &SluiceConfig) -> bool {
    println!("registry  {}", config.registry.url);
    let client = match RegistryClient::new(&config.registry) {
        Ok(c) => c,
        Err(e) => {
            println!("  FAIL    {e}");
            return false;
        }
    };
    match client.subjects().await {
        Ok(subjects) => println!("  ok      reachable; {} subjects", subjects.len()),
        Err(e) => {
            println!(
                "  FAIL    cannot reach the schema registry at {}: {e}",
                client.url()
            );
            return false;
        }
    }
    match client.compatibility(None).await {
        Ok(level) => {
            println!("  ok      global compatibility {level}");
            true
        }
        Err(e) => {
            println!("  FAIL    cannot read the compatibility mode: {e}");
            false
        }
    }
}

/// The outbox database: reachable with `outbox.dsn`, its server version, and whether the
/// outbox table and its `_relayed` table exist. The DSN is never printed (it holds the password).
async fn check_outbox(outbox: &sluice_runtime::config::OutboxConfig) -> bool {
    println!("outbox    table {}", outbox.table);
    let client = match tokio::time::timeout(TIMEOUT, super::outbox::connect(outbox)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            println!("  FAIL    {}", crate::cli::error_text::chain(&e));
            return false;
        }
        Err(_) => {
            println!("  FAIL    the outbox database did not answer within {TIMEOUT:?}");
            return false;
        }
    };
    // As `TableName::relayed` names it (the name here need not be a valid `TableName`).
    let relayed_table = format!("{}_relayed", outbox.table);
    let facts = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('wal_level'), \
                    to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
            &[&outbox.table, &relayed_table],
        )
        .await;
    match facts {
        Ok(row) => {
            let (version, wal, exists, relayed): (String, String, bool, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            println!("  ok      PostgreSQL {version}, wal_level {wal}");
            match (exists, relayed) {
                (false, _) => println!(
                    "  FAIL    table {} does not exist: run `sluice outbox init --apply`",
                    outbox.table
                ),
                (true, true) => println!("  ok      tables {} and {relayed_table} exist", outbox.table),
                // Made by an older `sluice outbox init`: the relay works, without a bound.
                (true, false) => println!(
                    "  ok      table {} exists\n  warn    table {relayed_table} does not exist, so relay lanes keep every aggregate in memory: run `sluice outbox init --apply`",
                    outbox.table
                ),
            }
            exists
        }
        Err(e) => {
            println!("  FAIL    {e}");
            false
        }
    }
}
