//! The delivery retry tiers: topics with a fixed delay, of which a waiting task takes the
//! longest not longer than its wait. The task carries its exact due time, and the
//! dispatcher holds a tier's partition until its head is due, so a handful of tiers serve
//! any schedule and any `Retry-After`.

use std::time::Duration;

use sluice_stream::RetryTier;

#[derive(Debug, Clone)]
pub struct Tiers {
    /// Shortest first; never empty.
    tiers: Vec<RetryTier>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "webhook delivery needs at least one retry tier (the topology's `deliveries` retry policy)"
)]
pub struct NoTiers;

impl Tiers {
    pub fn new(mut tiers: Vec<RetryTier>) -> Result<Self, NoTiers> {
        if tiers.is_empty() {
            return Err(NoTiers);
        }
        tiers.sort_by_key(|t| t.delay);
        Ok(Self { tiers })
    }

    /// The tier a task waiting `wait` goes to: the longest not longer than `wait`, or the
    /// shortest when every tier is longer (the task is then due before it is read, and goes
    /// at once).
    pub fn for_wait(&self, wait: Duration) -> &RetryTier {
        self.tiers
            .iter()
            .rev()
            .find(|t| t.delay <= wait)
            .unwrap_or(&self.tiers[0])
    }

    /// Where parked tasks wait.
    pub fn shortest(&self) -> &RetryTier {
        &self.tiers[0]
    }

    /// Tier `index` (shortest first); the longest for an index beyond them.
    pub fn at(&self, index: usize) -> &RetryTier {
        &self.tiers[index.min(self.tiers.len() - 1)]
    }

    /// The index of the tier writing to `topic`.
    pub fn position(&self, topic: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.topic == topic)
    }

    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().map(|t| t.topic.as_str())
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.tiers.iter().any(|t| t.topic == topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(secs: u64) -> RetryTier {
        RetryTier {
            topic: format!("t{secs}"),
            delay: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_wait_takes_the_longest_tier_not_longer_than_it() {
        let tiers = Tiers::new(vec![tier(300), tier(5), tier(1)]).unwrap();
        let topic = |secs| tiers.for_wait(Duration::from_secs(secs)).topic.clone();
        assert_eq!(topic(0), "t1");
        assert_eq!(topic(1), "t1");
        assert_eq!(topic(4), "t1");
        assert_eq!(topic(5), "t5");
        assert_eq!(topic(299), "t5");
        assert_eq!(topic(86_400), "t300");
        assert_eq!(tiers.shortest().topic, "t1");
        assert_eq!(tiers.position("t5"), Some(1));
        assert_eq!(tiers.position("t7"), None);
        assert_eq!(
            (tiers.at(2).topic.as_str(), tiers.at(9).topic.as_str()),
            ("t300", "t300")
        );
        assert!(Tiers::new(Vec::new()).is_err());
    }
}
