//! What operators ask of sagas (`sluice saga list|show|retry|abort`), answered from the state
//! topics. Retry and abort are not applied here: they are written as control messages to the
//! instance's replies partition, so the orchestrator applies them like any other input, in a
//! transaction, in order with the instance's replies.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sluice_runtime::kafka::KafkaClients;
use sluice_schemas::metadata;
use sluice_schemas::{AvroCodec, Catalog, RegistryClient};
use sluice_topology::model::SAGA_CONTROL_TYPE;
use sluice_topology::{naming, Topology};

use super::instance::{Instance, ParkReason, Status};
use super::messages::{
    self, Action, Control, Meta, SchemaBook, CORRELATION_HEADER, SAGA_ID_HEADER,
};
use super::{home_partition, SagaError};
use sluice_stream::state::kafka as compacted;
use sluice_stream::Output;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("no saga instance `{id}` in {}", .topics.join(", "))]
    UnknownId { id: String, topics: Vec<String> },
    #[error("`{id}` names an instance of several sagas ({}); pass --saga", .sagas.join(", "))]
    Ambiguous { id: String, sagas: Vec<String> },
    #[error("saga {saga} instance `{id}` is {status}; {hint}")]
    WrongState {
        saga: String,
        id: String,
        status: String,
        hint: &'static str,
    },
    #[error(transparent)]
    Saga(#[from] SagaError),
}

fn sagas<'t>(topology: &'t Topology, saga: Option<&str>) -> Result<Vec<&'t str>, SagaError> {
    if let Some(name) = saga {
        if !topology.sagas.iter().any(|s| s.name == name) {
            return Err(SagaError::UnknownSaga(name.to_string()));
        }
    }
    Ok(topology
        .sagas
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| saga.is_none_or(|s| s == *n))
        .collect())
}

/// Every instance of the selected sagas (the latest state of each), read from the state
/// topics. Blocking.
pub fn list(
    clients: &KafkaClients,
    topology: &Topology,
    saga: Option<&str>,
) -> Result<Vec<Instance>, SagaError> {
    let mut out = Vec::new();
    for name in sagas(topology, saga)? {
        let topic = naming::saga_state_topic(&topology.prefix, name);
        let partitions: Vec<i32> = (0..compacted::partition_count(clients, &topic)?).collect();
        let mut latest: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        compacted::read_partitions(clients, &topic, &partitions, |_, key, value| {
            latest.insert(
                String::from_utf8_lossy(key).into_owned(),
                value.map(<[u8]>::to_vec),
            );
        })?;
        for (id, value) in latest {
            let Some(value) = value else { continue };
            match Instance::from_json(&value) {
                Ok(i) => out.push(i),
                Err(e) => tracing::error!(topic, id, error = %e, "unreadable saga state record"),
            }
        }
    }
    Ok(out)
}

/// The instance `id` (of `saga`, or of whichever saga has it), read from the one state
/// partition it can be in. Blocking.
pub fn find(
    clients: &KafkaClients,
    topology: &Topology,
    saga: Option<&str>,
    id: &str,
) -> Result<Instance, OpsError> {
    let mut found: Vec<Instance> = Vec::new();
    let mut topics = Vec::new();
    for name in sagas(topology, saga)? {
        let topic = naming::saga_state_topic(&topology.prefix, name);
        let partitions = compacted::partition_count(clients, &topic).map_err(SagaError::from)?;
        let home = home_partition(id.as_bytes(), partitions);
        let mut latest: Option<Option<Vec<u8>>> = None;
        compacted::read_partitions(clients, &topic, &[home], |_, key, value| {
            if key == id.as_bytes() {
                latest = Some(value.map(<[u8]>::to_vec));
            }
        })
        .map_err(SagaError::from)?;
        if let Some(Some(value)) = latest {
            let instance = Instance::from_json(&value).map_err(|e| {
                SagaError::Definition(format!("{topic}: the state of `{id}` is unreadable: {e}"))
            })?;
            found.push(instance);
        }
        topics.push(topic);
    }
    match found.len() {
        0 => Err(OpsError::UnknownId {
            id: id.to_string(),
            topics,
        }),
        1 => Ok(found.remove(0)),
        _ => Err(OpsError::Ambiguous {
            id: id.to_string(),
            sagas: found.into_iter().map(|i| i.saga).collect(),
        }),
    }
}

/// Filters for [`list`]: saga states, and a minimum age.
pub fn matches(
    instance: &Instance,
    states: &[Status],
    older_than_ms: Option<i64>,
    now: i64,
) -> bool {
    (states.is_empty() || states.contains(&instance.status))
        && older_than_ms.is_none_or(|age| now - instance.started_at >= age)
}

/// An operator's request about one instance.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The saga, when the id alone is ambiguous.
    pub saga: Option<&'a str>,
    pub id: &'a str,
    /// [`Action::Retry`] or [`Action::Abort`].
    pub action: Action,
    pub reason: Option<String>,
    /// Who asks, recorded in the instance's timeline.
    pub by: &'a str,
}

/// Asks the orchestrator to retry (a parked instance) or abort (a running one, or one parked
/// because its definition changed): checks the
/// instance's state, writes the control message, and returns the request id, which the
/// instance's history names once the request is applied. Blocking parts run in place.
pub async fn request(
    clients: &KafkaClients,
    registry: &RegistryClient,
    catalog: &Catalog,
    topology: &Topology,
    request: &Request<'_>,
) -> Result<(Instance, String), OpsError> {
    let Request {
        saga,
        id,
        action,
        by,
        ..
    } = *request;
    let instance = tokio::task::block_in_place(|| find(clients, topology, saga, id))?;
    let (ok, hint) = match action {
        Action::Retry => (
            instance.status == Status::Parked,
            "only a parked saga can be retried",
        ),
        Action::Abort => (
            instance.status == Status::Running
                || instance.park_reason() == Some(ParkReason::DefinitionChanged),
            "only a running saga can be aborted, or one parked because its definition changed (a compensating one already is)",
        ),
        _ => (false, "not an operator request"),
    };
    if !ok {
        return Err(OpsError::WrongState {
            saga: instance.saga.clone(),
            id: id.to_string(),
            status: instance.status.as_str().to_string(),
            hint,
        });
    }
    let replies = naming::saga_replies_topic(&topology.prefix, &instance.saga);
    let codec = AvroCodec::new(registry.clone());
    let book = SchemaBook::resolve(
        registry,
        catalog,
        topology.subjects.naming,
        [(replies.clone(), SAGA_CONTROL_TYPE.to_string())],
        &codec,
    )
    .await?;
    let partitions = tokio::task::block_in_place(|| compacted::partition_count(clients, &replies))
        .map_err(SagaError::from)?;
    let request_id = uuid::Uuid::now_v7().to_string();
    let mut control = Control::new(&instance.saga, id, action, &request_id);
    control.reason = request.reason.clone();
    control.requested_by = Some(by.to_string());
    let meta = Meta {
        event_id: request_id.clone(),
        occurred_at: metadata::now_ms(),
        source: "sluice://operators/cli".into(),
        subject: Some(id.to_string()),
    };
    let value = book.encode_fields(&replies, SAGA_CONTROL_TYPE, control.fields(&meta))?;
    let output = Output {
        topic: replies.clone(),
        partition: Some(home_partition(id.as_bytes(), partitions)),
        key: Some(id.as_bytes().to_vec()),
        value: Some(value),
        headers: meta.headers(
            SAGA_CONTROL_TYPE,
            &messages::child_traceparent(instance.traceparent.as_deref(), &request_id),
            &[(SAGA_ID_HEADER, id), (CORRELATION_HEADER, id)],
        ),
    };
    let producer = clients
        .producer("saga-operator")
        .map_err(|e| SagaError::Kafka(e.to_string()))?;
    super::produce(&producer, &output)
        .await
        .map_err(|e| SagaError::Kafka(e.to_string()))?;
    Ok((instance, request_id))
}

/// Polls the instance until its history names `request_id`, or `timeout` passes.
pub async fn wait_applied(
    clients: &KafkaClients,
    topology: &Topology,
    saga: &str,
    id: &str,
    request_id: &str,
    timeout: Duration,
) -> Result<Option<Instance>, OpsError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let instance = tokio::task::block_in_place(|| find(clients, topology, Some(saga), id))?;
        let applied = instance
            .history
            .iter()
            .any(|e| e.detail.as_deref().is_some_and(|d| d.contains(request_id)));
        if applied {
            return Ok(Some(instance));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(None)
}

/// Counts of instances by saga and state, for `sluice saga list`'s summary.
pub fn summary(instances: &[Instance]) -> BTreeMap<(String, &'static str), usize> {
    let mut m: HashMap<(String, &'static str), usize> = HashMap::new();
    for i in instances {
        *m.entry((i.saga.clone(), i.status.as_str())).or_default() += 1;
    }
    m.into_iter().collect()
}
