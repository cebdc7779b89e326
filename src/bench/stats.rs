//! Latency percentiles and rates.

use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Samples {
    latencies: Vec<Duration>,
    pub errors: usize,
}

impl Samples {
    pub fn record(&mut self, d: Duration) {
        self.latencies.push(d);
    }

    pub fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
    }

    pub fn count(&self) -> usize {
        self.latencies.len()
    }

    /// The `q` quantile (0.0–1.0), nearest rank.
    pub fn quantile(&mut self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let rank =
            ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.record(Duration::from_millis(i));
        }
        assert_eq!(s.quantile(0.5), Duration::from_millis(50));
        assert_eq!(s.quantile(0.99), Duration::from_millis(99));
        assert_eq!(s.quantile(1.0), Duration::from_millis(100));
    }
}
