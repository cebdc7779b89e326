//! Kafka client builders with sluice's defaults.
//!
//! Producers are idempotent with `acks=all` so an acknowledged write survives a broker
//! failover; consumers never auto-commit, because every sluice loop commits offsets itself
//! (inside a transaction or after its outputs are acknowledged).

pub mod api_versions;
mod transaction;

pub use transaction::{
    abort_transaction, commit_transaction, drained, resume_while_retriable, Reports,
    RESUME_ATTEMPTS,
};

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use crate::config::{ConfigError, KafkaConfig};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the Kafka {role} client for {bootstrap}: {source}")]
    Create {
        role: &'static str,
        bootstrap: String,
        source: KafkaError,
    },
}

/// The producers' `message.max.bytes` unless configured. librdkafka's own default (1,000,000)
/// is below Kafka's default topic limit, so a record the topic would take was refused by the
/// client; sluice raises it so that each topic's `max.message.bytes` is the limit that counts
/// (the topology declares those, checked against the sources' body limits).
pub const DEFAULT_MESSAGE_MAX_BYTES: u64 = 32 * 1024 * 1024;

/// The consumers' read-ahead unless `kafka.properties` sets it. librdkafka checks its queue
/// limit only before a fetch and bounds a fetch by *compressed* bytes, while every queued
/// record keeps its whole decompressed producer batch (up to 1 MB) alive; with its defaults
/// (1 MiB per partition, 64 MiB queue) a normalizer restarted on a backlog held hundreds of
/// MiB. Small fetches alone slowed the loops fourfold because a partition whose queue is full
/// waited `fetch.queue.backoff.ms` (1 s by default) before its next fetch; 20 ms keeps the
/// throughput (docs/benchmarks.md, "Memory bounded by configuration").
pub const FETCH_BOUNDS: [(&str, &str); 3] = [
    ("max.partition.fetch.bytes", "8192"),
    ("queued.max.messages.kbytes", "8192"),
    ("fetch.queue.backoff.ms", "20"),
];

/// Builds librdkafka configurations from [`KafkaConfig`].
#[derive(Debug, Clone)]
pub struct KafkaClients {
    config: KafkaConfig,
}

impl KafkaClients {
    pub fn new(config: KafkaConfig) -> Self {
        Self { config }
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.config.bootstrap_servers
    }

    /// Common settings: bootstrap, client id, then the user's pass-through properties,
    /// which may override anything set here.
    pub fn base(&self, role: &str) -> Result<ClientConfig, ConfigError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.bootstrap_servers)
            .set("client.id", format!("{}-{role}", self.config.client_id))
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &self.config.properties {
            c.set(k, v);
        }
        for (k, secret) in &self.config.secret_properties {
            c.set(k, secret.resolve()?);
        }
        Ok(c)
    }

    /// Idempotent producer, `acks=all`, zstd batches.
    pub fn producer_config(&self, role: &str) -> Result<ClientConfig, ConfigError> {
        let mut c = self.base(role)?;
        // Static group membership is a consumer setting that may sit in the shared
        // properties; librdkafka warns when a producer is given it.
        c.remove("group.instance.id");
        set_default(&mut c, "enable.idempotence", "true");
        set_default(&mut c, "acks", "all");
        set_default(&mut c, "compression.type", "zstd");
        set_default(&mut c, "linger.ms", "5");
        set_default(
            &mut c,
            "message.max.bytes",
            &DEFAULT_MESSAGE_MAX_BYTES.to_string(),
        );
        Ok(c)
    }

    /// The largest record sluice's producers send (`message.max.bytes`): the configured
    /// value, else [`DEFAULT_MESSAGE_MAX_BYTES`].
    pub fn producer_max_message_bytes(&self) -> u64 {
        self.config
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    /// Transactional producer for exactly-once loops; `transactional_id` must be stable per
    /// input partition set so a restarted instance fences its zombie predecessor.
    pub fn transactional_producer_config(
        &self,
        role: &str,
        transactional_id: &str,
    ) -> Result<ClientConfig, ConfigError> {
        let mut c = self.producer_config(role)?;
        c.set(
            "transactional.id",
            format!("{}-{transactional_id}", self.config.client_id),
        );
        set_default(&mut c, "transaction.timeout.ms", "60000");
        Ok(c)
    }

    /// Transactional producer for a consume-transform-produce loop: as
    /// [`Self::transactional_producer_config`], with `linger.ms` 0 unless the properties set
    /// it. A loop waits for every output's acknowledgement before it commits, so lingering
    /// only delays each hop; outputs enqueued while a request is in flight still batch.
    pub fn loop_producer_config(
        &self,
        role: &str,
        transactional_id: &str,
    ) -> Result<ClientConfig, ConfigError> {
        let mut c = self.transactional_producer_config(role, transactional_id)?;
        if !self.config.properties.contains_key("linger.ms") {
            c.set("linger.ms", "0");
        }
        Ok(c)
    }

    /// Consumer with manual offset management and `read_committed` isolation, so it never
    /// sees the outputs of aborted transactions, and a read-ahead bounded in memory (see
    /// [`FETCH_BOUNDS`]).
    pub fn consumer_config(&self, role: &str, group_id: &str) -> Result<ClientConfig, ConfigError> {
        let mut c = self.base(role)?;
        c.set("group.id", group_id);
        for (key, value) in FETCH_BOUNDS {
            set_default(&mut c, key, value);
        }
        // librdkafka refuses a `fetch.max.bytes` below `message.max.bytes`, and sizes it
        // itself from that when left unset.
        if c.get("message.max.bytes").is_none() {
            set_default(&mut c, "fetch.max.bytes", "1048576");
        }
        set_default(&mut c, "enable.auto.commit", "false");
        set_default(&mut c, "enable.auto.offset.store", "false");
        set_default(&mut c, "auto.offset.reset", "earliest");
        set_default(&mut c, "isolation.level", "read_committed");
        set_default(
            &mut c,
            "partition.assignment.strategy",
            "cooperative-sticky",
        );
        Ok(c)
    }

    pub fn producer(&self, role: &'static str) -> Result<FutureProducer, ClientError> {
        self.producer_config(role)?
            .create()
            .map_err(|source| self.create_error(role, source))
    }

    pub fn consumer<C: ConsumerContext + 'static>(
        &self,
        role: &'static str,
        group_id: &str,
        context: C,
    ) -> Result<StreamConsumer<C>, ClientError> {
        self.consumer_config(role, group_id)?
            .create_with_context(context)
            .map_err(|source| self.create_error(role, source))
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, ClientError> {
        self.base("admin")?
            .create()
            .map_err(|source| self.create_error("admin", source))
    }

    fn create_error(&self, role: &'static str, source: KafkaError) -> ClientError {
        ClientError::Create {
            role,
            bootstrap: self.config.bootstrap_servers.clone(),
            source,
        }
    }
}

/// Client context for consumers that read to the end of a partition on purpose
/// (`enable.partition.eof`): reaching the end is how they know to stop, not an error to log.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadToEnd;

impl rdkafka::client::ClientContext for ReadToEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        // An end of partition reaches this callback too (as a global error) when it arrives
        // after the reader stopped polling, e.g. while the client closes.
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for ReadToEnd {}

impl KafkaClients {
    /// A consumer that reads partitions to their end and stops there, without logging each
    /// end of partition as an error.
    pub fn read_to_end_consumer(
        &self,
        role: &'static str,
        group_id: &str,
    ) -> Result<rdkafka::consumer::BaseConsumer<ReadToEnd>, ClientError> {
        let mut c = self.consumer_config(role, group_id)?;
        c.set("enable.partition.eof", "true");
        c.create_with_context(ReadToEnd)
            .map_err(|source| self.create_error(role, source))
    }
}

/// A transactional producer could not be made ready.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct FenceError {
    pub what: &'static str,
    #[source]
    pub source: KafkaError,
}

impl KafkaClients {
    /// A transactional producer with its transactions initialised (any earlier producer with
    /// the same transactional id is fenced, and its open transaction aborted), with a loop's
    /// `linger.ms` 0 ([`Self::loop_producer_config`]): for a writer that sends a whole batch
    /// at once and then waits for its acknowledgements, the poller's pages (14–37% more
    /// items/s with one page per transaction) and the outbox relay's batches (commit to
    /// readable p50 about 11 → 6 ms), docs/benchmarks.md.
    pub async fn fenced_loop_producer(
        &self,
        role: &str,
        transactional_id: &str,
    ) -> Result<FutureProducer, FenceError> {
        let fail = |what| move |source| FenceError { what, source };
        let producer: FutureProducer = self
            .loop_producer_config(role, transactional_id)
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))
            .map_err(fail("configuring the transactional producer"))?
            .create()
            .map_err(fail("creating the transactional producer"))?;
        let init = producer.clone();
        blocking(move || {
            rdkafka::producer::Producer::init_transactions(
                &init,
                std::time::Duration::from_secs(30),
            )
        })
        .await
        .map_err(fail(
            "initialising transactions (fencing the previous owner)",
        ))?;
        Ok(producer)
    }
}

/// Runs a blocking librdkafka call (transactions, metadata) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// Creates `topic` unless it exists. Topology apply is the real path for declared topics;
/// this is for tools and tests that need a scratch topic.
pub async fn create_topic_if_missing(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
) -> Result<bool, KafkaError> {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let results = admin.create_topics([&new], &opts).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
        None => Ok(false),
    }
}

/// Sets `key` to `value` unless the configuration already has it (from `kafka.properties`, or
/// set before): the way sluice's defaults leave the operator's settings in force.
pub fn set_default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_producer_does_not_linger_unless_told_to() {
        let clients = KafkaClients::new(KafkaConfig::default());
        let c = clients.loop_producer_config("l", "t").unwrap();
        assert_eq!(c.get("linger.ms"), Some("0"));
        assert_eq!(
            clients
                .transactional_producer_config("l", "t")
                .unwrap()
                .get("linger.ms"),
            Some("5")
        );
        let mut cfg = KafkaConfig::default();
        cfg.properties.insert("linger.ms".into(), "20".into());
        let c = KafkaClients::new(cfg)
            .loop_producer_config("l", "t")
            .unwrap();
        assert_eq!(c.get("linger.ms"), Some("20"));
    }

    #[test]
    fn producer_defaults_are_durable_and_user_properties_win() {
        let mut cfg = KafkaConfig::default();
        cfg.properties.insert("linger.ms".into(), "50".into());
        let clients = KafkaClients::new(cfg);
        let p = clients.producer_config("gateway").unwrap();
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("linger.ms"), Some("50"));
        assert_eq!(p.get("client.id"), Some("sluice-gateway"));
        let t = clients
            .transactional_producer_config("norm", "norm-0")
            .unwrap();
        assert_eq!(t.get("transactional.id"), Some("sluice-norm-0"));
        let c = clients.consumer_config("norm", "g").unwrap();
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
    }

    #[test]
    fn consumers_read_ahead_a_bounded_amount_unless_told_otherwise() {
        let c = KafkaClients::new(KafkaConfig::default())
            .consumer_config("norm", "g")
            .unwrap();
        assert_eq!(c.get("max.partition.fetch.bytes"), Some("8192"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("8192"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("20"));
        assert_eq!(c.get("fetch.max.bytes"), Some("1048576"));
        c.create::<rdkafka::consumer::BaseConsumer>()
            .expect("librdkafka takes the bounds");

        let mut cfg = KafkaConfig::default();
        cfg.properties
            .insert("queued.max.messages.kbytes".into(), "65536".into());
        cfg.properties
            .insert("message.max.bytes".into(), "33554432".into());
        let c = KafkaClients::new(cfg).consumer_config("norm", "g").unwrap();
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("65536"));
        assert_eq!(c.get("fetch.max.bytes"), None, "librdkafka sizes it");
        c.create::<rdkafka::consumer::BaseConsumer>()
            .expect("a larger message.max.bytes is still a valid consumer");
    }
}
