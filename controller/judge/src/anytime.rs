//! Anytime-valid statistics for the default gate method (`gates.method:
//! anytime`): confidence sequences and e-processes whose error rates hold
//! however often the controller looks, however unequal the two versions'
//! traffic and however small the counts. Pure functions of counts.
//!
//! **Confidence sequence for a mean in [0, 1]** ([`mean_cs`]). Robbins'
//! beta-binomial mixture martingale: for `s` successes in `n` trials,
//! `M_n(θ) = B(a + s, b + n − s) / B(a, b) / (θ^s (1 − θ)^(n − s))` is a
//! nonnegative martingale with mean 1 under θ, so by Ville's inequality
//! `P(∃n: M_n(θ) ≥ 1/α) ≤ α`, and `{θ : M_n(θ) < 1/α}` covers θ at every n
//! at once (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon, Ann. Statist.
//! 2021, the "conjugate mixture" boundaries). No normal approximation:
//! exact at 0 events and at 1 response. The same likelihood ratio is a
//! supermartingale for any outcome bounded in [0, 1] with mean θ (it is
//! convex in the outcome), so `s` may be a sum of [0, 1] values (labels).
//!
//! **Comparing two rates** ([`RateProcess`]). The champion's rate p₁ gets a
//! confidence sequence at 0.2 α; the challenger's outcomes feed a one-sample
//! e-process against the boundary that sequence implies:
//! - *harm* (roll back): H₀ "p₂ ≤ p₁ + δ". On the event that the champion's
//!   sequence covers p₁ (probability ≥ 1 − 0.2 α), H₀ implies p₂ ≤ U₁ + δ, and
//!   `E = Π q(batch) / sup_{p ≤ U₁ + δ} L(p)` is at most a martingale with
//!   mean 1. Its numerator is a fixed mixture of likelihoods under
//!   alternatives anchored at the champion's current estimate p̂₁:
//!   p̂₁ + 2δ (weight 0.45), p̂₁ + 4δ, p̂₁ + 8δ (0.15 each), and (0.25) the
//!   challenger's own running estimate from earlier batches, kept above
//!   p̂₁ + δ ([`ADAPTIVE`]: power one against any harm) — the likelihood-ratio
//!   (SPRT) design of Wald, which reaches a verdict far sooner than a
//!   confidence-interval test when the truth is near an alternative. The
//!   anchor may use the champion's data (independent of the challenger's),
//!   so the product stays a martingale. Roll back when E ≥ 1/(0.8 α).
//! - *no harm proven* (promote): H₀ "p₂ ≥ p₁ + δ", boundary L₁ + δ,
//!   alternatives p̂₁ (0.55), p̂₁ − δ and p̂₁ + δ/2 (0.1 each) and the running
//!   estimate kept below p̂₁ + δ (0.25).
//!
//! The champion's sequence gets 0.2 α ([`CHAMPION_SHARE`]) and the
//! challenger's e-process 0.8 α, so each test errs with probability ≤ α.
//!
//! So a challenger within tolerance is rolled back with probability ≤ α,
//! and one at or beyond tolerance passes with probability ≤ α, over any
//! number of looks and any traffic split (each version's traffic must not
//! depend on its outcomes: the hash split guarantees that). A challenger in
//! between (δ < d < 2δ) may take long: the stage's terminal rule ends that.
//! The assumption is a rate constant within the stage's window; the
//! guardrails (see [`crate::rollout`]) exclude incidents that break it.
//! Lindon & Malek (NeurIPS 2022) give a conditional construction for
//! *ratios* of rates; for the additive tolerance operators write, the
//! champion-bound construction above is the exact one we use.
//!
//! **Quantile bounds** ([`quantile_bounds`]). For the q-quantile ξ the
//! indicators 1{X < ξ} and 1{X ≤ ξ} are Bernoulli with means ≤ q and ≥ q: a
//! confidence sequence for their counts bounds the ranks of the order
//! statistics on either side of ξ (Howard & Ramdas, "Sequential estimation
//! of quantiles", Bernoulli 2022). Mapped to a histogram conservatively:
//! the lower bound at its bucket's lower edge, the upper at its bucket's
//! upper edge, and no upper bound at all (not enough samples, or the rank
//! lies in the open +Inf bucket) instead of the sample maximum.

use serde::{Deserialize, Serialize};
use statrs::function::beta::ln_beta;

use crate::stats::Interval;
use crate::window::MergedHistogram as Histogram;

/// The mixture's prior, Beta(½, ½) (Jeffreys): no preferred rate.
const PRIOR: (f64, f64) = (0.5, 0.5);

/// `x · ln y` with `0 · ln 0 = 0`.
fn xlny(x: f64, y: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x * y.ln()
    }
}

/// Bernoulli log-likelihood of `s` successes in `n` at rate `p`.
pub fn log_likelihood(s: f64, n: f64, p: f64) -> f64 {
    xlny(s, p) + xlny(n - s, 1.0 - p)
}

/// ln M_n(θ) of the beta-binomial mixture martingale.
pub fn log_mixture(s: f64, n: f64, theta: f64) -> f64 {
    let (a, b) = PRIOR;
    ln_beta(a + s, b + n - s) - ln_beta(a, b) - log_likelihood(s, n, theta)
}

/// The confidence sequence `{θ : M_n(θ) < 1/α}` for a mean in [0, 1] after
/// `s` (sum of outcomes) in `n`: valid at every `n` simultaneously. The
/// whole [0, 1] for `n = 0`.
pub fn mean_cs(s: f64, n: f64, alpha: f64) -> Interval {
    if n <= 0.0 || !(s.is_finite() && n.is_finite()) {
        return Interval { low: 0.0, high: 1.0 };
    }
    let s = s.clamp(0.0, n);
    let level = (1.0 / alpha).ln();
    let inside = |theta: f64| log_mixture(s, n, theta) < level;
    let p = s / n;
    // M is smallest at θ = p (the mixture never exceeds the maximum
    // likelihood), so the set is an interval around p: bisect each side.
    let edge = |mut good: f64, mut bad: f64| {
        for _ in 0..60 {
            let mid = 0.5 * (good + bad);
            if inside(mid) {
                good = mid;
            } else {
                bad = mid;
            }
        }
        good
    };
    let low = if inside(0.0) { 0.0 } else { edge(p, 0.0) };
    let high = if inside(1.0) { 1.0 } else { edge(p, 1.0) };
    Interval { low, high }
}

/// Alternatives of the harm test: (weight, multiple of the tolerance above
/// the champion's estimate). The rest of the weight, [`ADAPTIVE`], goes to
/// the challenger's own running estimate.
const HARM: [(f64, f64); 3] = [(0.45, 2.0), (0.15, 4.0), (0.15, 8.0)];
/// Alternatives of the no-harm test.
const FINE: [(f64, f64); 3] = [(0.55, 0.0), (0.1, -1.0), (0.1, 0.5)];
/// Weight of the adaptive alternative: each batch is scored under the
/// challenger's rate estimated from the batches before it (predictable, so
/// the product stays a martingale under the null; Robbins & Siegmund's
/// plug-in). The fixed alternatives are fast when the truth is near one of
/// them; for a challenger between the tolerance and 2 × it (1.2 δ, say) the
/// likelihood under 2 δ falls *behind* the null's, so without this
/// component the harm test would never decide; with it, every challenger
/// beyond the tolerance is rolled back eventually (power one).
const ADAPTIVE: f64 = 0.25;

/// Smallest and largest rate an alternative may take (a likelihood of 0
/// would make one event end the component for good).
const EDGE: f64 = 1e-6;

/// The challenger's side of a two-rate comparison: what it has folded in so
/// far and the log-likelihood of those batches under each alternative. It
/// lives in the gate result and the rollout state for the stage, and starts
/// again when the window does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateProcess {
    /// Challenger trials and events (a sum of [0, 1] outcomes) folded in.
    pub n: f64,
    pub s: f64,
    /// ln L of the folded batches under each harm alternative.
    pub harm: [f64; 3],
    /// ln L of the folded batches under each no-harm alternative.
    pub fine: [f64; 3],
    /// ln L of the folded batches under the adaptive alternative of each
    /// test (`None` in a process recorded before it existed: that component
    /// then counts for nothing, which only makes the test slower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harm_adaptive: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_adaptive: Option<f64>,
}

/// The verdicts of both tests at one look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateVerdict {
    /// ln E of the harm test (roll back at ≥ ln [`threshold`]).
    pub log_e_harm: f64,
    /// ln E of the no-harm test (proven at ≥ ln [`threshold`]).
    pub log_e_fine: f64,
    /// The champion's confidence sequence at 0.2 α.
    pub champion: Interval,
    pub harm: bool,
    pub fine: bool,
}

/// ln of the mixture Σ wₖ Lₖ of the alternatives' likelihoods (the fixed
/// ones and the adaptive one), from their logs (without allocating: it runs
/// at every look of every simulated run).
fn log_mixture_of(alternatives: &[(f64, f64); 3], log_likelihoods: [f64; 3], adaptive: Option<f64>) -> f64 {
    let terms: [f64; 4] = std::array::from_fn(|k| match k {
        3 => adaptive.map_or(f64::NEG_INFINITY, |l| ADAPTIVE.ln() + l),
        _ => alternatives[k].0.ln() + log_likelihoods[k],
    });
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + terms.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

impl RateProcess {
    /// Folds in the challenger's cumulative `(s, n)` (events, trials) since
    /// the last update, with alternatives anchored at `anchor` (the
    /// champion's current rate estimate) and tolerance `tol` (a rate). A
    /// window that went backwards (a new window) starts the process again.
    pub fn update(&mut self, s: f64, n: f64, anchor: f64, tol: f64) {
        let (dn, ds) = (n - self.n, s - self.s);
        if dn < 0.0 || ds < -1e-9 || ds > dn + 1e-9 {
            *self = RateProcess::default();
            return self.update(s, n, anchor, tol);
        }
        if dn == 0.0 {
            return;
        }
        let ds = ds.clamp(0.0, dn);
        let at = |m: f64| (anchor + m * tol).clamp(EDGE, 1.0 - EDGE);
        for (k, &(_, m)) in HARM.iter().enumerate() {
            self.harm[k] += log_likelihood(ds, dn, at(m));
        }
        for (k, &(_, m)) in FINE.iter().enumerate() {
            self.fine[k] += log_likelihood(ds, dn, at(m));
        }
        // The adaptive alternative from the batches before this one only,
        // kept on its test's side of the margin (a first batch has no
        // estimate: the main alternative stands in).
        let (harm_q, fine_q) = if self.n > 0.0 {
            let q = (self.s + 0.5) / (self.n + 1.0);
            (q.max(at(1.0)), q.min(at(1.0)))
        } else {
            (at(HARM[0].1), at(FINE[0].1))
        };
        if self.n == 0.0 {
            (self.harm_adaptive, self.fine_adaptive) = (Some(0.0), Some(0.0));
        }
        if let Some(l) = &mut self.harm_adaptive {
            *l += log_likelihood(ds, dn, harm_q.clamp(EDGE, 1.0 - EDGE));
        }
        if let Some(l) = &mut self.fine_adaptive {
            *l += log_likelihood(ds, dn, fine_q.clamp(EDGE, 1.0 - EDGE));
        }
        self.n = n;
        self.s = s;
    }

    /// ln E of the harm test against the null `p ≤ ceiling`.
    pub fn log_e_harm(&self, ceiling: f64) -> f64 {
        if self.n == 0.0 || ceiling >= 1.0 {
            return 0.0;
        }
        let num = log_mixture_of(&HARM, self.harm, self.harm_adaptive);
        let p = (self.s / self.n).min(ceiling.max(0.0));
        num - log_likelihood(self.s, self.n, p)
    }

    /// ln E of the no-harm test against the null `p ≥ floor`.
    pub fn log_e_fine(&self, floor: f64) -> f64 {
        if self.n == 0.0 || floor <= 0.0 {
            return 0.0;
        }
        let num = log_mixture_of(&FINE, self.fine, self.fine_adaptive);
        let p = (self.s / self.n).max(floor.min(1.0));
        num - log_likelihood(self.s, self.n, p)
    }

    /// Both tests at level `alpha` with the champion's `(s1, n1)`:
    /// "higher is worse" rates, tolerance `tol`.
    pub fn verdict(&self, s1: f64, n1: f64, tol: f64, alpha: f64) -> RateVerdict {
        let champion = mean_cs(s1, n1, alpha * CHAMPION_SHARE);
        let log_e_harm = self.log_e_harm(champion.high + tol);
        let log_e_fine = self.log_e_fine(champion.low + tol);
        let level = threshold(alpha).ln();
        let harm = log_e_harm >= level;
        RateVerdict { log_e_harm, log_e_fine, champion, harm, fine: !harm && log_e_fine >= level }
    }

    /// The interval of the difference (challenger − champion) that the
    /// challenger's sequence at 0.2 α and the verdict's `champion` sequence
    /// imply: valid at level 0.4 α at every look. For the report only (the
    /// tests decide), so it is computed once per evaluation, not for every
    /// projection or simulated look.
    pub fn difference(&self, champion: Interval, alpha: f64) -> Interval {
        let challenger = mean_cs(self.s, self.n, alpha * CHAMPION_SHARE);
        Interval { low: challenger.low - champion.high, high: challenger.high - champion.low }
    }

    /// The look this process would reach if the sample grew `t`-fold with
    /// the rates seen so far (each alternative's likelihood per trial kept,
    /// the champion's sample grown alike): what "needs ~N more" projects.
    pub fn projected(&self, t: f64) -> RateProcess {
        RateProcess {
            n: self.n * t,
            s: self.s * t,
            harm: self.harm.map(|l| l * t),
            fine: self.fine.map(|l| l * t),
            harm_adaptive: self.harm_adaptive.map(|l| l * t),
            fine_adaptive: self.fine_adaptive.map(|l| l * t),
        }
    }
}

/// The share of α spent on the champion's confidence sequence; the rest
/// goes to the challenger's e-process. The champion usually has far more
/// traffic (99:1 in a 1 % stage), so a small share costs it little width.
pub const CHAMPION_SHARE: f64 = 0.2;

/// The e-value at which a rate test decides at level `alpha`.
pub fn threshold(alpha: f64) -> f64 {
    1.0 / (alpha * (1.0 - CHAMPION_SHARE))
}

/// The champion's rate estimate the alternatives are anchored at (add-½,
/// so 0 events anchor just above 0).
pub fn anchor(s1: f64, n1: f64) -> f64 {
    (s1 + 0.5) / (n1 + 1.0)
}

/// Challenger responses with which the harm test, fed its expected counts,
/// rolls back a challenger erring `harm · tol` more often than a champion
/// with no errors that has `ratio` times its traffic (the sample the default
/// `min_requests` is derived from).
pub fn responses_to_detect(tol: f64, alpha: f64, ratio: f64, harm: f64) -> u64 {
    let detects = |n: u64| {
        let nf = n as f64;
        let mut p = RateProcess::default();
        p.update((harm * tol * nf).round(), nf, anchor(0.0, nf * ratio), tol);
        p.verdict(0.0, nf * ratio, tol, alpha).harm
    };
    smallest(8, 1 << 40, detects)
}

/// The smallest `n ≥ start` with `pred(n)`, for `pred` monotone: doubling
/// from `start`, then a binary search within the last doubling; `cap`
/// (or the first doubling past it) when none up to there.
fn smallest(start: u64, cap: u64, pred: impl Fn(u64) -> bool) -> u64 {
    let mut n = start.max(1);
    while !pred(n) {
        if n >= cap {
            return n;
        }
        n *= 2;
    }
    let lo = n / 2;
    lo + first(n - lo, |d| pred(lo + d))
}

/// The smallest `c` in `0..=n` with `pred(c)`, for `pred` monotone
/// (false … false true … true); `n + 1` when none.
fn first(n: u64, pred: impl Fn(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (0u64, n + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Rank bounds for the `q` quantile after `n` samples, at level `alpha`:
/// `(k, h)` such that, at every n at once with probability ≥ 1 − α, the
/// k-th smallest sample is ≤ ξ_q (k = 0: no lower bound but 0) and the
/// h-th smallest is ≥ ξ_q (h > n: no upper bound yet).
pub fn quantile_ranks(n: u64, q: f64, alpha: f64) -> (u64, u64) {
    let nf = n as f64;
    // #{X ≤ ξ} has mean ≥ q: its count c is at least the smallest count
    // whose sequence still reaches q.
    let k = first(n, |c| mean_cs(c as f64, nf, alpha).high >= q);
    // #{X < ξ} has mean ≤ q: at most the largest count whose sequence
    // still reaches down to q; the next order statistic is ≥ ξ.
    let above = first(n, |c| mean_cs(c as f64, nf, alpha).low > q);
    (k, above)
}

/// The value range of the `rank`-th smallest sample (1-based) in a
/// histogram scaled `t`-fold: its bucket's `(lower, upper)` edges.
fn bucket_of(h: &Histogram, rank: u64, t: f64) -> Option<(f64, f64)> {
    let mut below = 0.0;
    for b in h.buckets() {
        below += b.count as f64 * t;
        if below >= rank as f64 - 1e-9 {
            return Some((b.lower, b.lower + b.width));
        }
    }
    None
}

/// Conservative bounds for the `q` quantile of the values in `h` (counts
/// scaled `t`-fold, for projections), valid at every sample size at level
/// `alpha`: `(lower, upper)`; the lower bound is a bucket's lower edge (0
/// when no rank bound exists yet), the upper a bucket's upper edge, `None`
/// when there are too few samples or the rank lies in an open bucket.
pub fn quantile_bounds(h: &Histogram, q: f64, alpha: f64, t: f64) -> (f64, Option<f64>) {
    let n = (h.count() as f64 * t).round() as u64;
    let (k, above) = quantile_ranks(n, q, alpha);
    let lower = if k == 0 { 0.0 } else { bucket_of(h, k, t).map_or(0.0, |b| b.0) };
    let upper = if above == 0 || above > n {
        None
    } else {
        bucket_of(h, above, t).map(|b| b.1).filter(|u| *u < crate::window::OPEN_WIDTH)
    };
    (lower, upper)
}

/// The fewest samples with which an upper bound of the `q` quantile can
/// exist at level `alpha` (it needs the sequence of a count of n − 1 below
/// to stay under 1 … i.e. room above the quantile).
pub fn samples_for_upper_bound(q: f64, alpha: f64) -> u64 {
    smallest(1, 100_000_000, |n| quantile_ranks(n, q, alpha).1 <= n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn mixture_matches_scipy() {
        // scipy 1.17.1: betaln(0.5+s, 0.5+n-s) - betaln(0.5, 0.5) - (s*log(t) + (n-s)*log(1-t))
        // at s=3, n=40, t=0.2; the sequences' ends by brentq on that function.
        let v = log_mixture(3.0, 40.0, 0.2);
        let expected = REF_LOG_MIXTURE;
        assert!(close(v, expected, 1e-9), "{v} vs {expected}");
        let cs = mean_cs(3.0, 40.0, 0.05);
        assert!(close(cs.low, REF_CS.0, 1e-7) && close(cs.high, REF_CS.1, 1e-7), "{cs:?}");
        let cs = mean_cs(0.0, 1000.0, 0.025);
        assert!(close(cs.low, 0.0, 0.0) && close(cs.high, REF_CS0, 1e-7), "{cs:?}");
    }

    // scipy.special.betaln and scipy.optimize.brentq (scipy 1.17.1),
    // computed independently of this code.
    const REF_LOG_MIXTURE: f64 = 0.34200436055654215;
    const REF_CS: (f64, f64) = (0.005649167587453813, 0.2741718126453844);
    const REF_CS0: f64 = 0.007685560912427808;
}
