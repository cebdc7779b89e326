//! One Kafka transaction per page: the page's new item versions to the raw topic, their
//! (id, version) pairs and the cursor after the page to the state topic. The transactional
//! id is the source's (within its deployment), so a poller started again fences the one
//! before it (whose open transaction is aborted) before it reads the state back.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_runtime::kafka::{blocking, KafkaClients};

/// A raw record to write.
#[derive(Debug)]
pub struct RawOut {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
}

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct WriteError {
    pub what: &'static str,
    #[source]
    pub source: KafkaError,
}

fn kafka(what: &'static str) -> impl Fn(KafkaError) -> WriteError {
    move |source| WriteError { what, source }
}

pub struct PageWriter {
    producer: FutureProducer,
    raw_topic: String,
    state_topic: String,
    partition: i32,
}

impl std::fmt::Debug for PageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageWriter")
            .field("raw_topic", &self.raw_topic)
            .finish()
    }
}

impl PageWriter {
    /// The writer of `source`, its predecessor fenced.
    pub async fn open(
        clients: &KafkaClients,
        source: &str,
        raw_topic: &str,
        state_topic: &str,
        partition: i32,
    ) -> Result<Self, WriteError> {
        let producer = clients
            // The state topic names the deployment (its prefix): two deployments on one
            // cluster with a source of the same name must not fence each other.
            .fenced_producer("poll", &format!("{state_topic}-{source}"))
            .await
            .map_err(|e| WriteError {
                what: e.what,
                source: e.source,
            })?;
        Ok(Self {
            producer,
            raw_topic: raw_topic.to_string(),
            state_topic: state_topic.to_string(),
            partition,
        })
    }

    /// Writes `records` and `state` in one transaction, or nothing.
    pub async fn commit(
        &self,
        records: Vec<RawOut>,
        state: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), WriteError> {
        self.producer
            .begin_transaction()
            .map_err(kafka("beginning a transaction"))?;
        let result = self.send_and_commit(records, state).await;
        if result.is_err() {
            let p = self.producer.clone();
            let _ = blocking(move || p.abort_transaction(Duration::from_secs(30))).await;
        }
        result
    }

    async fn send_and_commit(
        &self,
        records: Vec<RawOut>,
        state: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), WriteError> {
        let mut deliveries = Vec::with_capacity(records.len() + state.len());
        for r in &records {
            let record = FutureRecord::to(&self.raw_topic)
                .key(&r.key)
                .payload(&r.value)
                .headers(r.headers.clone());
            deliveries.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| kafka("enqueuing an item")(e))?,
            );
        }
        for (key, value) in &state {
            let record = FutureRecord::to(&self.state_topic)
                .partition(self.partition)
                .key(key)
                .payload(value);
            deliveries.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| kafka("enqueuing the cursor")(e))?,
            );
        }
        for d in join_all(deliveries).await {
            match d {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(kafka("producing a record")(e)),
                Err(_) => return Err(kafka("producing a record")(KafkaError::Canceled)),
            }
        }
        let p = self.producer.clone();
        blocking(move || p.commit_transaction(Duration::from_secs(60)))
            .await
            .map_err(kafka("committing the transaction"))
    }
}
