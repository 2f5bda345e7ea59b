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
//! **Comparing two rates** ([`RateProcess`]): a two-sample e-process with
//! no nuisance cost. H₀ for the harm test (roll back) is "p₂ ≤ p₁ + δ", for
//! the no-harm test (promote) "p₂ ≥ p₁ + δ", whatever the champion's rate p₁.
//! Each look's new responses form a batch (m champion, k challenger
//! trials). Given an alternative (pₐ for the champion, p_b for the
//! challenger) chosen from earlier batches only, the batch's e-value is
//! `e = L(pₐ, p_b) / L(q, q + δ)`, the likelihood ratio against the one
//! null pair (q, q + δ) where the expectation `E_p[e] = g₁(p)^m g₂(p)^k`
//! (g linear in p: the binomial's generating function at the ratios) has
//! zero derivative. ln E_p[e] is concave in p and 0 at q, so `E_p[e] ≤ 1`
//! at every null rate on the boundary, and inside the null too (g₂ is
//! monotone in p₂ the right way); by convexity in the outcome the same
//! holds for outcomes in [0, 1] (labels). This is the reverse information
//! projection of Grünwald, de Heide & Koolen ("Safe testing", JRSS B 2024)
//! and Turner, Ly & Grünwald's two-sample e-values, here for a shifted
//! null. The product over batches is an e-process, and the rate may even
//! drift between batches as long as each one is within H₀. The
//! champion's uncertainty enters through the likelihood, not through a
//! worst-case bound.
//!
//! The alternatives: pₐ is the champion's rate estimated from the batches
//! before (and from the rollout's earlier stages) — for the harm
//! alternatives from both versions' earlier batches, the maximum likelihood
//! on the line p_b = pₐ + mδ ([`joint_anchor`]: at a 50 % stage the
//! challenger's responses say as much about the base rate as the
//! champion's); p_b is pₐ + 2δ (weight
//! 0.9), + 4δ and + 8δ (0.02 each) for harm, pₐ, pₐ − δ and pₐ + δ/2 for
//! no harm, and (0.06) the challenger's own running estimate, kept on its
//! test's side of the margin ([`ADAPTIVE`]: power one against any harm).
//! The rollout's very first batch has no earlier estimate: see
//! [`first_batch`] (0.05 α is kept for it, so the tests decide at
//! 1/(0.95 α)). At an advance the no-harm evidence is pooled into the next
//! stage, and the harm test is a mixture over stage starts whose weights
//! share α across the rollout's stages ([`RateProcess::into_next_stage`]).
//! Measured against the fixed-horizon design with the same α and β
//! ([`crate::calibration`], 1 000 runs per cell, a look every hundredth of
//! the fixed-horizon sample, docs/gates.md): median sample to a verdict
//! 0.46–0.61 of the non-inferiority design for an equal challenger, and
//! 0.40–0.62 of the harm design (α at the margin, β at 2 δ) for one 2 ×
//! beyond tolerance, the 50 % stage the slowest (0.53–0.62; 0.55–0.64
//! with the champion-only anchor).
//!
//! The weights put most of α where the decisions are (the design
//! alternative): each halving of a component's weight costs it ln 2 of
//! evidence. 0.9 / 0.02 / 0.02 / 0.06 and 0.05 α for the first batch
//! (instead of 0.8 / 0.025 / 0.025 / 0.15 and 0.1 α) made equal and 2 ×
//! decisions up to 9 % faster, at the price of about 10 % more traffic before
//! a challenger 1.2 δ worse is rolled back and 2 s on the median of the
//! issue's case 7 (both measured in the calibration tests).
//!
//! So a challenger within tolerance is rolled back with probability ≤ α,
//! and one at or beyond tolerance passes with probability ≤ α, over any
//! number of looks, any number of stages and any traffic split (each
//! version's traffic must not depend on its outcomes: the hash split
//! guarantees that). A challenger in
//! between (δ < d < 2δ) may take long: the stage's terminal rule ends that.
//! The guarantee assumes the champion's rate is below 1 − δ (the
//! guardrails hold the stage long before).
//!
//! **Quantile bounds** ([`quantile_bounds`]). For the q-quantile ξ the
//! indicators 1{X < ξ} and 1{X ≤ ξ} are Bernoulli with means ≤ q and ≥ q: a
//! confidence sequence for their counts bounds the ranks of the order
//! statistics on either side of ξ (Howard & Ramdas, "Sequential estimation
//! of quantiles", Bernoulli 2022). Mapped to a histogram conservatively:
//! the lower bound at its bucket's lower edge, the upper at its bucket's
//! upper edge, and no upper bound at all (not enough samples, or the rank
//! lies in the open +Inf bucket) instead of the sample maximum.
//!
//! One file on purpose: the confidence sequences, the e-processes and the
//! harm budget over stages share one mixture construction and its constants,
//! and their proofs (above) read as one argument; split, each piece would
//! lean on the others' private helpers.

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

/// Alternatives of the harm test: (weight, challenger rate as multiples of
/// the tolerance above the champion's). The rest of the weight,
/// [`ADAPTIVE`], goes to the challenger's own running estimate.
const HARM: [(f64, f64); 3] = [(0.9, 2.0), (0.02, 4.0), (0.02, 8.0)];
/// Alternatives of the no-harm test.
const FINE: [(f64, f64); 3] = [(0.9, 0.0), (0.02, -1.0), (0.02, 0.5)];
/// Weight of the adaptive alternative: each batch is scored under the
/// challenger's rate estimated from the batches before it (predictable, so
/// the product stays an e-process; Robbins & Siegmund's plug-in). The fixed
/// alternatives are fast when the truth is near one of them; for a
/// challenger between the tolerance and 2 × it (1.2 δ, say) they fall
/// behind the null, so without this component the harm test would never
/// decide; with it, every challenger beyond the tolerance is rolled back
/// eventually (power one).
const ADAPTIVE: f64 = 0.06;

/// Smallest and largest rate an alternative may take (a likelihood of 0
/// would make one event end the component for good).
const EDGE: f64 = 1e-6;

/// The version of [`RateProcess`]'s meaning: 3 = per-batch two-sample
/// e-values (below), the harm test a mixture over stage starts (2: the harm
/// test restarted at 1 in every stage). A process saved by an older
/// controller starts again at its next update rather than be misread.
const PROCESS_VERSION: u8 = 3;

/// A share of the harm budget as a weight: within (0, 1] (0 would make the
/// harm test's ln weight −∞, a test that can never roll back).
pub fn clamp_share(share: f64) -> f64 {
    share.clamp(f64::MIN_POSITIVE, 1.0)
}

/// The share of the rollout's harm budget (α for "ever rolled back while
/// within tolerance") that stage `stage` of `judged` judged stages starts
/// with: half for the first stage (where a gross fault must be caught on the
/// least traffic), the other half split evenly over the rest (a larger
/// stage has more traffic, so a higher bar costs it less time). The shares
/// sum to 1, so the harm test's false-rollback guarantee holds over the
/// whole rollout, not per stage (see [`RateProcess::into_next_stage`]).
pub fn harm_share(stage: usize, judged: usize) -> f64 {
    match judged {
        0 | 1 => 1.0,
        _ if stage == 0 => 0.5,
        k => 0.5 / (k - 1) as f64,
    }
}

/// The two-rate comparison of one gate in one stage: the counts folded in so
/// far and, for each alternative, ln of the product of its per-batch
/// e-values. It lives in the gate result and the rollout state for the
/// stage, and starts again when the window does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateProcess {
    /// Challenger trials and events (a sum of [0, 1] outcomes) folded in.
    pub n: f64,
    pub s: f64,
    /// The champion's, likewise.
    #[serde(default)]
    pub n1: f64,
    #[serde(default)]
    pub s1: f64,
    /// ln Π e-values of the harm test, per fixed alternative.
    pub harm: [f64; 3],
    /// ln Π e-values of the no-harm test, per fixed alternative.
    pub fine: [f64; 3],
    /// ln Π e-values of the adaptive alternative of each test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harm_adaptive: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_adaptive: Option<f64>,
    /// [`PROCESS_VERSION`] when written by this code.
    #[serde(default)]
    pub version: u8,
    /// The champion's and the challenger's `(events, trials)` of the
    /// rollout's earlier stages: where the alternatives are anchored before
    /// this stage has its own estimate (so a stage's first look is scored
    /// too).
    #[serde(default, skip_serializing_if = "is_zero_pair")]
    pub prior_champion: (f64, f64),
    #[serde(default, skip_serializing_if = "is_zero_pair")]
    pub prior_challenger: (f64, f64),
    /// Earlier stages whose no-harm evidence `fine` carries (see
    /// [`RateProcess::into_next_stage`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pooled_stages: u32,
    /// `fine` and `fine_adaptive` as carried in from the earlier stages
    /// (what a projection of this stage's growth starts from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_carried: Option<[f64; 4]>,
    /// This stage's share of the harm budget ([`harm_share`]); `None` is 1
    /// (a process judged on its own, as in the calibration tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harm_share: Option<f64>,
    /// `harm` and `harm_adaptive` at the stage's start (ln of the earlier
    /// stages' carried terms plus this stage's share): what a projection of
    /// this stage's growth starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harm_carried: Option<[f64; 4]>,
}

fn is_zero_pair(p: &(f64, f64)) -> bool {
    *p == (0.0, 0.0)
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The verdicts of both tests at one look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateVerdict {
    /// ln E of the harm test (roll back at ≥ ln [`threshold`]).
    pub log_e_harm: f64,
    /// ln E of the no-harm test (proven at ≥ ln [`threshold`]).
    pub log_e_fine: f64,
    pub harm: bool,
    pub fine: bool,
}

/// ln of the mixture Σ wₖ Eₖ of the alternatives' e-processes (the fixed
/// ones and the adaptive one), from their logs (without allocating: it runs
/// at every look of every simulated run).
fn log_mixture_of(alternatives: &[(f64, f64); 3], log_e: [f64; 3], adaptive: Option<f64>) -> f64 {
    let terms: [f64; 4] = std::array::from_fn(|k| match k {
        3 => adaptive.map_or(f64::NEG_INFINITY, |l| ADAPTIVE.ln() + l),
        _ => alternatives[k].0.ln() + log_e[k],
    });
    crate::stats::log_sum_exp(&terms)
}

/// One batch: the champion's `(events, trials)` and the challenger's.
#[derive(Debug, Clone, Copy)]
struct Batch {
    s1: f64,
    n1: f64,
    s2: f64,
    n2: f64,
}

/// ln of the batch's e-value for the alternative (champion `pa`,
/// challenger `pb`) against the null boundary "challenger = champion + `tol`":
/// `L(pa, pb) / L(q, q + tol)` with `q` the null point at which the
/// expected e-value, a function of the null's champion rate p, has zero
/// derivative (see the module docs: it is then ≤ 1 at every null p).
fn log_batch_e(b: Batch, pa: f64, pb: f64, tol: f64) -> f64 {
    if b.n1 <= 0.0 || b.n2 <= 0.0 {
        return 0.0;
    }
    let q = null_point(b.n1, b.n2, pa, pb, tol);
    if q <= 0.0 || q + tol >= 1.0 {
        return 0.0;
    }
    log_likelihood(b.s1, b.n1, pa) - log_likelihood(b.s1, b.n1, q) + log_likelihood(b.s2, b.n2, pb)
        - log_likelihood(b.s2, b.n2, q + tol)
}

/// The null point of [`log_batch_e`] for a batch of `m` champion and `k`
/// challenger trials: the root of d/dp ln E_p at p = q, which decreases in
/// q from +∞ (q → 0) to −∞ (q → 1 − tol), so it is bisected.
fn null_point(m: f64, k: f64, pa: f64, pb: f64, tol: f64) -> f64 {
    let slope = |q: f64| m * (pa / q - (1.0 - pa) / (1.0 - q)) + k * (pb / (q + tol) - (1.0 - pb) / (1.0 - q - tol));
    let (mut lo, mut hi) = (0.0, 1.0 - tol);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if slope(mid) > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

impl RateProcess {
    /// A process for a stage judged with `harm_share` of the harm budget
    /// and nothing carried in (a rollout's first stage): the harm test
    /// starts at the share instead of 1 (see [`harm_share`]).
    pub fn for_stage(harm_share: f64) -> RateProcess {
        let share = clamp_share(harm_share);
        let l = share.ln();
        RateProcess {
            version: PROCESS_VERSION,
            harm: [l; 3],
            harm_adaptive: Some(l),
            fine_adaptive: Some(0.0),
            harm_share: (share < 1.0).then_some(share),
            harm_carried: (share < 1.0).then_some([l; 4]),
            ..RateProcess::default()
        }
    }

    /// Folds in the champion's and the challenger's cumulative `(events,
    /// trials)` since the last update, with tolerance `tol` (a rate): one
    /// batch, scored under alternatives anchored at the champion's rate as
    /// estimated from the batches *before* it (so each batch's e-value is
    /// one given the past). The first batch only gives that estimate. A
    /// window that went backwards (a new window), or a process of an older
    /// version, starts again.
    pub fn update(&mut self, champion: (f64, f64), challenger: (f64, f64), tol: f64, alpha: f64) {
        let ((s1, n1), (s2, n2)) = (champion, challenger);
        let b = Batch { s1: s1 - self.s1, n1: n1 - self.n1, s2: s2 - self.s, n2: n2 - self.n };
        let backwards = |ds: f64, dn: f64| dn < 0.0 || ds < -1e-9 || ds > dn + 1e-9;
        if self.version != PROCESS_VERSION || backwards(b.s1, b.n1) || backwards(b.s2, b.n2) {
            // Evidence is dropped; the earlier stages' rates (only where the
            // alternatives are anchored) are kept.
            let (prior_champion, prior_challenger) = if self.version == PROCESS_VERSION {
                (self.prior_champion, self.prior_challenger)
            } else {
                ((0.0, 0.0), (0.0, 0.0))
            };
            let fresh = RateProcess::for_stage(self.harm_share.unwrap_or(1.0));
            *self = RateProcess { prior_champion, prior_challenger, ..fresh };
            if n1 > 0.0 || n2 > 0.0 {
                return self.update(champion, challenger, tol, alpha);
            }
            return;
        }
        let b = Batch { s1: b.s1.clamp(0.0, b.n1), s2: b.s2.clamp(0.0, b.n2), ..b };
        let tol = tol.clamp(EDGE, 1.0 - 4.0 * EDGE);
        let (past_s1, past_n1) = (self.s1 + self.prior_champion.0, self.n1 + self.prior_champion.1);
        let (past_s2, past_n2) = (self.s + self.prior_challenger.0, self.n + self.prior_challenger.1);
        // Each component's ln e-value of this batch. `anchors(Some(m))` is
        // the champion's rate the alternative `m` tolerances above it is
        // anchored at, `anchors(None)` the one of the adaptive components
        // (one rate for all on the first batch's grid).
        let score = |anchors: &dyn Fn(Option<f64>) -> f64| -> [f64; 8] {
            let pa_of = |m: Option<f64>| anchors(m).clamp(EDGE, 1.0 - tol - EDGE);
            let pa = pa_of(None);
            let at = |m: f64| (pa + m * tol).clamp(EDGE, 1.0 - EDGE);
            let fixed = |m: f64| {
                let a = pa_of(Some(m));
                (a, (a + m * tol).clamp(EDGE, 1.0 - EDGE))
            };
            // The challenger's rate from the batches before this one, kept
            // on its test's side of the margin (before any, the main
            // alternatives stand in).
            let (harm_q, fine_q) = if past_n2 > 0.0 {
                let q = (past_s2 + 0.5) / (past_n2 + 1.0);
                (q.max(at(1.0)), q.min(at(1.0)))
            } else {
                (at(HARM[0].1), at(FINE[0].1))
            };
            std::array::from_fn(|k| match k {
                0..=2 => {
                    let (a, p) = fixed(HARM[k].1);
                    log_batch_e(b, a, p, tol)
                }
                3..=5 => {
                    let (a, p) = fixed(FINE[k - 3].1);
                    log_batch_e(b, a, p, tol)
                }
                6 => log_batch_e(b, pa, harm_q, tol),
                _ => log_batch_e(b, pa, fine_q, tol),
            })
        };
        let batch = if past_n1 > 0.0 {
            // The harm alternatives are anchored on both versions' past
            // (see [`joint_anchor`]); the no-harm ones on the champion's
            // (pooling them measured 0–4 % slower for an equal challenger).
            let champion_only = anchor(past_s1, past_n1);
            Some(score(&|m: Option<f64>| match m {
                Some(m) if m > 1.0 => joint_anchor((past_s1, past_n1), (past_s2, past_n2), m * tol, champion_only),
                _ => champion_only,
            }))
        } else if b.n1 > 0.0 && b.n2 > 0.0 {
            Some(first_batch(b, alpha, |pa| score(&|_| pa)))
        } else {
            None
        };
        if let Some(e) = batch {
            for k in 0..3 {
                self.harm[k] += e[k];
                self.fine[k] += e[k + 3];
            }
            *self.harm_adaptive.get_or_insert(0.0) += e[6];
            *self.fine_adaptive.get_or_insert(0.0) += e[7];
        }
        self.n1 = n1;
        self.s1 = s1;
        self.n = n2;
        self.s = s2;
    }

    /// The process the same gate starts the rollout's next stage with. The
    /// no-harm evidence is **pooled**: the next stage's batches multiply
    /// into it (the same two models, so "within tolerance" is one
    /// hypothesis for the whole rollout, and a product of e-values given
    /// the past is an e-process whatever each batch's traffic split). So
    /// the promoting stage builds on what the small stages showed, and the
    /// chance of ever proving a challenger beyond tolerance stays ≤ α over
    /// the whole rollout.
    ///
    /// The harm test is a **mixture over stage starts**: Σⱼ wⱼ Eⱼ, where Eⱼ
    /// is the product of the harm e-values from the start of stage j on and
    /// wⱼ that stage's [`harm_share`] (Σ wⱼ ≤ 1). Each Eⱼ is an e-process,
    /// so the weighted sum is one too, and the chance of ever rolling back a
    /// challenger within tolerance is ≤ α over the whole rollout, not per
    /// stage. A fault that shows only at a larger share (load) is judged by
    /// the term that starts with its stage, at the bar 1/(wⱼ α) at worst,
    /// not buried under the small stages' good evidence; a challenger that
    /// was bad all along keeps what the earlier stages showed. All terms
    /// multiply by the same batch e-values, so per alternative one number
    /// holds their sum: the new stage adds its share. The counts start
    /// again with the stage's window; the earlier ones anchor the
    /// alternatives.
    pub fn into_next_stage(&self, harm_share: f64) -> RateProcess {
        if self.version != PROCESS_VERSION {
            return RateProcess::for_stage(harm_share);
        }
        let share = clamp_share(harm_share).ln();
        let add = |l: f64| crate::stats::log_sum_exp(&[l, share]);
        let harm = self.harm.map(add);
        let harm_adaptive = add(self.harm_adaptive.unwrap_or(f64::NEG_INFINITY));
        RateProcess {
            n: 0.0,
            s: 0.0,
            n1: 0.0,
            s1: 0.0,
            harm,
            harm_adaptive: Some(harm_adaptive),
            harm_share: Some(clamp_share(harm_share)),
            harm_carried: Some([harm[0], harm[1], harm[2], harm_adaptive]),
            fine: self.fine,
            fine_adaptive: self.fine_adaptive,
            version: PROCESS_VERSION,
            prior_champion: (self.prior_champion.0 + self.s1, self.prior_champion.1 + self.n1),
            prior_challenger: (self.prior_challenger.0 + self.s, self.prior_challenger.1 + self.n),
            pooled_stages: self.pooled_stages + 1,
            fine_carried: Some([self.fine[0], self.fine[1], self.fine[2], self.fine_adaptive.unwrap_or(0.0)]),
        }
    }

    /// ln E of the harm test.
    pub fn log_e_harm(&self) -> f64 {
        log_mixture_of(&HARM, self.harm, self.harm_adaptive).max(f64::MIN)
    }

    /// ln E of the no-harm test.
    pub fn log_e_fine(&self) -> f64 {
        log_mixture_of(&FINE, self.fine, self.fine_adaptive).max(f64::MIN)
    }

    /// Both tests at level `alpha`.
    pub fn verdict(&self, alpha: f64) -> RateVerdict {
        let (log_e_harm, log_e_fine) =
            if self.version == PROCESS_VERSION { (self.log_e_harm(), self.log_e_fine()) } else { (0.0, 0.0) };
        let level = threshold(alpha).ln();
        let harm = log_e_harm >= level;
        RateVerdict { log_e_harm, log_e_fine, harm, fine: !harm && log_e_fine >= level }
    }

    /// The interval of the difference (challenger − champion) from each
    /// version's confidence sequence at α/2: valid at level α at every look.
    /// For the report only (the tests decide).
    pub fn difference(&self, alpha: f64) -> Interval {
        let champion = mean_cs(self.s1, self.n1, alpha / 2.0);
        let challenger = mean_cs(self.s, self.n, alpha / 2.0);
        Interval { low: challenger.low - champion.high, high: challenger.high - champion.low }
    }

    /// The look this process would reach if the stage's sample grew
    /// `t`-fold with the rates seen so far (each alternative's growth per
    /// trial in this stage kept): what "needs ~N more" projects.
    pub fn projected(&self, t: f64) -> RateProcess {
        let start = self.fine_carried.unwrap_or_default();
        let harm_start = self.harm_carried.unwrap_or_default();
        let grow = |now: f64, from: f64| from + (now - from) * t;
        RateProcess {
            n: self.n * t,
            s: self.s * t,
            n1: self.n1 * t,
            s1: self.s1 * t,
            harm: std::array::from_fn(|k| grow(self.harm[k], harm_start[k])),
            fine: std::array::from_fn(|k| grow(self.fine[k], start[k])),
            harm_adaptive: self.harm_adaptive.map(|l| grow(l, harm_start[3])),
            fine_adaptive: self.fine_adaptive.map(|l| grow(l, start[3])),
            ..self.clone()
        }
    }
}

/// The share of α spent on the first batch's champion confidence sequence
/// (see [`first_batch`]).
pub const FIRST_BATCH_SHARE: f64 = 0.05;

/// The e-value at which a rate test decides at level `alpha` (Ville, with
/// [`FIRST_BATCH_SHARE`] of α kept for the first batch's sequence).
pub fn threshold(alpha: f64) -> f64 {
    1.0 / (alpha * (1.0 - FIRST_BATCH_SHARE))
}

/// Grid of the champion's rates over which the first batch's e-values are
/// minimised, and the margin (in ln) taken off the grid's minimum for the
/// rates between grid points.
const FIRST_BATCH_GRID: u32 = 32;
const FIRST_BATCH_MARGIN: f64 = 0.01;

/// A stage's first batch, when no earlier batch or stage estimates the
/// champion's rate: each component's e-value is the smallest over the
/// champion rates in the batch's own confidence sequence at
/// `FIRST_BATCH_SHARE · α`. On the event that the sequence covers the true
/// rate p₁ (probability ≥ 1 − 0.05 α) that minimum is at most the e-value
/// anchored at p₁, which is an e-value (p₁ is fixed); so the process stays
/// below an e-process there, and it crosses 1/(0.95 α) with probability at
/// most 0.95 α + 0.05 α = α. Without it, a batch that arrives all at once
/// (labels imported in bulk) could never be judged. The minimum enters
/// mixed half and half with 1 (not scoring the batch), so a wide sequence
/// (a champion with little data) costs at most ln 2.
fn first_batch(b: Batch, alpha: f64, score: impl Fn(f64) -> [f64; 8]) -> [f64; 8] {
    let c = mean_cs(b.s1, b.n1, alpha * FIRST_BATCH_SHARE);
    let mut low = [f64::INFINITY; 8];
    for i in 0..=FIRST_BATCH_GRID {
        let pa = c.low + (c.high - c.low) * f64::from(i) / f64::from(FIRST_BATCH_GRID);
        let e = score(pa);
        for k in 0..8 {
            low[k] = low[k].min(e[k]);
        }
    }
    // Half the weight on not scoring the batch at all: a mixture of two
    // e-values (1, and the one anchored at p₁) is one, and it keeps a
    // sequence edge far from p₁ from digging the process a deep hole.
    low.map(|l| half_and_half(l - FIRST_BATCH_MARGIN))
}

/// ln(½ + ½ eˣ), without overflow: a grossly bad first batch has x in the
/// hundreds, where eˣ is infinite in f64 (and an infinite ln e-value turned
/// the mixture into NaN, which never rolls back).
fn half_and_half(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p() - std::f64::consts::LN_2
}

/// The champion's rate estimate the alternatives are anchored at (add-½,
/// so 0 events anchor just above 0).
pub fn anchor(s1: f64, n1: f64) -> f64 {
    (s1 + 0.5) / (n1 + 1.0)
}

/// The champion's rate for an alternative "challenger = champion + `d`",
/// estimated from both versions' earlier batches (add-½ each): the maximum
/// of the joint likelihood on that line. The challenger's responses say as
/// much about the base rate as the champion's under the alternative, so at
/// equal traffic the anchor is twice as precise as the champion's alone
/// (the alternatives stay predictable: only earlier batches enter).
/// Newton steps on the concave log-likelihood from `start`, kept inside
/// the line's domain.
pub fn joint_anchor(champion: (f64, f64), challenger: (f64, f64), d: f64, start: f64) -> f64 {
    let (a1, b1) = (champion.0 + 0.5, champion.1 - champion.0 + 0.5);
    let (a2, b2) = (challenger.0 + 0.5, challenger.1 - challenger.0 + 0.5);
    if challenger.1 <= 0.0 {
        return start;
    }
    let lo = (-d).max(0.0) + EDGE;
    let hi = (1.0 - d).min(1.0) - EDGE;
    if lo >= hi {
        return start;
    }
    let mut p = start.clamp(lo, hi);
    for _ in 0..12 {
        let (q, r) = (p + d, 1.0 - p - d);
        let g = a1 / p - b1 / (1.0 - p) + a2 / q - b2 / r;
        let h = -a1 / (p * p) - b1 / ((1.0 - p) * (1.0 - p)) - a2 / (q * q) - b2 / (r * r);
        let next = (p - g / h).clamp(lo, hi);
        // Halfway to the edge rather than onto it (the likelihood is −∞ there).
        let next = if next <= lo {
            0.5 * (p + lo)
        } else if next >= hi {
            0.5 * (p + hi)
        } else {
            next
        };
        if (next - p).abs() < 1e-12 {
            return next;
        }
        p = next;
    }
    p
}

/// Challenger responses with which the harm test, fed its expected counts
/// in ten equal batches, rolls back a challenger erring `harm · tol` more
/// often than a champion with no errors that has `ratio` times its traffic
/// (the sample the default `min_requests` is derived from).
pub fn responses_to_detect(tol: f64, alpha: f64, ratio: f64, harm: f64, harm_share: f64) -> u64 {
    let detects = |n: u64| {
        let nf = n as f64;
        let mut p = RateProcess::for_stage(harm_share);
        for i in 1..=10 {
            let f = nf * f64::from(i) / 10.0;
            p.update((0.0, f * ratio), (harm * tol * f, f), tol, alpha);
        }
        p.verdict(alpha).harm
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

    /// The reaction bench's case: 10.6 % errors against none, at 1 : 24
    /// traffic, in the first batch. Its ln e-value is ~850, beyond where
    /// e^x is finite; it was infinite, the mixture NaN (never a rollback),
    /// and the state written with it (null) unreadable.
    #[test]
    fn a_gross_first_batch_keeps_finite_evidence_and_rolls_back() {
        let mut p = RateProcess::for_stage(0.5);
        p.update((0.0, 228_560.0), (1000.0, 9424.0), 0.02, 0.05);
        assert!(p.harm.iter().chain(&p.fine).all(|x| x.is_finite()), "{p:?}");
        let v = p.verdict(0.05);
        assert!(v.harm && v.log_e_harm.is_finite(), "{v:?}");
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("null"), "{text}");
        for x in [-800.0, -30.0, -1.0, 0.0, 1.0, 30.0] {
            assert!(close(half_and_half(x), (0.5 + 0.5 * f64::exp(x)).ln(), 1e-12), "{x}");
        }
        assert!(close(half_and_half(800.0), 800.0 - std::f64::consts::LN_2, 1e-12));
    }

    /// References: scipy.optimize.brentq (rtol 1e-15) on the derivative of
    /// the joint log-likelihood with add-½ counts.
    #[test]
    fn the_joint_anchor_is_the_constrained_maximum_likelihood() {
        for (champion, challenger, d, reference) in [
            ((10.0, 1000.0), (25.0, 1000.0), 0.01, 0.012272112978965927),
            ((0.0, 5000.0), (3.0, 5000.0), 0.002, 6.017043188467157e-05),
            ((30.0, 600.0), (5.0, 60.0), 0.04, 0.05071604517488201),
            ((400.0, 1000.0), (200.0, 1000.0), 0.2, 0.23193188116266059),
        ] {
            let got = joint_anchor(champion, challenger, d, anchor(champion.0, champion.1));
            assert!(close(got, reference, 1e-8 * reference), "{champion:?} {challenger:?} {d}: {got} vs {reference}");
        }
        // No challenger data: the champion's own estimate.
        assert_eq!(joint_anchor((3.0, 100.0), (0.0, 0.0), 0.01, 0.0347), 0.0347);
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

    /// The construction's claim, checked exactly: for any batch shape and
    /// any alternative, the batch e-value's expectation under every rate
    /// pair of the null is at most 1. For Bernoulli outcomes it is
    /// `g₁(p)^m · g₂(p₂)^k` with `g` linear in the rate (the binomial's
    /// probability generating function at the likelihood ratios), so it is
    /// computed in closed form, over a fine grid of null rates, on the
    /// boundary (p₂ = p₁ + δ) and inside (p₂ below it for harm, above it
    /// for no harm).
    #[test]
    fn batch_e_values_have_expectation_at_most_one_under_every_null_rate() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut worst = f64::NEG_INFINITY;
        for _ in 0..3000 {
            let tol = [0.001, 0.005, 0.01, 0.02, 0.1][rng.random_range(0..5)];
            let (m, k) = (f64::from(rng.random_range(1..5000)), f64::from(rng.random_range(1..500)));
            let pa = rng.random_range(0.0005..0.3f64);
            let harm = rng.random_bool(0.5);
            let pb = if harm {
                (pa + tol * rng.random_range(1.05..9.0)).min(1.0 - EDGE)
            } else {
                (pa + tol * rng.random_range(-1.0..0.95)).max(EDGE)
            };
            let q = null_point(m, k, pa, pb, tol);
            // Per-trial likelihood ratios at an event (a) and a non-event (b).
            let (a1, b1) = (pa / q, (1.0 - pa) / (1.0 - q));
            let (a2, b2) = (pb / (q + tol), (1.0 - pb) / (1.0 - q - tol));
            // The function under test is the product of those ratios.
            let (s1, s2) = ((m * pa).round(), (k * pb).round());
            let direct = s1 * a1.ln() + (m - s1) * b1.ln() + s2 * a2.ln() + (k - s2) * b2.ln();
            let e = log_batch_e(Batch { s1, n1: m, s2, n2: k }, pa, pb, tol);
            assert!((e - direct).abs() < 1e-6 * (1.0 + direct.abs()), "{e} vs {direct}");
            let g = |x: f64, a: f64, b: f64| x * a + (1.0 - x) * b;
            for i in 0..=400 {
                let p1 = f64::from(i) / 400.0 * (1.0 - tol);
                for j in 0..=4 {
                    let shift = f64::from(j) / 4.0 * tol;
                    let p2 = if harm { (p1 + tol - shift).max(0.0) } else { (p1 + tol + shift).min(1.0) };
                    let log_e = m * g(p1, a1, b1).ln() + k * g(p2, a2, b2).ln();
                    worst = worst.max(log_e);
                    assert!(
                        log_e <= 1e-9,
                        "E = {} > 1 at p1 {p1}, p2 {p2} (m {m}, k {k}, pa {pa}, pb {pb}, tol {tol})",
                        log_e.exp()
                    );
                }
            }
        }
        assert!(worst > -1e-3, "the boundary's best null rate reaches E = 1: {worst}");
    }

    // scipy.special.betaln and scipy.optimize.brentq (scipy 1.17.1),
    // computed independently of this code.
    const REF_LOG_MIXTURE: f64 = 0.34200436055654215;
    const REF_CS: (f64, f64) = (0.005649167587453813, 0.2741718126453844);
    const REF_CS0: f64 = 0.007685560912427808;
}
