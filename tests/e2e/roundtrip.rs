//! An Avro event through the real registry and broker: registered, encoded in the Confluent
//! wire format, produced, consumed and decoded back.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use sluice_runtime::kafka::create_topic_if_missing;
use sluice_schemas::codec::{encode_with, CodecError, ReaderSchema};
use sluice_schemas::json::{from_json, to_json_with_schema};
use sluice_schemas::metadata::EventMetadata;
use sluice_schemas::{AvroCodec, Catalog, RecordLocation, RegistryClient};

use crate::support::{clients, registry, require_stack, send_event, unique_topic};

const PAYMENT: &str = "dev.sluice.events.payments.PaymentSucceeded";

#[tokio::test]
async fn avro_event_round_trips_through_registry_and_broker() {
    require_stack().await;
    let topic = unique_topic("roundtrip");
    let clients = clients();
    create_topic_if_missing(&clients.admin().unwrap(), &topic, 3)
        .await
        .unwrap();

    let catalog = Catalog::embedded().unwrap();
    let entry = catalog.latest(PAYMENT).unwrap();
    let registry = RegistryClient::new(&registry()).unwrap();
    let subject = format!("{topic}-{PAYMENT}");
    let id = registry.register(&subject, &entry.json).await.unwrap();
    // Registering the same schema again is idempotent and returns the same id.
    assert_eq!(registry.register(&subject, &entry.json).await.unwrap(), id);

    let meta = EventMetadata::new("sluice://e2e", PAYMENT);
    let event = serde_json::json!({
        "event_id": meta.id, "occurred_at": meta.time_ms, "source": meta.source,
        "payment_id": "pi_e2e", "amount": {"amount": "1999.99", "currency": "JPY"},
        "provider": "stripe", "statement_descriptor": "SLUICE*E2E"
    });
    let payload =
        encode_with(id, &entry.schema, from_json(&event, &entry.schema).unwrap()).unwrap();
    assert_eq!(payload[0], 0, "Confluent magic byte");
    assert_eq!(u32::from_be_bytes(payload[1..5].try_into().unwrap()), id);

    let producer = clients.producer("e2e").unwrap();
    let delivered = send_event(&producer, &topic, "pi_e2e", &payload, &meta).await;

    let consumer: StreamConsumer = clients
        .consumer_config("e2e", &format!("{topic}-group"))
        .unwrap()
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the record comes back within 30 s")
        .unwrap();
    assert_eq!(
        (msg.partition(), msg.offset()),
        (delivered.partition, delivered.offset)
    );
    assert_eq!(msg.payload().unwrap(), payload.as_slice());
    let got = EventMetadata::from_headers(
        msg.headers()
            .unwrap()
            .iter()
            .map(|h| (h.key, h.value.unwrap_or_default())),
    )
    .expect("CloudEvents headers present");
    assert_eq!(got, meta);

    let codec = AvroCodec::new(registry);
    let location = RecordLocation::new(&topic, msg.partition(), msg.offset());
    let decoded = codec
        .decode_as(
            msg.payload().unwrap(),
            &ReaderSchema::new(entry.schema.clone()).unwrap(),
            &location,
        )
        .await
        .unwrap();
    assert_eq!(decoded.schema_id, id);
    let json = to_json_with_schema(&decoded.value, &entry.schema);
    assert_eq!(json["event_id"], event["event_id"]);
    assert_eq!(json["amount"]["amount"], "1999.9900");
    assert_eq!(json["amount"]["currency"], "JPY");
    assert_eq!(json["statement_descriptor"], "SLUICE*E2E");

    // A second decode is served from the cache: one schema fetched, whatever the count.
    for _ in 0..10 {
        codec
            .decode(msg.payload().unwrap(), &location)
            .await
            .unwrap();
    }
    assert_eq!(codec.cached_schemas(), 1);
}

#[tokio::test]
async fn reader_on_v1_decodes_data_written_with_v2() {
    require_stack().await;
    let topic = unique_topic("evolution");
    let catalog = Catalog::embedded().unwrap();
    let versions = catalog.versions(PAYMENT).unwrap();
    let (v1, v2) = (&versions[0], &versions[1]);
    let registry = RegistryClient::new(&registry()).unwrap();
    let subject = format!("{topic}-{PAYMENT}");
    let id1 = registry.register(&subject, &v1.json).await.unwrap();
    let id2 = registry.register(&subject, &v2.json).await.unwrap();
    assert_ne!(id1, id2);

    let codec = AvroCodec::new(registry);
    let base = serde_json::json!({
        "event_id": "e-1", "occurred_at": 1, "source": "s", "payment_id": "pi",
        "amount": {"amount": "-0.01", "currency": "EUR"}, "provider": "stripe"
    });
    let mut with_descriptor = base.clone();
    with_descriptor["statement_descriptor"] = "ACME".into();
    let new_bytes = encode_with(
        id2,
        &v2.schema,
        from_json(&with_descriptor, &v2.schema).unwrap(),
    )
    .unwrap();
    let old_bytes = encode_with(id1, &v1.schema, from_json(&base, &v1.schema).unwrap()).unwrap();
    let at = RecordLocation::default();

    // Forward: an old reader drops the new field.
    let as_v1 = codec
        .decode_as(
            &new_bytes,
            &ReaderSchema::new(v1.schema.clone()).unwrap(),
            &at,
        )
        .await
        .unwrap();
    let json = to_json_with_schema(&as_v1.value, &v1.schema);
    assert_eq!(json["amount"]["amount"], "-0.0100");
    assert!(json.get("statement_descriptor").is_none());
    // Backward: a new reader fills the default.
    let as_v2 = codec
        .decode_as(
            &old_bytes,
            &ReaderSchema::new(v2.schema.clone()).unwrap(),
            &at,
        )
        .await
        .unwrap();
    assert_eq!(
        to_json_with_schema(&as_v2.value, &v2.schema)["statement_descriptor"],
        serde_json::Value::Null
    );
    assert_eq!(as_v2.schema_id, id1);
}

#[tokio::test]
async fn undecodable_payloads_give_typed_errors_with_their_location() {
    require_stack().await;
    let codec = AvroCodec::new(RegistryClient::new(&registry()).unwrap());
    let at = RecordLocation::new("orders", 1, 42);
    let unknown = codec
        .decode(&[0, 0x7f, 0xff, 0xff, 0xf0, 2], &at)
        .await
        .unwrap_err();
    assert!(
        matches!(
            unknown,
            CodecError::UnknownSchemaId {
                id: 0x7fff_fff0,
                ..
            }
        ),
        "{unknown}"
    );
    assert!(unknown.to_string().contains("orders/1@42"), "{unknown}");
    assert!(
        !unknown.is_transient(),
        "a 404 from the registry is not worth retrying"
    );
    assert!(matches!(
        codec.decode(&[0, 0], &at).await,
        Err(CodecError::Truncated { .. })
    ));
    assert!(matches!(
        codec.decode(b"{\"json\":1}", &at).await,
        Err(CodecError::WrongMagicByte { byte: b'{', .. })
    ));
}
