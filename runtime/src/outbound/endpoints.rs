//! The live state of every endpoint sent to: its limits and its circuit breaker, created on
//! first use and kept in one map keyed by endpoint id.
//!
//! Nothing is shared between endpoints except the map itself, which is read-locked on the
//! hot path (a write lock only the first time an endpoint is seen).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::breaker::{BreakerConfig, CircuitBreaker, Clock, SystemClock};
use super::limits::{EndpointLimits, LimitsConfig};

/// Limits and breaker settings of one endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointSettings {
    pub limits: LimitsConfig,
    pub breaker: BreakerConfig,
}

/// One endpoint's live state.
#[derive(Debug)]
pub struct Endpoint {
    pub limits: EndpointLimits,
    pub breaker: Arc<CircuitBreaker>,
}

impl Endpoint {
    fn new(settings: &EndpointSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            limits: EndpointLimits::new(&settings.limits),
            breaker: Arc::new(CircuitBreaker::new(settings.breaker.clone(), clock)),
        }
    }
}

/// Every endpoint's state, created lazily with the default settings unless configured.
#[derive(Debug)]
pub struct Endpoints {
    defaults: EndpointSettings,
    clock: Arc<dyn Clock>,
    map: RwLock<HashMap<Arc<str>, Arc<Endpoint>>>,
}

impl Endpoints {
    pub fn new(defaults: EndpointSettings) -> Self {
        Self::with_clock(defaults, Arc::new(SystemClock))
    }

    /// With a breaker clock other than the system's (tests).
    pub fn with_clock(defaults: EndpointSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            defaults,
            clock,
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The state of `id`, created with the defaults the first time.
    pub fn get(&self, id: &str) -> Arc<Endpoint> {
        if let Some(found) = self.read().get(id) {
            return Arc::clone(found);
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let endpoint = map
            .entry(Arc::from(id))
            .or_insert_with(|| Arc::new(Endpoint::new(&self.defaults, Arc::clone(&self.clock))));
        Arc::clone(endpoint)
    }

    /// Gives `id` its own settings, replacing its state (a fresh breaker, empty limits).
    pub fn configure(&self, id: &str, settings: &EndpointSettings) -> Arc<Endpoint> {
        let endpoint = Arc::new(Endpoint::new(settings, Arc::clone(&self.clock)));
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(Arc::from(id), Arc::clone(&endpoint));
        endpoint
    }

    /// Forgets `id` (a disabled or deleted endpoint).
    pub fn remove(&self, id: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Endpoints with state.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Endpoint>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::breaker::{BreakerState, ManualClock};

    #[test]
    fn ten_thousand_endpoints_are_created_lazily_and_isolated() {
        let endpoints = Endpoints::with_clock(
            EndpointSettings {
                breaker: BreakerConfig {
                    consecutive_failures: 1,
                    ..BreakerConfig::default()
                },
                ..EndpointSettings::default()
            },
            Arc::new(ManualClock::new()),
        );
        assert!(endpoints.is_empty());
        for i in 0..10_000 {
            endpoints.get(&format!("ep_{i}"));
        }
        assert_eq!(endpoints.len(), 10_000);
        let (permit, _) = endpoints.get("ep_7").breaker.try_acquire().unwrap();
        permit.record(false);
        assert_eq!(endpoints.get("ep_7").breaker.state(), BreakerState::Open);
        assert_eq!(endpoints.get("ep_8").breaker.state(), BreakerState::Closed);
        assert!(Arc::ptr_eq(&endpoints.get("ep_7"), &endpoints.get("ep_7")));
        endpoints.remove("ep_7");
        assert_eq!(endpoints.get("ep_7").breaker.state(), BreakerState::Closed);
        assert_eq!(endpoints.len(), 10_000);
    }

    #[tokio::test]
    async fn a_configured_endpoint_gets_its_own_limits() {
        let endpoints = Endpoints::new(EndpointSettings::default());
        let tight = EndpointSettings {
            limits: LimitsConfig {
                max_in_flight: 1,
                max_wait: std::time::Duration::ZERO,
                ..LimitsConfig::default()
            },
            ..EndpointSettings::default()
        };
        endpoints.configure("slow", &tight);
        let slow = endpoints.get("slow");
        let _held = slow.limits.acquire().await.unwrap();
        assert!(slow.limits.acquire().await.is_err());
        assert!(endpoints.get("other").limits.acquire().await.is_ok());
    }
}
