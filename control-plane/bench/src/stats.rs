//! Distributions as the figures report them: median, p99, max.
use std::time::Duration;

use serde::Serialize;

/// A distribution of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Nearest-rank percentiles of the samples; all zero when empty.
    pub fn of(samples: &[Duration]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort();
        let rank = |p: f64| {
            let n = sorted.len();
            let index = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            ms(sorted[index])
        };
        Summary {
            count: sorted.len(),
            median_ms: rank(0.5),
            p99_ms: rank(0.99),
            max_ms: ms(sorted[sorted.len() - 1]),
        }
    }

    /// Whether the slowest sample is within `factor` of the p99 ("no proxy
    /// starves").
    pub fn max_within(&self, factor: f64) -> bool {
        self.max_ms <= self.p99_ms * factor
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `850 ms`, `3.21 s`.
pub fn human_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// `512 B`, `12.3 KB`, `4.5 MB`, `1.20 GB` (powers of 1000).
pub fn human_bytes(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.2} GB", bytes / 1e9)
    } else if bytes >= 1e6 {
        format!("{:.1} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.1} KB", bytes / 1e3)
    } else {
        format!("{bytes:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!(s.count, 100);
        assert_eq!(s.median_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert!(s.max_within(2.0));
        let one = Summary::of(&[Duration::from_millis(7)]);
        assert_eq!((one.median_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_ms(3210.0), "3.21 s");
        assert_eq!(human_ms(85.4), "85 ms");
        assert_eq!(human_bytes(4_500_000.0), "4.5 MB");
        assert_eq!(human_bytes(512.0), "512 B");
    }
}
