//! Shared set-up: the stack's addresses, a guard that fails loudly when the stack is down,
//! and helpers for unique topic names.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_runtime::config::{KafkaConfig, RegistryConfig};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;

pub const STACK_HINT: &str =
    "the sluice test stack is not running: run `make test` (it starts the stack), or `make stack` before `cargo test`";

/// The configuration the tests use: the local stack, overridable like any sluice process
/// (`SLUICE_KAFKA__BOOTSTRAP_SERVERS`, `SLUICE_REGISTRY__URL`).
pub fn config() -> SluiceConfig {
    SluiceConfig::load(None).expect("test config")
}

pub fn kafka() -> KafkaConfig {
    config().kafka
}

pub fn registry() -> RegistryConfig {
    config().registry
}

pub fn clients() -> KafkaClients {
    KafkaClients::new(kafka())
}

/// How long one set-up step (a probe, a CLI call, a DDL batch) may take before the test
/// fails naming it: a call that never answers must fail the test, not hang the suite.
pub const STEP_DEADLINE: Duration = Duration::from_secs(120);

/// Awaits `step`, panicking with `what` once [`STEP_DEADLINE`] has passed.
pub async fn bounded<T>(what: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP_DEADLINE, step)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP_DEADLINE:?}"))
}

/// An HTTP client whose every request gives up after 30 s.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// `GET url` with [`http`]'s deadline (`reqwest::get` has none).
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

/// Panics with [`STACK_HINT`] unless both the broker and the registry answer.
pub async fn require_stack() {
    let cfg = config();
    let bootstrap = cfg.kafka.bootstrap_servers.clone();
    let probe = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = KafkaClients::new(cfg.kafka)
            .base("e2e-probe")
            .expect("client config")
            .create()
            .expect("consumer");
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .is_ok()
    });
    let kafka_ok = bounded("the Kafka probe", probe).await.expect("probe task");
    assert!(
        kafka_ok,
        "Kafka at {bootstrap} does not answer: {STACK_HINT}"
    );
    let url = format!("{}/subjects", registry().url);
    let registry_ok = get(&url)
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    assert!(
        registry_ok,
        "the schema registry at {url} does not answer: {STACK_HINT}"
    );
}

/// A topic name no other test run uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("e2e.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// Runs the `sluice` binary with `args`, returning (success, stdout, stderr); killed and
/// reported as a panic after [`STEP_DEADLINE`].
pub fn sluice(args: &[&str]) -> (bool, String, String) {
    let out_file = temp_file("stdout", "");
    let err_file = out_file.with_file_name("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_file).expect("stdout file"))
        .stderr(std::fs::File::create(&err_file).expect("stderr file"))
        .spawn()
        .expect("run sluice");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for sluice") {
            break status;
        }
        if started.elapsed() > STEP_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`sluice {}` did not exit within {STEP_DEADLINE:?}:\n{}",
                args.join(" "),
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    (status.success(), read(&out_file), read(&err_file))
}

/// Runs `sluice` off the async runtime, for tests that are `#[tokio::test]`.
pub async fn sluice_async(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice(&refs)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A scratch file under the system temp dir, unique per call.
pub fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Starts a `dev/` Python stand-in (`dev/<script>` with `--port 0` and `args`) and returns
/// it with the base URL it prints (`listening on http://127.0.0.1:<port>`).
pub fn start_dev_server(script: &str, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let path = format!("{}/dev/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("python3")
        .arg(&path)
        .args(["--port", "0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 dev/{script}: {e}"));
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{script} said {line:?}"))
        .to_string();
    (child, base)
}

/// A metric's value summed over its labels, from `<admin>/metrics`.
pub async fn metric(admin: &str, name: &str) -> f64 {
    let text = get(format!("{admin}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `sluice` role process started by a test: its output in a log file, its admin server
/// on a free port; SIGKILLed when dropped (its log printed if the test is failing).
pub struct RoleProcess {
    pub child: Option<std::process::Child>,
    pub admin: String,
    pub log: std::path::PathBuf,
    pub name: String,
}

impl RoleProcess {
    /// Spawns `sluice <args>` with `env`, logging to `log` (stdout) and `log.err`.
    pub fn spawn(
        name: &str,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
        log: std::path::PathBuf,
    ) -> Self {
        let admin_port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .envs(env.iter().copied())
            .env("SLUICE_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            child: Some(child),
            admin: format!("http://127.0.0.1:{admin_port}"),
            log,
            name: name.to_string(),
        }
    }

    /// Waits until its admin server says ready; panics with its log if it exits first.
    pub async fn ready(&mut self) {
        let child = self.child.as_mut().unwrap();
        let (log, name) = (self.log.clone(), self.name.clone());
        let exited = || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{name} exited ({status}):\n{}", read_log(&log));
            }
        };
        wait_ready(&self.admin, &self.name, exited, || read_log(&self.log)).await;
    }

    /// A metric's value summed over its labels, from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(&self.admin, name).await
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, read_log(&self.log));
        }
    }
}

/// A process's log and its `.err` companion.
pub fn read_log(log: &std::path::Path) -> String {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    format!("{}{}", read(log), read(&log.with_extension("err")))
}

/// A `read_committed` consumer of a new group, assigned every partition of `topic` from the
/// beginning, with `settings` on top; and those partitions.
pub fn read_from_start(topic: &str, settings: &[(&str, &str)]) -> (BaseConsumer, Vec<i32>) {
    let mut config = clients()
        .consumer_config("e2e-read", &format!("e2e-{}", uuid::Uuid::new_v4()))
        .unwrap();
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    (consumer, partitions)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `len` consecutive loopback ports nobody listens on right now (`sluice run`
/// puts its child roles' admin servers on the ports after its own).
///
/// Ports come from below the kernel's ephemeral range (32768–60999 on Linux), so an outgoing
/// connection of some other process can never take one between this check and the bind;
/// they are handed out in turn, so a test never gets a port another test already has.
pub fn free_ports(len: u16) -> u16 {
    // Clear of the stack's own ports (9092, 8081, 15432, 19092, 18081, 25432, …).
    const FIRST: u16 = 26_000;
    const END: u16 = 32_700;
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Two test processes at once (two checkouts, say) start far apart.
    let mut base = next.unwrap_or(FIRST + (std::process::id() % 64) as u16 * 100);
    for _ in 0..(END - FIRST) {
        if base + len > END {
            base = FIRST;
        }
        let all_free =
            (base..base + len).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            *next = Some(base + len);
            return base;
        }
        base += 1;
    }
    panic!("no {len} free loopback ports between {FIRST} and {END}");
}

const STACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dev/stack");

/// Runs `dev/stack <command>` (e.g. `broker-kill`, `registry-start`) against the stack the
/// tests use (its ports come from the same environment); panics with its output on failure.
pub fn stack(command: &str) {
    let out = std::process::Command::new(STACK)
        .arg(command)
        .output()
        .expect("run dev/stack");
    assert!(
        out.status.success(),
        "dev/stack {command} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `dev/stack <command>` when dropped (`broker-start`, `registry-start`), so a test
/// that fails half-way does not leave the stack down.
pub struct StackGuard(pub &'static str);

impl Drop for StackGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(STACK).arg(self.0).status();
    }
}

/// The topology at `path`, loaded against the embedded catalog.
pub fn load_topology(path: &std::path::Path) -> sluice_topology::Topology {
    let catalog = sluice_schemas::Catalog::embedded().unwrap();
    let types = catalog.event_types().map(str::to_string).collect();
    sluice_topology::Topology::load(path, &types).unwrap()
}

/// The reference topology, `topology/topology.yaml`.
pub fn reference_topology() -> sluice_topology::Topology {
    load_topology(concat!(env!("CARGO_MANIFEST_DIR"), "/topology/topology.yaml").as_ref())
}

/// The status `<admin>/health/ready` answers (0 when nothing answers).
pub async fn ready_status(admin: &str) -> u16 {
    get(format!("{admin}/health/ready"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Polls `<admin>/health/ready` until it answers 200, running `check` before each poll (to
/// fail fast when the process died); after 90 s panics naming `what`, with `log()`.
pub async fn wait_ready(
    admin: &str,
    what: &str,
    mut check: impl FnMut(),
    log: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        check();
        if ready_status(admin).await == 200 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} not ready in 90 s:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes a test deployment's topics and its registry subjects. Call it when a test that
/// deploys a saga topology ends, passed or not: each registers about 30 subjects, and the
/// shared registry lists only its first 1000 subjects, which is all a publisher checks.
pub fn remove_deployment(topology: &sluice_topology::Topology) {
    let subjects: Vec<String> = topology
        .registrations()
        .into_iter()
        .map(|(topic, t)| topology.subjects.naming.subject(&topic, &t))
        .collect();
    let empty = temp_file("empty.yaml", &format!("prefix: {}\n", topology.prefix));
    let base = registry().url;
    let _ = std::thread::spawn(move || {
        let _ = sluice(&[
            "topology",
            "apply",
            "--allow-delete",
            "--topology",
            &empty.display().to_string(),
        ]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // Clean-up only: a registry that stops answering (one hung a whole CI run on a
            // kept-alive connection after a restart) costs a leftover subject, not the suite.
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client");
            for subject in subjects {
                for query in ["", "?permanent=true"] {
                    let _ = http
                        .delete(format!("{base}/subjects/{subject}{query}"))
                        .send()
                        .await;
                }
            }
        });
    })
    .join();
}

/// Produces one Avro event with `meta`'s CloudEvents headers, as any Confluent-framing
/// producer would, and waits for its acknowledgement; returns where it landed.
pub async fn send_event(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    meta: &sluice_schemas::metadata::EventMetadata,
) -> rdkafka::producer::future_producer::Delivery {
    use rdkafka::message::{Header, OwnedHeaders};
    let mut headers = OwnedHeaders::new();
    for (k, v) in meta.headers() {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap()
}

/// The stack's PostgreSQL as the tests reach it: `SLUICE_E2E_POSTGRES_DSN`, else the
/// `sluice` role and database of `dev/stack` on `SLUICE_POSTGRES_PORT` (15432).
pub fn postgres_dsn() -> String {
    std::env::var("SLUICE_E2E_POSTGRES_DSN").unwrap_or_else(|_| {
        let port = std::env::var("SLUICE_POSTGRES_PORT").unwrap_or_else(|_| "15432".into());
        format!("postgres://sluice:sluice@127.0.0.1:{port}/sluice")
    })
}

/// A connection to the stack's PostgreSQL; panics with [`STACK_HINT`] when it does not answer.
pub async fn require_postgres() -> tokio_postgres::Client {
    let dsn = postgres_dsn();
    let connected = bounded(
        "connecting to PostgreSQL",
        tokio_postgres::connect(&dsn, tokio_postgres::NoTls),
    )
    .await;
    let (client, connection) = connected.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {} does not answer ({e}): {STACK_HINT}",
            dsn.rsplit('@').next().unwrap_or_default()
        )
    });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Sets `max.message.bytes` of `topic` on the cluster behind the topology's back, as an
/// operator might.
pub async fn shrink_topic_limit(topic: &str, bytes: &str) {
    let admin = clients().admin().unwrap();
    let change = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(topic))
        .set("max.message.bytes", bytes);
    let results = admin
        .alter_configs(&[change], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    for r in results {
        r.unwrap_or_else(|e| panic!("altering {topic}: {e:?}"));
    }
}
