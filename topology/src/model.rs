//! The structure of `topology.yaml`. Every struct denies unknown keys, so a misspelt key is
//! an error naming its path instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use sluice_runtime::SecretRef;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// First segment of every managed topic name (see [`crate::naming`]).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub topics: Vec<TopicSpec>,
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub subjects: SubjectsSpec,
    #[serde(default)]
    pub retry_policies: Vec<RetryPolicySpec>,
    /// Orchestrated flows (see [`SagaSpec`]); `sluice saga run` runs them.
    #[serde(default)]
    pub sagas: Vec<SagaSpec>,
    /// Third-party APIs that `http:` saga steps call, by the name steps give as `upstream:`:
    /// their rate limit and circuit breaker.
    #[serde(default)]
    pub upstreams: Vec<UpstreamSpec>,
}

fn default_prefix() -> String {
    "sluice".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    #[serde(default = "one")]
    pub replication_factor: i32,
    /// Topic configs as Kafka names them: `retention.ms`, `cleanup.policy`,
    /// `min.insync.replicas`, … Values may be written as numbers or strings.
    #[serde(default, deserialize_with = "string_map")]
    pub config: BTreeMap<String, String>,
}

fn one() -> i32 {
    1
}

/// A source instance: a webhook source (`POST /webhooks/{name}`, with `provider`) or a
/// polling source (with `poll`, see [`crate::poll`]); exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    /// Provider type and its options, e.g. `{type: stripe, tolerance_secs: 300}`; the gateway
    /// parses the options for its type.
    #[serde(default)]
    pub provider: Option<serde_yaml_ng::Mapping>,
    /// How to poll the source's API, for a source without webhooks.
    #[serde(default)]
    pub poll: Option<crate::poll::PollSpec>,
    /// One or more secrets, so rotation needs no gap: any matching secret is accepted.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    pub raw_topic: String,
    #[serde(default)]
    pub limits: SourceLimits,
    /// What the normalizer does with event types no mapping covers.
    #[serde(default)]
    pub unmapped: UnmappedPolicy,
}

impl SourceSpec {
    /// The provider's `type` value (`stripe`, `github`, …).
    pub fn provider_type(&self) -> Option<&str> {
        self.provider
            .as_ref()?
            .get(serde_yaml_ng::Value::String("type".into()))
            .and_then(|v| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedPolicy {
    /// Dead-letter it with reason `unmapped_event_type`, so a new provider event is noticed.
    #[default]
    Dlq,
    /// Publish it as the generic `ExternalEvent`.
    Generic,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceLimits {
    pub max_body_bytes: usize,
    /// Verified deliveries per second the gateway accepts for this source (after `burst`);
    /// none when absent. Only requests whose signature verified are counted, so unsigned
    /// traffic cannot spend it. Over it: 429 `rate_limited` with `X-RateLimit-*`.
    pub rate_per_sec: Option<u32>,
    /// Deliveries accepted at once; defaults to `rate_per_sec`.
    pub burst: Option<u32>,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: crate::sizes::DEFAULT_MAX_BODY_BYTES as usize,
            rate_per_sec: None,
            burst: None,
        }
    }
}

/// Normalized events of `event_type` (a full Avro name) go to `topic`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub event_type: String,
    pub topic: String,
}

// Subject naming lives in `sluice-schemas`, which resolves subjects for every writer.
pub use sluice_schemas::subject::SubjectNaming;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Compatibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// New readers must read old data.
    pub fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Old readers must read new data.
    pub fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Checked against every earlier version, not only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectsSpec {
    #[serde(default)]
    pub naming: SubjectNaming,
    #[serde(default = "backward_transitive")]
    pub default_compatibility: Compatibility,
    /// Per event type compatibility, e.g. `dev.sluice.events.payments.PaymentSucceeded: FULL_TRANSITIVE`.
    #[serde(default)]
    pub compatibility: BTreeMap<String, Compatibility>,
}

fn backward_transitive() -> Compatibility {
    Compatibility::BackwardTransitive
}

impl Default for SubjectsSpec {
    fn default() -> Self {
        Self {
            naming: SubjectNaming::default(),
            default_compatibility: backward_transitive(),
            compatibility: BTreeMap::new(),
        }
    }
}

impl SubjectsSpec {
    pub fn compatibility_of(&self, event_type: &str) -> Compatibility {
        self.compatibility
            .get(event_type)
            .copied()
            .unwrap_or(self.default_compatibility)
    }
}

/// Retry tiers for one consumer: a transient failure moves a record to the next tier's topic,
/// where it waits `delay`; after `max_attempts` (or a permanent failure) it goes to `dlq_topic`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicySpec {
    pub name: String,
    pub tiers: Vec<HumanDuration>,
    pub max_attempts: u32,
    pub dlq_topic: String,
    #[serde(default)]
    pub ordering: Ordering,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Retried records may be overtaken by later records with the same key.
    #[default]
    None,
    /// Later records with a key that is in the retry path wait behind it.
    PerKey,
}

/// A duration written as `250ms`, `5s`, `1m`, `2h` or `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        crate::naming::parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_yaml_ng::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_yaml_ng::Value::String(s) => s,
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                serde_yaml_ng::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "config `{k}` must be a string, number or boolean, not {other:?}"
                    )))
                }
            };
            Ok((k, s))
        })
        .collect()
}

/// The Avro record every saga's replies topic carries besides participant replies: trigger
/// hand-offs, deadline ticks and operator requests, all applied by the orchestrator.
pub const SAGA_CONTROL_TYPE: &str = "dev.sluice.events.sagas.SagaControl";

/// Lifecycle events the orchestrator publishes for data teams; each must be routed.
pub const SAGA_LIFECYCLE_TYPES: [&str; 5] = [
    "dev.sluice.events.sagas.SagaStarted",
    "dev.sluice.events.sagas.SagaStepCompleted",
    "dev.sluice.events.sagas.SagaCompleted",
    "dev.sluice.events.sagas.SagaCompensated",
    "dev.sluice.events.sagas.SagaFailed",
];

/// One orchestrated flow: a trigger event starts an instance per correlation key value, whose
/// steps run in order; a failed or timed-out step compensates the completed ones in reverse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaSpec {
    /// Lower-case letters, digits and `-`; part of the saga's topic names.
    pub name: String,
    pub trigger: EventRef,
    /// Field path in the trigger event (`order_id`, `customer.id`) whose value identifies the
    /// instance: the saga id, and the key of its commands, replies and state.
    pub correlation_key: String,
    pub steps: Vec<StepSpec>,
    /// Domain events emitted when an instance ends; their fields are filled from the trigger's
    /// fields of the same name (plus `saga_id` and `reason`).
    #[serde(default)]
    pub outcome: Option<OutcomeSpec>,
    /// How a failing compensation is retried before the instance is parked for an operator.
    #[serde(default = "default_compensation_retry")]
    pub compensation_retry: RetrySpec,
}

fn default_compensation_retry() -> RetrySpec {
    RetrySpec {
        max_attempts: 5,
        backoff: HumanDuration(Duration::from_secs(1)),
        max_backoff: Some(HumanDuration(Duration::from_secs(60))),
    }
}

/// An event type on a topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventRef {
    pub event_type: String,
    pub topic: String,
}

/// A command a participant executes, the reply types that settle it, and how long to wait.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    pub command: EventRef,
    /// Reply type meaning the command took effect.
    pub success: String,
    /// Reply type meaning it did not (nothing to undo).
    pub failure: String,
    /// No reply by then counts as a failure.
    pub timeout: HumanDuration,
    /// Executed as this HTTP call by sluice's built-in HTTP participant.
    #[serde(default)]
    pub http: Option<HttpCallSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Lower-case letters, digits and `-`; unique within the saga.
    pub name: String,
    /// Who executes the step's commands (`inventory`); names the participant's dedup state.
    pub participant: String,
    /// Whether the step changes anything that must be undone; such a step needs a compensation.
    #[serde(default = "yes")]
    pub side_effects: bool,
    pub command: EventRef,
    /// Reply type meaning the command took effect.
    pub success: String,
    /// Reply type meaning it did not (nothing to undo).
    pub failure: String,
    /// No reply by then counts as a failure.
    pub timeout: HumanDuration,
    /// Retries of the command after a timeout or a retryable failure, before compensating.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    #[serde(default)]
    pub compensation: Option<CommandSpec>,
    /// The step's command is executed as this HTTP call by sluice's built-in HTTP
    /// participant (`sluice saga participant --role <participant>`) instead of by a
    /// participant someone wrote; its compensation then declares `http:` too.
    #[serde(default)]
    pub http: Option<HttpCallSpec>,
}

fn yes() -> bool {
    true
}

impl StepSpec {
    /// The step's own command as a [`CommandSpec`], shaped like its compensation.
    pub fn action(&self) -> CommandSpec {
        CommandSpec {
            command: self.command.clone(),
            success: self.success.clone(),
            failure: self.failure.clone(),
            timeout: self.timeout,
            http: self.http.clone(),
        }
    }

    /// Whether the built-in HTTP participant executes this step.
    pub fn is_http(&self) -> bool {
        self.http.is_some()
    }
}

/// HTTP methods a step may call with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

/// A saga command executed as one HTTP call (see [`crate::template`] for the placeholders).
///
/// Every call carries `Idempotency-Key: <command id>`: a resent command (after a timeout
/// or a restart) sends the same key, so a provider honouring it charges once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCallSpec {
    pub method: HttpMethod,
    /// URL template, e.g. `{env:PAYMENTS_URL}/v1/refunds/{results.charge-payment.id}`;
    /// values from the saga's data are percent-encoded, secrets and settings are not.
    pub url: String,
    /// Header templates, e.g. `Authorization: "Bearer {env:PAYMENTS_KEY}"`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body; every string in it is a template, and a string that is exactly one
    /// `{data.…}`/`{results.…}` placeholder takes that value with its JSON type.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub success: HttpSuccessSpec,
    /// Statuses that fail the step for good, whatever their class (e.g. 402, 409, 422).
    /// Without this: other 4xx than 408 and 429 are permanent; network errors, timeouts,
    /// 408, 429 and 5xx are retried.
    #[serde(default)]
    pub permanent: Vec<u16>,
    /// Statuses retried although their class is permanent (e.g. a 409 meaning "busy").
    #[serde(default)]
    pub transient: Vec<u16>,
    /// Response fields kept as the step's result, by the name later steps read them
    /// under: `{payment_id: id}` makes `{results.<step>.payment_id}` the response's `id`.
    #[serde(default)]
    pub keep: BTreeMap<String, String>,
    /// The upstream's name for its circuit breaker, rate limit and metrics; defaults to
    /// the URL's `host:port`.
    #[serde(default)]
    pub upstream: Option<String>,
}

/// One upstream API's limits and circuit breaker (see `sluice_runtime::outbound`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// What steps name in `upstream:`; the `endpoint` label of its metrics.
    pub name: String,
    /// Calls started per second (after `burst`); unlimited when absent.
    #[serde(default)]
    pub rate_per_sec: Option<u32>,
    /// Calls that may start at once after a quiet spell; defaults to `rate_per_sec`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Calls in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    #[serde(default)]
    pub breaker: BreakerSpec,
    /// What the upstream promises; `sluice topology export alerts` turns it into alert
    /// rules on the upstream's outbound metrics.
    #[serde(default)]
    pub sla: Option<SlaSpec>,
}

/// An upstream's service level, each objective optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaSpec {
    /// Percent of the time its circuit breaker is closed (e.g. `99.9`), over an hour.
    #[serde(default)]
    pub availability: Option<f64>,
    /// 99th percentile of call latency (e.g. `500ms`), over 5 minutes.
    #[serde(default)]
    pub p99_latency: Option<HumanDuration>,
    /// Percent of calls that fail (e.g. `1`), over 5 minutes.
    #[serde(default)]
    pub error_rate: Option<f64>,
}

fn default_max_in_flight() -> u32 {
    8
}

/// When an upstream's circuit breaker opens and closes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// Consecutive failures that open it.
    pub consecutive_failures: u32,
    /// How long it stays open before a probe (half-open).
    pub cool_down: HumanDuration,
    /// Successful probes that close it again.
    pub close_after: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            cool_down: HumanDuration(Duration::from_secs(30)),
            close_after: 2,
        }
    }
}

/// When a response means the call took effect.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSuccessSpec {
    /// Statuses meaning success; any 2xx when empty.
    #[serde(default)]
    pub status: Vec<u16>,
    /// A field of the JSON response (dotted path) that must be present and not null or false…
    #[serde(default)]
    pub field: Option<String>,
    /// …or, when given, equal to this.
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
}

/// Attempts in all (the first included), with exponential backoff between them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub backoff: HumanDuration,
    /// Cap of the doubling backoff; none means uncapped.
    #[serde(default)]
    pub max_backoff: Option<HumanDuration>,
}

/// The domain events an instance ends with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeSpec {
    /// Emitted when every step succeeded (e.g. an order confirmation).
    pub completed: String,
    /// Emitted once the compensations ran (e.g. an order cancellation).
    pub compensated: String,
}
