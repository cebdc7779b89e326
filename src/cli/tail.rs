//! `sluice tail TOPIC`: one JSON line per record, decoded through the registry.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Map, Value};
use sluice_runtime::kafka::{KafkaClients, ReadToEnd};
use sluice_runtime::SluiceConfig;
use sluice_schemas::json::to_json_with_schema;
use sluice_schemas::{AvroCodec, RecordLocation, RegistryClient};

#[derive(Debug, Args)]
pub struct TailArgs {
    pub topic: String,
    /// Start at the earliest offset instead of the end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Start at this offset (with --partition).
    #[arg(long, requires = "partition")]
    pub offset: Option<i64>,
}

pub async fn run(config: &SluiceConfig, args: TailArgs) -> anyhow::Result<ExitCode> {
    let clients = KafkaClients::new(config.kafka.clone());
    let consumer: StreamConsumer<ReadToEnd> = clients
        .consumer_config("tail", "sluice-tail")?
        .set("enable.partition.eof", "true")
        .create_with_context(ReadToEnd)?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let topic_md = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| anyhow::anyhow!("topic `{}` does not exist", args.topic))?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) if topic_md.partitions().iter().any(|x| x.id() == p) => vec![p],
        Some(p) => anyhow::bail!("topic `{}` has no partition {p}", args.topic),
        None => topic_md.partitions().iter().map(|p| p.id()).collect(),
    };
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0usize;
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(&args.topic, p, Duration::from_secs(10))?;
        let start = match args.offset {
            Some(o) => o.clamp(low, high),
            None if args.from_beginning => low,
            None => high,
        };
        tpl.add_partition_offset(&args.topic, p, Offset::Offset(start))?;
        remaining += 1;
    }
    consumer.assign(&tpl)?;

    let codec = AvroCodec::new(RegistryClient::new(&config.registry)?);
    let mut printed = 0u64;
    let mut stream = consumer.stream();
    while let Some(item) = stream.next().await {
        let msg = match item {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => {
                if !args.follow {
                    remaining = remaining.saturating_sub(1);
                    if remaining == 0 {
                        break;
                    }
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let location = RecordLocation::new(msg.topic(), msg.partition(), msg.offset());
        let mut line = Map::new();
        line.insert("topic".into(), json!(msg.topic()));
        line.insert("partition".into(), json!(msg.partition()));
        line.insert("offset".into(), json!(msg.offset()));
        line.insert("timestamp".into(), json!(msg.timestamp().to_millis()));
        line.insert(
            "key".into(),
            msg.key()
                .map_or(Value::Null, |k| json!(String::from_utf8_lossy(k))),
        );
        let headers: Map<String, Value> = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            json!(String::from_utf8_lossy(h.value.unwrap_or_default())),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        line.insert("headers".into(), Value::Object(headers));
        match msg.payload() {
            None => {
                line.insert("value".into(), Value::Null);
            }
            Some(payload) => match codec.decode(payload, &location).await {
                Ok(decoded) => {
                    let writer = codec.writer_schema(decoded.schema_id, &location).await?;
                    line.insert("schema_id".into(), json!(decoded.schema_id));
                    line.insert("value".into(), to_json_with_schema(&decoded.value, &writer));
                }
                Err(e) => {
                    line.insert("error".into(), json!(e.to_string()));
                }
            },
        }
        // serde_json escapes C0 controls but not C1 ones: those too, before a terminal
        // reads them as escape sequences.
        println!("{}", super::printable::json(&Value::Object(line), false));
        printed += 1;
        if args.max.is_some_and(|m| printed >= m) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
