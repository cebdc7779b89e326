"""Reads sluice events with Confluent's own Python client and prints them as JSON lines.

Used by tests/e2e/interop.rs: proof that any Confluent-compatible Avro consumer decodes
what sluice writes. Arguments: bootstrap servers, registry URL, topic, record count.
"""
import json
import sys
from decimal import Decimal

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

bootstrap, registry_url, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": f"interop-{topic}",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
})
consumer.subscribe([topic])
seen = 0
idle = 0
while seen < count and idle < 60:
    msg = consumer.poll(0.5)
    if msg is None:
        idle += 1
        continue
    if msg.error():
        raise SystemExit(f"consume error: {msg.error()}")
    value = deserialize(msg.value(), SerializationContext(topic, MessageField.VALUE))
    headers = {k: v.decode() for k, v in (msg.headers() or [])}
    print(json.dumps({"headers": headers, "value": value},
                     default=lambda o: str(o) if isinstance(o, Decimal) else repr(o)))
    seen += 1
consumer.close()
if seen < count:
    raise SystemExit(f"only {seen} of {count} records arrived")
