//! Every endpoint in memory, read from the compacted endpoints topic and kept up to date by
//! following it.
//!
//! [`EndpointTable::load`] reads the topic to its end through the state-topic reader every
//! sluice loop restores with (`sluice_stream::state::kafka::read_partitions`), then hands
//! back a [`Follower`] that tails the topic from the ends it noted *before* that read, so no
//! record written meanwhile is missed (one read twice is harmless: the latest value wins).
//!
//! Writers (the gateway's `/v1/endpoints` API) also [`EndpointTable::apply`] their own
//! acknowledged records at once, with their offsets, for read-your-writes. Each key
//! remembers the offset of the record it reflects, so the follower, arriving later with an
//! older record of that key, cannot roll it back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::Shutdown;
use sluice_stream::state::kafka::{partition_count, read_partitions};
use sluice_stream::state::StateError;

use super::matching::EventAttributes;
use super::model::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("following {topic}: {reason}")]
    Follow { topic: String, reason: String },
}

/// The endpoints, by id. Cheap to clone: clones share one table.
#[derive(Debug, Clone, Default)]
pub struct EndpointTable {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    endpoints: BTreeMap<String, Endpoint>,
    /// (partition, offset) of the record each key reflects, tombstones included.
    positions: HashMap<String, (i32, i64)>,
}

/// Where a record was read or written; `None` for records restored at start, which carry
/// no offset and always apply.
pub type Position = Option<(i32, i64)>;

impl EndpointTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, id: &str) -> Option<Endpoint> {
        self.read().endpoints.get(id).cloned()
    }

    /// Every endpoint, ordered by id (ids are time-ordered: by creation).
    pub fn list(&self) -> Vec<Endpoint> {
        self.read().endpoints.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The endpoints that take `event`.
    pub fn matching(&self, event: &EventAttributes<'_>) -> Vec<Endpoint> {
        self.read()
            .endpoints
            .values()
            .filter(|e| e.accepts(event))
            .cloned()
            .collect()
    }

    /// The endpoints, enabled or not, that subscribe to `event`.
    pub fn subscribed(&self, event: &EventAttributes<'_>) -> Vec<Endpoint> {
        self.read()
            .endpoints
            .values()
            .filter(|e| e.subscribes(event))
            .cloned()
            .collect()
    }

    /// Applies one record of the endpoints topic: a JSON [`Endpoint`], or `None` (a
    /// tombstone) to remove `id`. A record older than the one `id` already reflects is
    /// ignored. An unreadable value is an error and changes nothing.
    pub fn apply(
        &self,
        id: &str,
        value: Option<&[u8]>,
        position: Position,
    ) -> Result<(), serde_json::Error> {
        let endpoint = value.map(serde_json::from_slice::<Endpoint>).transpose()?;
        let mut inner = self.inner.write().expect("endpoint table");
        if let (Some(at), Some(seen)) = (position, inner.positions.get(id)) {
            if at.0 == seen.0 && at.1 <= seen.1 {
                return Ok(());
            }
        }
        if let Some(at) = position {
            inner.positions.insert(id.to_string(), at);
        }
        match endpoint {
            Some(e) => inner.endpoints.insert(id.to_string(), e),
            None => inner.endpoints.remove(id),
        };
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("endpoint table")
    }

    /// Reads `topic` to its end into a new table and returns it with the [`Follower`] that
    /// keeps it current. Blocking: call from a blocking context.
    pub fn load(clients: &KafkaClients, topic: &str) -> Result<(Self, Follower), TableError> {
        let fail = |reason: String| TableError::Follow {
            topic: topic.to_string(),
            reason,
        };
        let partitions: Vec<i32> = (0..partition_count(clients, topic)?).collect();
        let probe: BaseConsumer = clients
            .base("endpoints")
            .map_err(|e| fail(e.to_string()))?
            .create()
            .map_err(|e| fail(e.to_string()))?;
        let mut start = TopicPartitionList::new();
        for &p in &partitions {
            let (_, high) = probe
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(|e| fail(format!("partition {p}: {e}")))?;
            start
                .add_partition_offset(topic, p, Offset::Offset(high))
                .map_err(|e| fail(e.to_string()))?;
        }
        let table = Self::new();
        read_partitions(clients, topic, &partitions, |p, key, value| {
            table.apply_logged(topic, p, key, value, None);
        })?;
        let consumer: StreamConsumer = clients
            .consumer_config("endpoints-follower", "sluice-endpoints-follower")
            .map_err(|e| fail(e.to_string()))?
            .create()
            .map_err(|e| fail(e.to_string()))?;
        consumer.assign(&start).map_err(|e| fail(e.to_string()))?;
        tracing::info!(topic, endpoints = table.len(), "endpoint table loaded");
        Ok((
            table.clone(),
            Follower {
                topic: topic.to_string(),
                consumer,
                table,
            },
        ))
    }

    /// [`apply`](Self::apply), logging (by id and position, never by value) a record that
    /// cannot be read instead of failing.
    fn apply_logged(&self, topic: &str, p: i32, key: &[u8], value: Option<&[u8]>, at: Position) {
        let id = String::from_utf8_lossy(key);
        if let Err(e) = self.apply(&id, value, at) {
            tracing::warn!(topic, partition = p, endpoint = %id, error = %e,
                "an endpoint record is unreadable; the endpoint keeps its previous state");
        }
    }
}

/// Tails the endpoints topic into its table until shutdown.
pub struct Follower {
    topic: String,
    consumer: StreamConsumer,
    table: EndpointTable,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Follower {
    /// Says which endpoint changed and how it now stands (an operator enabling an endpoint
    /// sees when the deliverer has taken it in). Never the endpoint's URL or secrets.
    fn log_change(&self, key: &[u8]) {
        let id = String::from_utf8_lossy(key);
        match self.table.get(&id) {
            Some(e) => tracing::info!(endpoint = %id, enabled = e.enabled, "endpoint updated"),
            None => tracing::info!(endpoint = %id, "endpoint removed"),
        }
    }

    /// Applies every new record until `shutdown`; a read error is logged and retried.
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        if let Some(key) = m.key() {
                            let at = Some((m.partition(), m.offset()));
                            self.table.apply_logged(&self.topic, m.partition(), key, m.payload(), at);
                            self.log_change(key);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, error = %e, "following the endpoints topic");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::model::EndpointSpec;

    fn endpoint(id: &str, description: &str) -> Vec<u8> {
        let spec: EndpointSpec = serde_json::from_value(serde_json::json!({
            "url": "https://example.com/h", "event_types": ["a.B"], "description": description,
        }))
        .unwrap();
        let (e, _) = Endpoint::create(spec, id.into(), jiff::Timestamp::UNIX_EPOCH).unwrap();
        serde_json::to_vec(&e).unwrap()
    }

    #[test]
    fn latest_record_wins_and_older_offsets_cannot_roll_a_key_back() {
        let t = EndpointTable::new();
        t.apply("ep_a", Some(&endpoint("ep_a", "v1")), None)
            .unwrap();
        t.apply("ep_b", Some(&endpoint("ep_b", "b")), None).unwrap();
        assert_eq!(t.len(), 2);
        // A local write at offset 7, then the follower delivering the record at offset 5.
        t.apply("ep_a", Some(&endpoint("ep_a", "v3")), Some((0, 7)))
            .unwrap();
        t.apply("ep_a", Some(&endpoint("ep_a", "v2")), Some((0, 5)))
            .unwrap();
        assert_eq!(t.get("ep_a").unwrap().description, "v3");
        // The same record again is harmless; a newer one applies.
        t.apply("ep_a", Some(&endpoint("ep_a", "v3")), Some((0, 7)))
            .unwrap();
        t.apply("ep_a", Some(&endpoint("ep_a", "v4")), Some((0, 8)))
            .unwrap();
        assert_eq!(t.get("ep_a").unwrap().description, "v4");
        // A tombstone removes, and an older value cannot resurrect the endpoint.
        t.apply("ep_a", None, Some((0, 9))).unwrap();
        t.apply("ep_a", Some(&endpoint("ep_a", "v4")), Some((0, 8)))
            .unwrap();
        assert!(t.get("ep_a").is_none());
        assert_eq!(t.list().len(), 1);
        // An unreadable value is an error and changes nothing.
        assert!(t.apply("ep_b", Some(b"{not json"), Some((0, 10))).is_err());
        assert_eq!(t.get("ep_b").unwrap().description, "b");
    }

    #[test]
    fn matching_filters_by_each_endpoint() {
        let t = EndpointTable::new();
        t.apply("ep_a", Some(&endpoint("ep_a", "a")), None).unwrap();
        let event = |ty| EventAttributes {
            event_type: ty,
            source: "s",
            subject: None,
        };
        assert_eq!(t.matching(&event("a.B")).len(), 1);
        assert!(t.matching(&event("a.C")).is_empty());
    }
}
