//! The poller's Prometheus metrics, per source.

use std::time::Duration;

use prometheus::{CounterVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Why a poller waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The host's or the credential's budget.
    Budget,
    /// The API's `Retry-After`.
    RetryAfter,
    /// The API's rate-limit reset headers.
    RateLimitReset,
    /// A failure without `Retry-After` (5xx, timeout, connection).
    Backoff,
    /// The host's circuit breaker or in-flight cap.
    Breaker,
}

impl Wait {
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::Budget => "budget",
            Wait::RetryAfter => "retry_after",
            Wait::RateLimitReset => "rate_limit_reset",
            Wait::Backoff => "backoff",
            Wait::Breaker => "breaker",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PollMetrics {
    /// Item versions written to the raw topic, exactly once.
    pub items: IntCounterVec,
    /// Items read again and dropped: `duplicate` (version written already), `stale` (older).
    pub dropped: IntCounterVec,
    /// Items written as dead letters instead of raw records, by reason (`too_large`).
    pub dead_lettered: IntCounterVec,
    /// Pages committed (items, (id, version) pairs and cursor in one transaction).
    pub pages: IntCounterVec,
    /// Requests by status class (`2xx`, `304`, `410`, `429`, `4xx`, `5xx`, `none`).
    pub requests: IntCounterVec,
    /// Seconds spent waiting, by reason.
    pub waited: CounterVec,
    /// Crawls that failed or were ended early (the next one starts after the interval), by
    /// kind.
    pub errors: IntCounterVec,
    /// Crawls restarted from their start because the API expired the page cursor (410).
    pub cursor_expired: IntCounterVec,
    /// Unix time of the last page committed or crawl found unchanged.
    pub last_success: IntGaugeVec,
    /// Seconds between now and the source's watermark (the newest item time synced).
    pub watermark_age: IntGaugeVec,
}

impl PollMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["source"]);
        let m = Self {
            items: counter("sluice_poll_items_total", "Item versions written to the raw topic by polling, per source", &["source"])?,
            dropped: counter("sluice_poll_items_dropped_total", "Polled items dropped as already written (duplicate) or older than written (stale)", &["source", "reason"])?,
            dead_lettered: counter("sluice_poll_items_dead_lettered_total", "Polled items written to the poll DLQ instead of the raw topic, by reason (too_large)", &["source", "reason"])?,
            pages: counter("sluice_poll_pages_total", "Pages committed with their cursor, per source", &["source"])?,
            requests: counter("sluice_poll_requests_total", "Page requests by answer class, per source", &["source", "status"])?,
            waited: CounterVec::new(Opts::new("sluice_poll_wait_seconds_total", "Seconds polling waited, by reason (budget, retry_after, rate_limit_reset, backoff, breaker)"), &["source", "reason"])?,
            errors: counter("sluice_poll_errors_total", "Crawls that failed or were ended early (kind page: a page not as described, or pages that made no progress), per source and kind", &["source", "kind"])?,
            cursor_expired: counter("sluice_poll_cursor_expired_total", "Crawls restarted because the API expired their page cursor (410)", &["source"])?,
            last_success: gauge("sluice_poll_last_success_timestamp_seconds", "Unix time of the source's last successful page or unchanged crawl")?,
            watermark_age: gauge("sluice_poll_watermark_age_seconds", "Age of the newest item time a finished crawl of the source reached")?,
        };
        registry.register(Box::new(m.items.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.dead_lettered.clone()))?;
        registry.register(Box::new(m.pages.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.waited.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.cursor_expired.clone()))?;
        registry.register(Box::new(m.last_success.clone()))?;
        registry.register(Box::new(m.watermark_age.clone()))?;
        Ok(m)
    }

    /// Starts every series of `source` at zero, so alerts see it before its first event.
    pub fn start(&self, source: &str) {
        self.items.with_label_values(&[source]);
        self.pages.with_label_values(&[source]);
        self.cursor_expired.with_label_values(&[source]);
        for reason in ["duplicate", "stale"] {
            self.dropped.with_label_values(&[source, reason]);
        }
        self.dead_lettered.with_label_values(&[source, "too_large"]);
        for kind in ["api", "page", "kafka"] {
            self.errors.with_label_values(&[source, kind]);
        }
    }

    pub fn request(&self, source: &str, status: u16) {
        let class = match status {
            0 => "none",
            304 => "304",
            410 => "410",
            429 => "429",
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        self.requests.with_label_values(&[source, class]).inc();
    }

    pub fn waited(&self, source: &str, why: Wait, wait: Duration) {
        if !wait.is_zero() {
            self.waited
                .with_label_values(&[source, why.as_str()])
                .inc_by(wait.as_secs_f64());
        }
    }
}
