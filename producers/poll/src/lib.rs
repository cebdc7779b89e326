//! Polling sources (`sluice poll`): third-party list APIs without webhooks feed the same
//! raw topics as webhook deliveries, exactly once per item version.
//!
//! - [`settings`]: a topology source's `poll:` with its credential read.
//! - [`request`] / [`fetch`]: the next page's request, sent through the one outbound client
//!   with the host's and the credential's budgets, `Retry-After` and rate-limit resets.
//! - [`page`]: the answer's items and the next page (body cursor, `Link`, page, offset,
//!   keyset on `since` + id), via [`json_path`] and [`version`].
//! - [`seen`]: the (id, version) store; [`cursor`]: the durable state as compacted records.
//! - [`record`]: an item as a raw record with the webhook headers.
//! - [`writer`]: one Kafka transaction per page (items + pairs + cursor).
//! - [`poller`]: the crawl loop; [`status`]: what `sluice sources status` shows.

pub mod cursor;
pub mod fetch;
pub mod json_path;
pub mod metrics;
pub mod page;
pub mod poller;
pub mod record;
pub mod request;
pub mod seen;
pub mod settings;
pub mod status;
pub mod version;
pub mod writer;

pub use metrics::PollMetrics;
pub use poller::{run_source, Poller, Shared};
pub use settings::Settings;

/// The compacted topic of every polling source's state under topology `prefix`.
pub fn state_topic(prefix: &str) -> String {
    sluice_topology::naming::poll_state_topic(prefix)
}

/// Where every polling source of topology `prefix` dead-letters items too large to write.
pub fn dlq_topic(prefix: &str) -> String {
    sluice_topology::naming::poll_dlq_topic(prefix)
}

/// Response headers the poller reads, for the outbound client's `keep_headers`.
pub fn kept_headers() -> Vec<String> {
    ["etag", "link"]
        .into_iter()
        .chain(sluice_runtime::outbound::rate_limit_reset::HEADERS)
        .map(str::to_string)
        .collect()
}
