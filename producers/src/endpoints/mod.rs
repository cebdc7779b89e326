//! The management API for outbound webhook endpoints, on the gateway's port:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/endpoints` | create; 201 with the endpoint and its secret (shown this once) |
//! | `GET /v1/endpoints` | every endpoint, `{"data": [...]}` |
//! | `GET /v1/endpoints/{id}` | one endpoint |
//! | `PATCH /v1/endpoints/{id}` | change the fields the body names (`null` clears optional ones) |
//! | `DELETE /v1/endpoints/{id}` | remove (a tombstone); 204 |
//! | `POST /v1/endpoints/{id}/disable`, `/enable` | stop / resume deliveries |
//! | `POST /v1/endpoints/{id}/rotate-secret` | a new secret (shown this once); the current ones keep signing for `grace_period` (default 24 h) |
//! | `GET /v1/endpoints/{id}/deliveries` | the latest status of each delivery, `{"data": [...]}`; `?since=T&status=S` |
//! | `GET /v1/endpoints/{id}/deliveries/{event_id}` | one delivery: `{"status", "attempts": [...]}` |
//! | `POST /v1/endpoints/{id}/deliveries/{event_id}/resend` | send it again (same webhook-id, fresh schedule); 202 |
//! | `POST /v1/endpoints/{id}/recover` | `{"since": T}`: resend every `failed`, `gone` and `endpoint_disabled` delivery since `T`; 202 |
//!
//! Every request needs a bearer token with the `admin` scope (401 without a valid token, 403
//! with a token lacking the scope; failures are charged to the client address like bad
//! signatures). Bodies deny unknown fields; a bad value is `400` with a code naming the field
//! (`invalid_url`, `invalid_event_types`, …) and `fields: [{field, message}]`.
//!
//! Endpoints live in the compacted topic `<prefix>.state.endpoints`, one JSON record per
//! endpoint id. A change is written with the gateway's `acks=all` producer and answered only
//! once Kafka acknowledged it (503 `kafka_unavailable` otherwise); it is then applied to this
//! gateway's table at once, so its own reads see it. Reads are served from the table, which
//! follows the topic ([`sluice_delivery::endpoints::table`]), so every gateway converges on
//! every change. Changes are serialised per gateway; two gateways changing one endpoint at
//! once: the later record wins.
//!
//! Secrets appear only in the 201 of a create and the 200 of a rotation; every other answer
//! shows each secret's fingerprint, `created_at` and `expires_at`.

mod deliveries;
pub(crate) mod http;
pub mod openapi;

use std::collections::BTreeSet;
use std::sync::Mutex;

use sluice_delivery::endpoints::{EndpointTable, Follower, TableError};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::Shutdown;
use sluice_schemas::RegistryClient;

/// Largest endpoints request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The endpoints side of the gateway: the table and the topic it comes from.
#[derive(Debug)]
pub struct EndpointsApi {
    /// `None` when no token has the `admin` scope: the API is off and the topic not read.
    table: Option<EndpointTable>,
    topic: String,
    /// The catalog's event types: exact event types must be one of them.
    known_types: BTreeSet<String>,
    follower: Mutex<Option<Follower>>,
    /// One change at a time, so a read-modify-write cannot lose a concurrent one.
    writes: tokio::sync::Mutex<()>,
    /// The delivery log's reader and resender, when the API is on.
    log: Option<deliveries::DeliveryLog>,
}

impl EndpointsApi {
    /// Reads `topic` to its end (on a blocking thread); `known_types` are the event types
    /// endpoints may name exactly.
    pub async fn load(
        clients: &KafkaClients,
        registry: &RegistryClient,
        prefix: &str,
        known_types: BTreeSet<String>,
    ) -> Result<Self, TableError> {
        let topic = &sluice_delivery::endpoints::topic(prefix);
        let (reader, owned) = (clients.clone(), topic.to_string());
        let (table, follower) =
            tokio::task::spawn_blocking(move || EndpointTable::load(&reader, &owned))
                .await
                .expect("endpoint table load task")?;
        Ok(Self {
            table: Some(table),
            topic: topic.to_string(),
            known_types,
            follower: Mutex::new(Some(follower)),
            writes: tokio::sync::Mutex::new(()),
            log: Some(deliveries::DeliveryLog::new(
                clients.clone(),
                registry.clone(),
                prefix,
            )),
        })
    }

    /// The API switched off: every request is refused by authentication.
    pub fn disabled() -> Self {
        Self {
            table: None,
            topic: String::new(),
            known_types: BTreeSet::new(),
            follower: Mutex::new(None),
            writes: tokio::sync::Mutex::new(()),
            log: None,
        }
    }

    pub fn table(&self) -> Option<&EndpointTable> {
        self.table.as_ref()
    }

    /// Starts following the topic until `shutdown` (once; later calls do nothing).
    pub fn spawn_follower(&self, shutdown: Shutdown) -> Option<tokio::task::JoinHandle<()>> {
        let follower = self.follower.lock().expect("follower").take()?;
        Some(tokio::spawn(follower.run(shutdown)))
    }
}
