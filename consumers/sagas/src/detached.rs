//! Commands that outlive their batch. The loop hands a participant one partition's commands
//! one after the other, so a participant whose work waits on someone else (the HTTP
//! participant: an upstream's answer, its rate limit, its open breaker) would hold every
//! command behind it, and the whole batch, for as long as the slowest call. Such a
//! participant has a *patience*: a command answered within it is replied to in its batch, as
//! usual; one that is not is **detached**: its work goes on in a task of its own, the
//! handler moves on to the next command (so a partition's calls run side by side), and once
//! the work is done its reply and dedup record are written by the next batch to end, in that
//! batch's transaction ([`batch_outputs`](sluice_stream::Handler::batch_outputs)) — the batch
//! that read it, when the work ends before the rest of the batch is handled.
//!
//! The loop runs a batch only when records arrive, so finished work that finds no batch
//! coming writes a *wake* record (no value, `ce_type` [`WAKE_TYPE`], which no role handles)
//! to its command's partition: the loop reading it runs a batch. One wake per partition at a
//! time: the others finishing meanwhile ride on the same batch.
//!
//! While detached, the command's offset is already committed. If the process dies before
//! the reply is written, the command is not read again: the step times out and the
//! orchestrator resends it under the same command id (for an HTTP step, the same
//! `Idempotency-Key`), which is what happens to a command lost any other way. A resend that
//! arrives while the first run is still going is left to that run's reply.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_schemas::metadata::CE_TYPE;
use sluice_stream::Record;
use tracing::Instrument;

use crate::messages::Command;
use crate::participant::{Outcome, Route};

/// The `ce_type` of a wake record: not a command of any role, so every participant skips it.
pub const WAKE_TYPE: &str = "dev.sluice.saga.participant.Wake";

/// A detached command whose work is done: what its reply is made from.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub record: Record,
    pub command: Command,
    pub route: Route,
    /// The participant's outcome, or why it has none (its error, or its task's panic).
    pub outcome: Result<Outcome, String>,
}

#[derive(Debug, Default)]
struct Slots {
    /// Ids of commands detached and not yet replied to in a committed batch.
    running: HashSet<String>,
    /// Done, waiting for a batch.
    finished: Vec<Finished>,
    /// Taken into the open batch: dropped when it commits, back to `finished` if not.
    staged: Vec<Finished>,
    /// Partitions (topic, number) woken since the last batch took the finished work.
    woken: HashSet<(String, i32)>,
}

/// Runs commands with a patience, and keeps the detached ones until their reply commits.
#[derive(Clone)]
pub(crate) struct Detacher {
    patience: Duration,
    waker: FutureProducer,
    slots: Arc<Mutex<Slots>>,
}

impl std::fmt::Debug for Detacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detacher")
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

impl Detacher {
    /// Detaches what takes longer than `patience`; wakes loops through `waker` (a plain,
    /// non-transactional producer).
    pub fn new(patience: Duration, waker: FutureProducer) -> Self {
        Self {
            patience,
            waker,
            slots: Arc::default(),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether command `id` is detached and not yet replied to.
    pub fn is_running(&self, id: &str) -> bool {
        self.slots().running.contains(id)
    }

    /// The outcome of command `id` if it is done but its reply not yet committed.
    pub fn finished_outcome(&self, id: &str) -> Option<Result<Outcome, String>> {
        let slots = self.slots();
        slots
            .finished
            .iter()
            .chain(&slots.staged)
            .find(|f| f.command.command_id == id)
            .map(|f| f.outcome.clone())
    }

    /// Runs `work` for `command` (read as `record`) for up to the patience: its outcome if
    /// done by then, `None` if it was detached (it goes on; see the module docs). With no
    /// patience at all, it is detached at once.
    pub async fn run<W>(
        &self,
        record: &Record,
        command: &Command,
        route: &Route,
        work: W,
    ) -> Option<Result<Outcome, String>>
    where
        W: Future<Output = Result<Outcome, String>> + Send + 'static,
    {
        let mut task = tokio::spawn(work.instrument(tracing::Span::current()));
        let answered = match self.patience.is_zero() {
            true => None,
            false => tokio::time::timeout(self.patience, &mut task).await.ok(),
        };
        match answered {
            Some(joined) => Some(joined.unwrap_or_else(|e| Err(e.to_string()))),
            None => {
                self.slots().running.insert(command.command_id.clone());
                let (this, record, command, route) =
                    (self.clone(), record.clone(), command.clone(), route.clone());
                tokio::spawn(async move {
                    let outcome = task.await.unwrap_or_else(|e| Err(e.to_string()));
                    let first = {
                        let mut slots = this.slots();
                        slots.finished.push(Finished {
                            record: record.clone(),
                            command,
                            route,
                            outcome,
                        });
                        slots.woken.insert((record.topic.clone(), record.partition))
                    };
                    if first {
                        this.wake(&record).await;
                    }
                });
                None
            }
        }
    }

    /// Makes the loop reading `record`'s partition run a batch.
    async fn wake(&self, record: &Record) {
        let headers = OwnedHeaders::new().insert(Header {
            key: CE_TYPE,
            value: Some(WAKE_TYPE),
        });
        let mut wake: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&record.topic)
            .partition(record.partition)
            .headers(headers);
        if let Some(key) = &record.key {
            wake = wake.key(key.as_slice());
        }
        if let Err((e, _)) = self.waker.send(wake, Duration::from_secs(30)).await {
            // The reply waits for the next record on any of the loop's partitions; without
            // one, the step times out and the command is resent.
            tracing::warn!(topic = record.topic, partition = record.partition, error = %e, "could not wake the participant's loop");
        }
    }

    /// Takes the finished commands into the open batch: those of partitions `holds` says
    /// this instance still owns (the others are dropped: their new owner gets the resend).
    pub fn take(&self, holds: impl Fn(i32) -> bool) -> Vec<Finished> {
        let mut slots = self.slots();
        slots.woken.clear();
        let finished = std::mem::take(&mut slots.finished);
        let (mine, gone): (Vec<_>, Vec<_>) = finished
            .into_iter()
            .partition(|f| holds(f.record.partition));
        for f in &gone {
            slots.running.remove(&f.command.command_id);
        }
        slots.staged.extend(mine.iter().cloned());
        mine
    }

    /// The open batch committed (its replies are written) or not (they are taken again).
    pub fn finish(&self, committed: bool) {
        let mut slots = self.slots();
        let staged = std::mem::take(&mut slots.staged);
        if committed {
            for f in &staged {
                slots.running.remove(&f.command.command_id);
            }
        } else {
            slots.finished.extend(staged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Kind;

    /// A detacher whose wakes go nowhere (it never connects), which is all these tests need.
    fn detacher_with(patience: Duration) -> Detacher {
        let waker = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .create()
            .unwrap();
        Detacher::new(patience, waker)
    }

    fn detacher() -> Detacher {
        detacher_with(Duration::from_millis(50))
    }

    fn command(id: &str) -> (Record, Command, Route) {
        let record = Record {
            topic: "t.saga.s.commands".into(),
            partition: 2,
            offset: 7,
            timestamp_ms: None,
            key: Some(b"o-1".to_vec()),
            value: None,
            headers: Vec::new(),
        };
        let command = Command {
            event_type: "dev.sluice.events.sagas.ChargePayment".into(),
            saga_id: "o-1".into(),
            saga_name: "s".into(),
            step: "charge-payment".into(),
            kind: Kind::Action,
            compensates: None,
            attempt: 1,
            command_id: id.into(),
            correlation_id: "o-1".into(),
            reply_topic: "t.saga.s.replies".into(),
            data: "{}".into(),
            results: "{}".into(),
        };
        let route = Route {
            saga: "s".into(),
            step: "charge-payment".into(),
            kind: Kind::Action,
            topic: "t.saga.s.commands".into(),
            reply_topic: "t.saga.s.replies".into(),
            success: "dev.sluice.events.sagas.PaymentCharged".into(),
            failure: "dev.sluice.events.sagas.PaymentChargeFailed".into(),
        };
        (record, command, route)
    }

    fn succeeded() -> Outcome {
        Outcome::Succeeded { result: None }
    }

    #[tokio::test]
    async fn work_done_within_the_patience_is_answered_at_once() {
        let d = detacher();
        let (r, c, route) = command("c-1");
        let outcome = d.run(&r, &c, &route, async { Ok(succeeded()) }).await;
        assert_eq!(outcome, Some(Ok(succeeded())));
        assert!(!d.is_running("c-1"));
        assert!(d.take(|_| true).is_empty());
    }

    #[tokio::test]
    async fn without_patience_even_instant_work_is_detached() {
        let d = detacher_with(Duration::ZERO);
        let (r, c, route) = command("c-0");
        assert_eq!(d.run(&r, &c, &route, async { Ok(succeeded()) }).await, None);
        assert!(d.is_running("c-0"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while d.finished_outcome("c-0").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "never finished");
            tokio::task::yield_now().await;
        }
        assert_eq!(d.take(|_| true).len(), 1);
        d.finish(true);
        assert!(!d.is_running("c-0"));
    }

    #[tokio::test]
    async fn slow_work_is_detached_and_answered_by_the_batch_that_commits() {
        let d = detacher();
        let (r, c, route) = command("c-2");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let work = async move {
            let _ = released.await;
            Ok(succeeded())
        };
        assert_eq!(d.run(&r, &c, &route, work).await, None);
        assert!(d.is_running("c-2"));
        assert!(d.take(|_| true).is_empty(), "not done yet");
        release.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while d.finished_outcome("c-2").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(d.finished_outcome("c-2"), Some(Ok(succeeded())));
        // A batch that aborts gives it back; the one that commits settles it.
        let taken = d.take(|_| true);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].record.offset, 7);
        d.finish(false);
        assert!(d.is_running("c-2"));
        assert_eq!(d.take(|_| true).len(), 1);
        d.finish(true);
        assert!(!d.is_running("c-2"));
        assert!(d.finished_outcome("c-2").is_none());
        assert!(d.take(|_| true).is_empty());
    }

    #[tokio::test]
    async fn a_partition_no_longer_owned_drops_its_finished_work() {
        let d = detacher();
        let (r, c, route) = command("c-3");
        let work = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err("it broke".to_string())
        };
        assert_eq!(d.run(&r, &c, &route, work).await, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while d.finished_outcome("c-3").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(d.take(|p| p != 2).is_empty());
        assert!(!d.is_running("c-3"));
    }
}
