//! Demo traffic: `sluice demo …`, short demonstrations against the running stack, and the
//! deliveries `sluice run --demo` sends ([`traffic`]).
//!
//! Kept apart from the operator commands in `cli/`: everything here writes made-up input.

pub mod traffic;
pub mod webhooks;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::{create_topic_if_missing, KafkaClients};
use sluice_runtime::SluiceConfig;
use sluice_schemas::codec::{encode_with, ReaderSchema};
use sluice_schemas::json::{from_json, to_json_with_schema};
use sluice_schemas::metadata::EventMetadata;
use sluice_schemas::{AvroCodec, Catalog, RecordLocation, RegistryClient};

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Register a catalog schema, publish one Avro event and read it back through the registry.
    Roundtrip {
        #[arg(long, default_value = "sluice-demo.payments")]
        topic: String,
    },
    /// Send the demo deliveries (every provider, plus bad input) to a running gateway and
    /// summarise what the pipeline made of them.
    Traffic {
        /// Base URL of the gateway.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
        #[arg(long)]
        topology: Option<std::path::PathBuf>,
    },
}

const EVENT_TYPE: &str = "dev.sluice.events.payments.PaymentSucceeded";

pub async fn run(config: &SluiceConfig, cmd: DemoCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DemoCommand::Roundtrip { topic } => roundtrip(config, &topic).await,
        DemoCommand::Traffic { gateway, topology } => {
            let (_, topology) = crate::cli::load(config, topology)?;
            let summary = traffic::drive(config, &topology, &gateway).await?;
            summary.print("the /metrics of each sluice process", &topology);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn roundtrip(config: &SluiceConfig, topic: &str) -> anyhow::Result<ExitCode> {
    let clients = KafkaClients::new(config.kafka.clone());
    let admin = clients.admin()?;
    let created = create_topic_if_missing(&admin, topic, 3)
        .await
        .with_context(|| format!("creating topic {topic} on {}", clients.bootstrap_servers()))?;
    println!(
        "topic     {topic} ({})",
        if created { "created" } else { "exists" }
    );

    let catalog = Catalog::embedded()?;
    let entry = catalog.latest(EVENT_TYPE)?;
    let registry = RegistryClient::new(&config.registry)?;
    let subject = format!("{topic}-{EVENT_TYPE}");
    let schema_id = registry
        .register(&subject, &entry.json)
        .await
        .with_context(|| format!("registering {} under {subject}", entry.path))?;
    println!(
        "schema    {} v{} registered as subject {subject}, id {schema_id}",
        entry.full_name, entry.version
    );

    let mut meta = EventMetadata::new("sluice://demo", EVENT_TYPE);
    meta.subject = Some("pi_3MtwBwLkdIwHu7ix28a3tqPa".into());
    let event = serde_json::json!({
        "event_id": meta.id,
        "occurred_at": meta.time_ms,
        "source": meta.source,
        "subject": meta.subject,
        "payment_id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "customer_id": "cus_NffrFeUfNV2Hib",
        "amount": {"amount": "20.00", "currency": "USD"},
        "payment_method_type": "card",
        "provider": "stripe"
    });
    let value = from_json(&event, &entry.schema).map_err(|errors| {
        anyhow::anyhow!("demo event does not match {}: {errors:?}", entry.path)
    })?;
    let payload = encode_with(schema_id, &entry.schema, value)?;

    let producer = clients.producer("demo")?;
    let mut headers = OwnedHeaders::new();
    for (k, v) in meta.headers() {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let delivered = producer
        .send(
            FutureRecord::to(topic)
                .key("pi_3MtwBwLkdIwHu7ix28a3tqPa")
                .payload(&payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .context("producing the demo event")?;
    println!(
        "produced  {} bytes (magic 0x{:02x}, schema id {}) to {topic}/{}@{}",
        payload.len(),
        payload[0],
        u32::from_be_bytes(payload[1..5].try_into()?),
        delivered.partition,
        delivered.offset
    );

    let consumer: BaseConsumer = clients.consumer_config("demo", "sluice-demo")?.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, delivered.partition, Offset::Offset(delivered.offset))?;
    consumer.assign(&tpl)?;
    let (bytes, headers_json) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Some(msg) = consumer.poll(Duration::from_millis(500)) {
                let msg = msg?;
                let headers: serde_json::Map<String, serde_json::Value> = msg
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                                (h.key.to_string(), serde_json::Value::String(v.into_owned()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok((msg.payload().unwrap_or_default().to_vec(), headers));
            }
        }
        bail!("the event did not come back within 15 s")
    })
    .await??;

    let codec = AvroCodec::new(registry);
    let location = RecordLocation::new(topic, delivered.partition, delivered.offset);
    let reader = ReaderSchema::new(entry.schema.clone())?;
    let decoded = codec.decode_as(&bytes, &reader, &location).await?;
    let json = to_json_with_schema(&decoded.value, &entry.schema);
    println!(
        "consumed  {location} decoded with writer schema id {}",
        decoded.schema_id
    );
    println!("headers   {}", serde_json::Value::Object(headers_json));
    println!("value     {json}");
    if json["event_id"] != event["event_id"] || json["amount"]["amount"] != "20.0000" {
        bail!("the decoded event differs from the one published");
    }
    println!("roundtrip ok");
    Ok(ExitCode::SUCCESS)
}
