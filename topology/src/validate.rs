//! Loading and cross-checking `topology.yaml`. Every error names the file and the path inside
//! it, and all problems are reported at once rather than one per run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::http_step::http_call_problems;
use crate::model::{
    CommandSpec, Ordering, RetrySpec, SagaSpec, TopicSpec, Topology, SAGA_CONTROL_TYPE,
    SAGA_LIFECYCLE_TYPES,
};
use crate::naming;

/// Provider types the gateway knows; their options are checked by the gateway itself.
pub const PROVIDER_TYPES: &[&str] = &[
    "stripe",
    "github",
    "shopify",
    "sendgrid",
    "slack",
    "standard_webhooks",
    "generic_hmac",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path inside the file, e.g. `topics[3].partitions`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file} is invalid:\n{}", list(.errors))]
    Invalid {
        file: String,
        errors: Vec<ValidationError>,
    },
}

fn list(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Topology {
    /// Reads and validates `path`; `event_types` are the catalog's full record names.
    pub fn load(path: &Path, event_types: &BTreeSet<String>) -> Result<Self, TopologyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text, event_types)
    }

    pub fn parse(
        file: &str,
        text: &str,
        event_types: &BTreeSet<String>,
    ) -> Result<Self, TopologyError> {
        let topology: Topology =
            serde_yaml_ng::from_str(text).map_err(|e| TopologyError::Parse {
                file: file.to_string(),
                message: e.to_string(),
            })?;
        let errors = topology.validate(event_types);
        if errors.is_empty() {
            Ok(topology)
        } else {
            Err(TopologyError::Invalid {
                file: file.to_string(),
                errors,
            })
        }
    }

    /// Every problem in the topology, empty when it is valid.
    pub fn validate(&self, event_types: &BTreeSet<String>) -> Vec<ValidationError> {
        let mut errors = Vec::new();
        let mut err =
            |path: String, message: String| errors.push(ValidationError { path, message });

        let mut topics: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, t) in self.topics.iter().enumerate() {
            let path = format!("topics[{i}]");
            if let Some(problem) = topic_name_problem(&t.name) {
                err(format!("{path}.name"), problem);
            } else if !t.name.starts_with(&format!("{}.", self.prefix)) {
                err(
                    format!("{path}.name"),
                    format!("`{}` must start with the prefix `{}.`", t.name, self.prefix),
                );
            }
            if let Some(first) = topics.insert(&t.name, i) {
                err(
                    format!("{path}.name"),
                    format!("`{}` is already declared at topics[{first}]", t.name),
                );
            }
            if t.partitions < 1 {
                err(
                    format!("{path}.partitions"),
                    format!("must be at least 1, got {}", t.partitions),
                );
            }
            if t.replication_factor < 1 {
                err(
                    format!("{path}.replication_factor"),
                    format!("must be at least 1, got {}", t.replication_factor),
                );
            }
            if let Some(policy) = t.config.get("cleanup.policy") {
                if !policy
                    .split(',')
                    .all(|p| matches!(p.trim(), "delete" | "compact"))
                {
                    err(
                        format!("{path}.config.cleanup.policy"),
                        format!("`{policy}` is not delete, compact or compact,delete"),
                    );
                }
            }
        }
        let declared = |name: &str| topics.contains_key(name);

        let mut sources = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let path = format!("sources[{i}]");
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                err(
                    format!("{path}.name"),
                    format!(
                        "`{}` must be non-empty letters, digits, `-` or `_` (it is a URL segment)",
                        s.name
                    ),
                );
            }
            if !sources.insert(&s.name) {
                err(
                    format!("{path}.name"),
                    format!("source `{}` is declared twice", s.name),
                );
            }
            if let Some(poll) = &s.poll {
                if s.provider.is_some() {
                    err(
                        format!("{path}.poll"),
                        "a source has either a webhook `provider` or `poll`, not both".into(),
                    );
                }
                for (at, message) in crate::poll::problems(poll, PROVIDER_TYPES) {
                    err(format!("{path}.poll.{at}"), message);
                }
            } else if s.secrets.is_empty() {
                err(
                    format!("{path}.secrets"),
                    "at least one secret is required".into(),
                );
            }
            match s.provider_type() {
                _ if s.poll.is_some() => {}
                Some(t) if PROVIDER_TYPES.contains(&t) => {}
                Some(t) => err(
                    format!("{path}.provider.type"),
                    format!(
                        "unknown provider `{t}`; known: {}",
                        PROVIDER_TYPES.join(", ")
                    ),
                ),
                None => err(format!("{path}.provider.type"), "missing".into()),
            }
            if !declared(&s.raw_topic) {
                err(
                    format!("{path}.raw_topic"),
                    format!("topic `{}` is not declared in topics", s.raw_topic),
                );
            }
            if s.limits.max_body_bytes == 0 {
                err(
                    format!("{path}.limits.max_body_bytes"),
                    "must be more than 0".into(),
                );
            }
            if s.limits.rate_per_sec == Some(0) {
                err(
                    format!("{path}.limits.rate_per_sec"),
                    "must be more than 0".into(),
                );
            }
        }

        let mut routed = BTreeMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if !event_types.contains(&r.event_type) {
                err(
                    format!("{path}.event_type"),
                    format!("`{}` is not an event type in the catalog", r.event_type),
                );
            }
            if !declared(&r.topic) {
                err(
                    format!("{path}.topic"),
                    format!("topic `{}` is not declared in topics", r.topic),
                );
            }
            if let Some(first) = routed.insert(&r.event_type, i) {
                err(
                    format!("{path}.event_type"),
                    format!("`{}` is already routed at routes[{first}]", r.event_type),
                );
            }
        }

        if self.subjects.naming == crate::model::SubjectNaming::TopicName {
            let mut per_topic: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, r) in self.routes.iter().enumerate() {
                if let Some(first) = per_topic.insert(&r.topic, i) {
                    err(
                        format!("routes[{i}].topic"),
                        format!(
                            "subjects.naming is topic_name, which allows one event type per topic, but `{}` already carries routes[{first}]",
                            r.topic
                        ),
                    );
                }
            }
        }

        for name in self.subjects.compatibility.keys() {
            if !event_types.contains(name) {
                err(
                    format!("subjects.compatibility.{name}"),
                    "not an event type in the catalog".into(),
                );
            }
        }

        let mut policies = BTreeSet::new();
        for (i, p) in self.retry_policies.iter().enumerate() {
            let path = format!("retry_policies[{i}]");
            if !policies.insert(&p.name) {
                err(
                    format!("{path}.name"),
                    format!("policy `{}` is declared twice", p.name),
                );
            }
            if p.tiers.is_empty() {
                err(
                    format!("{path}.tiers"),
                    "at least one tier is required".into(),
                );
            }
            for (j, tier) in p.tiers.iter().enumerate() {
                if tier.0.is_zero() {
                    err(
                        format!("{path}.tiers[{j}]"),
                        "a tier delay must be more than 0".into(),
                    );
                }
            }
            if p.max_attempts < 1 {
                err(format!("{path}.max_attempts"), "must be at least 1".into());
            }
            if !declared(&p.dlq_topic) {
                err(
                    format!("{path}.dlq_topic"),
                    format!("topic `{}` is not declared in topics", p.dlq_topic),
                );
            }
        }
        self.validate_per_key(&mut errors);
        self.validate_delivery_held_keys(&mut errors);
        self.validate_sagas(event_types, &mut errors);
        // Topic limits only; each process checks its producers' limit too (see `sizes`).
        errors.extend(self.size_problems(u64::MAX));
        errors
    }

    /// `ordering: per_key` keeps a key's records and state in one partition number across
    /// the inputs, the retry tiers and the held-key topic, so all of them need the same
    /// partition count, and the held keys must never expire.
    fn validate_per_key(&self, errors: &mut Vec<ValidationError>) {
        let topics = self.all_topics();
        let topic = |name: &str| topics.iter().find(|t| t.name == name);
        for (i, p) in self.retry_policies.iter().enumerate() {
            if p.ordering != Ordering::PerKey {
                continue;
            }
            let path = format!("retry_policies[{i}].ordering");
            let of = format!("policy `{}` orders per key", p.name);
            let held = naming::held_topic(&self.prefix, &p.name);
            let Some(h) = topic(&held) else {
                errors.push(ValidationError {
                    path,
                    message: format!("{of}: held-key topic `{held}` is not declared in topics (compacted, partitioned like the policy's inputs)"),
                });
                continue;
            };
            if h.config.get("cleanup.policy").map(|c| c.trim()) != Some("compact") {
                errors.push(ValidationError {
                    path: path.clone(),
                    message: format!("{of}: held-key topic `{held}` must have cleanup.policy compact (and not delete: a held key must not expire)"),
                });
            }
            let mut others: Vec<&str> = p
                .tiers
                .iter()
                .filter_map(|d| {
                    topic(&naming::retry_topic(&self.prefix, &p.name, d.0)).map(|t| t.name.as_str())
                })
                .collect();
            let inputs = self.policy_inputs(&p.name);
            others.extend(inputs.iter().map(String::as_str));
            let wrong = partition_mismatches(&topics, others, h.partitions);
            if !wrong.is_empty() {
                errors.push(ValidationError {
                    path,
                    message: format!(
                        "{of}, so its inputs and retry tiers need as many partitions as held-key topic `{held}` ({}): {}",
                        h.partitions,
                        wrong.join(", ")
                    ),
                });
            }
        }
    }

    /// Delivery's held keys (`<prefix>.state.held-deliveries`, for `per_key` endpoints) and
    /// endpoints' failing-since clocks (`<prefix>.state.delivery-health`) live on the partition
    /// number of the tasks they are about, so, when declared, each topic must be compacted
    /// and partitioned like `<prefix>.deliveries` and the delivery retry tiers.
    fn validate_delivery_held_keys(&self, errors: &mut Vec<ValidationError>) {
        let topics = self.all_topics();
        let tiers = self
            .retry_policies
            .iter()
            .filter(|p| p.name == naming::DELIVERY_POLICY)
            .flat_map(|p| {
                p.tiers
                    .iter()
                    .map(|d| naming::delivery_retry_topic(&self.prefix, d.0))
            });
        let names: Vec<String> = std::iter::once(naming::deliveries_topic(&self.prefix))
            .chain(tiers)
            .collect();
        let states = [
            (
                naming::held_topic(&self.prefix, naming::DELIVERY_POLICY),
                "delivery held-key topic",
                "a held key must not expire",
            ),
            (
                naming::delivery_health_topic(&self.prefix),
                "delivery health topic",
                "a failing endpoint's clock must not expire",
            ),
        ];
        for (state, what, why) in states {
            let Some(h) = topics.iter().find(|t| t.name == state) else {
                continue;
            };
            let path = "topics".to_string();
            if h.config.get("cleanup.policy").map(|c| c.trim()) != Some("compact") {
                errors.push(ValidationError {
                    path: path.clone(),
                    message: format!(
                        "{what} `{state}` must have cleanup.policy compact (and not delete: {why})"
                    ),
                });
            }
            let wrong =
                partition_mismatches(&topics, names.iter().map(String::as_str), h.partitions);
            if !wrong.is_empty() {
                errors.push(ValidationError {
                    path,
                    message: format!(
                        "{what} `{state}` has {} partitions, and the tasks topic and the delivery retry tiers need as many: {}",
                        h.partitions,
                        wrong.join(", ")
                    ),
                });
            }
        }
    }

    /// The input topics of the consumer a retry policy belongs to, where the topology says
    /// them: `normalizer` reads every source's raw topic, `sagas` every saga's trigger and
    /// replies topics. Other policies' inputs are only known to their consumer, which checks
    /// them at start.
    pub fn policy_inputs(&self, policy: &str) -> Vec<String> {
        let mut out: Vec<String> = match policy {
            "normalizer" => self.sources.iter().map(|s| s.raw_topic.clone()).collect(),
            "sagas" => self
                .sagas
                .iter()
                .flat_map(|s| {
                    [
                        s.trigger.topic.clone(),
                        naming::saga_replies_topic(&self.prefix, &s.name),
                    ]
                })
                .collect(),
            _ => Vec::new(),
        };
        out.sort();
        out.dedup();
        out
    }

    /// The saga section: every message names the saga and the step, and says what is wrong.
    fn validate_sagas(&self, event_types: &BTreeSet<String>, errors: &mut Vec<ValidationError>) {
        if self.sagas.is_empty() {
            return;
        }
        let mut err =
            |path: String, message: String| errors.push(ValidationError { path, message });
        let topic = |name: &str| self.topics.iter().find(|t| t.name == name);
        let compacted = |t: &TopicSpec| {
            t.config
                .get("cleanup.policy")
                .is_some_and(|p| p.split(',').any(|p| p.trim() == "compact"))
        };
        for t in SAGA_LIFECYCLE_TYPES.iter().chain([&SAGA_CONTROL_TYPE]) {
            if !event_types.contains(*t) {
                err(
                    "sagas".into(),
                    format!("`{t}` is not an event type in the catalog"),
                );
            }
        }
        for t in SAGA_LIFECYCLE_TYPES {
            if self.route_of(t).is_none() {
                err(
                    "sagas".into(),
                    format!(
                        "lifecycle event `{t}` is not routed; add it to routes (e.g. to `{}`)",
                        naming::events_topic(&self.prefix, "sagas")
                    ),
                );
            }
        }
        for consumer in ["sagas", "saga-participants"] {
            let dlq = naming::dlq_topic(&self.prefix, consumer);
            if topic(&dlq).is_none() {
                err(
                    "sagas".into(),
                    format!("dead-letter topic `{dlq}` is not declared in topics"),
                );
            }
        }

        let mut names = BTreeSet::new();
        let mut upstreams = BTreeSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let path = format!("upstreams[{i}]");
            if !upstreams.insert(&u.name) {
                err(
                    format!("{path}.name"),
                    format!("upstream `{}` is declared twice", u.name),
                );
            }
            for (field, value) in [
                ("rate_per_sec", u.rate_per_sec.unwrap_or(1)),
                ("burst", u.burst.unwrap_or(1)),
                ("max_in_flight", u.max_in_flight),
                (
                    "breaker.consecutive_failures",
                    u.breaker.consecutive_failures,
                ),
                ("breaker.close_after", u.breaker.close_after),
            ] {
                if value == 0 {
                    err(
                        format!("{path}.{field}"),
                        format!("upstream `{}`: must be at least 1", u.name),
                    );
                }
            }
            if let Some(sla) = &u.sla {
                for (field, percent) in [
                    ("availability", sla.availability),
                    ("error_rate", sla.error_rate),
                ] {
                    if percent.is_some_and(|p| !(p > 0.0 && p < 100.0)) {
                        err(
                            format!("{path}.sla.{field}"),
                            format!(
                                "upstream `{}`: must be a percentage above 0 and below 100",
                                u.name
                            ),
                        );
                    }
                }
                if sla.p99_latency.is_some_and(|l| l.0.is_zero()) {
                    err(
                        format!("{path}.sla.p99_latency"),
                        format!("upstream `{}`: must be more than 0", u.name),
                    );
                }
            }
        }
        // Each participant role, and whether it is the built-in HTTP participant.
        let mut roles: BTreeMap<&str, bool> = BTreeMap::new();
        for (i, saga) in self.sagas.iter().enumerate() {
            let path = format!("sagas[{i}]");
            let of = format!("saga `{}`", saga.name);
            if !is_slug(&saga.name) {
                err(
                    format!("{path}.name"),
                    format!("{of}: the name must be lower-case letters, digits or `-` (it is part of topic names)"),
                );
            }
            if !names.insert(&saga.name) {
                err(format!("{path}.name"), format!("{of} is declared twice"));
            }
            if !event_types.contains(&saga.trigger.event_type) {
                err(
                    format!("{path}.trigger.event_type"),
                    format!("{of}: unknown event type `{}`", saga.trigger.event_type),
                );
            }
            if topic(&saga.trigger.topic).is_none() {
                err(
                    format!("{path}.trigger.topic"),
                    format!(
                        "{of}: trigger topic `{}` is not declared in topics",
                        saga.trigger.topic
                    ),
                );
            }
            if let Some(routed) = self.route_of(&saga.trigger.event_type) {
                if routed != saga.trigger.topic {
                    err(
                        format!("{path}.trigger.topic"),
                        format!(
                            "{of}: `{}` is routed to `{routed}`, not `{}`",
                            saga.trigger.event_type, saga.trigger.topic
                        ),
                    );
                }
            }
            if saga.correlation_key.is_empty() || saga.correlation_key.split('.').any(str::is_empty)
            {
                err(
                    format!("{path}.correlation_key"),
                    format!(
                        "{of}: `{}` is not a field path such as `order_id` or `customer.id`",
                        saga.correlation_key
                    ),
                );
            }
            if saga.steps.is_empty() {
                err(
                    format!("{path}.steps"),
                    format!("{of}: at least one step is required"),
                );
            }
            let replies = naming::saga_replies_topic(&self.prefix, &saga.name);
            let replies_topic = topic(&replies);
            if replies_topic.is_none() {
                err(
                    format!("{path}.name"),
                    format!("{of}: reply topic `{replies}` is not declared in topics"),
                );
            }
            let state = naming::saga_state_topic(&self.prefix, &saga.name);
            match topic(&state) {
                None => err(
                    format!("{path}.name"),
                    format!("{of}: state topic `{state}` is not declared in topics"),
                ),
                Some(t) => {
                    if !compacted(t) {
                        err(
                            format!("{path}.name"),
                            format!("{of}: state topic `{state}` must have cleanup.policy compact"),
                        );
                    }
                    if let Some(r) = replies_topic {
                        if r.partitions != t.partitions {
                            err(
                                format!("{path}.name"),
                                format!(
                                    "{of}: state topic `{state}` has {} partitions but reply topic `{replies}` has {}; they must match (an instance's state lives in the partition of its replies)",
                                    t.partitions, r.partitions
                                ),
                            );
                        }
                    }
                }
            }
            retry_problems(&saga.compensation_retry, &mut |field, problem| {
                err(
                    format!("{path}.compensation_retry.{field}"),
                    format!("{of}: {problem}"),
                )
            });
            if let Some(outcome) = &saga.outcome {
                for (field, t) in [
                    ("completed", &outcome.completed),
                    ("compensated", &outcome.compensated),
                ] {
                    if !event_types.contains(t) {
                        err(
                            format!("{path}.outcome.{field}"),
                            format!("{of}: unknown event type `{t}`"),
                        );
                    } else if self.route_of(t).is_none() {
                        err(
                            format!("{path}.outcome.{field}"),
                            format!("{of}: outcome event `{t}` is not routed; add it to routes"),
                        );
                    }
                }
            }

            let mut steps = BTreeSet::new();
            for (j, step) in saga.steps.iter().enumerate() {
                let path = format!("{path}.steps[{j}]");
                let of = format!("{of}, step `{}`", step.name);
                if !is_slug(&step.name) {
                    err(
                        format!("{path}.name"),
                        format!("{of}: the name must be lower-case letters, digits or `-`"),
                    );
                }
                if !steps.insert(&step.name) {
                    err(format!("{path}.name"), format!("{of} is declared twice"));
                }
                if !is_slug(&step.participant) {
                    err(
                        format!("{path}.participant"),
                        format!(
                            "{of}: participant `{}` must be lower-case letters, digits or `-`",
                            step.participant
                        ),
                    );
                }
                let mut check = |at: &str, c: &CommandSpec| {
                    command_problems(
                        c,
                        event_types,
                        &|t| topic(t).is_some(),
                        &mut |field, problem| {
                            err(format!("{path}{at}.{field}"), format!("{of}: {problem}"))
                        },
                    )
                };
                check("", &step.action());
                if let Some(c) = &step.compensation {
                    check(".compensation", c);
                }
                let earlier: Vec<&str> = saga.steps[..j].iter().map(|s| s.name.as_str()).collect();
                if let Some(call) = &step.http {
                    http_call_problems(call, &earlier, &mut |field, problem| {
                        err(format!("{path}.http.{field}"), format!("{of}: {problem}"))
                    });
                }
                let calls = [
                    (".http", step.http.as_ref()),
                    (
                        ".compensation.http",
                        step.compensation.as_ref().and_then(|c| c.http.as_ref()),
                    ),
                ];
                for (at, call) in calls {
                    let Some(name) = call.and_then(|c| c.upstream.as_ref()) else {
                        continue;
                    };
                    if !self.upstreams.iter().any(|u| &u.name == name) {
                        err(
                            format!("{path}{at}.upstream"),
                            format!("{of}: upstream `{name}` is not declared in upstreams"),
                        );
                    }
                }
                if let Some(c) = &step.compensation {
                    // A compensation reads its own step's result too (the id to undo).
                    let done: Vec<&str> =
                        saga.steps[..=j].iter().map(|s| s.name.as_str()).collect();
                    match (&step.http, &c.http) {
                        (Some(_), Some(call)) => http_call_problems(call, &done, &mut |field, problem| {
                            err(format!("{path}.compensation.http.{field}"), format!("{of}: {problem}"))
                        }),
                        (Some(_), None) => err(
                            format!("{path}.compensation.http"),
                            format!("{of}: the step is an HTTP call, so its compensation must be one too (add `http:`)"),
                        ),
                        (None, Some(_)) => err(
                            format!("{path}.compensation.http"),
                            format!("{of}: only a step that is an HTTP call may have an HTTP compensation (participant `{}` answers the step)", step.participant),
                        ),
                        (None, None) => {}
                    }
                }
                match roles.get(step.participant.as_str()) {
                    Some(&http) if http != step.is_http() => err(
                        format!("{path}.participant"),
                        format!(
                            "{of}: participant `{}` runs {} steps elsewhere; a role is either sluice's HTTP participant or one you wrote, so give this step another participant name",
                            step.participant,
                            if http { "HTTP" } else { "non-HTTP" }
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        roles.insert(&step.participant, step.is_http());
                    }
                }
                if let Some(r) = &step.retry {
                    retry_problems(r, &mut |field, problem| {
                        err(format!("{path}.retry.{field}"), format!("{of}: {problem}"))
                    });
                }
                if step.side_effects && step.compensation.is_none() {
                    err(
                        format!("{path}.compensation"),
                        format!("{of}: missing compensation; the step has side effects (set `side_effects: false` if it has none)"),
                    );
                }
                let dedup = naming::saga_participant_state_topic(&self.prefix, &step.participant);
                match topic(&dedup) {
                    None => err(
                        format!("{path}.participant"),
                        format!(
                            "{of}: participant state topic `{dedup}` is not declared in topics"
                        ),
                    ),
                    Some(d) => {
                        if !compacted(d) {
                            err(
                                format!("{path}.participant"),
                                format!("{of}: participant state topic `{dedup}` must have cleanup.policy compact"),
                            );
                        }
                        let commands = std::iter::once(&step.command)
                            .chain(step.compensation.as_ref().map(|c| &c.command));
                        for c in commands {
                            if let Some(t) = topic(&c.topic) {
                                if t.partitions > d.partitions {
                                    err(
                                        format!("{path}.participant"),
                                        format!(
                                            "{of}: participant state topic `{dedup}` has {} partitions, fewer than command topic `{}` ({})",
                                            d.partitions, t.name, t.partitions
                                        ),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every (topic, event type) whose subject `sluice schemas register` registers: the
    /// routes, then each saga's commands, replies and control messages on the saga's topics,
    /// then delivery's operational events when their topic is declared.
    pub fn registrations(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .routes
            .iter()
            .map(|r| (r.topic.clone(), r.event_type.clone()))
            .collect();
        for saga in &self.sagas {
            out.extend(saga_subjects(&self.prefix, saga));
        }
        let ops = naming::delivery_events_topic(&self.prefix);
        if self.topics.iter().any(|t| t.name == ops) {
            out.extend(
                naming::DELIVERY_EVENT_TYPES
                    .iter()
                    .map(|t| (ops.clone(), t.to_string())),
            );
        }
        let mut seen = BTreeSet::new();
        out.retain(|p| seen.insert(p.clone()));
        out
    }

    /// Declared topics plus the retry tier topics derived from each retry policy (sized like
    /// the policy's DLQ topic, or like its held-key topic under per-key ordering).
    pub fn all_topics(&self) -> Vec<TopicSpec> {
        let mut out = self.topics.clone();
        if self.sources.iter().any(|s| s.poll.is_some()) {
            let rf = self.topics.first().map_or(1, |t| t.replication_factor);
            // Cursors and (id, version) pairs: compacted, one partition (a source's records
            // all go to one partition anyway, read back in full at start); and items too
            // large to be raw records, kept 30 days like the other dead-letter topics.
            let implied = [
                (
                    naming::poll_state_topic(&self.prefix),
                    "cleanup.policy",
                    "compact",
                ),
                (
                    naming::poll_dlq_topic(&self.prefix),
                    "retention.ms",
                    "2592000000",
                ),
            ];
            for (name, key, value) in implied {
                if !out.iter().any(|t| t.name == name) {
                    out.push(TopicSpec {
                        name,
                        partitions: 1,
                        replication_factor: rf,
                        config: [(key.to_string(), value.to_string())].into(),
                    });
                }
            }
        }
        for p in &self.retry_policies {
            let like = match p.ordering {
                Ordering::PerKey => naming::held_topic(&self.prefix, &p.name),
                Ordering::None => p.dlq_topic.clone(),
            };
            let sized = self.topics.iter().find(|t| t.name == like);
            // A tier holds the same copies as the dead-letter topic, so it takes the same
            // record limit.
            let config: BTreeMap<String, String> = self
                .topics
                .iter()
                .find(|t| t.name == p.dlq_topic)
                .and_then(|d| d.config.get("max.message.bytes"))
                .map(|v| [("max.message.bytes".to_string(), v.clone())].into())
                .unwrap_or_default();
            for tier in &p.tiers {
                let name = naming::retry_topic(&self.prefix, &p.name, tier.0);
                if out.iter().any(|t| t.name == name) {
                    continue; // declared explicitly, with its own settings
                }
                out.push(TopicSpec {
                    name,
                    partitions: sized.map_or(1, |d| d.partitions),
                    replication_factor: sized.map_or(1, |d| d.replication_factor),
                    config: config.clone(),
                });
            }
        }
        out
    }

    pub fn route_of(&self, event_type: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.event_type == event_type)
            .map(|r| r.topic.as_str())
    }
}

/// The (topic, event type) pairs a saga writes on its own topics.
/// "`name` has N" for each of `names` declared in `topics` with other than `partitions`
/// partitions.
fn partition_mismatches<'a>(
    topics: &[TopicSpec],
    names: impl IntoIterator<Item = &'a str>,
    partitions: i32,
) -> Vec<String> {
    names
        .into_iter()
        .filter_map(|n| topics.iter().find(|t| t.name == n))
        .filter(|t| t.partitions != partitions)
        .map(|t| format!("`{}` has {}", t.name, t.partitions))
        .collect()
}

fn saga_subjects(prefix: &str, saga: &SagaSpec) -> Vec<(String, String)> {
    let replies = naming::saga_replies_topic(prefix, &saga.name);
    let mut out = vec![(replies.clone(), SAGA_CONTROL_TYPE.to_string())];
    for step in &saga.steps {
        for c in std::iter::once(step.action()).chain(step.compensation.clone()) {
            out.push((c.command.topic.clone(), c.command.event_type.clone()));
            // The orchestrator's `expire` of a finished saga reaches its participants too.
            out.push((c.command.topic.clone(), SAGA_CONTROL_TYPE.to_string()));
            out.push((replies.clone(), c.success.clone()));
            out.push((replies.clone(), c.failure.clone()));
        }
    }
    out
}

fn command_problems(
    c: &CommandSpec,
    event_types: &BTreeSet<String>,
    declared: &dyn Fn(&str) -> bool,
    err: &mut dyn FnMut(&str, String),
) {
    for (field, t) in [
        ("command.event_type", &c.command.event_type),
        ("success", &c.success),
        ("failure", &c.failure),
    ] {
        if !event_types.contains(t) {
            err(field, format!("unknown event type `{t}`"));
        }
    }
    if c.success == c.failure {
        err(
            "failure",
            format!(
                "`{}` cannot be both the success and the failure reply",
                c.failure
            ),
        );
    }
    if !declared(&c.command.topic) {
        err(
            "command.topic",
            format!(
                "command topic `{}` is not declared in topics",
                c.command.topic
            ),
        );
    }
    if c.timeout.0.is_zero() {
        err("timeout", "must be more than 0".into());
    }
}

fn retry_problems(r: &RetrySpec, err: &mut dyn FnMut(&str, String)) {
    if r.max_attempts < 1 {
        err("max_attempts", "must be at least 1".into());
    }
    if r.backoff.0.is_zero() {
        err("backoff", "must be more than 0".into());
    }
    if r.max_backoff.is_some_and(|m| m.0 < r.backoff.0) {
        err("max_backoff", "must not be less than backoff".into());
    }
}

/// Lower-case letters, digits and `-`, not empty: safe in topic names and metric labels.
fn is_slug(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Kafka's rules for topic names.
fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 249 {
        return Some(format!("`{name}` is longer than 249 characters"));
    }
    if name == "." || name == ".." {
        return Some(format!("`{name}` is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "`{name}` contains `{c}`; use letters, digits, `.`, `_` or `-`"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> BTreeSet<String> {
        ["dev.sluice.events.payments.PaymentSucceeded".to_string()].into()
    }

    const GOOD: &str = r#"
topics:
  - {name: sluice.raw.stripe, partitions: 3, config: {retention.ms: 604800000}}
  - {name: sluice.events.payments, partitions: 3}
  - {name: sluice.dlq.normalizer, partitions: 3}
sources:
  - name: stripe
    provider: {type: stripe}
    secrets: [{env: STRIPE_SECRET}]
    raw_topic: sluice.raw.stripe
routes:
  - {event_type: dev.sluice.events.payments.PaymentSucceeded, topic: sluice.events.payments}
retry_policies:
  - {name: normalizer, tiers: [5s, 1m], max_attempts: 3, dlq_topic: sluice.dlq.normalizer}
"#;

    #[test]
    fn a_good_topology_loads_and_derives_retry_topics() {
        let t = Topology::parse("t.yaml", GOOD, &types()).unwrap();
        let names: Vec<String> = t.all_topics().into_iter().map(|t| t.name).collect();
        assert!(names.contains(&"sluice.retry.normalizer.5s".to_string()));
        assert!(names.contains(&"sluice.retry.normalizer.1m".to_string()));
        assert_eq!(t.topics[0].config["retention.ms"], "604800000");
        assert_eq!(
            t.route_of("dev.sluice.events.payments.PaymentSucceeded"),
            Some("sluice.events.payments")
        );
    }

    #[test]
    fn unknown_key_names_file_and_path() {
        let bad = GOOD.replace(
            "partitions: 3}\n  - {name: sluice.dlq",
            "partitons: 3}\n  - {name: sluice.dlq",
        );
        let err = Topology::parse("t.yaml", &bad, &types())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.yaml: topics[1]: unknown field `partitons`"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_paths() {
        let bad = GOOD
            .replace(
                "{name: sluice.events.payments, partitions: 3}",
                "{name: sluice.events.payments, partitions: 0}",
            )
            .replace(
                "dlq_topic: sluice.dlq.normalizer",
                "dlq_topic: sluice.dlq.nope",
            )
            .replace("type: stripe", "type: stripey")
            .replace(
                "topic: sluice.events.payments}",
                "topic: sluice.events.missing}",
            );
        let err = Topology::parse("t.yaml", &bad, &types())
            .unwrap_err()
            .to_string();
        for expected in [
            "topics[1].partitions: must be at least 1, got 0",
            "retry_policies[0].dlq_topic: topic `sluice.dlq.nope` is not declared",
            "sources[0].provider.type: unknown provider `stripey`",
            "routes[0].topic: topic `sluice.events.missing` is not declared",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
    }

    #[test]
    fn unknown_event_types_and_bad_topic_names_are_rejected() {
        let bad = GOOD
            .replace(
                "event_type: dev.sluice.events.payments.PaymentSucceeded",
                "event_type: dev.sluice.events.payments.Nope",
            )
            .replace(
                "name: sluice.raw.stripe, partitions",
                "name: other.raw, partitions",
            );
        let err = Topology::parse("t.yaml", &bad, &types())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "routes[0].event_type: `dev.sluice.events.payments.Nope` is not an event type"
            ),
            "{err}"
        );
        assert!(
            err.contains("topics[0].name: `other.raw` must start with the prefix `sluice.`"),
            "{err}"
        );
    }

    #[test]
    fn delivery_held_keys_are_compacted_and_partitioned_like_the_tasks() {
        let with = |held: &str| {
            GOOD.replace(
                "sources:",
                &format!("  - {{name: sluice.deliveries, partitions: 3}}\n{held}sources:"),
            )
            .replace(
                "retry_policies:\n",
                "retry_policies:\n  - {name: deliveries, tiers: [1s], max_attempts: 3, dlq_topic: sluice.dlq.normalizer}\n",
            )
        };
        // Not declared: nothing to check (per_key holds within one dispatcher's memory).
        Topology::parse("t.yaml", &with(""), &types()).unwrap();
        let good = "  - {name: sluice.state.held-deliveries, partitions: 3, config: {cleanup.policy: compact}}\n";
        Topology::parse("t.yaml", &with(good), &types()).unwrap();
        let bad = "  - {name: sluice.state.held-deliveries, partitions: 2}\n";
        let err = Topology::parse("t.yaml", &with(bad), &types())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sluice.state.held-deliveries` must have cleanup.policy compact"),
            "{err}"
        );
        assert!(
            err.contains("has 2 partitions, and the tasks topic and the delivery retry tiers need as many: `sluice.deliveries` has 3, `sluice.retry.deliveries.1s` has 3"),
            "{err}"
        );
        // The endpoints' failing-since clocks, the same way.
        let good = "  - {name: sluice.state.delivery-health, partitions: 3, config: {cleanup.policy: compact}}\n";
        Topology::parse("t.yaml", &with(good), &types()).unwrap();
        let bad = "  - {name: sluice.state.delivery-health, partitions: 1, config: {cleanup.policy: delete}}\n";
        let err = Topology::parse("t.yaml", &with(bad), &types())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("delivery health topic `sluice.state.delivery-health` must have cleanup.policy compact"),
            "{err}"
        );
        assert!(
            err.contains("delivery health topic `sluice.state.delivery-health` has 1 partitions"),
            "{err}"
        );
    }

    #[test]
    fn per_key_ordering_needs_a_compacted_held_topic_and_equal_partitions() {
        let per_key = GOOD.replace(
            "dlq_topic: sluice.dlq.normalizer}",
            "dlq_topic: sluice.dlq.normalizer, ordering: per_key}",
        );
        let err = Topology::parse("t.yaml", &per_key, &types())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retry_policies[0].ordering: policy `normalizer` orders per key: held-key topic `sluice.state.held-normalizer` is not declared"),
            "{err}"
        );

        let held = per_key.replace(
            "sources:",
            "  - {name: sluice.state.held-normalizer, partitions: 3, config: {cleanup.policy: compact}}\nsources:",
        );
        let t = Topology::parse("t.yaml", &held, &types()).unwrap();
        let tier = t
            .all_topics()
            .into_iter()
            .find(|t| t.name == "sluice.retry.normalizer.5s")
            .unwrap();
        assert_eq!(
            tier.partitions, 3,
            "tiers are sized like the held-key topic"
        );
        assert_eq!(t.policy_inputs("normalizer"), vec!["sluice.raw.stripe"]);

        let bad = held
            .replace(
                "{name: sluice.raw.stripe, partitions: 3,",
                "{name: sluice.raw.stripe, partitions: 6,",
            )
            .replace(
                "config: {cleanup.policy: compact}}",
                "config: {cleanup.policy: \"compact,delete\"}}",
            );
        let err = Topology::parse("t.yaml", &bad, &types())
            .unwrap_err()
            .to_string();
        for expected in [
            "held-key topic `sluice.state.held-normalizer` must have cleanup.policy compact",
            "its inputs and retry tiers need as many partitions as held-key topic `sluice.state.held-normalizer` (3): `sluice.raw.stripe` has 6",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
    }

    #[test]
    fn the_reference_topology_is_valid() {
        let catalog_free: BTreeSet<String> = BTreeSet::new();
        let text = include_str!("../topology.yaml");
        let t: Topology = serde_yaml_ng::from_str(text).unwrap();
        // Event types come from the catalog, which this crate does not load: check the rest.
        let errors: Vec<String> = t
            .validate(&catalog_free)
            .into_iter()
            .filter(|e| !e.message.contains("catalog") && !e.message.contains("unknown event type"))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }

    const SAGA: &str = r#"
topics:
  - {name: sluice.events.commerce, partitions: 3}
  - {name: sluice.events.sagas, partitions: 3}
  - {name: sluice.saga.orders.commands, partitions: 3}
  - {name: sluice.saga.orders.replies, partitions: 3}
  - {name: sluice.state.saga-orders, partitions: 3, config: {cleanup.policy: compact}}
  - {name: sluice.state.saga-participant-payments, partitions: 3, config: {cleanup.policy: compact}}
  - {name: sluice.dlq.sagas, partitions: 1}
  - {name: sluice.dlq.saga-participants, partitions: 1}
routes:
  - {event_type: x.OrderPlaced, topic: sluice.events.commerce}
  - {event_type: dev.sluice.events.sagas.SagaStarted, topic: sluice.events.sagas}
  - {event_type: dev.sluice.events.sagas.SagaStepCompleted, topic: sluice.events.sagas}
  - {event_type: dev.sluice.events.sagas.SagaCompleted, topic: sluice.events.sagas}
  - {event_type: dev.sluice.events.sagas.SagaCompensated, topic: sluice.events.sagas}
  - {event_type: dev.sluice.events.sagas.SagaFailed, topic: sluice.events.sagas}
sagas:
  - name: orders
    trigger: {event_type: x.OrderPlaced, topic: sluice.events.commerce}
    correlation_key: order_id
    steps:
      - name: charge-payment
        participant: payments
        command: {event_type: x.Charge, topic: sluice.saga.orders.commands}
        success: x.Charged
        failure: x.ChargeFailed
        timeout: 5s
        retry: {max_attempts: 3, backoff: 1s}
        compensation:
          command: {event_type: x.Refund, topic: sluice.saga.orders.commands}
          success: x.Refunded
          failure: x.RefundFailed
          timeout: 5s
"#;

    fn saga_types() -> BTreeSet<String> {
        let mut t: BTreeSet<String> = [
            "x.OrderPlaced",
            "x.Charge",
            "x.Charged",
            "x.ChargeFailed",
            "x.Refund",
            "x.Refunded",
            "x.RefundFailed",
            SAGA_CONTROL_TYPE,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        t.extend(SAGA_LIFECYCLE_TYPES.iter().map(|s| s.to_string()));
        t
    }

    #[test]
    fn a_good_saga_loads_and_its_subjects_are_registered() {
        let t = Topology::parse("t.yaml", SAGA, &saga_types()).unwrap();
        let saga = &t.sagas[0];
        assert_eq!(saga.steps[0].timeout.0, std::time::Duration::from_secs(5));
        assert_eq!(saga.compensation_retry.max_attempts, 5, "default policy");
        let subjects = t.registrations();
        for pair in [
            ("sluice.saga.orders.commands", "x.Charge"),
            ("sluice.saga.orders.commands", "x.Refund"),
            ("sluice.saga.orders.replies", "x.Charged"),
            ("sluice.saga.orders.replies", "x.RefundFailed"),
            ("sluice.saga.orders.replies", SAGA_CONTROL_TYPE),
            ("sluice.events.sagas", "dev.sluice.events.sagas.SagaFailed"),
        ] {
            assert!(
                subjects.contains(&(pair.0.to_string(), pair.1.to_string())),
                "{pair:?} missing from {subjects:?}"
            );
        }
    }

    #[test]
    fn saga_errors_name_the_saga_the_step_and_the_problem() {
        let bad = SAGA
            .replace("event_type: x.Charge,", "event_type: x.Nope,")
            .replace(
                "  - {name: sluice.saga.orders.replies, partitions: 3}\n",
                "",
            )
            .replace(
                "        compensation:\n          command: {event_type: x.Refund, topic: sluice.saga.orders.commands}\n          success: x.Refunded\n          failure: x.RefundFailed\n          timeout: 5s\n",
                "",
            )
            .replace("retry: {max_attempts: 3, backoff: 1s}", "retry: {max_attempts: 0, backoff: 1s}");
        let err = Topology::parse("t.yaml", &bad, &saga_types())
            .unwrap_err()
            .to_string();
        for expected in [
            "sagas[0].steps[0].command.event_type: saga `orders`, step `charge-payment`: unknown event type `x.Nope`",
            "sagas[0].name: saga `orders`: reply topic `sluice.saga.orders.replies` is not declared in topics",
            "sagas[0].steps[0].compensation: saga `orders`, step `charge-payment`: missing compensation; the step has side effects",
            "sagas[0].steps[0].retry.max_attempts: saga `orders`, step `charge-payment`: must be at least 1",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
        // Without side effects no compensation is needed.
        let no_effects = SAGA.replace(
            "        compensation:\n          command: {event_type: x.Refund, topic: sluice.saga.orders.commands}\n          success: x.Refunded\n          failure: x.RefundFailed\n          timeout: 5s\n",
            "        side_effects: false\n",
        );
        Topology::parse("t.yaml", &no_effects, &saga_types()).unwrap();
    }

    #[test]
    fn saga_state_and_lifecycle_routing_are_checked() {
        let bad = SAGA
            .replace(
                "{name: sluice.state.saga-orders, partitions: 3, config: {cleanup.policy: compact}}",
                "{name: sluice.state.saga-orders, partitions: 2}",
            )
            .replace(
                "  - {event_type: dev.sluice.events.sagas.SagaFailed, topic: sluice.events.sagas}\n",
                "",
            )
            .replace("correlation_key: order_id", "correlation_key: order..id");
        let err = Topology::parse("t.yaml", &bad, &saga_types())
            .unwrap_err()
            .to_string();
        for expected in [
            "state topic `sluice.state.saga-orders` must have cleanup.policy compact",
            "state topic `sluice.state.saga-orders` has 2 partitions but reply topic `sluice.saga.orders.replies` has 3",
            "sagas: lifecycle event `dev.sluice.events.sagas.SagaFailed` is not routed",
            "sagas[0].correlation_key: saga `orders`: `order..id` is not a field path",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
    }

    #[test]
    fn saga_keys_are_checked_like_every_other_key() {
        let typo = SAGA.replace("timeout: 5s\n        retry", "timout: 5s\n        retry");
        let err = Topology::parse("t.yaml", &typo, &saga_types())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `timout`"), "{err}");
    }

    /// The `SAGA` fixture with its step and compensation made HTTP calls.
    fn http_saga() -> String {
        SAGA.replace(
            "        retry: {max_attempts: 3, backoff: 1s}\n",
            r#"        retry: {max_attempts: 3, backoff: 1s}
        http:
          method: POST
          url: "{env:PAY_URL}/v1/charges"
          headers: {Authorization: "Bearer {env:PAY_KEY}"}
          body: {order: "{data.order_id}", amount: "{data.total.amount}", note: "order {{x}}"}
          success: {status: [201], field: status, equals: succeeded}
          permanent: [402, 409, 422]
          keep: {payment_id: id}
"#,
        ) + r#"          http:
            method: POST
            url: "{env:PAY_URL}/v1/refunds/{results.charge-payment.payment_id}"
"#
    }

    #[test]
    fn an_http_step_loads_with_its_call() {
        let t = Topology::parse("t.yaml", &http_saga(), &saga_types()).unwrap();
        let step = &t.sagas[0].steps[0];
        let call = step.http.as_ref().unwrap();
        assert_eq!(call.method, crate::model::HttpMethod::Post);
        assert_eq!(call.permanent, vec![402, 409, 422]);
        assert_eq!(call.keep["payment_id"], "id");
        assert_eq!(call.success.equals, Some(serde_json::json!("succeeded")));
        assert_eq!(call.body.as_ref().unwrap()["order"], "{data.order_id}");
        assert!(step.action().http.is_some());
        assert!(step.compensation.as_ref().unwrap().http.is_some());
    }

    #[test]
    fn http_step_errors_name_the_saga_the_step_and_the_field() {
        let bad = http_saga()
            .replace(
                "url: \"{env:PAY_URL}/v1/charges\"",
                "url: \"{data.callback}/v1/charges\"",
            )
            .replace("{Authorization: ", "{Idempotency-Key: x, Authorization: ")
            .replace(
                "amount: \"{data.total.amount}\"",
                "amount: \"{results.ship.id}\"",
            )
            .replace("permanent: [402, 409, 422]", "permanent: [402, 201, 1000]")
            .replace(
                "keep: {payment_id: id}",
                "keep: {payment_id: \"a..b\", _http: id}",
            )
            .replace("{results.charge-payment.payment_id}", "{data.x");
        let err = Topology::parse("t.yaml", &bad, &saga_types())
            .unwrap_err()
            .to_string();
        for expected in [
            "sagas[0].steps[0].http.url: saga `orders`, step `charge-payment`: the URL cannot start with `{data.callback}`",
            "sagas[0].steps[0].http.headers: saga `orders`, step `charge-payment`: `Idempotency-Key` is set by sluice",
            "sagas[0].steps[0].http.body: saga `orders`, step `charge-payment`: `{results.ship.id}` reads step `ship`, which has not completed by then (known: none)",
            "sagas[0].steps[0].http.permanent: saga `orders`, step `charge-payment`: 201 is also a success status",
            "sagas[0].steps[0].http.permanent: saga `orders`, step `charge-payment`: 1000 is not an HTTP status",
            "sagas[0].steps[0].http.keep.payment_id: saga `orders`, step `charge-payment`: `a..b` is not a field path",
            "sagas[0].steps[0].http.keep: saga `orders`, step `charge-payment`: `_http` must be a plain name",
            "sagas[0].steps[0].compensation.http.url: saga `orders`, step `charge-payment`: unclosed `{`",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
    }

    #[test]
    fn upstreams_are_declared_once_with_sane_limits() {
        let named = http_saga().replace(
            "          keep: {payment_id: id}\n",
            "          keep: {payment_id: id}\n          upstream: psp\n",
        );
        let err = Topology::parse("t.yaml", &named, &saga_types())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sagas[0].steps[0].http.upstream: saga `orders`, step `charge-payment`: upstream `psp` is not declared in upstreams"),
            "{err}"
        );
        let declared = format!(
            "{named}upstreams:\n  - {{name: psp, rate_per_sec: 20, burst: 40, breaker: {{consecutive_failures: 3, cool_down: 10s}}}}\n"
        );
        let t = Topology::parse("t.yaml", &declared, &saga_types()).unwrap();
        let psp = &t.upstreams[0];
        assert_eq!(
            (psp.rate_per_sec, psp.burst, psp.max_in_flight),
            (Some(20), Some(40), 8)
        );
        assert_eq!(psp.breaker.consecutive_failures, 3);
        assert_eq!(psp.breaker.close_after, 2, "default");
        let bad =
            format!("{named}upstreams:\n  - {{name: psp, rate_per_sec: 0}}\n  - {{name: psp}}\n  - {{name: other, sla: {{availability: 100, p99_latency: 0s}}}}\n");
        let err = Topology::parse("t.yaml", &bad, &saga_types())
            .unwrap_err()
            .to_string();
        for expected in [
            "upstreams[0].rate_per_sec: upstream `psp`: must be at least 1",
            "upstreams[1].name: upstream `psp` is declared twice",
            "upstreams[2].sla.availability: upstream `other`: must be a percentage above 0 and below 100",
            "upstreams[2].sla.p99_latency: upstream `other`: must be more than 0",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
    }

    #[test]
    fn an_http_step_and_its_compensation_go_together() {
        // The step calls HTTP but its compensation does not.
        let half = http_saga().replace(
            "          http:\n            method: POST\n            url: \"{env:PAY_URL}/v1/refunds/{results.charge-payment.payment_id}\"\n",
            "",
        );
        let err = Topology::parse("t.yaml", &half, &saga_types())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sagas[0].steps[0].compensation.http: saga `orders`, step `charge-payment`: the step is an HTTP call, so its compensation must be one too"),
            "{err}"
        );
        // A GET carries no body.
        let get = http_saga().replace(
            "method: POST\n          url: \"{env:PAY_URL}/v1/charges",
            "method: GET\n          url: \"{env:PAY_URL}/v1/charges",
        );
        let err = Topology::parse("t.yaml", &get, &saga_types())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http.body: saga `orders`, step `charge-payment`: a GET has no body"),
            "{err}"
        );
        // A role is either the HTTP participant or a written one.
        let mixed = http_saga()
            + "      - name: ship\n        participant: payments\n        side_effects: false\n        command: {event_type: x.Refund, topic: sluice.saga.orders.commands}\n        success: x.Refunded\n        failure: x.RefundFailed\n        timeout: 5s\n";
        let err = Topology::parse("t.yaml", &mixed, &saga_types())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sagas[0].steps[1].participant: saga `orders`, step `ship`: participant `payments` runs HTTP steps elsewhere"),
            "{err}"
        );
        // A misspelt key inside `http:` is named.
        let typo = http_saga().replace("keep: {payment_id: id}", "kep: {payment_id: id}");
        let err = Topology::parse("t.yaml", &typo, &saga_types())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `kep`"), "{err}");
    }
}
