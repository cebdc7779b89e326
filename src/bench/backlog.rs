//! `sluice saga bench --backlog N`: the saga roles restarted on a backlog.
//!
//! N orders are published while neither the orchestrator nor the participants run (an
//! outage), then both start. Measured: how fast they drain the backlog (orders finished
//! per second, from 10% to 100% finished, like the normalizer bench) and each role's resident
//! memory over the drain, which should follow the orchestrator's `--max-in-flight` and the
//! consumers' fetch bounds, not N. Then the orchestrator is restarted on the N finished
//! instances it must remember (`--keep-finished`): how long until it takes a new order, and
//! its memory while it reads them back.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use sluice_producers::publish::Publisher;
use sluice_runtime::kafka::KafkaClients;

use super::hops;
use super::saga::{ce_type, publish, Child, COMPLETED};

const COMPENSATED: &str = "dev.sluice.events.sagas.SagaCompensated";
const FAILED: &str = "dev.sluice.events.sagas.SagaFailed";

/// What a drain measured.
pub(super) struct Drain {
    pub n: usize,
    /// Orders finished per second from 10% to 100% finished.
    pub rate: f64,
    pub completed: usize,
    /// Compensated or failed (a backlog drained too slowly for the saga's timeouts).
    pub not_completed: usize,
    /// Peak resident set size (MiB) of the orchestrator and of the participants.
    pub peak_mib: (f64, f64),
    /// Their RSS (MiB) at 0, 10, …, 100% finished.
    pub curve: Vec<(f64, f64)>,
}

impl Drain {
    pub(super) fn describe(&self) -> Vec<String> {
        let curve = |pick: fn(&(f64, f64)) -> f64| {
            self.curve
                .iter()
                .map(|c| format!("{:.0}", pick(c)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        vec![
            format!(
                "backlog     {} orders queued while the saga roles were down, then drained at {:.0} sagas/s (10% → 100% finished); {} completed, {} compensated or failed",
                self.n, self.rate, self.completed, self.not_completed
            ),
            format!(
                "            peak RSS: orchestrator {:.1} MiB, participants {:.1} MiB",
                self.peak_mib.0, self.peak_mib.1
            ),
            format!(
                "            orchestrator RSS (MiB) at 0, 10, …, 100% finished: {}",
                curve(|c| c.0)
            ),
            format!(
                "            participants RSS (MiB) at 0, 10, …, 100% finished: {}",
                curve(|c| c.1)
            ),
        ]
    }
}

/// What a restart after the drain measured.
pub(super) struct Restart {
    /// Finished instances in the state the new orchestrator read back.
    pub finished: usize,
    /// From starting the new orchestrator to a new order's saga completed.
    pub completed_after: Duration,
    /// The new orchestrator's peak RSS (MiB) until then.
    pub peak_mib: f64,
}

impl Restart {
    pub(super) fn describe(&self) -> String {
        format!(
            "restart     orchestrator restarted on the backlog's {} finished sagas: a new order completed {:.1}s after its start; peak RSS {:.1} MiB",
            self.finished,
            self.completed_after.as_secs_f64(),
            self.peak_mib
        )
    }
}

/// Stops the orchestrator left by [`drain`] and starts another with `spawn`: it reads every
/// instance back from the state topic before it handles anything, so a new order published
/// with it completes only once that is done.
pub(super) async fn restart(
    old: Child,
    spawn: impl FnOnce() -> anyhow::Result<Child>,
    publisher: &Publisher,
    clients: &KafkaClients,
    events: &str,
    prefix: &str,
    finished: usize,
) -> anyhow::Result<Restart> {
    drop(old);
    let from = tokio::task::block_in_place(|| hops::mark(clients, &[events]))?;
    let started = Instant::now();
    let orchestrator = spawn()?;
    let wanted = publish(publisher, &format!("{prefix}-after-restart-"), 1).await?;
    super::saga::wait_for(
        clients,
        events,
        COMPLETED,
        &wanted,
        Duration::from_secs(600),
        None,
        Some(from),
    )
    .await?;
    Ok(Restart {
        finished,
        completed_after: started.elapsed(),
        peak_mib: orchestrator.peak_rss_mib().unwrap_or(f64::NAN),
    })
}

/// Publishes `n` orders with nobody to take them, starts the roles with `start`, and follows
/// the drain on `events` until every order's saga finished. The roles are handed back
/// still running.
pub(super) async fn drain(
    publisher: &Publisher,
    clients: &KafkaClients,
    events: &str,
    prefix: &str,
    n: usize,
    start: impl FnOnce() -> anyhow::Result<(Child, Child)>,
) -> anyhow::Result<(Drain, (Child, Child))> {
    let from = tokio::task::block_in_place(|| hops::mark(clients, &[events]))?;
    let ids = format!("{prefix}-backlog-");
    let published = Instant::now();
    publish(publisher, &ids, n).await?;
    println!(
        "            ({n} orders published in {:.1}s; starting the saga roles)",
        published.elapsed().as_secs_f64()
    );
    let (orchestrator, participants) = start()?;
    let rss = |c: &Child| c.rss_mib().unwrap_or(f64::NAN);

    let consumer: StreamConsumer = clients
        .consumer_config(
            "bench-backlog",
            &format!("bench-{}", uuid::Uuid::new_v4().simple()),
        )?
        .create()?;
    consumer.assign(&from)?;
    let mut finished: HashSet<usize> = HashSet::with_capacity(n);
    let mut completed = 0;
    let mut peak = (0.0f64, 0.0f64);
    let mut curve = Vec::with_capacity(11);
    let mut tenth: Option<Instant> = None;
    let mut sampled = Instant::now() - Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(3_600);
    loop {
        if sampled.elapsed() >= Duration::from_millis(250) {
            let now = (rss(&orchestrator), rss(&participants));
            peak = (peak.0.max(now.0), peak.1.max(now.1));
            sampled = Instant::now();
            while curve.len() < 11 && finished.len() * 10 >= curve.len() * n {
                curve.push(now);
            }
        }
        if finished.len() == n {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} backlog sagas finished within an hour",
                finished.len()
            );
        }
        let Ok(m) = tokio::time::timeout(Duration::from_millis(250), consumer.recv()).await else {
            continue;
        };
        let m = m?;
        let Some(index) = m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.strip_prefix(&ids))
            .and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        let kind = ce_type(m.headers().context("a lifecycle event without headers")?);
        let done = match kind {
            Some(t) if t == COMPLETED.as_bytes() => true,
            Some(t) if t == COMPENSATED.as_bytes() || t == FAILED.as_bytes() => false,
            _ => continue,
        };
        if finished.insert(index) {
            completed += usize::from(done);
            if tenth.is_none() && finished.len() * 10 >= n {
                tenth = Some(Instant::now());
            }
        }
    }
    let from_tenth = tenth.context("10% finished before 100%")?;
    let counted = n - n.div_ceil(10);
    let rate = counted.max(1) as f64 / from_tenth.elapsed().as_secs_f64();
    let last = (rss(&orchestrator), rss(&participants));
    curve.resize(11, last);
    let drain = Drain {
        n,
        rate,
        completed,
        not_completed: n - completed,
        peak_mib: (
            orchestrator.peak_rss_mib().unwrap_or(peak.0).max(peak.0),
            participants.peak_rss_mib().unwrap_or(peak.1).max(peak.1),
        ),
        curve,
    };
    Ok((drain, (orchestrator, participants)))
}
