//! `docker-compose.yml` cannot run on machines without Docker, so this checks what can be
//! checked: it parses, and its names, ports and settings agree with the dev stack.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;
use sluice_runtime::SluiceConfig;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml parses as YAML")
}

fn env_of(service: &Value) -> BTreeMap<String, String> {
    let env = service["environment"]
        .as_mapping()
        .expect("environment is a map");
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => panic!("environment values must be quoted strings, got {other:?}"),
            };
            (k.as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn ports_of(service: &Value) -> Vec<String> {
    service["ports"]
        .as_sequence()
        .map(|s| s.iter().map(|p| p.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// `key=value` pairs of the broker config that `dev/stack` writes.
fn dev_stack_broker_properties() -> BTreeMap<String, String> {
    let script = std::fs::read_to_string(root().join("dev/stack")).unwrap();
    let start = script
        .find("server.properties\" <<EOF")
        .expect("server.properties heredoc");
    let body = &script[start..];
    let body = &body[body.find('\n').unwrap() + 1..body.find("\nEOF").unwrap()];
    body.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn compose_has_every_service_with_the_dev_stack_ports() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    for name in [
        "kafka",
        "registry",
        "registry-init",
        "postgres",
        "prometheus",
        "grafana",
        "jaeger",
        "sluice",
    ] {
        assert!(
            services.contains_key(name),
            "service `{name}` missing from docker-compose.yml"
        );
    }
    assert!(ports_of(&c["services"]["kafka"]).contains(&"9092:9092".to_string()));
    assert!(ports_of(&c["services"]["registry"]).contains(&"8081:8081".to_string()));
    let stack = std::fs::read_to_string(root().join("dev/stack")).unwrap();
    assert!(stack.contains("POSTGRES_PORT=${SLUICE_POSTGRES_PORT:-15432}"));
    assert!(ports_of(&c["services"]["postgres"]).contains(&"15432:5432".to_string()));
    assert!(ports_of(&c["services"]["sluice"]).contains(&"9464:9464".to_string()));
    let defaults = SluiceConfig::default();
    assert!(defaults.kafka.bootstrap_servers.ends_with(":9092"));
    assert!(defaults.registry.url.contains(":8081/apis/ccompat/v7"));
    assert!(defaults.admin.listen.ends_with(":9464"));
}

#[test]
fn sluice_service_environment_is_valid_sluice_config() {
    let c = compose();
    let env: Vec<(String, String)> = env_of(&c["services"]["sluice"]).into_iter().collect();
    let config = SluiceConfig::from_yaml_with_env("docker-compose.yml", "", &env)
        .unwrap_or_else(|e| panic!("the sluice service's environment is not valid config: {e}"));
    assert_eq!(config.kafka.bootstrap_servers, "kafka:29092");
    assert!(config
        .registry
        .url
        .starts_with("http://registry:8081/apis/ccompat/v7"));
    let prometheus =
        std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).unwrap();
    let port = config.admin.listen.rsplit(':').next().unwrap();
    assert!(
        prometheus.contains(&format!("sluice:{port}")),
        "Prometheus scrapes the admin port"
    );
}

#[test]
fn compose_broker_settings_match_the_dev_stack() {
    let c = compose();
    let env = env_of(&c["services"]["kafka"]);
    let dev = dev_stack_broker_properties();
    for key in [
        "num.partitions",
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
        "group.initial.rebalance.delay.ms",
        "auto.create.topics.enable",
    ] {
        let env_key = format!("KAFKA_{}", key.to_uppercase().replace('.', "_"));
        assert_eq!(
            env.get(&env_key),
            dev.get(key),
            "{env_key} in docker-compose.yml differs from {key} in dev/stack"
        );
    }
}

/// Every `-Dapicurio.…` system property dev/stack starts the registry with, as Quarkus
/// environment names (`apicurio.storage.kind` → `APICURIO_STORAGE_KIND`), except those
/// naming a path in the stack's state directory (where the local registry keeps its data).
fn dev_stack_registry_settings() -> BTreeMap<String, String> {
    let script = std::fs::read_to_string(root().join("dev/stack")).unwrap();
    script
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("-Dapicurio."))
        .filter_map(|setting| setting.split_once('='))
        .filter(|(_, v)| !v.contains("$STATE"))
        .map(|(k, v)| {
            (
                format!("APICURIO_{}", k.to_uppercase().replace(['.', '-'], "_")),
                v.trim_matches('"').to_string(),
            )
        })
        .collect()
}

#[test]
fn compose_registry_settings_match_the_dev_stack() {
    let c = compose();
    let env = env_of(&c["services"]["registry"]);
    let dev = dev_stack_registry_settings();
    assert!(
        dev.contains_key("APICURIO_CCOMPAT_MAX_SUBJECTS"),
        "dev/stack settings not found: {dev:?}"
    );
    for (key, value) in &dev {
        assert_eq!(
            env.get(key),
            Some(value),
            "{key} in docker-compose.yml differs from dev/stack"
        );
    }
}
