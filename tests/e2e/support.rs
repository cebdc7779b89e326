//! Shared set-up: the stack's addresses, a guard that fails loudly when the stack is down,
//! and helpers for unique topic names.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_runtime::config::{KafkaConfig, RegistryConfig};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;

pub const STACK_HINT: &str =
    "the sluice test stack is not running: run `make test` (it starts the stack), or `make stack` before `cargo test`";

/// The configuration the tests use: the local stack, overridable like any sluice process
/// (`SLUICE_KAFKA__BOOTSTRAP_SERVERS`, `SLUICE_REGISTRY__URL`).
pub fn config() -> SluiceConfig {
    SluiceConfig::load(None).expect("test config")
}

pub fn kafka() -> KafkaConfig {
    config().kafka
}

pub fn registry() -> RegistryConfig {
    config().registry
}

pub fn clients() -> KafkaClients {
    KafkaClients::new(kafka())
}

/// Panics with [`STACK_HINT`] unless both the broker and the registry answer.
pub async fn require_stack() {
    let cfg = config();
    let bootstrap = cfg.kafka.bootstrap_servers.clone();
    let kafka_ok = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = KafkaClients::new(cfg.kafka)
            .base("e2e-probe")
            .expect("client config")
            .create()
            .expect("consumer");
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .is_ok()
    })
    .await
    .expect("probe task");
    assert!(
        kafka_ok,
        "Kafka at {bootstrap} does not answer: {STACK_HINT}"
    );
    let url = format!("{}/subjects", registry().url);
    let registry_ok = reqwest::get(&url)
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    assert!(
        registry_ok,
        "the schema registry at {url} does not answer: {STACK_HINT}"
    );
}

/// A topic name no other test run uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("e2e.{prefix}.{}", uuid::Uuid::new_v4().simple())
}
