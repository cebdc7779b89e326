//! Deadlines as inputs: a task inside `sluice saga run` that scans the committed instances of the
//! partitions this process owns and, when a pending command's reply deadline or backoff has
//! passed, writes a `deadline` control message to the instance's replies partition.
//!
//! The deadline itself lives in the instance's state, so it survives restarts: a new owner
//! restores the instance and its timer fires. The message carries the deadline it acts on,
//! and the state machine ignores it when the instance has moved on (a reply won the race),
//! so a deadline written twice, or after a restart, changes nothing the second time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::producer::FutureProducer;
use sluice_runtime::Shutdown;
use sluice_schemas::metadata::now_ms;

use super::messages::{self, Action, Control};
use super::orchestrator::Orchestrator;

/// A deadline message still not acted on after this long is written again.
const REFIRE_AFTER_MS: i64 = 10_000;

/// Runs until shutdown, checking every `tick`.
pub async fn run(
    orchestrator: Arc<Orchestrator>,
    producer: FutureProducer,
    tick: Duration,
    shutdown: Shutdown,
) {
    // (saga, id) → (command id, deadline, when we wrote it)
    let mut fired: HashMap<(usize, String), (String, i64, i64)> = HashMap::new();
    let mut housekeeping_at = 0;
    // (saga, id) → when its expire message was written
    let mut expiring: HashMap<(usize, String), i64> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = now_ms();
        if now >= housekeeping_at {
            orchestrator.housekeeping(now);
            housekeeping_at = now + 1_000;
            expire(&orchestrator, &producer, &mut expiring, now).await;
        }
        let due = orchestrator.due(now);
        let still: std::collections::HashSet<(usize, String)> =
            due.iter().map(|d| (d.saga, d.id.clone())).collect();
        fired.retain(|k, _| still.contains(k));
        let mut sends = Vec::new();
        for d in due {
            let key = (d.saga, d.id.clone());
            if let Some((command_id, due_at, at)) = fired.get(&key) {
                if *command_id == d.command_id && *due_at == d.due_at && now - at < REFIRE_AFTER_MS
                {
                    continue;
                }
            }
            let request_id = messages::event_id(&format!(
                "deadline/{}/{}/{}/{}",
                orchestrator.sagas()[d.saga].def.name,
                d.id,
                d.command_id,
                d.due_at
            ));
            let mut control = Control::new(
                &orchestrator.sagas()[d.saga].def.name,
                &d.id,
                Action::Deadline,
                &request_id,
            );
            control.command_id = Some(d.command_id.clone());
            control.due_at = Some(d.due_at);
            let traceparent = messages::child_traceparent(None, &request_id);
            match orchestrator.control_output(d.saga, &control, &traceparent) {
                Ok(output) => {
                    fired.insert(key.clone(), (d.command_id.clone(), d.due_at, now));
                    sends.push((key, output));
                }
                Err(e) => tracing::error!(id = d.id, error = %e, "cannot write a deadline"),
            }
        }
        let results = join_all(sends.iter().map(|(_, o)| super::produce(&producer, o))).await;
        for ((key, _), result) in sends.iter().zip(results) {
            match result {
                Ok(_) => orchestrator
                    .metrics()
                    .deadlines
                    .with_label_values(&[&orchestrator.sagas()[key.0].def.name])
                    .inc(),
                Err(e) => {
                    tracing::warn!(error = %e, "writing a deadline failed; retrying on the next tick");
                    fired.remove(key);
                }
            }
        }
    }
}

/// Expire messages written per housekeeping pass at most.
const EXPIRE_BATCH: usize = 500;

/// Writes an `expire` control message for each instance finished longer ago than the keep
/// period; the orchestrator deletes its state in the transaction that applies it.
async fn expire(
    orchestrator: &Orchestrator,
    producer: &FutureProducer,
    written: &mut HashMap<(usize, String), i64>,
    now: i64,
) {
    let expired = orchestrator.expired(now, EXPIRE_BATCH);
    let still: std::collections::HashSet<&(usize, String)> = expired.iter().collect();
    written.retain(|k, _| still.contains(k));
    let mut sends = Vec::new();
    for (s, id) in expired {
        if written
            .get(&(s, id.clone()))
            .is_some_and(|at| now - at < REFIRE_AFTER_MS)
        {
            continue;
        }
        let name = &orchestrator.sagas()[s].def.name;
        let request_id = messages::event_id(&format!("expire/{name}/{id}"));
        let control = Control::new(name, &id, Action::Expire, &request_id);
        let traceparent = messages::child_traceparent(None, &request_id);
        match orchestrator.control_output(s, &control, &traceparent) {
            Ok(output) => sends.push(((s, id), output)),
            Err(e) => tracing::error!(id, error = %e, "cannot write an expire message"),
        }
    }
    let results = join_all(sends.iter().map(|(_, o)| super::produce(producer, o))).await;
    for ((key, _), result) in sends.into_iter().zip(results) {
        match result {
            Ok(_) => {
                written.insert(key, now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing an expire message failed; retrying later")
            }
        }
    }
}
