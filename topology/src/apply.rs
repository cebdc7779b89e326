//! Reads the live cluster through Kafka's admin API and carries out a [`Plan`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::model::TopicSpec;
use crate::plan::{Action, LiveTopic, Plan};

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot read the cluster's metadata: {0}")]
    Metadata(KafkaError),
    #[error("cannot describe the config of topic {topic}: {reason}")]
    Describe { topic: String, reason: String },
    #[error("{action} failed: {reason}")]
    Action { action: String, reason: String },
}

type Admin = AdminClient<DefaultClientContext>;

/// The cluster's topics whose names start with `<prefix>.`, with their configs.
pub async fn live_topics(
    admin: &Admin,
    prefix: &str,
) -> Result<BTreeMap<String, LiveTopic>, ApplyError> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, TIMEOUT)
        .map_err(ApplyError::Metadata)?;
    let managed = format!("{prefix}.");
    let mut out = BTreeMap::new();
    for t in metadata.topics() {
        if !t.name().starts_with(&managed) {
            continue;
        }
        let rf = t
            .partitions()
            .iter()
            .map(|p| p.replicas().len() as i32)
            .max()
            .unwrap_or(0);
        out.insert(
            t.name().to_string(),
            LiveTopic {
                partitions: t.partitions().len() as i32,
                replication_factor: rf,
                configs: BTreeMap::new(),
            },
        );
    }
    if out.is_empty() {
        return Ok(out);
    }
    let names: Vec<String> = out.keys().cloned().collect();
    let specifiers: Vec<ResourceSpecifier> =
        names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let results = admin
        .describe_configs(
            &specifiers,
            &AdminOptions::new().request_timeout(Some(TIMEOUT)),
        )
        .await
        .map_err(|e| ApplyError::Describe {
            topic: names.join(","),
            reason: e.to_string(),
        })?;
    for (name, result) in names.iter().zip(results) {
        let resource = result.map_err(|code| ApplyError::Describe {
            topic: name.clone(),
            reason: code.to_string(),
        })?;
        let live = out.get_mut(name).expect("described topic is live");
        for e in resource.entries {
            if let Some(v) = e.value {
                live.configs
                    .insert(e.name, (v, e.source == ConfigSource::DynamicTopic));
            }
        }
    }
    Ok(out)
}

/// Carries out `plan` (made from `declared` and the live topics under `prefix`), and when an
/// action fails, reads the cluster again and carries out what is still missing, up to
/// `attempts` times: a request that timed out on a busy broker may still have taken effect,
/// and the plan of what is left says so. `allow_delete` is what `plan` was made with.
/// Returns how many of `plan`'s changes the cluster now has.
pub async fn converge(
    admin: &Admin,
    declared: &[TopicSpec],
    prefix: &str,
    plan: &Plan,
    allow_delete: bool,
    attempts: u32,
) -> Result<usize, ApplyError> {
    let mut current = plan.clone();
    let mut attempt = 1;
    loop {
        match apply(admin, &current).await {
            Ok(_) => return Ok(plan.actions.len()),
            Err(e) if attempt >= attempts => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "topology change failed; reading the cluster again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let live = live_topics(admin, prefix).await?;
                current = crate::plan::plan(declared, &live, allow_delete);
                attempt += 1;
            }
        }
    }
}

/// Carries out `plan`'s actions in order, returning one line per action done.
pub async fn apply(admin: &Admin, plan: &Plan) -> Result<Vec<String>, ApplyError> {
    let opts = AdminOptions::new()
        .operation_timeout(Some(TIMEOUT))
        .request_timeout(Some(TIMEOUT));
    let mut done = Vec::new();
    for action in &plan.actions {
        let failed = |reason: String| ApplyError::Action {
            action: action.to_string(),
            reason,
        };
        match action {
            Action::Create(spec) => {
                let mut new = NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                );
                for (k, v) in &spec.config {
                    new = new.set(k, v);
                }
                let r = admin
                    .create_topics([&new], &opts)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                check(r.into_iter().next(), true).map_err(failed)?;
            }
            Action::AddPartitions { topic, to, .. } => {
                let new = NewPartitions::new(topic, *to as usize);
                let r = admin
                    .create_partitions([&new], &opts)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                check(r.into_iter().next(), false).map_err(failed)?;
            }
            Action::AlterConfigs { topic, desired, .. } => {
                let entries: HashMap<&str, &str> = desired
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let alter = AlterConfig {
                    specifier: ResourceSpecifier::Topic(topic),
                    entries,
                };
                let r = admin
                    .alter_configs([&alter], &opts)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                match r.into_iter().next() {
                    Some(Ok(_)) => {}
                    Some(Err((_, code))) => return Err(failed(code.to_string())),
                    None => return Err(failed("no result".into())),
                }
            }
            Action::Delete { topic } => {
                let r = admin
                    .delete_topics(&[topic.as_str()], &opts)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                check(r.into_iter().next(), false).map_err(failed)?;
            }
        }
        done.push(action.to_string());
    }
    Ok(done)
}

fn check(
    result: Option<Result<String, (String, RDKafkaErrorCode)>>,
    exists_is_ok: bool,
) -> Result<(), String> {
    match result {
        Some(Ok(_)) => Ok(()),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) if exists_is_ok => Ok(()),
        Some(Err((_, code))) => Err(code.to_string()),
        None => Err("no result".into()),
    }
}
