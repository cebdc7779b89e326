// The relay sluice's outbox is benchmarked against (`sluice bench outbox`): Debezium's
// PostgreSQL connector (pgoutput) with its outbox event router, run in Debezium's embedded
// engine, producing what the router emits to Kafka the way Kafka Connect does: an idempotent
// producer with acks=all, and the source offsets committed only after the batch is
// acknowledged (at-least-once: a crash between the two publishes the batch again).
//
// Configuration comes from the environment (the bench sets it):
//   DBZ_PG_HOST DBZ_PG_PORT DBZ_PG_USER DBZ_PG_PASSWORD DBZ_PG_DB  the outbox database
//   DBZ_TABLE         schema.table of the outbox (sluice's DDL)
//   DBZ_SLOT          replication slot (and publication) name, dropped on stop
//   DBZ_TOPIC         where every event goes
//   DBZ_BOOTSTRAP     Kafka bootstrap servers
//   DBZ_OFFSETS       file for the engine's source offsets
//   DBZ_POLL_MS       the connector's poll.interval.ms (the bench matches sluice's)
// It prints "debezium streaming" once the connector task runs (its slot exists), and stops
// on SIGTERM.
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.embedded.Connect;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.connect.source.SourceRecord;

public final class OutboxRelay {
  private static String env(String name) {
    String v = System.getenv(name);
    if (v == null || v.isEmpty()) {
      throw new IllegalArgumentException(name + " is not set");
    }
    return v;
  }

  private static Properties engineProperties() {
    Properties p = new Properties();
    p.setProperty("name", "sluice-bench-outbox");
    p.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
    p.setProperty("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
    p.setProperty("offset.storage.file.filename", env("DBZ_OFFSETS"));
    p.setProperty("offset.flush.interval.ms", "1000");
    p.setProperty("database.hostname", env("DBZ_PG_HOST"));
    p.setProperty("database.port", env("DBZ_PG_PORT"));
    p.setProperty("database.user", env("DBZ_PG_USER"));
    p.setProperty("database.password", env("DBZ_PG_PASSWORD"));
    p.setProperty("database.dbname", env("DBZ_PG_DB"));
    p.setProperty("topic.prefix", "sluicebench");
    p.setProperty("plugin.name", "pgoutput");
    p.setProperty("slot.name", env("DBZ_SLOT"));
    p.setProperty("slot.drop.on.stop", "true");
    p.setProperty("publication.name", env("DBZ_SLOT"));
    p.setProperty("publication.autocreate.mode", "filtered");
    p.setProperty("table.include.list", env("DBZ_TABLE"));
    // The xid8 column is sluice's own bookkeeping, which Debezium has no converter for.
    p.setProperty("column.exclude.list", env("DBZ_TABLE") + ".xid");
    p.setProperty("snapshot.mode", "no_data");
    p.setProperty("poll.interval.ms", System.getenv().getOrDefault("DBZ_POLL_MS", "500"));
    // The outbox event router, mapped onto sluice's outbox columns.
    p.setProperty("transforms", "outbox");
    p.setProperty("transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter");
    p.setProperty("transforms.outbox.table.field.event.id", "event_id");
    p.setProperty("transforms.outbox.table.field.event.key", "aggregate_id");
    p.setProperty("transforms.outbox.table.field.event.payload", "payload");
    p.setProperty("transforms.outbox.route.by.field", "aggregate_type");
    p.setProperty("transforms.outbox.route.topic.replacement", env("DBZ_TOPIC"));
    p.setProperty("transforms.outbox.table.fields.additional.placement", "event_type:header:ce_type,sequence:header:sequence");
    // Relayed rows are deleted by nobody here; a delete would only be logged.
    p.setProperty("transforms.outbox.table.op.invalid.behavior", "warn");
    return p;
  }

  private static KafkaProducer<byte[], byte[]> producer() {
    Properties p = new Properties();
    p.setProperty("bootstrap.servers", env("DBZ_BOOTSTRAP"));
    p.setProperty("client.id", "sluice-bench-debezium");
    p.setProperty("acks", "all");
    p.setProperty("enable.idempotence", "true");
    p.setProperty("linger.ms", "5");
    return new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer());
  }

  private static byte[] bytes(Object o) {
    return o == null ? null : o.toString().getBytes(StandardCharsets.UTF_8);
  }

  public static void main(String[] args) throws Exception {
    String topic = env("DBZ_TOPIC");
    KafkaProducer<byte[], byte[]> producer = producer();
    CountDownLatch stopped = new CountDownLatch(1);
    DebeziumEngine<ChangeEvent<SourceRecord, SourceRecord>> engine =
        DebeziumEngine.create(Connect.class)
            .using(engineProperties())
            .using(
                new DebeziumEngine.ConnectorCallback() {
                  @Override
                  public void taskStarted() {
                    System.out.println("debezium streaming");
                    System.out.flush();
                  }
                })
            .using(
                (success, message, error) -> {
                  if (!success) {
                    System.err.println("debezium stopped: " + message);
                    if (error != null) {
                      error.printStackTrace();
                    }
                  }
                  stopped.countDown();
                })
            .notifying(
                (records, committer) -> {
                  List<Future<?>> sent = new ArrayList<>(records.size());
                  for (ChangeEvent<SourceRecord, SourceRecord> event : records) {
                    SourceRecord r = event.value();
                    if (r == null || r.value() == null) {
                      continue;
                    }
                    ProducerRecord<byte[], byte[]> out =
                        new ProducerRecord<>(topic, bytes(r.key()), bytes(r.value()));
                    for (org.apache.kafka.connect.header.Header h : r.headers()) {
                      out.headers().add(h.key(), bytes(h.value()));
                    }
                    sent.add(producer.send(out));
                  }
                  for (Future<?> f : sent) {
                    try {
                      f.get();
                    } catch (java.util.concurrent.ExecutionException e) {
                      // Not acknowledged: fail the batch, so its offsets are not committed.
                      throw new RuntimeException("producing to Kafka failed", e.getCause());
                    }
                  }
                  for (ChangeEvent<SourceRecord, SourceRecord> event : records) {
                    committer.markProcessed(event);
                  }
                  committer.markBatchFinished();
                })
            .build();
    ExecutorService executor = Executors.newSingleThreadExecutor();
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  try {
                    engine.close();
                    stopped.await();
                    producer.close();
                  } catch (Exception e) {
                    e.printStackTrace();
                  }
                }));
    executor.execute(engine);
    stopped.await();
    executor.shutdown();
  }
}
