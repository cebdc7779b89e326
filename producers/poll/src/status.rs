//! What `sluice sources status` shows for each polling source: its cursor, last success,
//! items written and rate, and its errors, read from the committed state topic.

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_runtime::kafka::KafkaClients;
use sluice_schemas::metadata::{now_ms, rfc3339_ms};
use sluice_stream::state::kafka::{partition_count, read_partitions};

use crate::cursor::{Cursor, ErrorStatus};

/// One polling source's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    pub source: String,
    pub cursor: Cursor,
    pub errors: ErrorStatus,
}

impl SourceStatus {
    /// Items per second: of the crawl under way, else of the last finished one.
    pub fn items_per_sec(&self, now_ms: i64) -> Option<f64> {
        if let Some(c) = &self.cursor.crawl {
            let secs = (now_ms - c.started_ms) as f64 / 1000.0;
            return (secs > 0.0).then(|| c.items as f64 / secs);
        }
        let last = self.cursor.last_crawl?;
        (last.seconds > 0.0).then(|| last.items as f64 / last.seconds)
    }

    /// Where the source stands, in words.
    pub fn position(&self) -> String {
        let watermark = self
            .cursor
            .watermark_ms
            .map_or("none".to_string(), rfc3339_ms);
        match &self.cursor.crawl {
            None => format!("idle, synced to {watermark}"),
            Some(c) => {
                format!(
                    "crawling ({} items so far), next: {}",
                    c.items,
                    c.next.describe()
                )
            }
        }
    }
}

/// Reads the status of `sources` from `topic` (blocking).
pub fn read(
    clients: &KafkaClients,
    topic: &str,
    sources: &[String],
) -> Result<Vec<SourceStatus>, String> {
    let partitions = partition_count(clients, topic).map_err(|e| e.to_string())?;
    let all: Vec<i32> = (0..partitions).collect();
    let mut found: BTreeMap<String, SourceStatus> = sources
        .iter()
        .map(|s| {
            (
                s.clone(),
                SourceStatus {
                    source: s.clone(),
                    ..SourceStatus::default()
                },
            )
        })
        .collect();
    read_partitions(clients, topic, &all, |_, key, value| {
        let Ok(parts) = serde_json::from_slice::<Vec<String>>(key) else {
            return;
        };
        let (Some(source), Some(kind), None) = (parts.first(), parts.get(1), parts.get(2)) else {
            return;
        };
        let (Some(status), Some(value)) = (found.get_mut(source), value) else {
            return;
        };
        match kind.as_str() {
            "cursor" => {
                if let Ok(c) = serde_json::from_slice(value) {
                    status.cursor = c;
                }
            }
            "status" => {
                if let Ok(e) = serde_json::from_slice(value) {
                    status.errors = e;
                }
            }
            _ => {}
        }
    })
    .map_err(|e| e.to_string())?;
    Ok(found.into_values().collect())
}

/// The table `sluice sources status` prints.
pub fn table(statuses: &[SourceStatus]) -> String {
    let now = now_ms();
    let mut out =
        String::from("SOURCE\tPOSITION\tLAST SUCCESS\tITEMS\tITEMS/S\tERRORS\tLAST ERROR\n");
    for s in statuses {
        let last = s
            .cursor
            .last_success_ms
            .map_or("never".to_string(), rfc3339_ms);
        let rate = s
            .items_per_sec(now)
            .map_or("-".to_string(), |r| format!("{r:.1}"));
        let error = if s.errors.errors == 0 {
            "-".to_string()
        } else {
            format!("{} ({})", s.errors.last_error, rfc3339_ms(s.errors.at_ms))
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            s.source,
            s.position(),
            last,
            s.cursor.items_written,
            rate,
            s.errors.errors,
            error
        ));
    }
    out
}
