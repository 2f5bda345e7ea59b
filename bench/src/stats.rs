//! Percentiles and confidence intervals.

use serde::{Deserialize, Serialize};

/// Nearest-rank percentile (q in 0..=100) of a sorted slice.
pub fn percentile_sorted(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(f64::from(sorted[rank.clamp(1, sorted.len()) - 1]))
}

/// Two-sided 95 % Student t quantile for `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

/// A mean with its 95 % t-interval over independent rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    /// `None` with fewer than two rounds.
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub n: usize,
}

impl Estimate {
    pub fn of(xs: &[f64]) -> Option<Estimate> {
        let xs: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        let n = xs.len();
        if n == 0 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        if n < 2 {
            return Some(Estimate { mean, lo: None, hi: None, n });
        }
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t975(n - 1) * (var / n as f64).sqrt();
        Some(Estimate { mean, lo: Some(mean - half), hi: Some(mean + half), n })
    }

    /// "12.3 [11.9, 12.7]" (or "12.3" without an interval).
    pub fn fmt(&self, decimals: usize) -> String {
        match (self.lo, self.hi) {
            (Some(lo), Some(hi)) => format!("{:.d$} [{:.d$}, {:.d$}]", self.mean, lo, hi, d = decimals),
            _ => format!("{:.d$}", self.mean, d = decimals),
        }
    }

    /// Is the whole interval at or below `limit`? `Some(true)`: met, `Some(false)`:
    /// the whole interval is above it, `None`: the interval straddles it.
    pub fn at_most(&self, limit: f64) -> Option<bool> {
        match (self.lo, self.hi) {
            (Some(_), Some(hi)) if hi <= limit => Some(true),
            (Some(lo), Some(_)) if lo > limit => Some(false),
            (Some(_), Some(_)) => None,
            _ => Some(self.mean <= limit),
        }
    }

    pub fn at_least(&self, limit: f64) -> Option<bool> {
        Estimate { mean: -self.mean, lo: self.hi.map(|h| -h), hi: self.lo.map(|l| -l), n: self.n }.at_most(-limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 50.0), Some(50.0));
        assert_eq!(percentile_sorted(&v, 99.0), Some(99.0));
        assert_eq!(percentile_sorted(&v, 100.0), Some(100.0));
        assert_eq!(percentile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(percentile_sorted(&[], 50.0), None);
    }

    #[test]
    fn t_interval_matches_a_hand_computation() {
        let e = Estimate::of(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        // sd = 1.5811, se = 0.7071, t(4) = 2.776 → ±1.963
        assert!((e.mean - 3.0).abs() < 1e-12);
        assert!((e.lo.unwrap() - 1.0371).abs() < 1e-3 && (e.hi.unwrap() - 4.9629).abs() < 1e-3);
        assert_eq!(e.at_most(5.0), Some(true));
        assert_eq!(e.at_most(4.0), None);
        assert_eq!(e.at_most(0.5), Some(false));
        assert_eq!(e.at_least(0.5), Some(true));
        assert_eq!(e.at_least(6.0), Some(false));
        let one = Estimate::of(&[2.0]).unwrap();
        assert_eq!((one.lo, one.at_most(3.0)), (None, Some(true)));
    }
}
