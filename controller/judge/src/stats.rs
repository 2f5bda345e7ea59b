//! Interval statistics for the gates, pure functions: Wilson and Newcombe
//! intervals for rates, distribution-free order-statistic intervals for
//! quantiles of merged histograms, Welch t-intervals for means, the
//! repeated-look schedule that keeps error rates bounded however often the
//! controller looks, and the sample sizes a power calculation asks for.

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

use crate::window::MergedHistogram as Histogram;

/// A two-sided interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }
}

/// ln Σ exp(xₖ) without overflow (the mixtures of e-values are summed
/// from their logs); −∞ when every term is.
pub fn log_sum_exp(terms: &[f64]) -> f64 {
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m.is_infinite() {
        return m;
    }
    m + terms.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// The standard normal quantile.
pub fn z(p: f64) -> f64 {
    Normal::new(0.0, 1.0).map_or(f64::NAN, |n| n.inverse_cdf(p))
}

/// The standard normal distribution function.
pub fn normal_cdf(x: f64) -> f64 {
    Normal::new(0.0, 1.0).map_or(f64::NAN, |n| n.cdf(x))
}

/// Two-sided z for a confidence level (0.95 → 1.96).
pub fn z_two_sided(confidence: f64) -> f64 {
    z(1.0 - (1.0 - confidence) / 2.0)
}

/// Wilson score interval for `x` successes in `n` trials (`None` for n = 0).
pub fn wilson(x: u64, n: u64, confidence: f64) -> Option<Interval> {
    if n == 0 || x > n {
        return None;
    }
    let (x, n) = (x as f64, n as f64);
    let z = z_two_sided(confidence);
    let p = x / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    Some(Interval { low: (centre - half).max(0.0), high: (centre + half).min(1.0) })
}

/// Newcombe's hybrid score interval (method 10, Newcombe 1998) for the
/// difference of proportions `x2/n2 − x1/n1`.
pub fn newcombe_diff(x1: u64, n1: u64, x2: u64, n2: u64, confidence: f64) -> Option<Interval> {
    let (a, b) = (wilson(x1, n1, confidence)?, wilson(x2, n2, confidence)?);
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let d = p2 - p1;
    let low = d - ((p2 - b.low).powi(2) + (a.high - p1).powi(2)).sqrt();
    let high = d + ((b.high - p2).powi(2) + (p1 - a.low).powi(2)).sqrt();
    Some(Interval { low, high })
}

/// A distribution-free interval for the `q` quantile of the values in a
/// merged histogram: the order statistics whose ranks bracket `n q` by the
/// binomial's normal approximation, mapped to values by the histogram
/// (interpolating inside buckets). `None` when empty.
pub fn quantile_interval(h: &Histogram, q: f64, confidence: f64) -> Option<Interval> {
    quantile_interval_scaled(h, q, confidence, 1.0)
}

/// [`quantile_interval`] as it would be if the sample were `scale` times
/// as large with the same distribution (for power calculations).
pub fn quantile_interval_scaled(h: &Histogram, q: f64, confidence: f64, scale: f64) -> Option<Interval> {
    let n = (h.count() as f64 * scale).round();
    if n == 0.0 || !(0.0..1.0).contains(&q) {
        return None;
    }
    let z = z_two_sided(confidence);
    let spread = z * (n * q * (1.0 - q)).sqrt();
    let lo_rank = ((n * q - spread).floor()).max(0.0);
    let hi_rank = ((n * q + spread).ceil() + 1.0).min(n);
    Some(Interval { low: h.quantile(lo_rank / n)?, high: h.quantile(hi_rank / n)? })
}

/// Welch's t-interval for `mean2 − mean1` from running sums.
pub fn welch_diff(n1: u64, sum1: f64, sq1: f64, n2: u64, sum2: f64, sq2: f64, confidence: f64) -> Option<Interval> {
    if n1 < 2 || n2 < 2 {
        return None;
    }
    let var = |n: f64, s: f64, sq: f64| ((sq - s * s / n) / (n - 1.0)).max(0.0);
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (v1, v2) = (var(n1f, sum1, sq1) / n1f, var(n2f, sum2, sq2) / n2f);
    let d = sum2 / n2f - sum1 / n1f;
    let se = (v1 + v2).sqrt();
    if se == 0.0 {
        return Some(Interval { low: d, high: d });
    }
    let df = (v1 + v2).powi(2) / (v1 * v1 / (n1f - 1.0) + v2 * v2 / (n2f - 1.0)).max(f64::MIN_POSITIVE);
    let t = t_quantile(1.0 - (1.0 - confidence) / 2.0, df.max(1.0));
    Some(Interval { low: d - t * se, high: d + t * se })
}

/// Student's t quantile. From 100 degrees of freedom on, the Cornish–Fisher
/// expansion around the normal quantile (error below 1e-5 there, even at
/// z = 4): statrs' inverse of the regularised incomplete beta function is
/// slow, and very slow for the huge df of large samples.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if df < 100.0 {
        return StudentsT::new(0.0, 1.0, df).map_or(f64::NAN, |t| t.inverse_cdf(p));
    }
    let z = z(p);
    let (z2, v) = (z * z, df);
    z + z * (z2 + 1.0) / (4.0 * v)
        + z * (5.0 * z2 * z2 + 16.0 * z2 + 3.0) / (96.0 * v * v)
        + z * (3.0 * z2 * z2 * z2 + 19.0 * z2 * z2 + 17.0 * z2 - 15.0) / (384.0 * v * v * v)
}

/// When the controller may judge, and how confident each judgement must be.
///
/// The controller looks every interval, so testing at a fixed level each time
/// would inflate both error rates (the peeking problem). Judgements are
/// instead made at *looks* on a geometric sample-size schedule — the first
/// when the stage's minimum is reached, the next each time the smaller
/// version's sample has grown by `growth` — and look `k` spends
/// `alpha · 6 / (π² k²)` of the error budget. These shares sum to `alpha`
/// over any number of looks, so the chance of ever rolling back a challenger
/// that is within tolerance, or of ever passing one that is not, stays below
/// `alpha` per gate (Bonferroni over looks; conservative but exact in count).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LookSchedule {
    pub alpha: f64,
    pub growth: f64,
}

impl Default for LookSchedule {
    fn default() -> Self {
        LookSchedule { alpha: 0.05, growth: 1.5 }
    }
}

impl LookSchedule {
    /// The look a sample of `n` has reached, from 1 at `n0`; 0 before.
    pub fn look(&self, n: u64, n0: u64) -> u32 {
        let n0 = n0.max(1) as f64;
        if (n as f64) < n0 {
            return 0;
        }
        1 + ((n as f64 / n0).ln() / self.growth.max(1.01).ln()).floor() as u32
    }

    /// The sample size at which look `k` happens.
    pub fn look_at(&self, k: u32, n0: u64) -> u64 {
        (n0.max(1) as f64 * self.growth.max(1.01).powi(k.saturating_sub(1) as i32)).ceil() as u64
    }

    /// Error budget spent at look `k` (≥ 1).
    pub fn alpha_at(&self, k: u32) -> f64 {
        let k = f64::from(k.max(1));
        self.alpha * 6.0 / (std::f64::consts::PI.powi(2) * k * k)
    }

    /// Two-sided confidence level of the interval used at look `k`: one side
    /// decides "fail", the other "pass", each spending `alpha_at(k)`.
    pub fn confidence_at(&self, k: u32) -> f64 {
        1.0 - 2.0 * self.alpha_at(k)
    }
}

/// Responses per version a two-sample comparison of rates needs for an
/// interval of level `confidence` to exclude a boundary `distance` away from
/// the estimate with probability `power` (normal approximation).
pub fn n_for_rates(p1: f64, p2: f64, distance: f64, confidence: f64, power: f64) -> Option<u64> {
    if !(distance.is_finite() && distance > 0.0) {
        return None;
    }
    let var = p1.clamp(1e-4, 1.0) * (1.0 - p1.clamp(0.0, 0.9999)) + p2.clamp(1e-4, 1.0) * (1.0 - p2.clamp(0.0, 0.9999));
    let zz = z_two_sided(confidence) + z(power);
    Some((zz * zz * var / (distance * distance)).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn wilson_matches_statsmodels() {
        // statsmodels 0.15.0: proportion_confint(81, 263, alpha=0.05, method="wilson")
        // = (0.2552885198782742, 0.36620957698280004)
        let i = wilson(81, 263, 0.95).unwrap();
        assert!(close(i.low, 0.2552885, 1e-6) && close(i.high, 0.3662096, 1e-6), "{i:?}");
        // statsmodels 0.15.0: proportion_confint(0, 10, method="wilson") = (0.0, 0.27753279986288926)
        let i = wilson(0, 10, 0.95).unwrap();
        assert!(close(i.low, 0.0, 1e-9) && close(i.high, 0.2775328, 1e-6), "{i:?}");
        assert_eq!(wilson(1, 0, 0.95), None);
    }

    #[test]
    fn newcombe_matches_the_published_example() {
        // Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10:
        // 56/70 − 48/80 = 0.2000, 95 % interval 0.0524 to 0.3339.
        let i = newcombe_diff(48, 80, 56, 70, 0.95).unwrap();
        assert!(close(i.low, 0.0524, 5e-5) && close(i.high, 0.3339, 5e-5), "{i:?}");
    }

    #[test]
    fn welch_matches_scipy() {
        // Samples [1,2,3,4,5] and [2,4,6,8,10]: difference of means 3.0; Welch
        // df = 5.882352941; scipy 1.17.1 stats.t.ppf(0.975, df) = 2.458823709699146;
        // interval (-0.887741643736975, 6.887741643736975).
        let s = |xs: &[f64]| (xs.len() as u64, xs.iter().sum::<f64>(), xs.iter().map(|x| x * x).sum::<f64>());
        let (n1, s1, q1) = s(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let (n2, s2, q2) = s(&[2.0, 4.0, 6.0, 8.0, 10.0]);
        let i = welch_diff(n1, s1, q1, n2, s2, q2, 0.95).unwrap();
        assert!(close(i.low, -0.8877416, 1e-5) && close(i.high, 6.8877416, 1e-5), "{i:?}");
    }

    #[test]
    fn the_t_quantile_expansion_matches_the_exact_one_from_100_degrees_of_freedom() {
        for df in [100.0, 150.0, 1000.0] {
            for p in [0.975, 0.999, 0.99997] {
                let exact = StudentsT::new(0.0, 1.0, df).unwrap().inverse_cdf(p);
                assert!(close(t_quantile(p, df), exact, 2e-5), "df {df}, p {p}: {} vs {exact}", t_quantile(p, df));
            }
        }
        // 1.959964 (the normal quantile) + (z³ + z) / (4 · 10⁶).
        assert!(close(t_quantile(0.975, 1e6), 1.959966, 1e-5));
    }

    #[test]
    fn quantile_interval_brackets_the_quantile_and_narrows_with_n() {
        let mut small = Histogram::default();
        let mut big = Histogram::default();
        for v in 0..100 {
            small.add(f64::from(v) * 10.0, 10.0, 10);
            big.add(f64::from(v) * 10.0, 10.0, 1000);
        }
        let (a, b) = (quantile_interval(&small, 0.9, 0.95).unwrap(), quantile_interval(&big, 0.9, 0.95).unwrap());
        let truth = big.quantile(0.9).unwrap();
        assert!(a.contains(truth) && b.contains(truth), "{a:?} {b:?} {truth}");
        assert!(b.high - b.low < (a.high - a.low) / 5.0, "{a:?} {b:?}");
    }

    #[test]
    fn look_schedule_spends_at_most_alpha() {
        let s = LookSchedule::default();
        assert_eq!(s.look(99, 100), 0);
        assert_eq!(s.look(100, 100), 1);
        assert_eq!(s.look(149, 100), 1);
        assert_eq!(s.look(150, 100), 2);
        assert_eq!(s.look_at(2, 100), 150);
        let spent: f64 = (1..10_000).map(|k| s.alpha_at(k)).sum();
        assert!(spent < 0.05 && spent > 0.0499, "{spent}");
        assert!(s.confidence_at(1) > 0.93 && s.confidence_at(1) < 0.95);
    }

    #[test]
    fn power_asks_for_more_when_the_boundary_is_closer() {
        let far = n_for_rates(0.01, 0.01, 0.01, 0.95, 0.8).unwrap();
        let near = n_for_rates(0.01, 0.01, 0.005, 0.95, 0.8).unwrap();
        assert!(near.abs_diff(far * 4) <= 4, "{near} vs 4 × {far}");
        // 2 × 0.0099 × (1.96 + 0.8416)² / 0.01² ≈ 1554
        assert!((1500..1600).contains(&far), "{far}");
    }
}
