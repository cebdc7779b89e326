//! `sluice.yaml` plus `SLUICE_*` environment overrides.
//!
//! The file is YAML. Every struct denies unknown keys so a typo fails loudly at start-up
//! instead of silently falling back to a default. Environment variables of the form
//! `SLUICE_<SECTION>__<KEY>` (double underscore between path segments) override the file,
//! e.g. `SLUICE_KAFKA__BOOTSTRAP_SERVERS=broker:9092`, and are checked against the same
//! schema, so a misspelt override is an error too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

/// The file looked for when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "sluice.yaml";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "SLUICE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("secret {what} is not available: {reason}")]
    Secret { what: String, reason: String },
}

/// The whole configuration of a sluice process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SluiceConfig {
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
    pub gateway: GatewayConfig,
    /// The transactional outbox relay (`sluice outbox relay`); absent: no outbox.
    pub outbox: Option<OutboxConfig>,
    /// Path of the topology file (topics, sources, retry tiers, sagas).
    pub topology: Option<PathBuf>,
}

/// Connection to the Kafka cluster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// Prefix for `client.id` and `transactional.id`, so several deployments can share a cluster.
    pub client_id: String,
    /// Passed to librdkafka as they are; this is where SASL/SSL settings for real clusters go,
    /// e.g. `security.protocol: SASL_SSL`, `sasl.mechanisms: PLAIN`.
    pub properties: BTreeMap<String, String>,
    /// Properties whose values are secrets (e.g. `sasl.password`), read from env or files.
    pub secret_properties: BTreeMap<String, SecretRef>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            client_id: "sluice".into(),
            properties: BTreeMap::new(),
            secret_properties: BTreeMap::new(),
        }
    }
}

/// The Confluent-compatible schema registry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of the Confluent API, e.g. `http://127.0.0.1:8081/apis/ccompat/v7`.
    pub url: String,
    pub auth: Option<RegistryAuth>,
    pub timeout_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081/apis/ccompat/v7".into(),
            auth: None,
            timeout_ms: 5_000,
        }
    }
}

/// Registry credentials, as Confluent Cloud-style registries expect them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RegistryAuth {
    Basic {
        username: String,
        password: SecretRef,
    },
    Bearer {
        token: SecretRef,
    },
}

/// The admin HTTP server every long-running process starts (`/metrics`, `/health/*`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `tracing` filter directives, e.g. `info,sluice_stream=debug`. `RUST_LOG` wins.
    pub log_filter: String,
    /// Service name reported to OTLP. Export itself is switched on by
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, as in every OpenTelemetry SDK.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            service_name: "sluice".into(),
        }
    }
}

/// The HTTP gateway (`sluice gateway`): webhook ingestion and the publish API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address the gateway binds, e.g. `0.0.0.0:8080`.
    pub listen: String,
    /// How long a request waits for Kafka's delivery report before answering 503; also the
    /// producer's `message.timeout.ms`, so a record that was refused is not left in flight.
    pub produce_timeout_ms: u64,
    /// How long a publish `Idempotency-Key` is remembered (per gateway instance).
    pub idempotency_window_secs: u64,
    /// Most idempotency keys remembered at once; the oldest are forgotten first.
    pub idempotency_max_keys: usize,
    /// Bearer tokens accepted by `POST /v1/events/{event_type}`.
    pub publish_tokens: Vec<PublishToken>,
    /// A request head (request line and headers) must arrive within this long, or the
    /// connection is closed; also the longest wait for the next request on a kept-alive
    /// connection. Cuts off clients that trickle header bytes.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// Most client connections served at once; further clients wait in the kernel's accept
    /// backlog until a connection closes.
    pub max_connections: usize,
    /// Most requests handled at once; one more is answered `503 overloaded` with
    /// `Retry-After`.
    pub max_in_flight_requests: usize,
    /// Signature or token failures a client address may cause per minute, after
    /// `client_failure_burst`. Past that budget the address is answered `429
    /// too_many_failures` before its body is read, until the budget refills. Only failures
    /// are counted; verified requests from the same address are never charged.
    pub client_failures_per_minute: u32,
    /// Failures a client address may cause at once before `client_failures_per_minute` applies.
    pub client_failure_burst: u32,
}

impl GatewayConfig {
    /// The connection limits of the gateway's HTTP server.
    pub fn serve_limits(&self) -> crate::serve::ServeLimits {
        crate::serve::ServeLimits {
            header_read_timeout: std::time::Duration::from_millis(
                self.header_read_timeout_ms.max(1),
            ),
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            max_in_flight: self.max_in_flight_requests.max(1),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            produce_timeout_ms: 5_000,
            idempotency_window_secs: 86_400,
            idempotency_max_keys: 100_000,
            publish_tokens: Vec::new(),
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 5_000,
            max_connections: 1_024,
            max_in_flight_requests: 512,
            client_failures_per_minute: 60,
            client_failure_burst: 20,
        }
    }
}

/// What a gateway bearer token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /v1/events/{event_type}`, for the token's `event_types`.
    Publish,
    /// The management API: `/v1/endpoints` (outbound webhook endpoints).
    Admin,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Publish]
}

/// One publisher's credential and what it may publish.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishToken {
    /// Names the publisher in logs, in its events' `source` (`sluice://publishers/<name>`
    /// unless `source` is set) and in the namespace of the event ids it chooses
    /// (`<name>:<event_id>`); not secret. Letters, digits, `.`, `_`, `-`. Several tokens may
    /// share a name (rotation): they are one publisher.
    pub name: String,
    /// The `source` every event of this publisher carries; defaults to
    /// `sluice://publishers/<name>`. A body naming another source is refused.
    #[serde(default)]
    pub source: Option<String>,
    pub token: SecretRef,
    /// Full event type names this token may publish; `"*"` allows every routed type. May
    /// be left out for a token without the `publish` scope.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// What the token may do: `[publish]` when absent; `[admin]` for an operator's token
    /// for `/v1/endpoints`; both may be given.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
    /// Requests per second this token may make (after `burst`); unlimited when absent.
    /// Over it: `429 rate_limited` with `Retry-After` and `X-RateLimit-*`, like a source.
    #[serde(default)]
    pub rate_per_sec: Option<u32>,
    /// Requests the token may make at once; defaults to `rate_per_sec`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// The transactional outbox: a table in a service's PostgreSQL database whose rows the relay
/// publishes to Kafka exactly once (`producers/outbox`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// libpq-style connection string (`postgres://user:password@127.0.0.1:15432/db` or
    /// `host=… user=…`); a secret, since it usually holds the password.
    pub dsn: SecretRef,
    /// The outbox table (`sluice outbox init` creates it): a plain identifier, optionally
    /// schema-qualified (`app.sluice_outbox`).
    pub table: String,
    /// Aggregates are spread over this many lanes (a hash of the aggregate id); each lane is
    /// relayed by one relay at a time, in order. Fixed for the life of a table.
    pub lanes: u32,
    /// How often an idle lane looks for new rows.
    pub poll_interval_ms: u64,
    /// At most this many rows read and published per Kafka transaction, per lane: a backlog
    /// drains in few transactions (each commit costs a broker round trip or more), while at
    /// a steady rate a batch holds only what arrived since the last one.
    pub batch_size: u32,
    /// How long a gap in an aggregate's sequence is waited for before it is reported (the
    /// aggregate keeps waiting; nothing is skipped).
    pub gap_report_ms: u64,
    /// Aggregates whose last relayed sequence each lane keeps in memory; past it the lane
    /// writes some to `<table>_relayed` in PostgreSQL and looks them up when they have new
    /// rows, so memory stays flat however many aggregates the table ever had.
    pub aggregates_in_memory: u32,
    /// CloudEvents `source` of relayed events whose payload has none.
    pub source: String,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            dsn: SecretRef::Env("SLUICE_OUTBOX_DSN".into()),
            table: "sluice_outbox".into(),
            lanes: 8,
            poll_interval_ms: 100,
            batch_size: 2_000,
            gap_report_ms: 30_000,
            aggregates_in_memory: 100_000,
            source: "sluice://outbox".into(),
        }
    }
}

/// Where a secret comes from, written `{env: NAME}` or `{file: PATH}`. Secrets are never
/// written in the config file itself.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RawSecretRef")]
pub enum SecretRef {
    /// The value of an environment variable.
    Env(String),
    /// The contents of a file, with one trailing newline removed.
    File(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretRef {
    env: Option<String>,
    file: Option<PathBuf>,
}

impl Serialize for SecretRef {
    // Written back as it is read: `{env: NAME}` or `{file: PATH}`; never a secret's value.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            SecretRef::Env(name) => map.serialize_entry("env", name)?,
            SecretRef::File(path) => map.serialize_entry("file", path)?,
        }
        map.end()
    }
}

impl TryFrom<RawSecretRef> for SecretRef {
    type Error = String;

    fn try_from(raw: RawSecretRef) -> Result<Self, Self::Error> {
        match (raw.env, raw.file) {
            (Some(env), None) => Ok(SecretRef::Env(env)),
            (None, Some(file)) => Ok(SecretRef::File(file)),
            _ => Err("a secret is `{env: NAME}` or `{file: PATH}`, exactly one of them".into()),
        }
    }
}

impl std::fmt::Debug for SecretRef {
    // Shows where the secret lives, never its value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "SecretRef::Env({name})"),
            SecretRef::File(path) => write!(f, "SecretRef::File({})", path.display()),
        }
    }
}

impl SecretRef {
    /// Reads the secret. Errors name the variable or file, never the value.
    pub fn resolve(&self) -> Result<String, ConfigError> {
        match self {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| ConfigError::Secret {
                what: format!("env:{name}"),
                reason: "the environment variable is not set".into(),
            }),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| s.strip_suffix('\n').unwrap_or(&s).to_string())
                .map_err(|e| ConfigError::Secret {
                    what: format!("file:{}", path.display()),
                    reason: e.kind().to_string(),
                }),
        }
    }
}

impl SluiceConfig {
    /// Loads `path` (or `sluice.yaml` when it exists, or the defaults) and applies the
    /// process environment's overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let (origin, text) = match path {
            Some(p) => (p.display().to_string(), read(p)?),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => (
                DEFAULT_CONFIG_FILE.to_string(),
                read(Path::new(DEFAULT_CONFIG_FILE))?,
            ),
            None => ("defaults".to_string(), String::new()),
        };
        Self::from_yaml_with_env(&origin, &text, &env)
    }

    /// Parses YAML text and applies `SLUICE_*__*` overrides from `env`.
    pub fn from_yaml_with_env(
        origin: &str,
        text: &str,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut root: Value = if text.trim().is_empty() {
            Value::Mapping(Mapping::new())
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Invalid {
                origin: origin.to_string(),
                message: e.to_string(),
            })?
        };
        let mut overridden = Vec::new();
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains("__") {
                continue; // e.g. SLUICE_CACHE, used by the dev scripts, not config
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            set_path(&mut root, &path, parse_scalar(value)).map_err(|message| {
                ConfigError::Invalid {
                    origin: format!("env {key}"),
                    message,
                }
            })?;
            overridden.push(key.clone());
        }
        let origin = if overridden.is_empty() {
            origin.to_string()
        } else {
            format!("{origin} (with overrides from {})", overridden.join(", "))
        };
        // Enums are written as one-key maps (`auth: {basic: {...}}`), not YAML tags.
        serde_yaml_ng::with::singleton_map_recursive::deserialize(root).map_err(|e| {
            ConfigError::Invalid {
                origin,
                message: e.to_string(),
            }
        })
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_scalar(value: &str) -> Value {
    serde_yaml_ng::from_str::<Value>(value)
        .ok()
        .filter(|v| !matches!(v, Value::Mapping(_) | Value::Sequence(_)))
        .unwrap_or_else(|| Value::String(value.to_string()))
}

fn set_path(root: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let mut node = root;
    for (i, segment) in path.iter().enumerate() {
        let Value::Mapping(map) = node else {
            return Err(format!("`{}` is not a section", path[..i].join(".")));
        };
        let key = Value::String(segment.clone());
        if i == path.len() - 1 {
            map.insert(key, value);
            return Ok(());
        }
        node = map
            .entry(key)
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    Err("empty override path".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_gives_local_stack_defaults() {
        let c = SluiceConfig::from_yaml_with_env("t", "", &[]).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(c.registry.url, "http://127.0.0.1:8081/apis/ccompat/v7");
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let err = SluiceConfig::from_yaml_with_env("sluice.yaml", "kafka:\n  bootstrap: x\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sluice.yaml"), "{err}");
        assert!(err.contains("unknown field `bootstrap`"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_unknown_env_key_fails() {
        let yaml =
            "kafka:\n  bootstrap_servers: a:1\n  properties:\n    security.protocol: SASL_SSL\n";
        let c = SluiceConfig::from_yaml_with_env(
            "t",
            yaml,
            &env(&[
                ("SLUICE_KAFKA__BOOTSTRAP_SERVERS", "b:2"),
                ("SLUICE_CACHE", "/ignored"),
                ("SLUICE_ADMIN__LISTEN", "0.0.0.0:1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "b:2");
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.admin.listen, "0.0.0.0:1");

        let err =
            SluiceConfig::from_yaml_with_env("t", "", &env(&[("SLUICE_KAFKA__BOOTSTRAP", "x")]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("SLUICE_KAFKA__BOOTSTRAP"), "{err}");
        assert!(err.contains("unknown field `bootstrap`"), "{err}");
    }

    #[test]
    fn secret_debug_and_errors_never_show_the_value() {
        std::env::set_var("SLUICE_TEST_SECRET_XYZ", "hunter2");
        let s = SecretRef::Env("SLUICE_TEST_SECRET_XYZ".into());
        assert_eq!(s.resolve().unwrap(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let missing = SecretRef::Env("SLUICE_TEST_SECRET_MISSING".into());
        let err = missing.resolve().unwrap_err().to_string();
        assert!(err.contains("SLUICE_TEST_SECRET_MISSING"), "{err}");
    }

    #[test]
    fn gateway_section_has_defaults_and_reads_tokens() {
        let c = SluiceConfig::from_yaml_with_env("t", "", &[]).unwrap();
        assert_eq!(c.gateway.listen, "127.0.0.1:8080");
        assert_eq!(c.gateway.produce_timeout_ms, 5_000);
        assert_eq!(c.gateway.idempotency_window_secs, 86_400);
        assert!(c.gateway.publish_tokens.is_empty());
        assert_eq!(
            c.gateway.serve_limits(),
            crate::serve::ServeLimits::default(),
            "the documented defaults are the serving defaults"
        );
        assert_eq!(
            (
                c.gateway.client_failures_per_minute,
                c.gateway.client_failure_burst
            ),
            (60, 20)
        );

        let yaml = "gateway:\n  produce_timeout_ms: 2000\n  publish_tokens:\n    - name: billing\n      token: {env: BILLING_TOKEN}\n      event_types: ['*']\n";
        let c = SluiceConfig::from_yaml_with_env(
            "t",
            yaml,
            &env(&[("SLUICE_GATEWAY__LISTEN", "127.0.0.1:0")]),
        )
        .unwrap();
        assert_eq!(c.gateway.listen, "127.0.0.1:0");
        assert_eq!(c.gateway.produce_timeout_ms, 2000);
        let t = &c.gateway.publish_tokens[0];
        assert_eq!(t.name, "billing");
        assert_eq!(t.token, SecretRef::Env("BILLING_TOKEN".into()));
        assert_eq!(t.event_types, vec!["*".to_string()]);
        assert_eq!((t.rate_per_sec, t.burst, &t.source), (None, None, &None));

        let yaml = "gateway:\n  header_read_timeout_ms: 3000\n  publish_tokens:\n    - {name: a, token: {env: A}, event_types: ['*'], rate_per_sec: 5, burst: 10}\n";
        let c = SluiceConfig::from_yaml_with_env(
            "t",
            yaml,
            &env(&[("SLUICE_GATEWAY__MAX_IN_FLIGHT_REQUESTS", "7")]),
        )
        .unwrap();
        let limits = c.gateway.serve_limits();
        assert_eq!(limits.header_read_timeout.as_millis(), 3000);
        assert_eq!(limits.max_in_flight, 7);
        let t = &c.gateway.publish_tokens[0];
        assert_eq!((t.rate_per_sec, t.burst), (Some(5), Some(10)));

        let err = SluiceConfig::from_yaml_with_env("t", "gateway:\n  listn: x\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `listn`"), "{err}");
        let err = SluiceConfig::from_yaml_with_env(
            "t",
            "gateway:\n  publish_tokens:\n    - {name: a, token: {env: A}, event_types: [], scope: x}\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `scope`"), "{err}");
    }

    #[test]
    fn registry_auth_reads_tagged_secret_refs() {
        let yaml = "registry:\n  url: https://r\n  auth:\n    basic:\n      username: u\n      password:\n        env: REG_PW\n";
        let c = SluiceConfig::from_yaml_with_env("t", yaml, &[]).unwrap();
        match c.registry.auth.unwrap() {
            RegistryAuth::Basic { username, password } => {
                assert_eq!(username, "u");
                assert_eq!(password, SecretRef::Env("REG_PW".into()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
