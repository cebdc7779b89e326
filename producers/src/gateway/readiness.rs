//! The `kafka` readiness check: `/health/ready` says 503 while the broker cannot be reached
//! or a source's raw topic does not exist, so a load balancer stops sending webhooks that
//! could only be answered 503.
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

/// The topics in `wanted` that are not among `existing`.
pub fn missing_topics<'a>(
    existing: impl IntoIterator<Item = &'a str>,
    wanted: &[String],
) -> Vec<String> {
    let existing: std::collections::HashSet<&str> = existing.into_iter().collect();
    wanted
        .iter()
        .filter(|w| !existing.contains(w.as_str()))
        .cloned()
        .collect()
}

/// Marks the check unready, then probes until shutdown. Ready means the broker answers and
/// every source's raw topic exists: a delivery for a missing topic could only wait out the
/// produce deadline and get 503.
pub fn spawn_kafka_probe(
    producer: FutureProducer,
    raw_topics: Vec<String>,
    readiness: Readiness,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    readiness.set(CHECK, false);
    tokio::spawn(async move {
        let mut last: Option<Result<(), String>> = None;
        loop {
            let probe = producer.clone();
            let wanted = raw_topics.clone();
            let state = tokio::task::spawn_blocking(move || {
                let metadata = probe
                    .client()
                    .fetch_metadata(None, PROBE_TIMEOUT)
                    .map_err(|e| format!("Kafka unreachable: {e}"))?;
                let healthy = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| t.name());
                let missing = missing_topics(healthy, &wanted);
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "raw topics missing: {} (run `sluice topology apply`)",
                        missing.join(", ")
                    ))
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            readiness.set(CHECK, state.is_ok());
            if last.as_ref() != Some(&state) {
                match &state {
                    Ok(()) => tracing::info!("Kafka reachable; gateway ready"),
                    Err(why) => tracing::warn!("gateway not ready: {why}"),
                }
                last = Some(state);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_raw_topics_the_cluster_lacks() {
        let wanted = vec![
            "sluice.raw.stripe".to_string(),
            "sluice.raw.github".to_string(),
        ];
        assert_eq!(
            missing_topics(["sluice.raw.stripe", "other"], &wanted),
            ["sluice.raw.github"]
        );
        assert!(missing_topics(["sluice.raw.github", "sluice.raw.stripe"], &wanted).is_empty());
    }
}
