//! Ending transactions: waiting for their records' acknowledgements, committing, aborting,
//! and resuming a commit or abort that timed out.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};

use super::blocking;

/// Waits, up to `within`, until `producer` holds no message at all. Every delivery future
/// resolved is not enough: a message counts until the callback that resolved its future has
/// returned, and rdkafka's `commit_transaction` flushes first, where a flush that finds one
/// still counted polls for up to 100 ms, long after it is gone.
pub async fn drained(producer: &FutureProducer, within: Duration) {
    let deadline = Instant::now() + within;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Commits `producer`'s transaction once its records are acknowledged and [`drained`], so
/// the commit does not wait out the flush's 100 ms poll; a commit that timed out is resumed
/// (see [`resume_while_retriable`]).
pub async fn commit_transaction(
    producer: &FutureProducer,
    timeout: Duration,
) -> Result<(), KafkaError> {
    drained(producer, Duration::from_secs(1)).await;
    let p = producer.clone();
    blocking(move || {
        resume_while_retriable("committing the transaction", || {
            p.commit_transaction(timeout)
        })
    })
    .await
}

/// Times a transactional call that timed out is resumed before its error is returned.
pub const RESUME_ATTEMPTS: u32 = 5;

/// Runs a blocking transactional producer call, calling it again while librdkafka says it
/// may be retried (at most [`RESUME_ATTEMPTS`] calls). A commit or abort that timed out (as
/// while a broker restarts) is still in progress: only the same call finishes it (an abort
/// after an unfinished commit is refused as conflicting), and until it is finished the
/// transaction stays open, holding every read_committed reader of its partitions. Blocking.
pub fn resume_while_retriable(
    what: &str,
    call: impl Fn() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let mut attempt = 1;
    loop {
        match call() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < RESUME_ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "{what} did not finish; resuming it");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Aborts `producer`'s open transaction, resuming an abort that timed out (see
/// [`resume_while_retriable`]): left unfinished, the transaction stays open until the
/// broker's own timeout sweep. librdkafka purges the transaction's records still queued.
pub async fn abort_transaction(
    producer: &FutureProducer,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let p = producer.clone();
    blocking(move || {
        resume_while_retriable("aborting the transaction", || p.abort_transaction(timeout))
    })
    .await
}

/// Which delivery reports a writer waits for before it commits or gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reports {
    /// Every one: without a transaction, a record still in flight may yet be written.
    All,
    /// Those until the first failure, and the ones arriving with it. In a transaction, one
    /// failed record dooms the rest: librdkafka holds them unsent until the abort purges
    /// them (or until the transaction timeout if nobody aborts), so waiting for them only
    /// delays the abort.
    UntilFailure,
}

/// How long reports are still taken after the first failure: the broker refuses a produce
/// request as a whole, and its records' reports arrive together.
const REPORTS_AFTER_FAILURE: Duration = Duration::from_millis(100);

impl Reports {
    /// The failed deliveries among `deliveries` (each with what the caller keeps of its
    /// record), as far as this waits for them.
    pub async fn failures<T>(self, deliveries: Vec<(T, DeliveryFuture)>) -> Vec<(T, KafkaError)> {
        let mut pending: FuturesUnordered<_> = deliveries
            .into_iter()
            .map(|(sent, d)| async move { (sent, d.await) })
            .collect();
        let mut failed = Vec::new();
        loop {
            let next = match (self, failed.is_empty()) {
                (Reports::UntilFailure, false) => {
                    tokio::time::timeout(REPORTS_AFTER_FAILURE, pending.next())
                        .await
                        .ok()
                        .flatten()
                }
                _ => pending.next().await,
            };
            let Some((sent, report)) = next else {
                return failed;
            };
            match report {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => failed.push((sent, e)),
                Err(_) => failed.push((sent, KafkaError::Canceled)),
            }
        }
    }
}
