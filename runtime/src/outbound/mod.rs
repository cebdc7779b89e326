//! The outbound HTTP client every sluice sender shares: webhook delivery to subscribers,
//! saga steps calling third-party APIs, pollers.
//!
//! Layers, each in its own file:
//!
//! - [`OutboundClient`] sends one attempt through one shared connection pool, behind the
//!   SSRF guard ([`ssrf`]), with connect and total timeouts, never following redirects, and
//!   keeps the first 64 KiB of the answer ([`Attempt`]).
//! - [`Verdict`] says what the attempt means: delivered, gone (410), retry later (with the
//!   endpoint's capped `Retry-After`), or rejected (cannot be sent as addressed).
//! - [`Endpoints`] holds each endpoint's in-flight cap, rate limit and circuit breaker,
//!   created lazily, so one slow endpoint never holds up another.
//! - [`Outbound`] puts them together for one attempt to one endpoint; callers that schedule
//!   retries themselves (the delivery consumer, through Kafka) use it directly, callers that
//!   retry inline use [`send_with_retries`] with a [`RetrySchedule`].
//! - [`Budgets`] are shared per-host and per-credential request budgets that wait instead
//!   of refusing, paused by `Retry-After` and by [`rate_limit_reset`] headers (pollers).
//!
//! A delivery loop, in outline:
//!
//! ```no_run
//! # async fn deliver(body: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_runtime::outbound::{
//!     ClientConfig, EndpointSettings, Endpoints, Outbound, OutboundClient, OutboundRequest,
//!     RetrySchedule, Verdict,
//! };
//!
//! let client = OutboundClient::new(ClientConfig::default())?;
//! let outbound = Outbound::new(client, Endpoints::new(EndpointSettings::default()));
//! let schedule = RetrySchedule::webhook_default();
//! let request = OutboundRequest::post("https://hooks.example.com/in".parse()?, body);
//! let failed_so_far = 0;
//! match outbound.send("ep_123", &request).await {
//!     Ok(attempt) => match attempt.verdict {
//!         Verdict::Delivered => { /* record the delivery */ }
//!         Verdict::Gone => { /* disable the endpoint */ }
//!         Verdict::RetryLater { after, .. } => {
//!             // Re-publish to a retry topic due after this delay (None: give up).
//!             let _due_in = schedule.next_delay(failed_so_far + 1, after, 42);
//!         }
//!         Verdict::Rejected { .. } => { /* dead-letter: it can never be sent */ }
//!     },
//!     Err(not_admitted) => {
//!         // Breaker open or limits full: not an attempt; come back later.
//!         let _come_back_in = not_admitted.retry_in();
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod attempt;
pub mod breaker;
pub mod budgets;
pub mod client;
pub mod config;
pub mod endpoints;
pub mod events;
pub mod inline_retry;
pub mod limits;
pub mod metrics;
pub mod rate_limit_reset;
pub mod request;
pub mod retry;
pub mod retry_after;
pub mod sender;
pub mod ssrf;
pub mod status_policy;
pub mod verdict;

pub use attempt::Attempt;
pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker};
pub use budgets::{Budgets, Rate};
pub use client::{ClientError, OutboundClient};
pub use config::ClientConfig;
pub use endpoints::{Endpoint, EndpointSettings, Endpoints};
pub use events::OutboundEvent;
pub use inline_retry::{send_with_retries, send_with_retries_while, RetryEnd, RetryOutcome};
pub use limits::{LimitRefusal, LimitsConfig, Waits};
pub use metrics::OutboundMetrics;
pub use request::OutboundRequest;
pub use retry::RetrySchedule;
pub use sender::{NotAdmitted, Outbound};
pub use ssrf::{AddressClass, AddressPolicy, Refused};
pub use status_policy::{FailureClass, StatusPolicy};
pub use verdict::{FailureReason, RefusalKind, Verdict};
