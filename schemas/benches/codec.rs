//! Codec throughput against apache-avro alone, measured in the same run.
//!
//! `cargo bench -p sluice-schemas --bench codec`
//!
//! The event is a typical normalized event (PaymentSucceeded). "decode" reads it with the
//! version it was written with; "decode_resolve" resolves data written with v1 into v2, as a
//! consumer on the newer version does. The baseline does the same work with apache-avro's datum reader and writer; the
//! codec adds the wire-format header, the schema-id cache and decimal widening.
//! At the end the bench prints per-core rates and the codec/baseline ratios.

use std::hint::black_box;
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use criterion::{Criterion, Throughput};
use sluice_runtime::config::RegistryConfig;
use sluice_schemas::codec::{encode_with, ReaderSchema, SchemaWriter};
use sluice_schemas::json::from_json;
use sluice_schemas::{AvroCodec, Catalog, RecordLocation, RegistryClient};

const EVENT: &str = "dev.sluice.events.payments.PaymentSucceeded";

fn event() -> serde_json::Value {
    serde_json::json!({
        "event_id": "01a205a8-99b2-7282-a42e-7cd6ceb4bbe3",
        "occurred_at": 1_795_391_265_202i64,
        "source": "sluice://sources/stripe",
        "subject": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "payment_id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "customer_id": "cus_NffrFeUfNV2Hib",
        "amount": {"amount": "2000.00", "currency": "USD"},
        "payment_method_type": "card",
        "description": "Order 1042",
        "provider": "stripe"
    })
}

fn main() {
    let catalog = Catalog::embedded().unwrap();
    let versions = catalog.versions(EVENT).unwrap();
    let (v1, v2) = (versions[0].schema.clone(), versions[1].schema.clone());
    let value: Value = from_json(&event(), &v1).unwrap();
    let raw_bytes = GenericDatumWriter::builder(&v1)
        .build()
        .unwrap()
        .write_value_to_vec(value.clone())
        .unwrap();
    let codec = AvroCodec::new(RegistryClient::new(&RegistryConfig::default()).unwrap());
    codec.preload(7, v1.clone()).unwrap();
    let reader = ReaderSchema::new(v2.clone()).unwrap();
    let wire = encode_with(7, &v1, value.clone()).unwrap();
    let at = RecordLocation::default();

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("encode");
        g.throughput(Throughput::Elements(1));
        g.bench_function("apache_avro", |b| {
            b.iter(|| {
                GenericDatumWriter::builder(&v1)
                    .build()
                    .unwrap()
                    .write_value_to_vec(black_box(value.clone()))
                    .unwrap()
            })
        });
        // The codec's hot path: a writer built once per registered schema.
        let writer = SchemaWriter::new(7, v1.clone()).unwrap();
        g.bench_function("sluice_codec", |b| {
            b.iter(|| writer.encode(black_box(value.clone())).unwrap())
        });
        g.finish();
    }
    {
        // Same version on both sides: no resolution needed.
        let same = ReaderSchema::new(v1.clone()).unwrap();
        let mut g = c.benchmark_group("decode");
        g.throughput(Throughput::Elements(1));
        g.bench_function("apache_avro", |b| {
            b.iter(|| {
                let mut body = black_box(raw_bytes.as_slice());
                GenericDatumReader::builder(&v1)
                    .build()
                    .unwrap()
                    .read_value(&mut body)
                    .unwrap()
            })
        });
        g.bench_function("sluice_codec", |b| {
            b.iter(|| {
                codec
                    .decode_cached(black_box(&wire), Some(&same), &at)
                    .unwrap()
                    .unwrap()
            })
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("decode_resolve");
        g.throughput(Throughput::Elements(1));
        g.bench_function("apache_avro", |b| {
            b.iter(|| {
                let mut body = black_box(raw_bytes.as_slice());
                GenericDatumReader::builder(&v1)
                    .reader_schema(&v2)
                    .build()
                    .unwrap()
                    .read_value(&mut body)
                    .unwrap()
            })
        });
        g.bench_function("sluice_codec", |b| {
            b.iter(|| {
                codec
                    .decode_cached(black_box(&wire), Some(&reader), &at)
                    .unwrap()
                    .unwrap()
            })
        });
        g.finish();
    }
    c.final_summary();
    report();
}

/// Reads criterion's estimates back and prints rates and ratios.
fn report() {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let mean_ns = |group: &str, name: &str| -> Option<f64> {
        let path = format!("{target}/criterion/{group}/{name}/new/estimates.json");
        let text = std::fs::read_to_string(path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["mean"]["point_estimate"].as_f64()
    };
    println!("\ncodec benchmark (one core; rates from criterion's mean time per operation)");
    println!(
        "{:<16} {:>16} {:>16} {:>8}",
        "operation", "apache-avro /s", "sluice codec /s", "ratio"
    );
    for group in ["encode", "decode", "decode_resolve"] {
        match (
            mean_ns(group, "apache_avro"),
            mean_ns(group, "sluice_codec"),
        ) {
            (Some(raw), Some(codec)) => println!(
                "{group:<16} {:>16.0} {:>16.0} {:>8.2}",
                1e9 / raw,
                1e9 / codec,
                raw / codec
            ),
            _ => println!("{group:<16} (no estimates found under {target}/criterion)"),
        }
    }
}
