//! Prediction distributions: the population stability index (PSI) between
//! the challenger's and the champion's prediction bins, and numeric bin
//! edges derived from a champion's observed distribution. Pure: counts in,
//! numbers out.
//!
//! ```text
//! k bins (every bin either version counted, `unparsed` excluded)
//! p_i = (champion_i   + 0.5) / (N + 0.5 k)        N = champion's parsed predictions
//! c_i = (challenger_i + 0.5) / (M + 0.5 k)        M = challenger's parsed predictions
//! PSI(challenger ‖ champion) = Σ_i (c_i − p_i) · ln(c_i / p_i)
//! ```
//!
//! Every term is ≥ 0 (`c − p` and `ln(c / p)` always have the same sign),
//! so PSI is 0 for identical shares and grows with any shift. Rules of thumb:
//! below 0.1 no real change, 0.1–0.25 a moderate one, above 0.25 a large one.
//!
//! **Smoothing.** A bin with no count in one version makes `ln(c / p)`
//! infinite, and small samples leave rare bins empty by chance: PSI would be
//! infinite (or undefined) for a challenger that is fine. Adding 0.5 to every
//! bin's count before normalising (the Jeffreys prior, the same ½ as the
//! Haldane–Anscombe correction of odds ratios) keeps every share above 0,
//! keeps PSI finite, and moves a bin with n counts by less than 0.5 / n of
//! its share, which is nothing once a bin has a few dozen counts. Its cost:
//! with tiny samples PSI is pulled towards 0 (the pseudo-counts look alike in
//! both versions), which is why the gate also needs a minimum number of
//! parsed predictions per version.
//!
//! **Bins.** The bins compared are those that either version counted at
//! least once: Envoy hides counters never incremented, and a bin empty in
//! both versions carries no evidence either way. `unparsed` (a response whose
//! prediction could not be read) is not part of the distribution, because
//! it measures the response format, not the model's output; its share is
//! reported next to PSI so a challenger that stops answering in the expected
//! format is visible (its 5xx and the gates over them catch the worst cases).
//!
//! **Edges.** Numeric bins are only comparable when both versions use the
//! same edges, and the filter's counters for an epoch are named by bin
//! index: edges must be fixed before a rollout's first stage. The spec
//! carries them (`filter.prediction.bins.numeric`), and [`quantile_edges`]
//! (or `canary bin-edges`) derives them from the champion's observed
//! predictions, so that each bin holds about 1/k of the champion's traffic:
//! that is how "edges derived from the champion's distribution and pushed in
//! the configuration" works here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use statrs::function::gamma::{gamma_lr, ln_gamma};

use crate::stats::Interval;
use crate::window::MergedHistogram;

/// Pseudo-count added to every bin before normalising (see the module docs).
pub const SMOOTHING: f64 = 0.5;

/// The bin name of predictions that could not be read.
pub use canary_core::predict::UNPARSED;

/// One bin's part of a PSI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinTerm {
    pub bin: String,
    pub champion: u64,
    pub challenger: u64,
    /// Smoothed shares.
    pub champion_share: f64,
    pub challenger_share: f64,
    /// `(c − p) · ln(c / p)`.
    pub term: f64,
}

/// PSI(challenger ‖ champion) and what it is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    pub value: f64,
    pub bins: Vec<BinTerm>,
    /// Parsed predictions (every bin but `unparsed`).
    pub champion_n: u64,
    pub challenger_n: u64,
    pub champion_unparsed: u64,
    pub challenger_unparsed: u64,
}

impl Psi {
    /// PSI without smoothing (the plug-in estimate), infinite when a bin
    /// is empty in one version only: the value the high bound of
    /// [`psi_bounds`] starts from.
    pub fn raw(&self) -> f64 {
        let (n, m) = (self.champion_n as f64, self.challenger_n as f64);
        self.bins
            .iter()
            .map(|b| {
                let (p, c) = (b.champion as f64 / n, b.challenger as f64 / m);
                match (b.champion, b.challenger) {
                    (0, 0) => 0.0,
                    (0, _) | (_, 0) => f64::INFINITY,
                    _ => (c - p) * (c / p).ln(),
                }
            })
            .sum()
    }

    /// Share of the champion's responses whose prediction was unreadable.
    pub fn champion_unparsed_share(&self) -> Option<f64> {
        share(self.champion_unparsed, self.champion_n)
    }

    pub fn challenger_unparsed_share(&self) -> Option<f64> {
        share(self.challenger_unparsed, self.challenger_n)
    }
}

fn share(unparsed: u64, parsed: u64) -> Option<f64> {
    let total = unparsed.saturating_add(parsed);
    (total > 0).then(|| unparsed as f64 / total as f64)
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.iter().filter(|(bin, _)| bin.as_str() != UNPARSED).fold(0u64, |acc, (_, n)| acc.saturating_add(*n))
}

/// PSI between two versions' prediction bin counts (see the module docs for
/// the formula and the smoothing). `None` when either version has no parsed
/// prediction: there is no distribution to compare.
pub fn psi(champion: &BTreeMap<String, u64>, challenger: &BTreeMap<String, u64>) -> Option<Psi> {
    let (n, m) = (total(champion), total(challenger));
    if n == 0 || m == 0 {
        return None;
    }
    let count = |counts: &BTreeMap<String, u64>, bin: &str| counts.get(bin).copied().unwrap_or(0);
    let mut names: Vec<&String> = champion
        .iter()
        .chain(challenger)
        .filter(|(bin, c)| bin.as_str() != UNPARSED && **c > 0)
        .map(|(b, _)| b)
        .collect();
    names.sort();
    names.dedup();
    let k = names.len() as f64;
    let (pn, cn) = (n as f64 + SMOOTHING * k, m as f64 + SMOOTHING * k);
    let bins: Vec<BinTerm> = names
        .into_iter()
        .map(|bin| {
            let (a, b) = (count(champion, bin), count(challenger, bin));
            let p = (a as f64 + SMOOTHING) / pn;
            let c = (b as f64 + SMOOTHING) / cn;
            BinTerm {
                bin: bin.clone(),
                champion: a,
                challenger: b,
                champion_share: p,
                challenger_share: c,
                term: (c - p) * (c / p).ln(),
            }
        })
        .collect();
    Some(Psi {
        value: bins.iter().map(|t| t.term).sum::<f64>().max(0.0),
        bins,
        champion_n: n,
        challenger_n: m,
        champion_unparsed: count(champion, UNPARSED),
        challenger_unparsed: count(challenger, UNPARSED),
    })
}

/// Why no edges could be derived.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EdgesError {
    #[error("{bins} bins asked: between 2 and {} are possible", MAX_EDGES + 1)]
    Bins { bins: usize },
    #[error("no values to derive edges from")]
    Empty,
    #[error("value #{index} is {value}: only finite numbers can be binned")]
    NotFinite { index: usize, value: f64 },
    #[error("every value is {0}: one bin holds them all, there is no edge to draw")]
    AllEqual(f64),
}

/// Most edges the filter accepts.
pub const MAX_EDGES: usize = canary_core::predict::MAX_BINS;

/// CDF at `x` of the noncentral χ² with `nu` degrees of freedom and
/// noncentrality `lambda`: the Poisson(λ/2) mixture of central χ²(ν + 2j)
/// (Johnson, Kotz & Balakrishnan, ch. 29), summed over the Poisson weights
/// that matter (±12 standard deviations around λ/2).
pub fn ncx2_cdf(x: f64, nu: f64, lambda: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let mu = 0.5 * lambda.max(0.0);
    let central = |j: f64| gamma_lr(0.5 * nu + j, 0.5 * x);
    if mu == 0.0 {
        return central(0.0);
    }
    let spread = 12.0 * mu.sqrt() + 12.0;
    let (first, last) = ((mu - spread).max(0.0).floor(), (mu + spread).ceil());
    let mut sum = 0.0;
    let mut j = first;
    while j <= last {
        let log_weight = -mu + j * mu.ln() - ln_gamma(j + 1.0);
        sum += log_weight.exp() * central(j);
        j += 1.0;
    }
    sum.clamp(0.0, 1.0)
}

/// Sankaran's closed-form approximation of the noncentral χ² CDF (Sankaran,
/// Biometrika 1963, the "second" approximation: a power transform of
/// X/(ν + λ) taken as normal). Within about 5e-3 of the exact CDF where the
/// gate works (checked against scipy below), and a few hundred times cheaper
/// at large λ, whose Poisson sum [`ncx2_cdf`] walks term by term: it serves
/// the "needs ~N more" projection, which evaluates the CDF at up to 80
/// future looks every time the gate is inconclusive. Verdicts use the exact
/// CDF.
pub fn ncx2_cdf_approx(x: f64, nu: f64, lambda: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let (k, l) = (nu, lambda.max(0.0));
    let h = 1.0 - 2.0 / 3.0 * (k + l) * (k + 3.0 * l) / (k + 2.0 * l).powi(2);
    let p = (k + 2.0 * l) / (k + l).powi(2);
    let m = (h - 1.0) * (1.0 - 3.0 * h);
    let centre = 1.0 + h * p * (h - 1.0 - 0.5 * (2.0 - h) * m * p);
    let scale = h * (2.0 * p).sqrt() * (1.0 + 0.5 * m * p);
    crate::stats::normal_cdf(((x / (k + l)).powf(h) - centre) / scale)
}

/// Whether the PSI gate, seeing `value` with `n1` and `n2` predictions over
/// `bins` bins, would decide against `limit` (fail at `alpha_low`, pass at
/// `alpha_high`, as [`psi_bounds`]): the low bound is above the limit
/// exactly when the observed statistic is beyond the (1 − `alpha_low`)
/// quantile at λ = limit / c, and the high bound below it when the
/// statistic is below the `alpha_high` quantile there. One CDF
/// evaluation instead of two inversions (approximate: see
/// [`ncx2_cdf_approx`]); what the projection of "needs ~N more" asks.
pub fn psi_decides(
    value: f64,
    bins: usize,
    (n1, n2): (f64, f64),
    limit: f64,
    (alpha_low, alpha_high): (f64, f64),
) -> bool {
    let nu = (bins.max(2) - 1) as f64;
    let c = 1.0 / n1 + 1.0 / n2;
    let f = ncx2_cdf_approx(value.max(0.0) / c, nu, limit / c);
    f > 1.0 - alpha_low || f < alpha_high
}

/// Bounds on the population PSI over `bins` bins with `n1` champion and
/// `n2` challenger predictions: the low bound is exceeded with probability
/// ≤ `alpha_low`, the high bound undercut with probability ≤ `alpha_high`.
/// `value` is the observed PSI twice: smoothed ([`psi`]), which the low
/// bound starts from (smoothing only lowers it: conservative for a
/// failure), and unsmoothed ([`Psi::raw`]), which the high bound starts from
/// (smoothing would lower it too, and make a pass too easy at small
/// counts; an empty bin on one side only is infinite: no pass yet). The estimator divided by `c = 1/n1 + 1/n2`
/// is asymptotically noncentral χ² with `bins − 1` degrees of freedom and
/// noncentrality PSI / c (PSI is the symmetrised Kullback–Leibler
/// divergence, whose plug-in estimator behaves like the two-sample
/// likelihood-ratio statistic; Pardo, "Statistical inference based on
/// divergence measures", 2006, ch. 3), and the bounds invert its tails.
/// Unlike a normal approximation of the same statistic, the χ² keeps the
/// right skew that small samples have, so a challenger at the limit is not
/// failed more often than `alpha_low` at early looks (measured in
/// [`crate::psi_calibration`]).
pub fn psi_bounds(value: (f64, f64), bins: usize, n1: u64, n2: u64, alpha_low: f64, alpha_high: f64) -> Interval {
    if n1 == 0 || n2 == 0 || value.0.is_nan() || value.1.is_nan() {
        return Interval { low: 0.0, high: f64::INFINITY };
    }
    let nu = (bins.max(2) - 1) as f64;
    let c = 1.0 / n1 as f64 + 1.0 / n2 as f64;
    // The CDF at t falls as λ grows: the λ at which it crosses `level`.
    let crossing = |t: f64, level: f64| -> f64 {
        if !t.is_finite() {
            return f64::INFINITY;
        }
        if ncx2_cdf(t, nu, 0.0) <= level {
            return 0.0;
        }
        let mut hi = t + nu + 10.0;
        while ncx2_cdf(t, nu, hi) > level {
            hi *= 2.0;
        }
        let mut lo = 0.0;
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if ncx2_cdf(t, nu, mid) > level {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    };
    let t = |v: f64| v.max(0.0) / c;
    Interval { low: crossing(t(value.0), 1.0 - alpha_low) * c, high: crossing(t(value.1), alpha_high) * c }
}

fn check_bins(bins: usize) -> Result<(), EdgesError> {
    if (2..=MAX_EDGES + 1).contains(&bins) {
        Ok(())
    } else {
        Err(EdgesError::Bins { bins })
    }
}

/// Keeps edges that rise strictly and lie above `floor` (an edge at or
/// below the smallest value would leave the first bin empty).
fn rising(edges: impl IntoIterator<Item = f64>, floor: f64) -> Vec<f64> {
    let mut out: Vec<f64> = vec![];
    for e in edges {
        if e.is_finite() && e > floor && out.last().is_none_or(|last| e > *last) {
            out.push(e);
        }
    }
    out
}

/// `bins − 1` edges at the i/bins quantiles of observed values, so that
/// each bin `[e(i−1), e(i))` holds about 1/bins of them. An edge is the
/// midpoint between the two values around the quantile's rank (so exactly
/// round(i·n/bins) values fall below it when values are distinct). Ties can
/// merge quantiles: duplicates are dropped, so fewer edges may come back,
/// always strictly rising, as the filter requires.
pub fn quantile_edges(values: &[f64], bins: usize) -> Result<Vec<f64>, EdgesError> {
    check_bins(bins)?;
    if let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EdgesError::NotFinite { index, value: *value });
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (Some(&first), n) = (sorted.first(), sorted.len()) else { return Err(EdgesError::Empty) };
    let edges = rising(
        (1..bins).map(|i| {
            // Rank round(i·n/bins), kept inside 1..n so both neighbours exist.
            let j = ((i * n + bins / 2) / bins).clamp(1, n.saturating_sub(1).max(1));
            let (lo, hi) = (sorted[j - 1], sorted.get(j).copied().unwrap_or(sorted[j - 1]));
            lo + (hi - lo) / 2.0
        }),
        first,
    );
    if edges.is_empty() {
        return Err(EdgesError::AllEqual(first));
    }
    Ok(edges)
}

/// The same from a merged histogram (e.g. a latency-like distribution the
/// champion reported): edges at its interpolated i/bins quantiles.
pub fn histogram_edges(histogram: &MergedHistogram, bins: usize) -> Result<Vec<f64>, EdgesError> {
    check_bins(bins)?;
    let floor = histogram.buckets().next().map(|b| b.lower).ok_or(EdgesError::Empty)?;
    let edges = rising((1..bins).filter_map(|i| histogram.quantile(i as f64 / bins as f64)), floor);
    if edges.is_empty() {
        return Err(EdgesError::AllEqual(floor));
    }
    Ok(edges)
}

#[cfg(test)]
mod tests {
    #[test]
    fn noncentral_chi_square_matches_scipy() {
        // scipy 1.17.1: ncx2.cdf(20.0, 9, 3.0) = 0.9144153922263544
        assert!((super::ncx2_cdf(20.0, 9.0, 3.0) - 0.9144153922263544).abs() < 1e-9);
        // ncx2.sf(400.0, 19, 300.0) = 0.014038518549070539
        assert!((1.0 - super::ncx2_cdf(400.0, 19.0, 300.0) - 0.014038518549070539).abs() < 1e-9);
        // ncx2.ppf(0.99, 9, 3.0) = 28.097202087459728: the CDF there is 0.99
        assert!((super::ncx2_cdf(28.097202087459728, 9.0, 3.0) - 0.99).abs() < 1e-9);
        // ncx2.ppf(0.01, 9, 300.0) = 232.26863705712518
        assert!((super::ncx2_cdf(232.26863705712518, 9.0, 300.0) - 0.01).abs() < 1e-9);
    }

    #[test]
    fn sankaran_approximation_is_within_half_a_percent_of_scipy() {
        // scipy 1.17.1 ncx2.cdf(x, ν, λ).
        for (x, nu, lambda, scipy) in [
            (20.0, 9.0, 3.0, 0.9144153922263544),
            (400.0, 19.0, 300.0, 0.9859614814509301),
            (232.26863705712518, 9.0, 300.0, 0.010000000000000037),
            (15.0, 3.0, 5.0, 0.9024475373172087),
            (60.0, 9.0, 40.0, 0.8021984880721734),
            (2000.0, 9.0, 2000.0, 0.46436208065378165),
            (1900.0, 19.0, 2000.0, 0.0907376806987051),
            (5.0, 1.0, 0.5, 0.9352386432171614),
        ] {
            let a = super::ncx2_cdf_approx(x, nu, lambda);
            assert!((a - scipy).abs() < 5e-3, "ncx2.cdf({x}, {nu}, {lambda}) = {scipy}, approximated {a}");
        }
    }

    #[test]
    fn psi_decides_agrees_with_the_bounds() {
        // Clear cases either way and an undecided one, 10 bins.
        for (value, n, limit, decided) in
            [(0.3, 2000.0, 0.1, true), (0.02, 5000.0, 0.1, true), (0.1, 500.0, 0.1, false)]
        {
            let b = super::psi_bounds((value, value), 10, n as u64, n as u64, 0.01, 0.01);
            assert_eq!(b.low > limit || b.high < limit, decided, "{b:?}");
            assert_eq!(super::psi_decides(value, 10, (n, n), limit, (0.01, 0.01)), decided, "{value} at {n}");
        }
    }

    #[test]
    fn psi_bounds_invert_the_tails() {
        // 10 bins, 100 predictions each (c = 0.02), observed PSI 0.6 (t = 30).
        let i = super::psi_bounds((0.6, 0.6), 10, 100, 100, 0.01, 0.01);
        // At λ = low / c the observed t is the 99th percentile; at high / c the 1st.
        assert!((super::ncx2_cdf(30.0, 9.0, i.low / 0.02) - 0.99).abs() < 1e-6, "{i:?}");
        assert!((super::ncx2_cdf(30.0, 9.0, i.high / 0.02) - 0.01).abs() < 1e-6, "{i:?}");
        assert!(0.0 < i.low && i.low < 0.6 && 0.6 < i.high, "{i:?}");
        // Too little to say anything: no lower bound above 0.
        assert_eq!(super::psi_bounds((0.3, 0.3), 10, 100, 100, 0.01, 0.01).low, 0.0);
        // An empty bin on one side only: no upper bound (no pass).
        assert_eq!(super::psi_bounds((0.3, f64::INFINITY), 10, 100, 100, 0.01, 0.01).high, f64::INFINITY);
    }

    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn psi_of_a_shifted_quartile_distribution_by_hand() {
        // Champion 24 per bin: (24 + 0.5) / (96 + 4·0.5) = 24.5 / 98 = 0.25 each.
        // Challenger 9, 24, 24, 41: (x + 0.5) / (98 + 2) = 0.095, 0.245, 0.245, 0.415.
        //   (0.095 − 0.25) · ln(0.095 / 0.25) = −0.155 · −0.967584 = 0.149976
        //   (0.245 − 0.25) · ln(0.245 / 0.25) = −0.005 · −0.020203 = 0.000101   (× 2)
        //   (0.415 − 0.25) · ln(0.415 / 0.25) =  0.165 ·  0.506818 = 0.083625
        //   PSI = 0.149976 + 0.000202 + 0.083625 = 0.233803
        let a = counts(&[("b0", 24), ("b1", 24), ("b2", 24), ("b3", 24)]);
        let b = counts(&[("b0", 9), ("b1", 24), ("b2", 24), ("b3", 41)]);
        let p = psi(&a, &b).unwrap();
        assert!(close(p.value, 0.233803), "{}", p.value);
        assert!(close(p.bins[0].challenger_share, 0.095) && close(p.bins[3].champion_share, 0.25));
        assert!(close(p.bins[0].term, 0.149976), "{:?}", p.bins[0]);
        assert_eq!((p.champion_n, p.challenger_n), (96, 98));
    }

    #[test]
    fn psi_with_a_bin_empty_in_one_version_stays_finite_by_hand() {
        // Champion cat 6, dog 3, bird 0; challenger 3, 3, 3. k = 3.
        //   champion   (6.5, 3.5, 0.5) / 10.5 = 13/21, 7/21, 1/21
        //   challenger (3.5, 3.5, 3.5) / 10.5 =  7/21, 7/21, 7/21
        //   cat:  (7/21 − 13/21) · ln(7/13) = (−6/21) · (−0.619039) = 0.176868
        //   dog:  0
        //   bird: (7/21 − 1/21) · ln(7)     = ( 6/21) · ( 1.945910) = 0.555974
        //   PSI = (6/21) · (0.619039 + 1.945910) = 0.732843
        // Without smoothing the bird term would be (1/3 − 0) · ln(1/3 / 0) = ∞.
        let a = counts(&[("cat", 6), ("dog", 3)]);
        let b = counts(&[("cat", 3), ("dog", 3), ("bird", 3)]);
        let p = psi(&a, &b).unwrap();
        assert!(close(p.value, 0.732843), "{}", p.value);
        let bird = p.bins.iter().find(|t| t.bin == "bird").unwrap();
        assert!(close(bird.champion_share, 1.0 / 21.0) && close(bird.term, 0.555974), "{bird:?}");
    }

    #[test]
    fn identical_shares_give_zero_and_psi_is_symmetric_in_sign() {
        let a = counts(&[("b0", 10), ("b1", 30)]);
        let b = counts(&[("b0", 100), ("b1", 300)]);
        // Smoothing moves the small sample a little: b0 = 10.5/41 = 0.25610 vs
        // 100.5/401 = 0.25062: 2 · 0.00547 · ln(0.25610/0.25062) ≈ 0.00016 (both bins).
        let p = psi(&a, &b).unwrap();
        assert!(p.value > 0.0 && p.value < 2e-4, "{}", p.value);
        assert_eq!(psi(&a, &a).unwrap().value, 0.0);
        let c = counts(&[("b0", 30), ("b1", 10)]);
        assert!(psi(&a, &c).unwrap().value > 0.0 && psi(&c, &a).unwrap().value > 0.0);
        assert!(close(psi(&a, &c).unwrap().value, psi(&c, &a).unwrap().value), "same k and n: symmetric");
    }

    #[test]
    fn unparsed_is_left_out_of_the_distribution_and_reported() {
        let a = counts(&[("b0", 24), ("b1", 24), ("b2", 24), ("b3", 24), ("unparsed", 4)]);
        let b = counts(&[("b0", 9), ("b1", 24), ("b2", 24), ("b3", 41), ("unparsed", 98)]);
        let p = psi(&a, &b).unwrap();
        assert!(close(p.value, 0.233803), "same as without unparsed: {}", p.value);
        assert_eq!((p.champion_unparsed, p.challenger_unparsed), (4, 98));
        assert_eq!((p.champion_unparsed_share(), p.challenger_unparsed_share()), (Some(0.04), Some(0.5)));
        assert!(p.bins.iter().all(|t| t.bin != UNPARSED));
    }

    #[test]
    fn no_parsed_prediction_means_no_psi() {
        let a = counts(&[("b0", 5)]);
        assert_eq!(psi(&a, &counts(&[])), None);
        assert_eq!(psi(&a, &counts(&[("unparsed", 50)])), None);
        assert_eq!(psi(&counts(&[("b0", 0)]), &a), None);
        // One bin in both: nothing can differ.
        assert_eq!(psi(&a, &counts(&[("b0", 500)])).unwrap().value, 0.0);
    }

    #[test]
    fn the_integration_tests_shift_gives_psi_near_a_half() {
        // Uniform u in [0,1), edges at the quartiles, challenger x = u + s:
        // shares (0.25 − s, 0.25, 0.25, 0.25 + s), so
        // PSI = s · ln((0.25 + s) / (0.25 − s)) = s · ln((1 + 4s) / (1 − 4s)); s = 0.2085 → 0.501.
        let s = 0.2085_f64;
        let exact = s * ((1.0 + 4.0 * s) / (1.0 - 4.0 * s)).ln();
        assert!((exact - 0.501).abs() < 1e-3, "{exact}");
        let n = 1_000_000.0;
        let a = counts(&[("b0", 250_000), ("b1", 250_000), ("b2", 250_000), ("b3", 250_000)]);
        let shares = [0.25 - s, 0.25, 0.25, 0.25 + s];
        let b: BTreeMap<String, u64> =
            shares.iter().enumerate().map(|(i, x)| (format!("b{i}"), (x * n) as u64)).collect();
        assert!((psi(&a, &b).unwrap().value - exact).abs() < 1e-3);
    }

    #[test]
    fn quantile_edges_split_values_into_equal_bins() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile_edges(&values, 4).unwrap(), vec![25.5, 50.5, 75.5]);
        assert_eq!(quantile_edges(&values, 2).unwrap(), vec![50.5]);
        // Order does not matter.
        let mut shuffled = values.clone();
        shuffled.reverse();
        assert_eq!(quantile_edges(&shuffled, 4).unwrap(), vec![25.5, 50.5, 75.5]);
        // Three values, three bins: one value per bin.
        let e = quantile_edges(&[0.1, 0.5, 0.9], 3).unwrap();
        assert!(e.len() == 2 && close(e[0], 0.3) && close(e[1], 0.7), "{e:?}");
    }

    #[test]
    fn quantile_edges_drop_ties_and_never_leave_the_first_bin_empty() {
        // n = 8: ranks 2, 4, 6 → midpoints 1, 1.5, 2.5; the 1 would leave b0 empty.
        assert_eq!(quantile_edges(&[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0], 4).unwrap(), vec![1.5, 2.5]);
        assert_eq!(quantile_edges(&[7.0; 10], 4), Err(EdgesError::AllEqual(7.0)));
        assert_eq!(quantile_edges(&[7.0], 4), Err(EdgesError::AllEqual(7.0)));
        for (values, bins) in [(vec![0.0, 1.0, 1.0, 2.0, 5.0, 5.0, 5.0, 9.0], 8), (vec![3.0, 1.0, 2.0], 65)] {
            let e = quantile_edges(&values, bins).unwrap();
            assert!(e.windows(2).all(|w| w[0] < w[1]), "{e:?}");
        }
    }

    #[test]
    fn quantile_edges_refuse_what_cannot_be_binned() {
        assert_eq!(quantile_edges(&[], 4), Err(EdgesError::Empty));
        assert_eq!(quantile_edges(&[1.0, 2.0], 1), Err(EdgesError::Bins { bins: 1 }));
        assert_eq!(quantile_edges(&[1.0, 2.0], 66), Err(EdgesError::Bins { bins: 66 }));
        // NaN is not equal to itself: compare the index only.
        assert!(matches!(quantile_edges(&[1.0, f64::NAN], 2), Err(EdgesError::NotFinite { index: 1, .. })));
        let err = quantile_edges(&[1.0, f64::INFINITY], 2).unwrap_err();
        assert_eq!(err.to_string(), "value #1 is inf: only finite numbers can be binned");
    }

    #[test]
    fn edges_from_a_merged_histogram() {
        let mut h = MergedHistogram::default();
        // 100 samples spread evenly over [0, 400): 25 per 100-wide bucket.
        for lower in [0.0, 100.0, 200.0, 300.0] {
            h.add(lower, 100.0, 25);
        }
        assert_eq!(histogram_edges(&h, 4).unwrap(), vec![100.0, 200.0, 300.0]);
        assert_eq!(histogram_edges(&h, 8).unwrap(), vec![50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0]);
        assert_eq!(histogram_edges(&MergedHistogram::default(), 4), Err(EdgesError::Empty));
        let mut narrow = MergedHistogram::default();
        narrow.add(5.0, 0.0, 10);
        assert_eq!(histogram_edges(&narrow, 4), Err(EdgesError::AllEqual(5.0)));
    }
}
