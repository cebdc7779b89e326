//! One collection pass over the cluster: every consumer group (not only sluice's), its live
//! members and what they own, its committed offsets, and the oldest and log-end offsets of
//! every partition it has committed on.
//!
//! librdkafka's safe API has no ListConsumerGroupOffsets, so committed offsets are fetched
//! the way a consumer reads its own: a short-lived client per group, with that `group.id`,
//! asks the group coordinator (OffsetFetch) for every partition of the cluster. The client
//! never subscribes, so it never joins the group or disturbs its members. The partitions go
//! in chunks of [`OFFSET_FETCH_CHUNK`], because librdkafka matches each answered partition
//! against the request list linearly (quadratic in the request size). Groups are fetched in
//! parallel by a bounded number of threads. Closing a group client takes rdkafka about 100 ms
//! of idle polling, so each client is closed on a background thread right after its fetch;
//! the next pass waits for those closes first, so clients never pile up across passes.
//!
//! Everything is read with `isolation.level=read_uncommitted`, as Kafka's own
//! `kafka-consumer-groups` does: log ends are high watermarks (not the last stable offset)
//! and pending transactional commits do not block the fetch. Committed offsets are read
//! before log ends, so a lag is never negative because of the order of the reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::KafkaClients;

use super::settled::{Position, SettledCheck, MAX_CHECKED_LAG};
use super::{assignment, LagError};

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Selects groups by name: exact names, or prefixes written `prefix*`. Empty selects all.
#[derive(Debug, Clone, Default)]
pub struct GroupFilter {
    patterns: Vec<String>,
}

impl GroupFilter {
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        Self {
            patterns: patterns.into_iter().collect(),
        }
    }

    pub fn matches(&self, group: &str) -> bool {
        self.patterns.is_empty()
            || self.patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => group.starts_with(prefix),
                None => group == p,
            })
    }
}

/// A live member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    /// Partitions it owns; empty when its assignment is not a consumer-protocol assignment.
    pub assigned: Vec<TopicPartition>,
}

/// What one pass saw of one group.
#[derive(Debug, Clone, Default)]
pub struct GroupOffsets {
    pub group: String,
    /// As the coordinator reports it: `Stable`, `Empty`, `PreparingRebalance`, …
    pub state: String,
    pub members: Vec<Member>,
    /// Committed offsets, only for partitions that have one.
    pub committed: BTreeMap<TopicPartition, i64>,
    /// Why the committed offsets could not be read, if they could not.
    pub error: Option<String>,
}

/// The oldest, log-end and stable offsets of a partition; `None` when the broker did not
/// answer for it (no leader, or the topic went away during the pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub oldest: Option<i64>,
    pub log_end: Option<i64>,
    /// The last stable offset: where a read_committed reader stops. Below the log end while
    /// a transaction is open on the partition.
    pub stable_end: Option<i64>,
}

/// One collection pass.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When the log ends were read, milliseconds since the Unix epoch.
    pub taken_at_ms: i64,
    pub groups: Vec<GroupOffsets>,
    /// Every partition any selected group has committed on.
    pub partitions: BTreeMap<TopicPartition, PartitionOffsets>,
    /// (partition, committed offset) pairs whose lag is only transaction markers or aborted
    /// records: nothing a read_committed consumer could read (see [`super::settled`]).
    pub settled: BTreeSet<(TopicPartition, i64)>,
}

/// Collects [`Snapshot`]s. Blocking: call it from a blocking thread.
pub struct Collector {
    clients: KafkaClients,
    admin: BaseConsumer,
    /// The same queries with `read_committed` isolation, for stable offsets.
    stable_reader: BaseConsumer,
    filter: GroupFilter,
    timeout: Duration,
    concurrency: usize,
    /// Threads still closing the previous pass's group clients.
    closing: Mutex<Vec<JoinHandle<()>>>,
    settled: Mutex<SettledCheck>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.wait_for_closing();
    }
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("bootstrap", &self.clients.bootstrap_servers())
            .field("filter", &self.filter)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// Groups fetched at once by default; each is one client with a few librdkafka threads.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// One group's committed offsets, or why they could not be read.
type Fetched = Result<BTreeMap<TopicPartition, i64>, String>;

/// Time one pass may spend telling marker-only lags from readable ones.
const SETTLED_CHECK_BUDGET: Duration = Duration::from_secs(2);

/// Partitions per OffsetFetch request.
pub const OFFSET_FETCH_CHUNK: usize = 256;

impl Collector {
    pub fn new(clients: KafkaClients, filter: GroupFilter) -> Result<Self, LagError> {
        let admin = client_config(&clients, None)?
            .create()
            .map_err(kafka("creating the lag admin client"))?;
        let stable_reader = client_config(&clients, None)?
            .set("isolation.level", "read_committed")
            .create()
            .map_err(kafka("creating the lag admin client"))?;
        Ok(Self {
            clients,
            admin,
            stable_reader,
            filter,
            timeout: Duration::from_secs(10),
            concurrency: DEFAULT_CONCURRENCY,
            closing: Mutex::new(Vec::new()),
            settled: Mutex::new(SettledCheck::default()),
        })
    }

    /// Per-request timeout (metadata, group list, offset fetches).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many groups' offsets are fetched in parallel (at least one).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// One pass over the cluster.
    pub fn collect(&self) -> Result<Snapshot, LagError> {
        self.wait_for_closing();
        let metadata = self
            .admin
            .fetch_metadata(None, self.timeout)
            .map_err(kafka("reading cluster metadata"))?;
        let mut all: Vec<TopicPartition> = Vec::new();
        for topic in metadata.topics() {
            // Internal topics (`__consumer_offsets`, `__transaction_state`, …) are no
            // group's input.
            if topic.error().is_some() || topic.name().starts_with("__") {
                continue;
            }
            for p in topic.partitions() {
                all.push((topic.name().to_string(), p.id()));
            }
        }
        let chunks: Vec<TopicPartitionList> = all
            .chunks(OFFSET_FETCH_CHUNK)
            .map(|chunk| {
                let mut tpl = TopicPartitionList::with_capacity(chunk.len());
                for (t, p) in chunk {
                    tpl.add_partition(t, *p);
                }
                tpl
            })
            .collect();
        let list = self
            .admin
            .fetch_group_list(None, self.timeout)
            .map_err(kafka("listing consumer groups"))?;
        let mut groups: Vec<GroupOffsets> = list
            .groups()
            .iter()
            .filter(|g| is_consumer_group(g.protocol_type()) && self.filter.matches(g.name()))
            .map(|g| GroupOffsets {
                group: g.name().to_string(),
                state: g.state().to_string(),
                members: g
                    .members()
                    .iter()
                    .map(|m| Member {
                        member_id: m.id().to_string(),
                        client_id: m.client_id().to_string(),
                        host: m.client_host().to_string(),
                        assigned: m
                            .assignment()
                            .and_then(assignment::decode)
                            .unwrap_or_default(),
                    })
                    .collect(),
                ..GroupOffsets::default()
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));

        self.fetch_committed(&mut groups, &chunks);

        let wanted: BTreeSet<&TopicPartition> =
            groups.iter().flat_map(|g| g.committed.keys()).collect();
        let mut partitions = BTreeMap::new();
        if !wanted.is_empty() {
            let mut tpl = TopicPartitionList::with_capacity(wanted.len());
            for (t, p) in &wanted {
                tpl.add_partition(t, *p);
            }
            let log_end =
                self.list_offsets(&self.admin, &tpl, Offset::End, "reading log-end offsets")?;
            let oldest = self.list_offsets(
                &self.admin,
                &tpl,
                Offset::Beginning,
                "reading oldest offsets",
            )?;
            let stable = self.list_offsets(
                &self.stable_reader,
                &tpl,
                Offset::End,
                "reading stable offsets",
            )?;
            for tp in wanted {
                partitions.insert(
                    tp.clone(),
                    PartitionOffsets {
                        oldest: oldest.get(tp).copied(),
                        log_end: log_end.get(tp).copied(),
                        stable_end: stable.get(tp).copied(),
                    },
                );
            }
        }
        let taken_at_ms = now_ms();
        let small_lags: BTreeSet<Position> = groups
            .iter()
            .flat_map(|g| &g.committed)
            .filter_map(|(tp, &committed)| {
                let end = partitions.get(tp)?.log_end?;
                (end > committed && end - committed <= MAX_CHECKED_LAG)
                    .then(|| (tp.clone(), committed, end))
            })
            .collect();
        let settled = self.settled.lock().expect("settled check").check(
            &self.clients,
            small_lags,
            SETTLED_CHECK_BUDGET,
        );
        Ok(Snapshot {
            taken_at_ms,
            groups,
            partitions,
            settled,
        })
    }

    /// Fills each group's committed offsets, `concurrency` groups at a time.
    fn fetch_committed(&self, groups: &mut [GroupOffsets], chunks: &[TopicPartitionList]) {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<(usize, Fetched)>> = Mutex::new(Vec::with_capacity(groups.len()));
        let names: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
        std::thread::scope(|scope| {
            for _ in 0..self.concurrency.min(names.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(group) = names.get(i) else { break };
                    let result = self.committed(group, chunks).map_err(|e| e.to_string());
                    results.lock().expect("results lock").push((i, result));
                });
            }
        });
        for (i, result) in results.into_inner().expect("results lock") {
            match result {
                Ok(committed) => groups[i].committed = committed,
                Err(e) => groups[i].error = Some(e),
            }
        }
    }

    /// The committed offsets of `group`, read with a client of its own.
    fn committed(
        &self,
        group: &str,
        chunks: &[TopicPartitionList],
    ) -> Result<BTreeMap<TopicPartition, i64>, LagError> {
        if chunks.is_empty() {
            return Ok(BTreeMap::new());
        }
        let consumer: BaseConsumer = client_config(&self.clients, Some(group))?
            .create()
            .map_err(kafka(format!("creating a client for group {group}")))?;
        let fetched = chunks.iter().try_fold(BTreeMap::new(), |mut out, chunk| {
            let answer = consumer
                .committed_offsets(chunk.clone(), self.timeout)
                .map_err(kafka(format!(
                    "fetching committed offsets of group {group}"
                )))?;
            out.extend(offsets(&answer));
            Ok(out)
        });
        self.close_later(consumer);
        fetched
    }

    /// Closes a group client on a background thread: rdkafka idles 100 ms in each close, which
    /// would otherwise stall the pass. A client lives about that long after its last use.
    fn close_later(&self, client: BaseConsumer) {
        let handle = std::thread::spawn(move || drop(client));
        self.closing.lock().expect("closing lock").push(handle);
    }

    /// Waits until the previous pass's group clients are closed.
    fn wait_for_closing(&self) {
        let handles = std::mem::take(&mut *self.closing.lock().expect("closing lock"));
        for h in handles {
            let _ = h.join();
        }
    }

    /// ListOffsets for every partition of `tpl` at once (`End` = latest, `Beginning` =
    /// earliest), one request per leader instead of one per partition.
    fn list_offsets(
        &self,
        client: &BaseConsumer,
        tpl: &TopicPartitionList,
        which: Offset,
        what: &'static str,
    ) -> Result<BTreeMap<TopicPartition, i64>, LagError> {
        let mut query = tpl.clone();
        query.set_all_offsets(which).map_err(kafka(what))?;
        let answer = client
            .offsets_for_times(query, self.timeout)
            .map_err(kafka(what))?;
        Ok(offsets(&answer))
    }
}

/// The valid offsets of a list the broker answered; partitions with an error or without an
/// offset (no commit, no leader) are left out.
fn offsets(tpl: &TopicPartitionList) -> BTreeMap<TopicPartition, i64> {
    tpl.elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// Group protocol types that commit offsets: `consumer` (classic consumer groups) and the
/// empty type of groups that only commit (no subscription, e.g. Kafka's own tools, or
/// assign()-based consumers). Connect workers and other protocols have no offsets.
fn is_consumer_group(protocol_type: &str) -> bool {
    matches!(protocol_type, "consumer" | "")
}

fn client_config(
    clients: &KafkaClients,
    group: Option<&str>,
) -> Result<rdkafka::ClientConfig, LagError> {
    let mut c = clients.base("lag")?;
    c.set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    if let Some(g) = group {
        c.set("group.id", g);
    }
    Ok(c)
}

fn kafka(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> LagError {
    let what = what.into();
    move |source| LagError::Kafka { what, source }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_takes_exact_names_and_prefixes() {
        let all = GroupFilter::default();
        assert!(all.matches("anything"));
        let f = GroupFilter::new(["orders".to_string(), "sluice-*".to_string()]);
        assert!(f.matches("orders"));
        assert!(!f.matches("orders-2"));
        assert!(f.matches("sluice-normalizer"));
        assert!(f.matches("sluice-"));
        assert!(!f.matches("sluice"));
    }

    #[test]
    fn only_offset_committing_protocols_are_consumer_groups() {
        assert!(is_consumer_group("consumer"));
        assert!(is_consumer_group(""));
        assert!(!is_consumer_group("connect"));
    }
}
