//! One attempt to one endpoint, through that endpoint's limits and circuit breaker.
//!
//! This is what the delivery consumer calls for each message: it gets either an
//! [`Attempt`] with its verdict, or [`NotAdmitted`] (the breaker is open, or the endpoint's
//! limits stayed full), and schedules any retry itself.

use std::sync::Arc;
use std::time::Duration;

use super::attempt::Attempt;
use super::breaker::{BreakerOpen, BreakerPermit};
use super::client::OutboundClient;
use super::endpoints::{Endpoint, Endpoints};
use super::events::OutboundEvent;
use super::limits::{InFlight, LimitRefusal, Waits};
use super::metrics::OutboundMetrics;
use super::request::OutboundRequest;

/// Why an attempt was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error(transparent)]
    BreakerOpen(#[from] BreakerOpen),
    #[error(transparent)]
    Limit(#[from] LimitRefusal),
}

impl NotAdmitted {
    /// A stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotAdmitted::BreakerOpen(_) => "breaker_open",
            NotAdmitted::Limit(LimitRefusal::Busy { .. }) => "busy",
            NotAdmitted::Limit(LimitRefusal::RateLimited { .. }) => "rate_limited",
        }
    }

    /// How long until trying again makes sense, when known.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            NotAdmitted::BreakerOpen(open) => Some(open.retry_in),
            NotAdmitted::Limit(LimitRefusal::RateLimited { retry_in }) => Some(*retry_in),
            NotAdmitted::Limit(LimitRefusal::Busy { .. }) => None,
        }
    }
}

/// The shared client plus every endpoint's state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    client: OutboundClient,
    endpoints: Arc<Endpoints>,
    metrics: Option<OutboundMetrics>,
}

impl Outbound {
    pub fn new(client: OutboundClient, endpoints: Endpoints) -> Self {
        Self {
            client,
            endpoints: Arc::new(endpoints),
            metrics: None,
        }
    }

    /// Counts attempts, refusals and breaker changes in `metrics`.
    pub fn with_metrics(mut self, metrics: OutboundMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn client(&self) -> &OutboundClient {
        &self.client
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Makes one attempt to `endpoint` if its breaker and limits allow.
    pub async fn send(
        &self,
        endpoint: &str,
        request: &OutboundRequest,
    ) -> Result<Attempt, NotAdmitted> {
        let state = self.endpoints.get(endpoint);
        let (slot, permit) = match self.admit(endpoint, &state).await {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.emit(OutboundEvent::NotAdmitted {
                    endpoint,
                    refusal: &refusal,
                });
                return Err(refusal);
            }
        };
        let attempt = self.client.attempt(request).await;
        drop(slot);
        if attempt.verdict.counts_for_breaker() {
            let healthy = attempt.verdict.is_success() || attempt.not_modified(request);
            if let Some(transition) = permit.record(healthy) {
                self.emit(OutboundEvent::BreakerChanged {
                    endpoint,
                    transition,
                });
            }
        }
        self.emit(OutboundEvent::Attempted {
            endpoint,
            attempt: &attempt,
        });
        Ok(attempt)
    }

    /// Breaker first (fast, no waiting while it is open), then the limits, then the breaker
    /// for real: it may have opened, or its probes been taken, while we waited.
    async fn admit(
        &self,
        endpoint: &str,
        state: &Endpoint,
    ) -> Result<(InFlight, BreakerPermit), NotAdmitted> {
        state.breaker.check()?;
        let slot = state.limits.acquire().await?;
        let waits = slot.waits();
        if waits != Waits::default() {
            self.emit(OutboundEvent::Waited { endpoint, waits });
        }
        let (permit, transition) = state.breaker.try_acquire()?;
        if let Some(transition) = transition {
            self.emit(OutboundEvent::BreakerChanged {
                endpoint,
                transition,
            });
        }
        Ok((slot, permit))
    }

    fn emit(&self, event: OutboundEvent<'_>) {
        event.emit(self.metrics.as_ref());
    }
}
