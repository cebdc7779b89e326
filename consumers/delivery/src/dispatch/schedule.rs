//! An endpoint's retry schedule as the outbound client's [`RetrySchedule`].
//!
//! The endpoint model writes the delays *between* attempts (`[1s, 1s, 2s]`: four attempts);
//! the outbound schedule lists the delay before each attempt, the first one included
//! (`[0s, 1s, 1s, 2s]`), so the conversion puts an immediate first attempt in front.

use std::time::Duration;

use sluice_runtime::outbound::RetrySchedule;

use crate::endpoints::Endpoint;

/// The schedule deliveries to `endpoint` follow: its own, or `default`, both with the
/// default's jitter and `Retry-After` cap.
pub fn for_endpoint(endpoint: &Endpoint, default: &RetrySchedule) -> RetrySchedule {
    let Some(own) = &endpoint.retry_schedule else {
        return default.clone();
    };
    let delays = std::iter::once(Duration::ZERO)
        .chain(own.0.iter().copied())
        .collect();
    default
        .with_delays(delays)
        .unwrap_or_else(|| default.clone())
}

/// The jitter seed of a delivery: stable across attempts and instances, different between
/// deliveries, so a burst of failures does not retry in lockstep.
pub fn seed(endpoint_id: &str, webhook_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    endpoint_id.hash(&mut h);
    webhook_id.hash(&mut h);
    h.finish()
}
