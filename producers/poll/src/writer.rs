//! Kafka transactions of a poller: a page's new item versions to the raw topic, their
//! (id, version) pairs (one record per page) and the cursor after the page to the state
//! topic. Pages are staged
//! into an open transaction as they come (their records sent at once, so Kafka writes them
//! while the next page is fetched) and committed together every
//! `pages_per_transaction` pages, with the cursor of the last one; state that must be
//! durable at once (a pause, a session, a failed crawl) commits whatever is staged with it.
//! The transactional id is the source's (within its deployment), so a poller started again
//! fences the one before it (whose open transaction is aborted) before it reads the state
//! back.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use sluice_runtime::kafka::{blocking, KafkaClients};

use crate::cursor::StateRecord;

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

/// A transaction committing beside the next page's fetch: its records' acknowledgements,
/// then the commit. [`PageWriter::settle`] says how it ended.
#[derive(Debug)]
pub struct Committing(tokio::task::JoinHandle<Result<(), WriteError>>);

/// The transaction under way: the acknowledgements still to come and how many pages it
/// holds.
#[derive(Default)]
struct Open {
    deliveries: Vec<DeliveryFuture>,
    pages: u64,
}

pub struct PageWriter {
    producer: FutureProducer,
    raw_topic: String,
    state_topic: String,
    partition: i32,
    open: Option<Open>,
}

impl std::fmt::Debug for PageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageWriter")
            .field("raw_topic", &self.raw_topic)
            .field("staged_pages", &self.staged_pages())
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
            open: None,
        })
    }

    /// Pages staged and not committed yet.
    pub fn staged_pages(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.pages)
    }

    /// Sends one page's `records` and `state` into the open transaction (begun if none is);
    /// nothing of it is visible before [`Self::commit`]. On an error the transaction is
    /// aborted: the caller opens the poller again from the committed state.
    pub async fn stage(
        &mut self,
        records: Vec<RawOut>,
        state: Vec<StateRecord>,
    ) -> Result<(), WriteError> {
        let result = self.send(records, state);
        if result.is_err() {
            self.abort().await;
        }
        if let Some(open) = &mut self.open {
            open.pages += 1;
        }
        result
    }

    /// Commits everything staged with `state`, or nothing.
    pub async fn commit(&mut self, state: Vec<StateRecord>) -> Result<(), WriteError> {
        let result = match self.send(Vec::new(), state) {
            Ok(()) => {
                let open = self.open.take().unwrap_or_default();
                acknowledged_and_committed(self.producer.clone(), open).await
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    /// Starts committing everything staged, in the background: nothing may be staged or
    /// committed before [`Self::settle`] has its outcome.
    pub fn commit_behind(&mut self) -> Committing {
        let open = self.open.take().unwrap_or_default();
        let producer = self.producer.clone();
        Committing(tokio::spawn(acknowledged_and_committed(producer, open)))
    }

    /// How a [`Self::commit_behind`] ended; on an error the transaction is aborted.
    pub async fn settle(&mut self, committing: Committing) -> Result<(), WriteError> {
        let result = committing
            .0
            .await
            .unwrap_or_else(|_| Err(kafka("committing the transaction")(KafkaError::Canceled)));
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    fn send(&mut self, records: Vec<RawOut>, state: Vec<StateRecord>) -> Result<(), WriteError> {
        if self.open.is_none() {
            self.producer
                .begin_transaction()
                .map_err(kafka("beginning a transaction"))?;
            self.open = Some(Open::default());
        }
        let open = self.open.as_mut().expect("a transaction is open");
        open.deliveries.reserve(records.len() + state.len());
        for r in records {
            let record = FutureRecord::to(&self.raw_topic)
                .key(&r.key)
                .payload(&r.value)
                .headers(r.headers);
            open.deliveries.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| kafka("enqueuing an item")(e))?,
            );
        }
        for (key, value) in &state {
            let mut record = FutureRecord::to(&self.state_topic)
                .partition(self.partition)
                .key(key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            open.deliveries.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| kafka("enqueuing the cursor")(e))?,
            );
        }
        Ok(())
    }

    async fn abort(&mut self) {
        self.open = None;
        let p = self.producer.clone();
        let _ = blocking(move || p.abort_transaction(Duration::from_secs(30))).await;
    }
}

/// Awaits every acknowledgement of `open` before committing it: the commit's own flush would
/// otherwise poll for them in 100 ms steps (docs/benchmarks.md).
async fn acknowledged_and_committed(
    producer: FutureProducer,
    open: Open,
) -> Result<(), WriteError> {
    for d in join_all(open.deliveries).await {
        match d {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(kafka("producing a record")(e)),
            Err(_) => return Err(kafka("producing a record")(KafkaError::Canceled)),
        }
    }
    blocking(move || producer.commit_transaction(Duration::from_secs(60)))
        .await
        .map_err(kafka("committing the transaction"))
}
