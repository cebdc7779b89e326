//! What the dispatcher reports: one typed event per thing that happened, emitted as a log
//! line and its metrics together (like the outbound client's `OutboundEvent`).

use super::metrics::DeliveryMetrics;
use super::settle::Settlement;

#[derive(Debug)]
pub enum DeliveryEvent<'a> {
    /// A task's outcome was written.
    Settled {
        endpoint: &'a str,
        settlement: Settlement,
        /// Attempts made, this one included.
        attempts: u32,
    },
    /// How many tasks wait in memory for an endpoint.
    Backlog { endpoint: &'a str, waiting: usize },
    /// A task of a held key was forwarded, unsent, behind the key's head; `held` keys are
    /// held now.
    KeyHeld { endpoint: &'a str, held: usize },
}

impl DeliveryEvent<'_> {
    pub fn emit(&self, metrics: Option<&DeliveryMetrics>) {
        match self {
            Self::Settled {
                endpoint,
                settlement,
                attempts,
            } => {
                match settlement {
                    Settlement::DeadLettered | Settlement::Gone => {
                        tracing::warn!(
                            endpoint,
                            settlement = settlement.as_str(),
                            attempts,
                            "delivery settled"
                        )
                    }
                    _ => tracing::debug!(
                        endpoint,
                        settlement = settlement.as_str(),
                        attempts,
                        "delivery settled"
                    ),
                }
                if let Some(m) = metrics {
                    m.settled
                        .with_label_values(&[endpoint, settlement.as_str()])
                        .inc();
                }
            }
            Self::KeyHeld { endpoint, held } => {
                tracing::debug!(endpoint, held, "delivery waits behind its held key");
                if let Some(m) = metrics {
                    m.held_keys.set(i64::try_from(*held).unwrap_or(i64::MAX));
                }
            }
            Self::Backlog { endpoint, waiting } => {
                if let Some(m) = metrics {
                    m.backlog
                        .with_label_values(&[endpoint])
                        .set(i64::try_from(*waiting).unwrap_or(i64::MAX));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_settlements_and_set_the_backlog_per_endpoint() {
        let registry = prometheus::Registry::new();
        let m = DeliveryMetrics::new(&registry).unwrap();
        for settlement in [
            Settlement::Retrying,
            Settlement::Retrying,
            Settlement::Delivered,
        ] {
            DeliveryEvent::Settled {
                endpoint: "ep_1",
                settlement,
                attempts: 1,
            }
            .emit(Some(&m));
        }
        DeliveryEvent::Backlog {
            endpoint: "ep_1",
            waiting: 7,
        }
        .emit(Some(&m));
        assert_eq!(m.settled.with_label_values(&["ep_1", "retrying"]).get(), 2);
        assert_eq!(m.settled.with_label_values(&["ep_1", "delivered"]).get(), 1);
        assert_eq!(m.backlog.with_label_values(&["ep_1"]).get(), 7);
        // Without metrics an event is only logged.
        DeliveryEvent::Backlog {
            endpoint: "ep_2",
            waiting: 1,
        }
        .emit(None);
    }
}
