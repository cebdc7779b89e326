//! The `kafka` readiness check: `/health/ready` says 503 while the broker cannot be reached,
//! so a load balancer stops sending webhooks that could only be answered 503.
//!
//! A background task asks the cluster for metadata through the gateway's own producer client
//! (the connection that matters) every [`PROBE_INTERVAL`], off the async threads because the
//! librdkafka call blocks.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};
use sluice_runtime::admin::Readiness;
use sluice_runtime::Shutdown;

/// Name of the readiness check.
pub const CHECK: &str = "kafka";
/// Time between probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long one metadata request may take before the broker counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Marks the check unready, then probes until shutdown.
pub fn spawn_kafka_probe(
    producer: FutureProducer,
    readiness: Readiness,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    readiness.set(CHECK, false);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let probe = producer.clone();
            let ok = tokio::task::spawn_blocking(move || {
                probe.client().fetch_metadata(None, PROBE_TIMEOUT)
            })
            .await
            .map(|r| r.map_err(|e| e.to_string()))
            .unwrap_or_else(|e| Err(e.to_string()));
            let ready = ok.is_ok();
            readiness.set(CHECK, ready);
            if last != Some(ready) {
                match &ok {
                    Ok(_) => tracing::info!("Kafka reachable; gateway ready"),
                    Err(e) => tracing::warn!(error = %e, "Kafka unreachable; gateway not ready"),
                }
                last = Some(ready);
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = shutdown.wait() => {
                    readiness.set(CHECK, false);
                    return;
                }
            }
        }
    })
}
