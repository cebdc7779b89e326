//! Polling sources against the real broker and a real list API (`dev/api.py`) that fails
//! the way third-party APIs do: items change during a crawl, 1,000 items share one
//! timestamp, items show up late, 5% of requests fail with 5xx, 429s carry both
//! `Retry-After` forms, cursors expire with 410, a per-credential budget answers 429 with
//! reset headers. `sluice poll` is SIGKILLed mid-crawl and started again; the raw topics
//! are read back `read_committed` for an exact accounting: every item version written
//! once, none lost, no request before a `Retry-After`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};
use serde_json::{json, Value as Json};

use crate::gateway::{apply_topology, unique_prefix};
use crate::support::{read_log, require_stack, sluice_async, RoleProcess};

/// `dev/api.py` on a free port; killed when dropped.
struct Api {
    child: Child,
    base: String,
}

impl Api {
    fn start(args: &[&str]) -> Self {
        let (child, base) = crate::support::start_dev_server("api.py", args);
        Self { child, base }
    }

    async fn post(&self, path: &str, body: Json) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{path}");
    }

    async fn stats(&self) -> Json {
        crate::support::get(format!("{}/_admin/stats", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every item's newest version.
    async fn latest(&self) -> BTreeMap<String, u64> {
        let stats = self.stats().await;
        stats["versions"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, vs)| {
                (
                    id.clone(),
                    vs.as_array().unwrap().last().unwrap().as_u64().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sluice poll` on `topology` and waits until it is ready; SIGKILLed when dropped.
async fn start_poller(topology: &Path, env: &[(&str, &str)]) -> RoleProcess {
    let log = topology.with_file_name(format!("poll-{}.log", uuid::Uuid::new_v4().simple()));
    let args: Vec<&std::ffi::OsStr> = vec![
        "poll".as_ref(),
        "--outbound-allow".as_ref(),
        "127.0.0.1/32".as_ref(),
        "--topology".as_ref(),
        topology.as_os_str(),
    ];
    let mut p = RoleProcess::spawn("sluice poll", &args, env, log);
    p.ready().await;
    p
}

/// One raw record as written.
#[derive(Debug, Clone)]
struct Raw {
    partition: i32,
    key: String,
    body: Json,
    headers: BTreeMap<String, String>,
}

/// Reads `topic` from the start to its end, `read_committed`.
fn read_topic(topic: &str) -> Vec<Raw> {
    let (consumer, partitions) =
        crate::support::read_from_start(topic, &[("enable.partition.eof", "true")]);
    let mut open: BTreeSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while !open.is_empty() && Instant::now() < end {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Raw {
                partition: m.partition(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                body: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

async fn read(topic: &str) -> Vec<Raw> {
    let t = topic.to_string();
    tokio::task::spawn_blocking(move || read_topic(&t))
        .await
        .unwrap()
}

/// `(id, version)` of a record, from its body, checked against its key and headers.
fn item_version(r: &Raw, source: &str) -> (String, u64) {
    let id = r.body["id"].as_str().unwrap().to_string();
    let version = r.body["version"].as_u64().unwrap();
    assert_eq!(r.key, id, "records are keyed by item id");
    assert_eq!(r.headers["sluice_source"], source);
    assert_eq!(r.headers["sluice_provider"], "poll");
    assert_eq!(
        r.headers["sluice_delivery_id"],
        format!("{id}@{}", r.body["updated_at"].as_str().unwrap()),
        "delivery id = item id + version"
    );
    assert!(sluice_schemas::metadata::parse_rfc3339_ms(&r.headers["sluice_received_at"]).is_some());
    assert_eq!(r.headers["content-type"], "application/json");
    (id, version)
}

/// Waits until `topic` holds the newest version of every item the API has, and returns
/// what it holds then.
async fn wait_for_latest(api: &Api, topic: &str, within: Duration) -> Vec<Raw> {
    let end = Instant::now() + within;
    loop {
        let latest = api.latest().await;
        let records = read(topic).await;
        let written: BTreeSet<(String, u64)> = records
            .iter()
            .map(|r| {
                (
                    r.body["id"].as_str().unwrap().to_string(),
                    r.body["version"].as_u64().unwrap(),
                )
            })
            .collect();
        let missing: Vec<_> = latest
            .iter()
            .filter(|(id, v)| !written.contains(&((*id).clone(), **v)))
            .collect();
        if missing.is_empty() {
            return records;
        }
        assert!(
            Instant::now() < end,
            "{} items' newest versions never written, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every version once; each item's versions in increasing order on its partition; each one
/// a version the API really had.
fn account(records: &[Raw], source: &str, history: &Json) {
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<String, (i32, u64)> = BTreeMap::new();
    for r in records {
        let (id, v) = item_version(r, source);
        assert!(seen.insert((id.clone(), v)), "{id} v{v} written twice");
        let had = history[&id]
            .as_array()
            .unwrap_or_else(|| panic!("{id} is not an item of the API"));
        assert!(had.contains(&json!(v)), "{id} never had version {v}");
        if let Some((p, before)) = last.insert(id.clone(), (r.partition, v)) {
            assert_eq!(p, r.partition, "{id} on two partitions");
            assert!(v > before, "{id}: v{v} after v{before}");
        }
    }
}

fn topology(prefix: &str, sources: &[(&str, String)]) -> String {
    let mut yaml = format!("prefix: {prefix}\ntopics:\n");
    for (name, _) in sources {
        yaml.push_str(&format!(
            "  - {{name: {prefix}.raw.{name}, partitions: 3}}\n"
        ));
    }
    yaml.push_str("sources:\n");
    for (name, poll) in sources {
        yaml.push_str(&format!(
            "  - name: {name}\n    raw_topic: {prefix}.raw.{name}\n    poll: {poll}\n"
        ));
    }
    yaml
}

/// Waits up to 60 s for `topic` to hold at least `n` committed records.
async fn wait_for_records(poller: &RoleProcess, topic: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while read(topic).await.len() < n {
        assert!(Instant::now() < deadline, "{}", read_log(&poller.log));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_metric(poller: &RoleProcess, name: &str, at_least: f64) {
    let end = Instant::now() + Duration::from_secs(60);
    while poller.metric(name).await < at_least {
        assert!(
            Instant::now() < end,
            "{name} stayed below {at_least}:\n{}",
            read_log(&poller.log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sources_status(topology: &Path) -> (bool, String, String) {
    sluice_async(vec![
        "sources".into(),
        "status".into(),
        "--topology".into(),
        topology.display().to_string(),
    ])
    .await
}

/// 429 answers the API gave so far.
async fn throttled(api: &Api) -> u64 {
    api.stats().await["answers"]["429"].as_u64().unwrap_or(0)
}

/// SIGKILLs `poller` the moment the API answers its next 429, before the pause it records
/// for it can be committed.
async fn kill_at_next_429(api: &Api, mut poller: RoleProcess) {
    let before = throttled(api).await;
    let end = Instant::now() + Duration::from_secs(60);
    while throttled(api).await == before {
        assert!(Instant::now() < end, "no 429 within 60 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    poller.kill();
}

/// The exactly-once accounting under every fault at once, across SIGKILLs, some of them
/// right after a 429: the successor of an unclean stop waits as long as the longest wait
/// the API ever set, so no request comes before a `Retry-After` the killed poller never
/// recorded.
#[tokio::test(flavor = "multi_thread")]
async fn every_item_version_is_written_once_across_kills_and_faults() {
    written_once_across_kills_and_faults(false).await;
}

/// The same with `overlap_commit`: a kill may land while a transaction commits and the
/// next page is being fetched.
#[tokio::test(flavor = "multi_thread")]
async fn every_item_version_is_written_once_with_commits_overlapping_fetches() {
    written_once_across_kills_and_faults(true).await;
}

async fn written_once_across_kills_and_faults(overlap_commit: bool) {
    require_stack().await;
    let api = Api::start(&["--items", "1000", "--shared-timestamp", "--seed", "7"]);
    let prefix = unique_prefix("pollx");
    let poll = format!(
        "{{url: '{}/cursor/items', interval: 300ms, items: data, version: updated_at, \
          since: {{param: updated_since, lookback: 10s}}, \
          pagination: {{type: cursor, param: cursor, path: next_cursor}}, \
          page_size: {{param: limit, value: 50}}, pages_per_transaction: 3, \
          overlap_commit: {overlap_commit}}}",
        api.base
    );
    let file = apply_topology(&topology(&prefix, &[("orders", poll)])).await;
    let topology_model = crate::support::load_topology(&file);
    let _cleanup = Cleanup(topology_model);
    api.post(
        "/_admin/config",
        json!({"error_rate": 0.05, "throttle_every": 9, "mutate_every": 3,
               "late_every": 7, "late_secs": 3, "cursor_ttl": 0}),
    )
    .await;
    let topic = format!("{prefix}.raw.orders");
    // Mid-crawl, the API forgets every cursor: the poller starts the crawl over from its
    // `since`, and is killed soon after.
    let mut poller = start_poller(&file, &[]).await;
    wait_for_metric(&poller, "sluice_poll_pages_total", 3.0).await;
    api.post("/_admin/expire_cursors", json!({})).await;
    wait_for_metric(&poller, "sluice_poll_cursor_expired_total", 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    poller.kill();
    // Killed again at other points of this crawl and of later ones.
    for run_for in [1500u64, 2500] {
        let mut poller = start_poller(&file, &[]).await;
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        poller.kill();
    }
    for _ in 0..3 {
        kill_at_next_429(&api, start_poller(&file, &[]).await).await;
    }
    let poller = start_poller(&file, &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Quiet now: no more changes, so "none lost" has a fixed answer.
    api.post(
        "/_admin/config",
        json!({"mutate_every": 0, "late_every": 0}),
    )
    .await;
    // Items that are still to show up late show up within 3 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_for_latest(&api, &topic, Duration::from_secs(120)).await;
    // A few more crawls over the lookback window must add nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let records = read(&topic).await;
    let stats = api.stats().await;
    account(&records, "orders", &stats["versions"]);
    let items = stats["versions"].as_object().unwrap().len();
    assert!(items > 1000, "late items were added: {items}");
    let ids: BTreeSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(ids.len(), items, "every item written");
    let answers = &stats["answers"];
    let summary =
        json!({"answers": answers, "early": stats["early"], "requests": stats["requests"]});
    let count = |s: &str| answers[s].as_u64().unwrap_or(0);
    assert!(
        count("429") > 0 && count("500") + count("502") + count("503") > 0,
        "{summary}"
    );
    assert!(count("410") > 0, "a cursor expired: {summary}");
    assert_eq!(
        stats["early"], 0,
        "a request came before its Retry-After: {summary}"
    );
    assert!(
        poller.metric("sluice_poll_items_dropped_total").await > 0.0,
        "the lookback re-read items"
    );
    let (ok, out, err) = sources_status(&file).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("orders\t"), "{out}");
}

/// The (id, version) store is one state record per page; a page whose items are all
/// behind the lookback is deleted from the state topic; per-item records of earlier
/// versions are carried over (their items are not written again) and deleted.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_is_a_record_per_page_and_pages_behind_the_lookback_are_deleted() {
    require_stack().await;
    // 1,000 items 1 ms apart; pages of 50 cover 50 ms, the lookback 100 ms.
    let api = Api::start(&["--items", "1000"]);
    let prefix = unique_prefix("polls");
    let poll = format!(
        "{{url: '{}/cursor/items', interval: 300ms, items: data, version: updated_at, \
          since: {{param: updated_since, lookback: 100ms}}, \
          pagination: {{type: cursor, param: cursor, path: next_cursor}}, \
          page_size: {{param: limit, value: 50}}}}",
        api.base
    );
    let file = apply_topology(&topology(&prefix, &[("orders", poll)])).await;
    let _cleanup = Cleanup(crate::support::load_topology(&file));
    let (clients, state, home) = state_partition(&prefix, "orders");

    // An earlier version's store: one record per item, for the first ten items.
    let first: Json = crate::support::get(format!("{}/cursor/items?limit=10", api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let producer = clients.producer("e2e-poll-state").unwrap();
    let mut carried = BTreeSet::new();
    for item in first["data"].as_array().unwrap() {
        let id = item["id"].as_str().unwrap();
        let at = item["updated_at"].as_str().unwrap();
        let t = at.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let key = serde_json::to_vec(&("orders", "item", id)).unwrap();
        let value = serde_json::to_vec(&json!({"v": at, "t": t})).unwrap();
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&state)
                    .partition(home)
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        carried.insert(id.to_string());
    }

    let poller = start_poller(&file, &[]).await;
    let topic = format!("{prefix}.raw.orders");
    wait_for_records(&poller, &topic, 990).await;
    // A few more crawls over the lookback window (and their commits).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = read(&topic).await;
    let ids: BTreeSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        records.len(),
        990,
        "the carried-over items are not written again"
    );
    assert_eq!(ids.len(), 990);
    assert!(carried.iter().all(|id| !ids.contains(id.as_str())));

    // The state partition folded: which keys are live, and which pages were ever written.
    let mut live: BTreeMap<Vec<String>, bool> = BTreeMap::new();
    sluice_stream::state::kafka::read_partitions(&clients, &state, &[home], |_, key, value| {
        if let Ok(parts) = serde_json::from_slice::<Vec<String>>(key) {
            live.insert(parts, value.is_some());
        }
    })
    .unwrap();
    let of = |kind: &str, alive: bool| {
        live.iter()
            .filter(|(k, l)| k[1] == kind && **l == alive)
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    assert!(
        of("item", true).is_empty(),
        "per-item records deleted: {live:?}"
    );
    assert_eq!(of("item", false).len(), 10);
    let (kept, deleted) = (of("seen", true), of("seen", false));
    // 20 pages of new items (the first carries 40) and page 0, carried over.
    assert!(
        kept.len() + deleted.len() >= 21,
        "every page wrote a record: {live:?}"
    );
    assert!(
        kept.len() <= 4,
        "pages behind the 100 ms lookback are deleted: kept {kept:?}"
    );
    assert!(deleted.iter().any(|k| k[2] == "0"), "page 0 once behind");
}

/// An API listing newest first: the (id, version) store cannot forget mid-crawl, but does
/// between crawls (the next one asks only from the watermark minus the lookback), and the
/// pages behind are deleted from the state topic.
#[tokio::test(flavor = "multi_thread")]
async fn a_newest_first_api_s_store_is_forgotten_between_crawls() {
    require_stack().await;
    let api = Api::start(&["--items", "300"]);
    let prefix = unique_prefix("polld");
    let poll = format!(
        "{{url: '{}/page/items?order=desc', interval: 300ms, items: data, version: updated_at, \
          since: {{param: updated_since, lookback: 50ms}}, \
          pagination: {{type: page, param: page}}, page_size: {{param: limit, value: 50}}}}",
        api.base
    );
    let file = apply_topology(&topology(&prefix, &[("desc", poll)])).await;
    let _cleanup = Cleanup(crate::support::load_topology(&file));
    let poller = start_poller(&file, &[]).await;
    let topic = format!("{prefix}.raw.desc");
    wait_for_records(&poller, &topic, 300).await;
    // Later crawls re-read the newest page and add nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = read(&topic).await;
    let ids: BTreeSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!((records.len(), ids.len()), (300, 300));
    assert!(poller.metric("sluice_poll_items_dropped_total").await >= 50.0);
    let (kept, deleted) = seen_pages(&prefix, "desc");
    assert_eq!(
        kept.len() + deleted.len(),
        6,
        "six pages of 50 items written"
    );
    // The newest time minus 50 ms falls on the second page's newest item.
    assert_eq!(
        kept,
        ["1/0", "2/0"],
        "only pages within the lookback are kept"
    );
}

/// The state topic of deployment `prefix` and the partition `source`'s poller writes to.
fn state_partition(
    prefix: &str,
    source: &str,
) -> (sluice_runtime::kafka::KafkaClients, String, i32) {
    let state = sluice_topology::naming::poll_state_topic(prefix);
    let clients = crate::support::clients();
    let partitions = sluice_stream::state::kafka::partition_count(&clients, &state).unwrap();
    let home = sluice_poll::poller::partition_of(source, partitions);
    (clients, state, home)
}

/// The `["<source>","seen",…]` records of `source`'s state partition: the pages still held
/// and those deleted.
fn seen_pages(prefix: &str, source: &str) -> (Vec<String>, Vec<String>) {
    let (clients, state, home) = state_partition(prefix, source);
    let mut live: BTreeMap<String, bool> = BTreeMap::new();
    sluice_stream::state::kafka::read_partitions(&clients, &state, &[home], |_, key, value| {
        if let Ok(parts) = serde_json::from_slice::<Vec<String>>(key) {
            if parts[0] == source && parts[1] == "seen" {
                live.insert(format!("{}/{}", parts[2], parts[3]), value.is_some());
            }
        }
    })
    .unwrap();
    let (kept, deleted): (Vec<_>, Vec<_>) = live.into_iter().partition(|(_, l)| *l);
    let names = |v: Vec<(String, bool)>| v.into_iter().map(|(k, _)| k).collect();
    (names(kept), names(deleted))
}

/// An item larger than Kafka takes in one record is dead-lettered with its identity and
/// reason, once; the items around it and after it are written as usual.
#[tokio::test(flavor = "multi_thread")]
async fn an_item_too_large_for_kafka_is_dead_lettered_and_the_crawl_goes_on() {
    require_stack().await;
    let api = Api::start(&["--items", "20"]);
    // 1.5 MB: over the producer's message.max.bytes (1,000,000), under max_page_bytes.
    api.post("/_admin/add", json!({"n": 1, "note_bytes": 1_500_000}))
        .await;
    api.post("/_admin/add", json!({"n": 2})).await;
    let prefix = unique_prefix("pollbig");
    let poll = format!(
        "{{url: '{}/cursor/items', interval: 200ms, items: data, version: updated_at, \
          since: {{param: updated_since, lookback: 30s}}, \
          pagination: {{type: cursor, param: cursor, path: next_cursor}}, \
          page_size: {{param: limit, value: 10}}}}",
        api.base
    );
    let file = apply_topology(&topology(&prefix, &[("big", poll)])).await;
    let _cleanup = Cleanup(crate::support::load_topology(&file));
    let poller = start_poller(&file, &[]).await;
    let topic = format!("{prefix}.raw.big");
    let dlq = sluice_topology::naming::poll_dlq_topic(&prefix);
    wait_for_records(&poller, &topic, 22).await;
    // Items added after it are written too, and later crawls re-read it without a second
    // dead letter.
    api.post("/_admin/add", json!({"n": 3})).await;
    wait_for_records(&poller, &topic, 25).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = read(&topic).await;
    let ids: BTreeSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!((records.len(), ids.len()), (25, 25));
    assert!(
        !ids.contains("o-000021"),
        "the large item is not a raw record"
    );
    let letters = read(&dlq).await;
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.key, "o-000021");
    assert_eq!(letter.headers["kafka_dlt-exception-fqcn"], "ItemTooLarge");
    assert_eq!(letter.headers["kafka_dlt-original-topic"], topic);
    assert_eq!(letter.headers["sluice_source"], "big");
    let reason = &letter.headers["kafka_dlt-exception-message"];
    assert!(
        reason.contains("o-000021") && reason.contains("bytes"),
        "{reason}"
    );
    assert!(
        letter.body["bytes"].as_u64().unwrap() > 1_500_000,
        "{}",
        letter.body
    );
    assert_eq!(letter.body["body_prefix"].as_str().unwrap().len(), 1024);
    assert_eq!(
        poller.metric("sluice_poll_items_dead_lettered_total").await,
        1.0
    );
    assert!(read_log(&poller.log).contains("dead-lettered, the crawl goes on"));
}

/// Every pagination style reads every item exactly once; keyset pages through 1,000 items
/// that share one timestamp thanks to the id tie-break.
#[tokio::test(flavor = "multi_thread")]
async fn every_pagination_style_reads_every_item_once() {
    require_stack().await;
    let api = Api::start(&["--items", "1000", "--shared-timestamp"]);
    let common =
        "interval: 500ms, items: data, version: updated_at, page_size: {param: limit, value: 64}";
    let b = &api.base;
    let sources = [
        ("link", format!("{{url: '{b}/link/items', {common}, pagination: {{type: link}}}}")),
        ("page", format!("{{url: '{b}/page/items', {common}, pagination: {{type: page, param: page}}}}")),
        ("offset", format!("{{url: '{b}/offset/items', {common}, pagination: {{type: offset, param: offset}}}}")),
        ("keyset", format!("{{url: '{b}/keyset/items', {common}, since: {{param: updated_since, tie_break: after_id, lookback: 1s}}}}")),
    ];
    let prefix = unique_prefix("pollp");
    let file = apply_topology(&topology(&prefix, &sources)).await;
    let _cleanup = Cleanup(crate::support::load_topology(&file));
    let _poller = start_poller(&file, &[]).await;
    for (name, _) in &sources {
        let records = wait_for_latest(
            &api,
            &format!("{prefix}.raw.{name}"),
            Duration::from_secs(60),
        )
        .await;
        // Two more crawls' worth of time: re-reads must write nothing.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let records = if records.len() == 1000 {
            read(&format!("{prefix}.raw.{name}")).await
        } else {
            records
        };
        account(&records, name, &api.stats().await["versions"]);
        assert_eq!(records.len(), 1000, "{name}");
    }
}

/// Offset pages of a list that changes mid-crawl: every change moves an item from before the
/// crawl's position to the end (an `updated_at` order), shifting the rest back by one, so
/// without the pages' overlap an item at a page boundary is never read, and with `since`
/// later crawls never come back for it (in about 99% of runs). Every item's newest version
/// must be written, and no version twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_offset_crawl_of_a_list_changing_under_it_skips_no_item() {
    require_stack().await;
    let api = Api::start(&["--items", "300", "--seed", "7"]);
    api.post("/_admin/config", json!({"mutate_every": 2})).await;
    let b = &api.base;
    let source = format!(
        "{{url: '{b}/offset/items', interval: 1s, items: data, version: updated_at, \
         page_size: {{param: limit, value: 20}}, pagination: {{type: offset, param: offset}}, \
         since: {{param: updated_since, lookback: 1s}}}}"
    );
    let prefix = unique_prefix("pollo");
    let file = apply_topology(&topology(&prefix, &[("offset", source)])).await;
    let _cleanup = Cleanup(crate::support::load_topology(&file));
    let _poller = start_poller(&file, &[]).await;
    // Changes through the first crawl and a few after it, then none.
    let end = Instant::now() + Duration::from_secs(60);
    while api.stats().await["requests"].as_u64().unwrap() < 40 {
        assert!(
            Instant::now() < end,
            "the poller made under 40 requests in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.post("/_admin/config", json!({"mutate_every": 0})).await;
    let topic = format!("{prefix}.raw.offset");
    wait_for_latest(&api, &topic, Duration::from_secs(60)).await;
    // Two more crawls: re-reads must write nothing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let records = read(&topic).await;
    let stats = api.stats().await;
    account(&records, "offset", &stats["versions"]);
    let versions: usize = stats["versions"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().len())
        .sum();
    assert!(versions > 300, "the list changed during the crawls");
}

/// Offset pages of an API whose order changes on every request never show the previous
/// page's last items again. The crawl steps back a bounded number of times, warns, then goes
/// on without the check: it ends (the source goes idle between crawls) instead of cycling
/// between its first pages, and later crawls still write every item once.
#[tokio::test(flavor = "multi_thread")]
async fn an_offset_crawl_of_an_unstable_order_still_ends() {
    require_stack().await;
    let api = Api::start(&["--items", "200", "--seed", "3"]);
    api.post("/_admin/config", json!({"shuffle": true})).await;
    let b = &api.base;
    let source = format!(
        "{{url: '{b}/offset/items', interval: 1s, items: data, version: updated_at, \
         page_size: {{param: limit, value: 20}}, pagination: {{type: offset, param: offset}}}}"
    );
    let prefix = unique_prefix("pollu");
    let file = apply_topology(&topology(&prefix, &[("offset", source)])).await;
    let _cleanup = Cleanup(crate::support::load_topology(&file));
    let poller = start_poller(&file, &[]).await;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, err) = sources_status(&file).await;
        assert!(ok, "{out}{err}");
        // Idle after a success: a crawl started and ended.
        let ended = out.lines().any(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            f.len() > 2 && f[0] == "offset" && f[1].starts_with("idle") && f[2] != "never"
        });
        if ended {
            break;
        }
        assert!(
            Instant::now() < end,
            "the first crawl did not end in 60 s: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        read_log(&poller.log).contains("keep shifting past their overlap"),
        "no warning about the unstable order"
    );
    let topic = format!("{prefix}.raw.offset");
    let records = wait_for_latest(&api, &topic, Duration::from_secs(60)).await;
    account(&records, "offset", &api.stats().await["versions"]);
    assert_eq!(records.len(), 200);
}

/// An API that ignores the pagination parameter answers every page with the first one. The
/// crawl ends on the repeat (instead of fetching the same page forever), the source shows
/// the error, and where the API honours `since` the next crawls still read every item, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_crawl_ends_when_the_api_ignores_paging() {
    require_stack().await;
    let api = Api::start(&["--items", "200", "--seed", "4"]);
    api.post("/_admin/config", json!({"ignore_paging": true}))
        .await;
    let b = &api.base;
    let offset = format!(
        "{{url: '{b}/offset/items', interval: 200ms, items: data, version: updated_at, \
         since: {{param: updated_since, lookback: 0s}}, \
         page_size: {{param: limit, value: 20}}, pagination: {{type: offset, param: offset}}}}"
    );
    let cursor = format!(
        "{{url: '{b}/cursor/items', interval: 200ms, items: data, version: updated_at, \
         page_size: {{param: limit, value: 20}}, \
         pagination: {{type: cursor, param: cursor, path: next_cursor}}}}"
    );
    let prefix = unique_prefix("pollr");
    let file = apply_topology(&topology(
        &prefix,
        &[("offset", offset), ("cursor", cursor)],
    ))
    .await;
    let _cleanup = Cleanup(crate::support::load_topology(&file));
    let poller = start_poller(&file, &[]).await;
    let records = wait_for_latest(
        &api,
        &format!("{prefix}.raw.offset"),
        Duration::from_secs(60),
    )
    .await;
    account(&records, "offset", &api.stats().await["versions"]);
    assert_eq!(records.len(), 200);
    // Without `since` every crawl reads the first page again: its 20 items, once.
    let cursor_records = read(&format!("{prefix}.raw.cursor")).await;
    account(&cursor_records, "cursor", &api.stats().await["versions"]);
    assert_eq!(cursor_records.len(), 20);
    let (ok, out, err) = sources_status(&file).await;
    assert!(ok, "{out}{err}");
    for source in ["offset", "cursor"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{source}\t")))
            .unwrap_or_else(|| panic!("no {source} in {out}"));
        assert!(
            line.contains("showed only items of the page before it"),
            "{source}: {line}"
        );
    }
    assert!(read_log(&poller.log).contains("showed only items of the page before it"));
    // Each crawl asked for two pages, not hundreds: about five crawls a second.
    let requests = api.stats().await["requests"].as_u64().unwrap();
    assert!(requests < 2_000, "{requests} requests");
}

/// An API that answers every page empty, pointing to the same next page, would be followed
/// for ever, as fast as it answers: the crawl ends on the loop, says why, and the source waits
/// its interval before the next crawl.
#[tokio::test(flavor = "multi_thread")]
async fn empty_pages_that_keep_pointing_to_another_end_the_crawl() {
    require_stack().await;
    let api = Api::start(&["--items", "20"]);
    api.post("/_admin/config", json!({"empty_pages": true}))
        .await;
    let source = format!(
        "{{url: '{}/cursor/items', interval: 200ms, items: data, version: updated_at, \
         pagination: {{type: cursor, param: cursor, path: next_cursor}}}}",
        api.base
    );
    let prefix = unique_prefix("polle");
    let file = apply_topology(&topology(&prefix, &[("empty", source)])).await;
    let _cleanup = Cleanup(crate::support::load_topology(&file));
    let poller = start_poller(&file, &[]).await;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = sources_status(&file).await;
        assert!(ok, "{out}{err}");
        if out.contains("pointed to a page already asked for since the last item") {
            break;
        }
        assert!(Instant::now() < end, "no crawl ended on empty pages: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two requests a crawl, a crawl every 200 ms: about 10 a second, not thousands.
    let before = api.stats().await["requests"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = api.stats().await["requests"].as_u64().unwrap() - before;
    assert!(asked <= 60, "{asked} requests in 2 s");
    assert!(read_log(&poller.log).contains("already asked for since the last item"));
}

/// An idle source is answered 304; a per-credential budget below the API's is never
/// overrun; the credential comes from the environment and never shows in status output.
#[tokio::test(flavor = "multi_thread")]
async fn idle_polls_get_304_and_the_budget_is_never_overrun() {
    require_stack().await;
    let api = Api::start(&["--items", "20"]);
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    api.post("/_admin/config", json!({"token": token, "rate_per_sec": 5}))
        .await;
    let poll = format!(
        "{{url: '{}/keyset/items', interval: 100ms, items: data, version: updated_at, \
          auth: {{bearer: {{env: E2E_POLL_TOKEN}}}}, since: {{param: updated_since, lookback: 30s}}, \
          limits: {{credential_rate_per_sec: 4, credential_burst: 1}}}}",
        api.base
    );
    let prefix = unique_prefix("polli");
    let file = apply_topology(&topology(&prefix, &[("idle", poll)])).await;
    let _cleanup = Cleanup(crate::support::load_topology(&file));
    let poller = start_poller(&file, &[("E2E_POLL_TOKEN", &token)]).await;
    let topic = format!("{prefix}.raw.idle");
    wait_for_latest(&api, &topic, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut stats = api.stats().await;
    stats["versions"].take();
    assert_eq!(read(&topic).await.len(), 20);
    assert!(
        stats["answers"]["304"].as_u64().unwrap_or(0) >= 5,
        "{stats}"
    );
    assert_eq!(stats["over_budget"], 0, "{stats}");
    assert_eq!(stats["answers"]["401"], Json::Null, "{stats}");
    // At most 4 requests a second (plus the burst of one) over the whole run.
    let requests = stats["requests"].as_u64().unwrap();
    assert!(poller.metric("sluice_poll_wait_seconds_total").await > 0.0);
    // A change is picked up on the next poll, and only the change.
    api.post("/_admin/mutate", json!({"n": 1})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(read(&topic).await.len(), 21);
    let (ok, out, err) = sources_status(&file).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("idle\tidle, synced to"), "{out}");
    assert!(out.contains("\t21\t"), "{out}");
    assert!(!out.contains(&token) && !err.contains(&token));
    assert!(
        !read_log(&poller.log).contains(&token),
        "the token leaked into the log"
    );
    assert!(requests > 5);
}

/// Removes a test's topics, passed or not.
struct Cleanup(sluice_topology::Topology);

impl Drop for Cleanup {
    fn drop(&mut self) {
        crate::support::remove_deployment(&self.0);
    }
}
