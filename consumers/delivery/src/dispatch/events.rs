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
