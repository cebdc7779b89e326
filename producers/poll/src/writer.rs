//! Kafka transactions of a poller: a page's new item versions to the raw topic, their
//! (id, version) pairs (one record per page) and the cursor after the page to the state
//! topic. Pages are staged
//! into an open transaction as they come (their records sent at once, so Kafka writes them
//! while the next page is fetched) and committed together every
//! `pages_per_transaction` pages, with the cursor of the last one; state that must be
//! durable at once (a pause, a session, a failed crawl) commits whatever is staged with it.
//! An item larger than Kafka takes becomes a dead letter on `<prefix>.dlq.poll` in the same
//! transaction, naming it, and the page goes on: at once when the producer refuses it
//! (`message.max.bytes`); when the broker does (the raw topic's `max.message.bytes`), the
//! transaction fails, the item is remembered, and the page fetched again dead-letters it.
//! The transactional id is the source's (within its deployment), so a poller started again
//! fences the one before it (whose open transaction is aborted) before it reads the state
//! back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use sluice_runtime::kafka::{blocking, KafkaClients, Reports};
use sluice_stream::refusals::{blame, RefusalClass};

use crate::cursor::StateRecord;

/// A raw record to write.
#[derive(Debug)]
pub struct RawOut {
    /// `<id>@<version>`: which item version it is.
    pub delivery_id: String,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// An item Kafka refused as too large, dead-lettered instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub id: String,
    pub bytes: usize,
}

/// How much of a refused item its dead letter keeps, as evidence.
const REFUSED_PREFIX_BYTES: usize = 1024;

/// At most this many refused items are remembered (each a few dozen bytes).
const REFUSED_REMEMBERED: usize = 10_000;

/// Item versions the broker refused as too large, by delivery id: dead-lettered when their
/// page is staged again. Shared by a process's pollers, kept across their reopenings.
#[derive(Debug, Default)]
pub struct RefusedItems(std::sync::Mutex<std::collections::HashSet<String>>);

impl RefusedItems {
    fn contains(&self, delivery_id: &str) -> bool {
        self.0.lock().expect("refused").contains(delivery_id)
    }

    fn insert(&self, delivery_id: String) {
        let mut set = self.0.lock().expect("refused");
        if set.len() < REFUSED_REMEMBERED {
            set.insert(delivery_id);
        }
    }
}

/// Why an item is a dead letter.
#[derive(Debug, Clone, Copy)]
enum TooLarge {
    /// The producer refused it before sending.
    Producer,
    /// The broker refused it in an earlier transaction.
    Broker,
}

impl TooLarge {
    fn limit(self) -> &'static str {
        match self {
            Self::Producer => "the producer's message.max.bytes",
            Self::Broker => "the raw topic's max.message.bytes: the broker refused it",
        }
    }
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

/// A record of the transaction under way and its acknowledgement to come: for a raw item
/// (not its dead letter), its delivery id and size, to tell which item a refusal is about.
type Delivery = (Option<(String, u64)>, DeliveryFuture);

/// The transaction under way: the acknowledgements still to come and how many pages it
/// holds.
#[derive(Default)]
struct Open {
    deliveries: Vec<Delivery>,
    pages: u64,
}

pub struct PageWriter {
    producer: FutureProducer,
    raw_topic: String,
    state_topic: String,
    dlq_topic: String,
    refused: Arc<RefusedItems>,
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
        dlq_topic: &str,
        refused: Arc<RefusedItems>,
        partition: i32,
    ) -> Result<Self, WriteError> {
        let producer = clients
            // The state topic names the deployment (its prefix): two deployments on one
            // cluster with a source of the same name must not fence each other.
            .fenced_loop_producer("poll", &format!("{state_topic}-{source}"))
            .await
            .map_err(|e| WriteError {
                what: e.what,
                source: e.source,
            })?;
        Ok(Self {
            producer,
            raw_topic: raw_topic.to_string(),
            state_topic: state_topic.to_string(),
            dlq_topic: dlq_topic.to_string(),
            refused,
            partition,
            open: None,
        })
    }

    /// Pages staged and not committed yet.
    pub fn staged_pages(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.pages)
    }

    /// Sends one page's item `records` into the open transaction (begun if none is);
    /// returns the items dead-lettered as too large. The page is staged by [`Self::stage`]
    /// with its state. On an error the transaction is aborted: the caller opens the poller
    /// again from the committed state.
    pub async fn send_items(&mut self, records: Vec<RawOut>) -> Result<Vec<Refused>, WriteError> {
        let result = self.send(records, Vec::new());
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    /// Sends one page's `state` into the open transaction after its items, and counts the
    /// page; nothing of it is visible before [`Self::commit`]. On an error the transaction is
    /// aborted.
    pub async fn stage(&mut self, state: Vec<StateRecord>) -> Result<(), WriteError> {
        let result = self.send(Vec::new(), state).map(drop);
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
            Ok(_) => {
                let open = self.open.take().unwrap_or_default();
                acknowledged_and_committed(self.producer.clone(), open, self.watch()).await
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
        Committing(tokio::spawn(acknowledged_and_committed(
            producer,
            open,
            self.watch(),
        )))
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

    fn send(
        &mut self,
        records: Vec<RawOut>,
        state: Vec<StateRecord>,
    ) -> Result<Vec<Refused>, WriteError> {
        if self.open.is_none() {
            self.producer
                .begin_transaction()
                .map_err(kafka("beginning a transaction"))?;
            self.open = Some(Open::default());
        }
        let open = self.open.as_mut().expect("a transaction is open");
        open.deliveries.reserve(records.len() + state.len());
        let mut refused = Vec::new();
        for r in records {
            let RawOut {
                delivery_id,
                key,
                value,
                headers,
            } = r;
            let (delivery, too_large) = if self.refused.contains(&delivery_id) {
                let d = self.dead_letter(&key, &value, headers, TooLarge::Broker)?;
                ((None, d), true)
            } else {
                let record = FutureRecord::to(&self.raw_topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers);
                match self.producer.send_result(record) {
                    Ok(d) => ((Some((delivery_id, value.len() as u64)), d), false),
                    Err((
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                        record,
                    )) => {
                        let headers = record.headers.unwrap_or_default();
                        (
                            (
                                None,
                                self.dead_letter(&key, &value, headers, TooLarge::Producer)?,
                            ),
                            true,
                        )
                    }
                    Err((e, _)) => return Err(kafka("enqueuing an item")(e)),
                }
            };
            if too_large {
                refused.push(Refused {
                    bytes: value.len(),
                    id: key,
                });
            }
            let open = self.open.as_mut().expect("a transaction is open");
            open.deliveries.push(delivery);
        }
        let open = self.open.as_mut().expect("a transaction is open");
        for (key, value) in &state {
            let mut record = FutureRecord::to(&self.state_topic)
                .partition(self.partition)
                .key(key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            open.deliveries.push((
                None,
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| kafka("enqueuing the cursor")(e))?,
            ));
        }
        Ok(refused)
    }

    /// Sends the dead letter of item `key` (`value`) instead of its raw record.
    fn dead_letter(
        &self,
        key: &str,
        value: &[u8],
        headers: OwnedHeaders,
        why: TooLarge,
    ) -> Result<DeliveryFuture, WriteError> {
        let (letter, headers) = dead_letter(key, value, headers, &self.raw_topic, why);
        let record = FutureRecord::to(&self.dlq_topic)
            .key(key)
            .payload(&letter)
            .headers(headers);
        self.producer
            .send_result(record)
            .map_err(|(e, _)| kafka("enqueuing a dead letter")(e))
    }

    /// What a commit watches for: raw records the broker refuses as too large.
    fn watch(&self) -> Watch {
        Watch {
            raw_topic: self.raw_topic.clone(),
            refused: Arc::clone(&self.refused),
        }
    }

    /// Aborts the open transaction. Its records still queued or in flight are purged first:
    /// after a refused record librdkafka would otherwise wait for them until the timeout
    /// (30 s). The caller opens the poller again with a new producer, which fences this one
    /// in any case.
    async fn abort(&mut self) {
        self.open = None;
        let p = self.producer.clone();
        let _ = blocking(move || {
            p.purge(PurgeConfig::default().queue().inflight());
            Ok(())
        })
        .await;
        let _ =
            sluice_runtime::kafka::abort_transaction(&self.producer, Duration::from_secs(30)).await;
    }
}

/// The dead letter of item `id` (`body`, refused as too large for `raw_topic`): its raw
/// headers, where it was going and why not, and the body's first KiB as evidence.
fn dead_letter(
    id: &str,
    body: &[u8],
    headers: OwnedHeaders,
    raw_topic: &str,
    why: TooLarge,
) -> (Vec<u8>, OwnedHeaders) {
    use sluice_stream::headers::{EXCEPTION_FQCN, EXCEPTION_MESSAGE, ORIGINAL_TOPIC};
    let reason = format!(
        "item `{id}` is {} bytes, more than Kafka takes in one record ({})",
        body.len(),
        why.limit()
    );
    let prefix = &body[..body.len().min(REFUSED_PREFIX_BYTES)];
    let value = serde_json::json!({
        "id": id,
        "bytes": body.len(),
        "reason": reason,
        "body_prefix": String::from_utf8_lossy(prefix),
    });
    let headers = [
        (ORIGINAL_TOPIC, raw_topic),
        (EXCEPTION_FQCN, "ItemTooLarge"),
        (EXCEPTION_MESSAGE, reason.as_str()),
    ]
    .into_iter()
    .fold(headers, |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    });
    (serde_json::to_vec(&value).expect("json"), headers)
}

/// What a commit watches its acknowledgements for.
#[derive(Debug)]
struct Watch {
    raw_topic: String,
    refused: Arc<RefusedItems>,
}

/// Awaits every acknowledgement of `open` before committing it: the commit's own flush would
/// otherwise poll for them in 100 ms steps (docs/benchmarks.md).
async fn acknowledged_and_committed(
    producer: FutureProducer,
    open: Open,
    watch: Watch,
) -> Result<(), WriteError> {
    // Until the first failure only: the transaction's records still queued after it are
    // failed by the abort that follows, so waiting for all of them would never end.
    let started = Instant::now();
    let records = open.deliveries.len();
    let failed = Reports::UntilFailure.failures(open.deliveries).await;
    if let Some((_, first)) = failed.first() {
        // A batch the broker refused fails every record in it at once: the largest item is
        // the one to dead-letter (if it was not alone, the next attempt finds the next one).
        let raw_topic = watch.raw_topic.as_str();
        let blamed = blame(&failed, |item| {
            item.as_ref().map(|(_, size)| (raw_topic, *size))
        });
        for (item, _, class) in blamed {
            if let (Some((id, _)), RefusalClass::RecordTooLarge) = (item, class) {
                tracing::warn!(item = %id, topic = %watch.raw_topic,
                    "the broker refused a polled item as too large; it is dead-lettered when its page is fetched again");
                watch.refused.insert(id.clone());
            }
        }
        return Err(kafka("producing a record")(first.clone()));
    }
    let acked = started.elapsed();
    sluice_runtime::kafka::commit_transaction(&producer, Duration::from_secs(60))
        .await
        .map_err(kafka("committing the transaction"))?;
    // Where a transaction's time goes, for tuning (from its last record sent).
    tracing::debug!(topic = %watch.raw_topic, records, ?acked, committed = ?started.elapsed(), "poll transaction committed");
    Ok(())
}
