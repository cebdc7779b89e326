//! The fault suite: the real `sluice` roles (gateway, normalizer, saga orchestrator, demo
//! participants) as child processes on a deployment of their own, under signed webhook load
//! built from `tests/fixtures/webhooks` (Stripe payments, and Shopify orders that start
//! sagas), while one fault is injected mid-stream:
//!
//! - `broker_kill`: the broker is killed with SIGKILL and restarted; the gateway must answer
//!   503, never 2xx, while it is down;
//! - `role_kills`: each role in turn is killed with SIGKILL and restarted;
//! - `registry_outage`: the schema registry is stopped for about ten seconds. The normalizer
//!   and the participants are killed while it is gone: restarted, each must wait for the
//!   registry (not exit) and then catch up, while the gateway keeps accepting. Meanwhile a
//!   backend service publishes orders written with a schema version the running
//!   orchestrator has never seen: it cannot decode them until the registry is back, so they
//!   must go through its retry tiers and still start their sagas;
//! - `bad_input`: tampered signatures, replayed timestamps, oversized bodies, invalid JSON
//!   from a verified sender, unknown event types and schema-incompatible publishes, at
//!   volume, between good deliveries;
//! - `hostile_input`: what a sender holding captured deliveries can try: orders replayed
//!   under fresh webhook ids (accepted, then dropped as redeliveries), an order body sent as
//!   `orders/paid` (dead-lettered as EventTypeMismatch, never an OrderPaid), unsigned
//!   requests, and headers too large to fit a raw record.
//!
//! The outbox relay's broker SIGKILL and PostgreSQL restart are in `outbox.rs`, next to its
//! other tests; they are `#[ignore]`d the same way and run in the same serial step.
//!
//! Each ends with an exact accounting read back from the topics: the deliveries the gateway
//! accepted (2xx) are exactly those on the raw topics, and exactly the normalized ones plus
//! the dead-lettered ones (each with its reason); no event id twice; every saga in exactly
//! one terminal state; every refused request refused with its code and nothing produced for
//! it. The table is printed (`--nocapture`) and docs/faults.md keeps measured ones.
//!
//! Providers retry a delivery that got a 503 or no answer, and so does the load here (same
//! body, same delivery id), which is what makes "accepted" exact.
//!
//! Volume: `SLUICE_FAULTS_SCALE` (default 1, the short run `make test` does; `make faults`
//! runs 5). The scenarios stop the broker and the registry, so they are `#[ignore]`d and run
//! in the serial step: `cargo test --test e2e -- --ignored --test-threads=1 faults::`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use sluice_normalizer::mappings::event_id;
use sluice_producers::sign;
use sluice_sagas::demo::{scratch_topology, Scratch};

use crate::gateway::{apply_topology, now_unix, register_schemas, unique_prefix};
use crate::normalizer::{fixture, read_until, reader, stripe_with_id, Seen};
use crate::saga::Lifecycle;
use crate::support::{
    clients, free_port, load_topology, reference_topology, registry, require_stack, send_event,
    stack, wait_ready, StackGuard,
};

const SAGA: &str = "order-fulfillment";
const STRIPE_SECRET: &str = "whsec_faults_stripe";
const SHOPIFY_SECRET: &str = "faults-shopify-secret";
const PUBLISH_TOKEN: &str = "faults-publish-token-0123456789";
const ORDER_PLACED: &str = "dev.sluice.events.commerce.OrderPlaced";
const ORDER_PAID: &str = "dev.sluice.events.commerce.OrderPaid";
/// The `ce_source` of the orders a backend service publishes itself (registry outage).
const SERVICE: &str = "sluice://services/checkout";
/// The Stripe source's body limit; oversized deliveries are twice this.
const MAX_BODY: usize = 16 * 1024;
/// How long a delivery is retried (503 or no answer) before the load gives up on it.
const GIVE_UP: Duration = Duration::from_secs(240);

/// Volume multiplier (`SLUICE_FAULTS_SCALE`, default 1).
fn scale() -> usize {
    std::env::var("SLUICE_FAULTS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// The reference order-fulfillment saga plus two webhook sources, their raw topics, the
/// normalizer's routes, retry tiers and DLQ, all under `p`.
fn topology(p: &str) -> String {
    let saga = scratch_topology(
        &reference_topology(),
        SAGA,
        &Scratch {
            prefix: p,
            partitions: 3,
            timeout: "10s",
            timeouts: &[],
            retry: Some("{max_attempts: 3, backoff: 1s}"),
            compensation_retry: "{max_attempts: 6, backoff: 1s}",
        },
    )
    .unwrap();
    let topics = format!(
        r#"  - {{name: {p}.raw.stripe, partitions: 3}}
  - {{name: {p}.raw.shopify, partitions: 3}}
  - {{name: {p}.events.payments, partitions: 3}}
  - {{name: {p}.dlq.normalizer, partitions: 1}}
  - {{name: {p}.state.dedup, partitions: 3, config: {{cleanup.policy: compact}}}}
"#
    );
    let sources = format!(
        r#"sources:
  - {{name: stripe, provider: {{type: stripe, tolerance_secs: 300}}, secrets: [{{env: FAULTS_STRIPE_SECRET}}], raw_topic: {p}.raw.stripe, limits: {{max_body_bytes: {MAX_BODY}}}}}
  - {{name: shopify, provider: {{type: shopify}}, secrets: [{{env: FAULTS_SHOPIFY_SECRET}}], raw_topic: {p}.raw.shopify}}
retry_policies:
  - {{name: normalizer, tiers: [1s, 2s, 5s], max_attempts: 8, dlq_topic: {p}.dlq.normalizer}}
  - {{name: sagas, tiers: [2s, 5s, 15s], max_attempts: 8, dlq_topic: {p}.dlq.sagas}}
routes:
  - {{event_type: dev.sluice.events.payments.PaymentSucceeded, topic: {p}.events.payments}}
"#
    );
    saga.replacen("topics:\n", &format!("topics:\n{topics}"), 1)
        .replacen("routes:\n", &sources, 1)
}

/// The load sends every bad kind from one address at volume: its failure budget is raised
/// so each gets its own code, not `too_many_failures` (the budget has tests of its own in
/// `gateway.rs`).
const CONFIG: &str = "gateway:
  produce_timeout_ms: 2000
  client_failures_per_minute: 100000
  client_failure_burst: 100000
  publish_tokens:
    - {name: faults, token: {env: FAULTS_PUBLISH_TOKEN}, event_types: ['*']}
";

// ---------------------------------------------------------------------------------------------
// The roles, supervised

/// One `sluice` role as a child process, on a fixed admin port, logging to a file.
struct Role {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    admin: u16,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Role {
    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(&self.args)
            .env("SLUICE_ADMIN__LISTEN", format!("127.0.0.1:{}", self.admin))
            .env("RUST_LOG", "warn,sluice_stream=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn sluice"));
        self.starts += 1;
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A deployment and its four roles, restarted (after a second, as `sluice run` does) whenever
/// they exit or are killed.
struct Cluster {
    prefix: String,
    topology: sluice_topology::Topology,
    gateway: String,
    roles: Arc<Mutex<Vec<Role>>>,
    running: Arc<AtomicBool>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

impl Cluster {
    async fn start(tag: &str) -> Self {
        require_stack().await;
        let prefix = unique_prefix(tag);
        let file = apply_topology(&topology(&prefix)).await;
        register_schemas(&file).await;
        let dir = file.parent().unwrap().to_path_buf();
        let config = dir.join("sluice.yaml");
        std::fs::write(&config, CONFIG).unwrap();
        let deployed = load_topology(&file);
        let (file, config) = (file.display().to_string(), config.display().to_string());
        let effects = dir.join("effects.log").display().to_string();
        let port = free_port();
        let role = |name: &'static str, args: &[&str], extra: &[(&str, String)]| {
            let mut env: Vec<(String, String)> = [
                ("FAULTS_STRIPE_SECRET", STRIPE_SECRET),
                ("FAULTS_SHOPIFY_SECRET", SHOPIFY_SECRET),
                ("FAULTS_PUBLISH_TOKEN", PUBLISH_TOKEN),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            env.push(("SLUICE_INSTANCE_ID".into(), format!("faults-{name}")));
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
            Role {
                name,
                args: args.iter().map(|s| s.to_string()).collect(),
                env,
                admin: free_port(),
                log: dir.join(format!("{name}.log")),
                child: None,
                starts: 0,
            }
        };
        let mut roles = vec![
            role(
                "gateway",
                &["--config", &config, "gateway", "--topology", &file],
                &[("SLUICE_GATEWAY__LISTEN", format!("127.0.0.1:{port}"))],
            ),
            role("normalizer", &["normalize", "--topology", &file], &[]),
            role("sagas", &["saga", "run", "--topology", &file], &[]),
            role(
                "participants",
                &[
                    "saga",
                    "participant",
                    "--role",
                    "all",
                    "--topology",
                    &file,
                    "--effects-log",
                    &effects,
                    "--fail-rate",
                    "0.2",
                    "--seed",
                    "8",
                ],
                &[],
            ),
        ];
        for r in &mut roles {
            r.spawn();
        }
        let admins: Vec<(&'static str, u16)> = roles.iter().map(|r| (r.name, r.admin)).collect();
        let cluster = Self {
            prefix,
            topology: deployed,
            gateway: format!("http://127.0.0.1:{port}"),
            roles: Arc::new(Mutex::new(roles)),
            running: Arc::new(AtomicBool::new(true)),
            supervisor: None,
        };
        for (name, admin) in admins {
            let admin = format!("http://127.0.0.1:{admin}");
            wait_ready(&admin, name, || {}, || cluster.logs()).await;
        }
        cluster.supervise()
    }

    fn supervise(mut self) -> Self {
        let (roles, running) = (self.roles.clone(), self.running.clone());
        self.supervisor = Some(std::thread::spawn(move || {
            let mut down_since: BTreeMap<&'static str, Instant> = BTreeMap::new();
            while running.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                for r in roles.lock().unwrap().iter_mut() {
                    if !r.exited() {
                        continue;
                    }
                    let since = *down_since.entry(r.name).or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(1) && running.load(Ordering::SeqCst) {
                        r.spawn();
                        down_since.remove(r.name);
                    }
                }
            }
        }));
        self
    }

    /// SIGKILLs `name`; the supervisor starts it again a second later.
    fn kill(&self, name: &str) {
        let mut roles = self.roles.lock().unwrap();
        let role = roles.iter_mut().find(|r| r.name == name).unwrap();
        role.kill();
    }

    /// Restarts per role beyond the first start.
    fn restarts(&self) -> BTreeMap<&'static str, usize> {
        self.roles
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.name, r.starts - 1))
            .collect()
    }

    fn topic(&self, what: &str) -> String {
        format!("{}.{what}", self.prefix)
    }

    /// Each role's starts and the last 30 lines of its log that say more than "the broker is
    /// unreachable", so a failure report shows every role even when the output is cut short.
    fn logs(&self) -> String {
        let mut out = String::new();
        for r in self.roles.lock().unwrap().iter() {
            let log = std::fs::read_to_string(&r.log).unwrap_or_default();
            let noise = log.lines().filter(|l| is_connection_noise(l)).count();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !is_connection_noise(l))
                .rev()
                .take(30)
                .collect();
            let _ = writeln!(
                out,
                "--- {} (started {}×; {noise} connection errors left out; last 30 other lines) ---",
                r.name, r.starts
            );
            for l in tail.into_iter().rev() {
                let _ = writeln!(out, "{}", l.get(..400).unwrap_or(l));
            }
        }
        out
    }
}

/// The broker's reports of transaction markers it skipped for this deployment's partitions:
/// each leaves a transaction open on them (see `dev/stack`, docs/faults.md).
fn skipped_markers(prefix: &str) -> String {
    use std::io::{BufRead, BufReader, Seek, SeekFrom};
    let port = std::env::var("SLUICE_KAFKA_PORT").unwrap_or_else(|_| "9092".into());
    let cache = std::env::var("SLUICE_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/sluice",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let path = format!("{cache}/stack-{port}/broker.log");
    let Ok(mut file) = std::fs::File::open(&path) else {
        return format!("--- broker: no log at {path} ---");
    };
    // This test's minutes are at the end of a log that may hold months of them.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(256 << 20)));
    let skipped: Vec<String> = BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .filter(|l| l.contains(prefix) && l.contains("likely deleted already"))
        .collect();
    let mut out = format!(
        "--- broker: {} transaction marker(s) skipped ---\n",
        skipped.len()
    );
    for l in skipped.iter().take(10) {
        let _ = writeln!(out, "{}", l.get(..400).unwrap_or(l));
    }
    out
}

/// librdkafka's and the roles' repeated reports of a broker that is down or a write it did
/// not acknowledge: expected during a broker fault, and they would crowd out the rest.
fn is_connection_noise(line: &str) -> bool {
    [
        "librdkafka: FAIL",
        "Global error",
        "not acknowledged by Kafka",
        "consumer reported an error",
        "not found in cache",
    ]
    .iter()
    .any(|n| line.contains(n))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        if let Some(s) = self.supervisor.take() {
            let _ = s.join();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            eprintln!("{}", skipped_markers(&self.prefix));
        }
        for r in self.roles.lock().unwrap().iter_mut() {
            r.kill();
        }
        // A failed scenario leaves its topics for `sluice saga show` and friends.
        if !std::thread::panicking() {
            crate::support::remove_deployment(&self.topology);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load

/// What a delivery is, and so what must become of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Stripe `payment_intent.succeeded`: one PaymentSucceeded.
    Payment,
    /// Shopify `orders/create`: one OrderPlaced, which starts a saga.
    Order,
    /// A payment whose body changed after signing: 401 invalid_signature.
    Tampered,
    /// An accepted payment sent again, signed an hour ago: 401 timestamp_out_of_tolerance.
    Replayed,
    /// Twice the source's body limit: 413 body_too_large.
    Oversized,
    /// Signed, not JSON: accepted, then dead-lettered as InvalidJson.
    InvalidJson,
    /// Signed `customer.created`, which nothing maps: dead-lettered as UnmappedEventType.
    UnknownType,
    /// An OrderPlaced through the publish API that does not fit its schema: 422.
    IncompatiblePublish,
    /// A captured order sent again under a fresh webhook id: accepted, then recognised as a
    /// redelivery (its signed content was seen) and dropped.
    ReplayedOrder,
    /// A captured order body (financial_status `authorized`) sent as `orders/paid`:
    /// accepted, then dead-lettered as EventTypeMismatch; never an OrderPaid.
    ForgedPaid,
    /// A payment with no signature at all: 400 missing_signature.
    Unsigned,
    /// A signed payment whose copied headers would not fit a raw record: 431.
    HugeHeaders,
}

impl Kind {
    /// The final answer expected, and the dead-letter reason when it is accepted but cannot
    /// be normalized.
    fn expected(self) -> (u16, &'static str, Option<&'static str>) {
        match self {
            Kind::Payment | Kind::Order => (202, "", None),
            Kind::Tampered => (401, "invalid_signature", None),
            Kind::Replayed => (401, "timestamp_out_of_tolerance", None),
            Kind::Oversized => (413, "body_too_large", None),
            Kind::InvalidJson => (202, "", Some("InvalidJson")),
            Kind::UnknownType => (202, "", Some("UnmappedEventType")),
            Kind::IncompatiblePublish => (422, "schema_mismatch", None),
            Kind::ReplayedOrder => (202, "", None),
            Kind::ForgedPaid => (202, "", Some("EventTypeMismatch")),
            Kind::Unsigned => (400, "missing_signature", None),
            Kind::HugeHeaders => (431, "headers_too_large", None),
        }
    }

    /// Accepted, and rightly nothing comes of it: a redelivery of one already processed.
    fn is_redelivery(self) -> bool {
        self == Kind::ReplayedOrder
    }
}

/// The fixtures the load is built from.
struct Fixtures {
    payment: Vec<u8>,
    order: Json,
}

impl Fixtures {
    fn load() -> Self {
        Self {
            payment: fixture("stripe/payment_intent.succeeded.json"),
            order: serde_json::from_slice(&fixture("shopify/orders.create.json")).unwrap(),
        }
    }

    /// The `n`-th delivery of `kind`: path, headers, body. Signed now, so retries are fresh.
    fn request(&self, kind: Kind, n: usize) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
        let now = now_unix();
        let payment = || stripe_with_id(&self.payment, &format!("evt_f{n}"), &format!("pi_f{n}"));
        let stripe = |body: Vec<u8>, t: i64| {
            let headers = sign::stripe(STRIPE_SECRET, t, &body);
            ("/webhooks/stripe".to_string(), headers, body)
        };
        match kind {
            Kind::Payment => stripe(payment(), now),
            Kind::Replayed => stripe(payment(), now - 3600),
            Kind::Tampered => {
                let (path, headers, mut body) = stripe(payment(), now);
                body.push(b' ');
                (path, headers, body)
            }
            Kind::Oversized => {
                let mut v: Json = serde_json::from_slice(&payment()).unwrap();
                v["id"] = format!("evt_big{n}").into();
                v["data"]["object"]["description"] = "x".repeat(2 * MAX_BODY).into();
                stripe(serde_json::to_vec(&v).unwrap(), now)
            }
            Kind::InvalidJson => stripe(format!("<html>not json {n}</html>").into_bytes(), now),
            Kind::UnknownType => stripe(
                format!(r#"{{"id":"evt_unknown{n}","object":"event","type":"customer.created","created":{now},"data":{{"object":{{"id":"cus_{n}"}}}}}}"#)
                    .into_bytes(),
                now,
            ),
            Kind::Order => self.order(n, "orders/create", &format!("order-{n}")),
            Kind::ReplayedOrder => self.order(n, "orders/create", &format!("order-{n}-replayed")),
            Kind::ForgedPaid => self.order(n, "orders/paid", &format!("order-{n}-forged")),
            Kind::Unsigned => ("/webhooks/stripe".to_string(), Vec::new(), payment()),
            Kind::HugeHeaders => {
                let (path, mut headers, body) = stripe(payment(), now);
                headers.push(("user-agent", "x".repeat(20 * 1024)));
                (path, headers, body)
            }
            Kind::IncompatiblePublish => {
                let body = serde_json::json!({
                    "order_id": format!("bad-{n}"),
                    "total": {"amount": 12.5, "currency": "EUR"},
                    "unknown_field": true,
                });
                (
                    format!("/v1/events/{ORDER_PLACED}"),
                    vec![("authorization", format!("Bearer {PUBLISH_TOKEN}"))],
                    serde_json::to_vec(&body).unwrap(),
                )
            }
        }
    }
}

impl Fixtures {
    /// The `n`-th order's signed body, sent as `topic` under `webhook_id`.
    fn order(
        &self,
        n: usize,
        topic: &str,
        webhook_id: &str,
    ) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
        let mut v = self.order.clone();
        v["id"] = (order_id(n)).into();
        v["name"] = format!("#F{n}").into();
        let body = serde_json::to_vec(&v).unwrap();
        let headers = sign::shopify(SHOPIFY_SECRET, topic, webhook_id, &body);
        ("/webhooks/shopify".to_string(), headers, body)
    }
}

/// The Shopify order id (and so saga id) of the `n`-th order.
fn order_id(n: usize) -> u64 {
    7_000_000_000 + n as u64
}

/// One answer of the gateway (status 0: no answer, the connection failed).
#[derive(Debug, Clone)]
struct Answer {
    kind: Kind,
    n: usize,
    status: u16,
    code: String,
    delivery_id: Option<String>,
    sent: Instant,
    answered: Instant,
}

/// Sends `plan` (kind and number of each delivery) spread evenly over `over`, each delivery
/// retried on 503 or no answer, as a provider would; runs `fault` alongside. Returns every
/// answer, in the order they came.
async fn drive<F: std::future::Future<Output = ()>>(
    gateway: &str,
    plan: Vec<(Kind, usize)>,
    over: Duration,
    fault: F,
) -> Vec<Answer> {
    let fixtures = Arc::new(Fixtures::load());
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let gap = over / plan.len().max(1) as u32;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (kind, n)) in plan.into_iter().enumerate() {
        let (http, fixtures, answers) = (http.clone(), fixtures.clone(), answers.clone());
        let gateway = gateway.to_string();
        let at = started + gap * i as u32;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let give_up = Instant::now() + GIVE_UP;
            loop {
                let (path, headers, body) = fixtures.request(kind, n);
                let mut req = http.post(format!("{gateway}{path}")).body(body);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let sent = Instant::now();
                let (status, json) = match req.send().await {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.json::<Json>().await.unwrap_or_default(),
                    ),
                    Err(_) => (0, Json::Null),
                };
                answers.lock().unwrap().push(Answer {
                    kind,
                    n,
                    status,
                    code: json["error"]["code"].as_str().unwrap_or_default().into(),
                    delivery_id: json["delivery_id"].as_str().map(str::to_string),
                    sent,
                    answered: Instant::now(),
                });
                if !(status == 0 || status == 503) || Instant::now() > give_up {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    let ((), _) = tokio::join!(fault, futures::future::join_all(tasks));
    let answers = answers.lock().unwrap().clone();
    answers
}

/// `payments` Stripe payments and `orders` Shopify orders, interleaved; plus `bad` of each
/// bad kind spread between them.
fn plan(payments: usize, orders: usize, bad: usize) -> Vec<(Kind, usize)> {
    let mut plan: Vec<(Kind, usize)> = Vec::new();
    let total = payments + orders;
    let (mut p, mut o) = (0, 0);
    for i in 0..total {
        // Orders evenly among the payments.
        if o < orders && (i * orders) / total.max(1) >= o {
            plan.push((Kind::Order, o));
            o += 1;
        } else if p < payments {
            plan.push((Kind::Payment, p));
            p += 1;
        }
    }
    let bad_kinds = [
        Kind::Tampered,
        Kind::Replayed,
        Kind::Oversized,
        Kind::InvalidJson,
        Kind::UnknownType,
        Kind::IncompatiblePublish,
    ];
    if bad > 0 {
        let step = (plan.len() / (bad * bad_kinds.len())).max(1);
        let mut at = step / 2;
        for n in 0..bad {
            for kind in bad_kinds {
                // Replays repeat a payment sent earlier.
                let n = if kind == Kind::Replayed {
                    n % payments.max(1)
                } else {
                    n
                };
                plan.insert(at.min(plan.len()), (kind, n));
                at += step + 1;
            }
        }
    }
    plan
}

// ---------------------------------------------------------------------------------------------
// Accounting

#[derive(Debug, Default)]
struct Accounting {
    scenario: String,
    sent: usize,
    /// Distinct deliveries answered 2xx.
    accepted: usize,
    /// Final 4xx answers by status and code.
    rejected: BTreeMap<String, usize>,
    /// 503 answers (retried by the sender).
    unavailable: usize,
    /// Requests that got no answer (gateway killed; retried by the sender).
    no_answer: usize,
    /// Raw records beyond one per accepted delivery (a retry of a delivery whose answer was
    /// lost).
    raw_copies: usize,
    normalized: usize,
    dead: BTreeMap<String, usize>,
    /// Accepted deliveries dropped as redeliveries of one already processed.
    redeliveries: usize,
    duplicates: usize,
    /// Events of a type no accepted delivery claimed truthfully (an OrderPaid from a forged
    /// topic).
    forged: usize,
    /// Records that went through a retry tier (normalizer and orchestrator).
    retried: usize,
    sagas: BTreeMap<&'static str, usize>,
    fault: String,
    /// From the first delivery to the last answer, and to the end of the accounting.
    load_seconds: f64,
    seconds: f64,
}

impl Accounting {
    fn dead_total(&self) -> usize {
        self.dead.values().sum()
    }

    fn row(&self) -> String {
        let list = |m: &BTreeMap<String, usize>| {
            if m.is_empty() {
                "0".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let saga = |s: &str| self.sagas.get(s).copied().unwrap_or(0);
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{}/{} | {} | {} | {:.0} s ({:.0} s load) |",
            self.scenario,
            self.sent,
            self.accepted,
            list(&self.rejected),
            self.normalized,
            list(&self.dead),
            self.duplicates,
            self.retried,
            saga("completed"),
            saga("compensated"),
            saga("parked"),
            self.unavailable + self.no_answer,
            self.fault,
            self.seconds,
            self.load_seconds
        )
    }

    fn print(&self) {
        println!(
            "\n| scenario | sent | accepted | rejected | normalized | dead-lettered | duplicates | via retry tiers | sagas completed/compensated/parked | 503 or no answer (retried) | fault | time |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!("{}", self.row());
        println!(
            "  raw copies from retried deliveries: {}, 503: {}, no answer: {}, redeliveries dropped: {}, forged events: {}\n",
            self.raw_copies, self.unavailable, self.no_answer, self.redeliveries, self.forged
        );
    }
}

/// How many committed records `topic` holds: read to the end, since the offsets of a
/// transactional topic also count its commit markers.
async fn committed_records(topic: &str) -> usize {
    read_committed(topic, |_| ()).await.len()
}

/// `pick` of every committed record of `topic`, read from the start to the end.
async fn read_committed<T: Send + 'static>(
    topic: &str,
    pick: fn(&rdkafka::message::BorrowedMessage<'_>) -> T,
) -> Vec<T> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = clients()
            .consumer_config("e2e-faults", &format!("e2e-{}", uuid::Uuid::new_v4()))
            .unwrap()
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        let partitions = metadata.topics()[0].partitions().len();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let (mut records, mut at_end) = (Vec::new(), BTreeSet::new());
        let deadline = Instant::now() + Duration::from_secs(30);
        while at_end.len() < partitions {
            assert!(Instant::now() < deadline, "reading {topic} to its end");
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => records.push(pick(&m)),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        records
    })
    .await
    .unwrap()
}

/// The `sluice_delivery_id` of a raw record (its key is the content digest for providers
/// whose signature leaves the id out).
fn delivery_id_of(m: &rdkafka::message::BorrowedMessage<'_>) -> String {
    use rdkafka::message::{Headers, Message};
    m.headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == sluice_schemas::metadata::raw::DELIVERY_ID)
                .and_then(|h| h.value)
        })
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Reads a topic until `enough` or `timeout`, then two seconds more: anything late would
/// be a duplicate.
async fn read_all(
    topic: &str,
    timeout: Duration,
    enough: impl FnMut(&[Seen]) -> bool,
) -> Vec<Seen> {
    let r = reader(topic);
    let mut got = read_until(&r, timeout, enough).await;
    got.extend(read_until(&r, Duration::from_secs(2), |_| false).await);
    got
}

/// Waits for quiescence, reads every topic back and checks the accounting; returns it.
async fn account(
    cluster: &Cluster,
    scenario: &str,
    answers: &[Answer],
    fault: String,
    started: Instant,
    from_service: &[String],
) -> Accounting {
    let mut a = Accounting {
        scenario: scenario.into(),
        fault,
        load_seconds: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    // The final answer of every delivery.
    let mut last: BTreeMap<(Kind, usize), &Answer> = BTreeMap::new();
    for x in answers {
        match x.status {
            0 => a.no_answer += 1,
            503 => a.unavailable += 1,
            _ => {}
        }
        last.insert((x.kind, x.n), x);
    }
    a.sent = last.len();
    // Accepted deliveries by delivery id, with what must become of them.
    let mut accepted: BTreeMap<String, Kind> = BTreeMap::new();
    for ((kind, n), x) in &last {
        let (status, code, _) = kind.expected();
        assert_eq!(
            (x.status, x.code.as_str()),
            (status, code),
            "{kind:?} #{n}: final answer"
        );
        if (200..300).contains(&x.status) {
            let id = x
                .delivery_id
                .clone()
                .expect("an accepted delivery has an id");
            assert!(
                accepted.insert(id, *kind).is_none(),
                "two deliveries, one id"
            );
        } else {
            *a.rejected
                .entry(format!("{} {}", x.status, x.code))
                .or_default() += 1;
        }
    }
    a.accepted = accepted.len();

    // Raw topics: exactly the accepted deliveries (a lost answer may leave a second copy).
    let mut raw: BTreeMap<String, usize> = BTreeMap::new();
    for source in ["stripe", "shopify"] {
        for id in read_committed(&cluster.topic(&format!("raw.{source}")), delivery_id_of).await {
            *raw.entry(id).or_default() += 1;
        }
    }
    a.raw_copies = raw.values().map(|n| n - 1).sum();
    let raw_ids: BTreeSet<&String> = raw.keys().collect();
    let accepted_ids: BTreeSet<&String> = accepted.keys().collect();
    assert_eq!(
        raw_ids, accepted_ids,
        "the raw topics hold exactly the accepted deliveries"
    );

    // Normalized events and dead letters: together, exactly the accepted deliveries.
    let expected_dead: BTreeMap<String, &str> = accepted
        .iter()
        .filter_map(|(id, k)| k.expected().2.map(|r| (id.clone(), r)))
        .collect();
    a.redeliveries = accepted.values().filter(|k| k.is_redelivery()).count();
    let expected_events: BTreeMap<String, (&str, &str)> = accepted
        .iter()
        .filter(|(_, k)| k.expected().2.is_none() && !k.is_redelivery())
        .map(|(id, k)| {
            let source = if *k == Kind::Order {
                "shopify"
            } else {
                "stripe"
            };
            (event_id(source, id, 0), (id.as_str(), source))
        })
        .collect();
    let mut orders: Vec<String> = last
        .iter()
        .filter(|((k, _), x)| *k == Kind::Order && (200..300).contains(&x.status))
        .map(|((_, n), _)| order_id(*n).to_string())
        .collect();
    orders.extend(from_service.iter().cloned());
    let from_sources = |r: &Seen| {
        r.1.get("ce_source")
            .is_some_and(|s| s.starts_with(b"sluice://sources/"))
    };
    let ids = |g: &[Seen]| -> BTreeSet<String> {
        g.iter()
            .filter(|r| from_sources(r))
            .map(|r| String::from_utf8_lossy(&r.1["ce_id"]).into_owned())
            .collect()
    };
    let quiet = Duration::from_secs(180);
    let payments = read_all(&cluster.topic("events.payments"), quiet, |g| {
        ids(g).len() >= expected_events.values().filter(|v| v.1 == "stripe").count()
    })
    .await;
    let commerce = read_all(&cluster.topic("events.commerce"), quiet, |g| {
        ids(g).len() >= orders.len() - from_service.len()
    })
    .await;
    let normalized: Vec<&Seen> = payments
        .iter()
        .chain(&commerce)
        .filter(|r| from_sources(r))
        .collect();
    // Orders that came from neither the normalizer nor the backend service: the refused
    // publishes, had they got in.
    let published: Vec<&Seen> = commerce
        .iter()
        .filter(|r| r.1["ce_type"] == ORDER_PLACED.as_bytes() && !from_sources(r))
        .filter(|r| r.1.get("ce_source").map(Vec::as_slice) != Some(SERVICE.as_bytes()))
        .collect();
    assert!(
        published.is_empty(),
        "{} OrderPlaced from the publish API were produced",
        published.len()
    );
    a.forged = commerce
        .iter()
        .filter(|r| r.1["ce_type"] == ORDER_PAID.as_bytes())
        .count();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in &normalized {
        *by_id
            .entry(String::from_utf8_lossy(&r.1["ce_id"]).into_owned())
            .or_default() += 1;
    }
    a.normalized = by_id.len();
    a.duplicates = by_id.values().map(|n| n - 1).sum();
    let dead = read_all(
        &cluster.topic("dlq.normalizer"),
        Duration::from_secs(60),
        |g| g.len() >= expected_dead.len(),
    )
    .await;
    let mut dead_ids: BTreeMap<String, String> = BTreeMap::new();
    for (_, headers, _) in &dead {
        // The delivery id, not the record key: the key is the content digest for providers
        // whose signature leaves the id out.
        let key = String::from_utf8_lossy(&headers[sluice_schemas::metadata::raw::DELIVERY_ID])
            .into_owned();
        let reason = String::from_utf8_lossy(&headers["kafka_dlt-exception-fqcn"]).into_owned();
        *a.dead.entry(reason.clone()).or_default() += 1;
        assert!(
            dead_ids.insert(key.clone(), reason).is_none(),
            "{key} dead-lettered twice"
        );
    }
    a.retried = committed_records(&cluster.topic("retry.normalizer.1s")).await
        + committed_records(&cluster.topic("retry.sagas.2s")).await;

    // Sagas: every order's saga in exactly one terminal state.
    let mut lifecycle = Lifecycle::on(&cluster.topic("events.sagas"));
    let terminal = |events: &[String]| -> Vec<&'static str> {
        events
            .iter()
            .filter_map(|e| match e.as_str() {
                "SagaCompleted" => Some("completed"),
                "SagaCompensated" => Some("compensated"),
                "SagaFailed" => Some("parked"),
                _ => None,
            })
            .collect()
    };
    lifecycle
        .until(Duration::from_secs(180), |m| {
            orders
                .iter()
                .all(|id| m.get(id).is_some_and(|e| !terminal(e).is_empty()))
        })
        .await;
    lifecycle.until(Duration::from_secs(2), |_| false).await;
    let sagas = lifecycle.by_id();
    a.seconds = started.elapsed().as_secs_f64();
    let saga_dead = committed_records(&cluster.topic("dlq.sagas")).await
        + committed_records(&cluster.topic("dlq.saga-participants")).await;
    let mut started_sagas = 0;
    for id in &orders {
        let events = sagas.get(id).map(Vec::as_slice).unwrap_or_default();
        for t in terminal(events) {
            *a.sagas.entry(t).or_default() += 1;
        }
        started_sagas += events.iter().filter(|e| *e == "SagaStarted").count();
    }
    a.print();

    assert_eq!(
        by_id.keys().collect::<BTreeSet<_>>(),
        expected_events.keys().collect::<BTreeSet<_>>(),
        "every accepted good delivery normalized, nothing else"
    );
    assert_eq!(a.duplicates, 0, "no event id twice");
    assert_eq!(
        dead_ids
            .iter()
            .map(|(k, r)| (k.clone(), r.as_str()))
            .collect::<BTreeMap<_, _>>(),
        expected_dead,
        "exactly the unprocessable deliveries dead-lettered, each with its reason"
    );
    assert_eq!(
        a.accepted,
        a.normalized + a.dead_total() + a.redeliveries,
        "accepted = normalized + dead-lettered + redeliveries dropped"
    );
    assert_eq!(a.forged, 0, "no event from a forged event type");
    assert_eq!(saga_dead, 0, "no saga input or command dead-lettered");
    for id in &orders {
        let events = sagas.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(terminal(events).len(), 1, "saga {id} reached {events:?}");
    }
    // The participants never fail a compensation here, and every fault is shorter than the
    // compensation retry budget: a parked saga means a participant stopped answering.
    assert_eq!(a.sagas.get("parked"), None, "no saga parked");
    assert_eq!(started_sagas, orders.len(), "every saga started once");
    assert_eq!(sagas.len(), orders.len(), "no saga without its order");
    a
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Good load of this scale: payments and orders, spread over this long.
fn load() -> (usize, usize, Duration) {
    let s = scale();
    (60 * s, 30 * s, Duration::from_secs(6 + 2 * s as u64))
}

/// The roles that were restarted, and how often.
fn restarted(cluster: &Cluster) -> String {
    let r: Vec<String> = cluster
        .restarts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(role, n)| format!("{role} {n}×"))
        .collect();
    if r.is_empty() {
        "no role restarted".into()
    } else {
        format!("restarted: {}", r.join(", "))
    }
}

async fn blocking(command: &'static str) {
    tokio::task::spawn_blocking(move || stack(command))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kills and restarts the broker; run in the serial step (make test, make faults)"]
async fn broker_kill() {
    let cluster = Cluster::start("fbk").await;
    let _broker = StackGuard("broker-start");
    let (payments, orders, over) = load();
    let started = Instant::now();
    let window: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let fault = async {
        tokio::time::sleep(over / 3).await;
        blocking("broker-kill").await;
        let down = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        *window.lock().unwrap() = Some((down, Instant::now()));
        blocking("broker-start").await;
    };
    let answers = drive(&cluster.gateway, plan(payments, orders, 0), over, fault).await;
    let (down, up) = window.lock().unwrap().expect("the broker was killed");
    let during: Vec<&Answer> = answers
        .iter()
        .filter(|x| x.sent >= down && x.answered <= up)
        .collect();
    let ok_during = during
        .iter()
        .filter(|x| (200..300).contains(&x.status))
        .count();
    let unavailable = during.iter().filter(|x| x.status == 503).count();
    let fault = format!(
        "broker SIGKILL for {:.0} s: {} answers while down, {unavailable} × 503, {ok_during} × 2xx; {}",
        (up - down).as_secs_f64(),
        during.len(),
        restarted(&cluster)
    );
    let a = account(
        &cluster,
        "broker SIGKILL + restart",
        &answers,
        fault,
        started,
        &[],
    )
    .await;
    assert!(
        unavailable > 0,
        "deliveries were sent while the broker was down"
    );
    assert_eq!(ok_during, 0, "no 2xx while the broker was down");
    assert!(
        during.iter().all(|x| x.status == 503),
        "only 503 while the broker was down: {:?}",
        during.iter().map(|x| x.status).collect::<BTreeSet<_>>()
    );
    assert_eq!(a.sent, payments + orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "SIGKILLs every role; run in the serial step (make test, make faults)"]
async fn role_kills() {
    let cluster = Cluster::start("frk").await;
    let (payments, orders, over) = load();
    let started = Instant::now();
    let fault = async {
        for (at, role) in [
            (0.2, "gateway"),
            (0.35, "normalizer"),
            (0.5, "sagas"),
            (0.65, "participants"),
        ] {
            tokio::time::sleep_until((started + over.mul_f64(at)).into()).await;
            cluster.kill(role);
        }
    };
    let answers = drive(&cluster.gateway, plan(payments, orders, 0), over, fault).await;
    let restarts = cluster.restarts();
    let fault = format!("SIGKILL; {}", restarted(&cluster));
    let a = account(&cluster, "SIGKILL each role", &answers, fault, started, &[]).await;
    assert!(
        restarts.values().all(|n| *n >= 1),
        "every role was killed and restarted: {restarts:?}"
    );
    assert_eq!(a.sent, payments + orders);
}

/// A backend service that publishes OrderPlaced straight to the commerce topic, written with
/// a newer, compatible version of the schema (one more optional field) that it registered
/// under a subject of its own, as a service with its own subject naming does. The
/// orchestrator meets that schema id for the first time when such an order arrives, so it
/// must fetch the writer schema from the registry then.
struct CheckoutService {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    schema_id: u32,
    schema: apache_avro::Schema,
}

impl CheckoutService {
    async fn register(cluster: &Cluster) -> Self {
        let catalog = sluice_schemas::Catalog::embedded().unwrap();
        let mut json: Json =
            serde_json::from_str(&catalog.latest(ORDER_PLACED).unwrap().json).unwrap();
        json["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"name": "sales_channel", "type": ["null", "string"], "default": null}
            ));
        let text = json.to_string();
        let subject = format!("{}.checkout-{ORDER_PLACED}", cluster.prefix);
        let schema_id = sluice_schemas::RegistryClient::new(&registry())
            .unwrap()
            .register(&subject, &text)
            .await
            .unwrap();
        Self {
            producer: clients().producer("faults-checkout").unwrap(),
            topic: cluster.topic("events.commerce"),
            schema_id,
            schema: apache_avro::Schema::parse_str(&text).unwrap(),
        }
    }

    /// Publishes order `id` (keyed by it, Confluent framing, CloudEvents headers).
    async fn place(&self, id: &str) {
        let meta = sluice_schemas::metadata::EventMetadata::new(SERVICE, ORDER_PLACED);
        let order = serde_json::json!({
            "event_id": meta.id, "occurred_at": meta.time_ms, "source": SERVICE,
            "subject": id, "order_id": id, "order_number": format!("#{id}"),
            "total": {"amount": "10.0000", "currency": "EUR"},
            "line_items": [{"sku": "SKU-1", "title": "item", "quantity": 1,
                            "unit_price": {"amount": "10.0000", "currency": "EUR"}}],
            "provider": "checkout", "sales_channel": "web"
        });
        let value = sluice_schemas::json::from_json(&order, &self.schema)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let payload =
            sluice_schemas::codec::encode_with(self.schema_id, &self.schema, value).unwrap();
        send_event(&self.producer, &self.topic, id, &payload, &meta).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the schema registry; run in the serial step (make test, make faults)"]
async fn registry_outage() {
    let cluster = Cluster::start("fro").await;
    let _registry = StackGuard("registry-start");
    let (payments, orders, over) = load();
    let checkout = CheckoutService::register(&cluster).await;
    let from_service: Vec<String> = (0..10 * scale()).map(|i| format!("checkout-{i}")).collect();
    let started = Instant::now();
    let outage: Arc<Mutex<Duration>> = Arc::default();
    let fault = async {
        tokio::time::sleep(over / 3).await;
        blocking("registry-stop").await;
        let down = Instant::now();
        for role in ["normalizer", "participants"] {
            cluster.kill(role);
        }
        // The running orchestrator meets a schema id it has never seen: it cannot decode
        // these orders until the registry is back, so they go through its retry tiers.
        for id in &from_service {
            checkout.place(id).await;
        }
        tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
        blocking("registry-start").await;
        *outage.lock().unwrap() = down.elapsed();
    };
    let answers = drive(&cluster.gateway, plan(payments, orders, 0), over, fault).await;
    let fault = format!(
        "registry down {:.0} s; {} orders from a service in a schema new to the orchestrator; {}",
        outage.lock().unwrap().as_secs_f64(),
        from_service.len(),
        restarted(&cluster)
    );
    let a = account(
        &cluster,
        "registry outage",
        &answers,
        fault,
        started,
        &from_service,
    )
    .await;
    assert_eq!(a.sent, payments + orders);
    assert_eq!(a.accepted, payments + orders, "the gateway kept accepting");
    // Started during the outage, each role waited for the registry instead of exiting.
    let restarts = cluster.restarts();
    for role in ["normalizer", "participants"] {
        assert_eq!(
            restarts[role], 1,
            "{role} started once after its kill: {restarts:?}"
        );
    }
    assert_eq!(restarts["sagas"], 0, "the orchestrator kept running");
    // Every service order waited in the orchestrator's first retry tier, for the registry.
    let tier = read_all(
        &cluster.topic("retry.sagas.2s"),
        Duration::from_secs(10),
        |g| g.len() >= from_service.len(),
    )
    .await;
    let waited: BTreeSet<&str> = tier
        .iter()
        .filter(|r| {
            r.1.get("kafka_dlt-exception-fqcn").map(Vec::as_slice) == Some(b"RegistryUnavailable")
        })
        .map(|r| r.0.as_str())
        .collect();
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    for r in tier.iter().filter(|r| !from_service.contains(&r.0)) {
        let reason =
            r.1.get("kafka_dlt-exception-fqcn")
                .cloned()
                .unwrap_or_default();
        let message =
            r.1.get("kafka_dlt-exception-message")
                .cloned()
                .unwrap_or_default();
        *others
            .entry(format!(
                "{}: {}",
                String::from_utf8_lossy(&reason),
                String::from_utf8_lossy(&message)
            ))
            .or_default() += 1;
    }
    if !others.is_empty() {
        println!("other records in the orchestrator's first retry tier: {others:#?}");
    }
    for id in &from_service {
        assert!(
            waited.contains(id.as_str()),
            "order {id} went through the retry tier for the registry: {waited:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bad input at volume; run in the serial step (make test, make faults)"]
async fn bad_input() {
    let cluster = Cluster::start("fbi").await;
    let (payments, orders, over) = load();
    let bad = 10 * scale();
    let started = Instant::now();
    let answers = drive(
        &cluster.gateway,
        plan(payments, orders, bad),
        over,
        std::future::ready(()),
    )
    .await;
    let fault = format!("{bad} of each bad kind among the good deliveries");
    let a = account(&cluster, "bad input", &answers, fault, started, &[]).await;
    assert_eq!(a.sent, payments + orders + 6 * bad);
    assert_eq!(a.rejected.values().sum::<usize>(), 4 * bad);
    assert_eq!(a.dead_total(), 2 * bad);
}

#[tokio::test]
#[ignore = "hostile input at volume; run in the serial step (make test, make faults)"]
async fn hostile_input() {
    let cluster = Cluster::start("fhi").await;
    let (payments, orders, over) = load();
    let hostile = 10 * scale();
    let started = Instant::now();
    let mut answers = drive(
        &cluster.gateway,
        plan(payments, orders, 0),
        over,
        std::future::ready(()),
    )
    .await;
    // Then what a sender can do with the orders it captured, and requests it cannot sign.
    let kinds = [
        Kind::ReplayedOrder,
        Kind::ForgedPaid,
        Kind::Unsigned,
        Kind::HugeHeaders,
    ];
    let attack: Vec<(Kind, usize)> = (0..hostile)
        .flat_map(|n| kinds.map(|k| (k, n % orders)))
        .collect();
    answers.extend(
        drive(
            &cluster.gateway,
            attack,
            Duration::from_secs(2),
            std::future::ready(()),
        )
        .await,
    );
    let fault =
        format!("{hostile} of each: replayed order, forged orders/paid, unsigned, 20 KiB header");
    let a = account(&cluster, "hostile input", &answers, fault, started, &[]).await;
    assert_eq!(a.sent, payments + orders + kinds.len() * hostile);
    assert_eq!(a.rejected.values().sum::<usize>(), 2 * hostile);
    assert_eq!(a.redeliveries, hostile);
    assert_eq!(a.dead.get("EventTypeMismatch"), Some(&hostile));
}
