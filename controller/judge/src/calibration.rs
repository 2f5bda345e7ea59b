//! Calibration of the anytime engine in the regime real rollouts live in:
//! unequal traffic (a 1 % stage gives the champion 99 responses per
//! challenger one), small counts, early looks, base error rates 0.1–5 %,
//! tolerances 0.1–2 points, 0/1 labels, latency tails on bucket edges.
//! Each cell runs the gates' own code ([`RateProcess`] and
//! [`anytime::quantile_bounds`], exactly what the gates call) many seeded
//! times with a known truth, looking after every interval, and counts:
//!
//! - **false rollback**: a challenger within tolerance (equal, or exactly at
//!   the tolerance) failed at any look — must be ≤ α;
//! - **miss**: a challenger 2 × tolerance worse passed at any look — must
//!   be ≤ β (= α: the same level decides both ways);
//! - **responses to a decision** (challenger responses at the first verdict),
//!   median, against the **fixed-horizon** design with the same α and β:
//!   the one-sided non-inferiority z-test at the margin δ with power 1 − β
//!   one δ away, variances under each hypothesis (Farrington & Manning):
//!   `n = (z_α √v₀ + z_β √v₁)² / δ²` challenger responses, with
//!   `v = p₁(1 − p₁)/r + p₂(1 − p₂)` at p₂ = p₁ + δ (v₀) and p₂ = p₁ (v₁),
//!   r the champion:challenger ratio.
//!   For a challenger 2 × beyond tolerance the table also gives the
//!   **harm design**: the fixed-horizon test whose α is the false-rollback
//!   rate at the margin and whose β is the miss at 2 δ, the two error
//!   rates this table checks for that truth (the same formula with v₁ at
//!   p₂ = p₁ + 2δ). The non-inferiority design never proves harm at all (it
//!   only fails to prove no harm), so it is the weaker reference for that
//!   row; both are printed.
//!
//! Monte-Carlo standard errors are √(p(1 − p)/runs); the checks allow two.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};

use crate::anytime::{self, RateProcess};
use crate::simulate::binomial;
use crate::window::MergedHistogram as Histogram;

/// The truth of a cell, relative to the tolerance δ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Truth {
    /// The challenger equals the champion.
    Equal,
    /// Exactly at the tolerance (still acceptable).
    AtTolerance,
    /// 2 × the tolerance worse (must not pass).
    TwiceTolerance,
}

impl Truth {
    fn multiple(self) -> f64 {
        match self {
            Truth::Equal => 0.0,
            Truth::AtTolerance => 1.0,
            Truth::TwiceTolerance => 2.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Truth::Equal => "equal",
            Truth::AtTolerance => "at tolerance",
            Truth::TwiceTolerance => "2x tolerance",
        }
    }
}

/// One cell of the rate table.
#[derive(Debug, Clone, Copy)]
pub struct RateCell {
    /// The champion's rate (errors, or label shortfall).
    pub base: f64,
    /// The tolerance δ, as a rate.
    pub tol: f64,
    /// The challenger's share of traffic (0.01 = a 1 % stage).
    pub share: f64,
    pub truth: Truth,
    /// Challenger responses per look.
    pub per_look: u64,
    pub max_looks: u32,
}

/// What the runs of a cell did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub runs: u32,
    pub failed: u32,
    pub passed: u32,
    /// Challenger responses at the verdict, for decided runs.
    pub to_decision: Vec<u64>,
    /// The fixed-horizon design's challenger responses.
    pub fixed: f64,
}

impl Outcome {
    fn new(runs: u32, fixed: f64) -> Outcome {
        Outcome { runs, failed: 0, passed: 0, to_decision: vec![], fixed }
    }

    /// Records a run's verdict reached with `n` challenger samples:
    /// `fail` (rolled back) or `pass`; false for both when undecided.
    /// Whether it decided (the run stops).
    fn decided(&mut self, fail: bool, pass: bool, n: u64) -> bool {
        if fail {
            self.failed += 1;
        } else if pass {
            self.passed += 1;
        } else {
            return false;
        }
        self.to_decision.push(n);
        true
    }

    pub fn fail_rate(&self) -> f64 {
        f64::from(self.failed) / f64::from(self.runs)
    }

    pub fn pass_rate(&self) -> f64 {
        f64::from(self.passed) / f64::from(self.runs)
    }

    /// Monte-Carlo standard error of a rate `p` over the runs.
    pub fn se(&self, p: f64) -> f64 {
        (p.max(1e-9) * (1.0 - p) / f64::from(self.runs)).sqrt()
    }

    /// Median challenger responses to a verdict (undecided runs count as
    /// never: above every decided one).
    pub fn median_to_decision(&self) -> Option<u64> {
        let mut v = self.to_decision.clone();
        v.sort_unstable();
        let half = (self.runs as usize).div_ceil(2);
        v.get(half.saturating_sub(1)).copied()
    }
}

/// z for a one-sided level.
fn z(level: f64) -> f64 {
    crate::stats::z(1.0 - level)
}

/// The fixed-horizon design's challenger sample (see the module docs).
pub fn fixed_horizon(base: f64, tol: f64, share: f64, alpha: f64, beta: f64) -> f64 {
    design(base, tol, share, alpha, beta, 0.0)
}

/// The harm design's challenger sample: α at the margin, β at 2 δ (see the
/// module docs).
pub fn harm_horizon(base: f64, tol: f64, share: f64, alpha: f64, beta: f64) -> f64 {
    design(base, tol, share, alpha, beta, 2.0)
}

/// `n = (z_α √v(δ) + z_β √v(m δ))² / δ²`: the z-test at the margin with
/// power 1 − β at the challenger `m` tolerances above the champion.
fn design(base: f64, tol: f64, share: f64, alpha: f64, beta: f64, m: f64) -> f64 {
    let r = (1.0 - share) / share;
    let v = |p2: f64| base * (1.0 - base) / r + p2 * (1.0 - p2);
    let root = z(alpha) * v(base + tol).sqrt() + z(beta) * v(base + m * tol).sqrt();
    root * root / (tol * tol)
}

/// The champion's responses while the challenger, with `share` of the
/// traffic, gets `per_look`.
fn champion_per_look(per_look: u64, share: f64) -> u64 {
    ((per_look as f64) * (1.0 - share) / share).round() as u64
}

/// Runs a rate cell `runs` times at level `alpha`, the way the gates judge
/// an error rate: champion and challenger counts grow every look, the
/// challenger's e-process folds in each batch.
pub fn run_rate(cell: RateCell, alpha: f64, runs: u32, seed: u64) -> Outcome {
    let per_champion = champion_per_look(cell.per_look, cell.share);
    let p2 = cell.base + cell.truth.multiple() * cell.tol;
    let mut out = Outcome::new(runs, fixed_horizon(cell.base, cell.tol, cell.share, alpha, alpha));
    for run in 0..runs {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(run) << 20));
        let (mut s1, mut n1, mut s2, mut n2) = (0u64, 0u64, 0u64, 0u64);
        let mut process = RateProcess::default();
        for _ in 0..cell.max_looks {
            s1 += binomial(&mut rng, per_champion, cell.base);
            n1 += per_champion;
            s2 += binomial(&mut rng, cell.per_look, p2);
            n2 += cell.per_look;
            process.update((s1 as f64, n1 as f64), (s2 as f64, n2 as f64), cell.tol, alpha);
            let v = process.verdict(alpha);
            if out.decided(v.harm, v.fine, n2) {
                break;
            }
        }
    }
    out
}

/// Envoy's histogram buckets hold about two significant digits: the bucket
/// of `x` (µs) is `[lower, lower + width)`.
pub fn envoy_bucket(x: f64) -> (f64, f64) {
    if x < 1.0 {
        return (0.0, 1.0);
    }
    let width = 10f64.powf(x.log10().floor() - 1.0).max(1.0);
    ((x / width).floor() * width, width)
}

/// A latency cell: both versions log-normal (median `median_us`, σ), the
/// challenger slower by `factor`; `tail` puts that share of the
/// challenger's responses exactly on `edge_us`, a bucket's lower edge.
#[derive(Debug, Clone, Copy)]
pub struct LatencyCell {
    pub q: f64,
    pub multiplier: f64,
    pub factor: f64,
    pub median_us: f64,
    pub sigma: f64,
    pub share: f64,
    pub per_look: u64,
    pub max_looks: u32,
}

/// Runs a latency cell: fail when the challenger's lower bound exceeds the
/// champion's upper × multiplier, pass when its upper is within the
/// champion's lower × multiplier (what the latency gate does).
pub fn run_latency(cell: LatencyCell, alpha: f64, runs: u32, seed: u64) -> Outcome {
    let per_champion = champion_per_look(cell.per_look, cell.share);
    let mut out = Outcome::new(runs, f64::NAN);
    let Ok(dist) = LogNormal::new(cell.median_us.ln(), cell.sigma) else { return out };
    for run in 0..runs {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(run) << 20));
        let (mut h1, mut h2) = (Histogram::default(), Histogram::default());
        for _ in 0..cell.max_looks {
            for _ in 0..per_champion {
                let (l, w) = envoy_bucket(dist.sample(&mut rng));
                h1.add(l, w, 1);
            }
            for _ in 0..cell.per_look {
                let (l, w) = envoy_bucket(dist.sample(&mut rng) * cell.factor);
                h2.add(l, w, 1);
            }
            let a = anytime::quantile_bounds(&h1, cell.q, alpha / 2.0, 1.0);
            let b = anytime::quantile_bounds(&h2, cell.q, alpha / 2.0, 1.0);
            let fail = a.1.is_some_and(|hi| b.0 > hi * cell.multiplier);
            let pass = b.1.is_some_and(|hi| hi <= a.0 * cell.multiplier);
            if out.decided(fail, pass, h2.count()) {
                break;
            }
        }
    }
    out
}

/// The rate grid: base rates, tolerances and stage shares users meet.
pub fn rate_grid(looks_to_fixed: f64, max_looks: u32) -> Vec<RateCell> {
    let mut cells = vec![];
    for &(base, tol) in &[(0.001, 0.001), (0.01, 0.005), (0.003, 0.01), (0.05, 0.02), (0.1, 0.02)] {
        for &share in &[0.01, 0.05, 0.2, 0.5] {
            for truth in [Truth::Equal, Truth::AtTolerance, Truth::TwiceTolerance] {
                // `looks_to_fixed` looks to reach the fixed-horizon sample.
                let per_look = (fixed_horizon(base, tol, share, 0.05, 0.05) / looks_to_fixed).ceil().max(1.0) as u64;
                cells.push(RateCell { base, tol, share, truth, per_look, max_looks });
            }
        }
    }
    cells
}

/// The calibration table (Markdown) of rate cells at level `alpha`.
pub fn rate_table(cells: &[RateCell], alpha: f64, runs: u32, seed: u64) -> String {
    let mut s = String::from(
        "| base | tolerance | share | truth | false rollback (±se) | miss (±se) | undecided | median to decision | fixed horizon | ratio | harm design | ratio |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (i, c) in cells.iter().enumerate() {
        let o = run_rate(*c, alpha, runs, seed.wrapping_add(i as u64 * 7919));
        let (fr, miss) = match c.truth {
            Truth::TwiceTolerance => ("—".to_string(), format!("{:.4} ± {:.4}", o.pass_rate(), o.se(o.pass_rate()))),
            _ => (format!("{:.4} ± {:.4}", o.fail_rate(), o.se(o.fail_rate())), "—".to_string()),
        };
        let undecided = 1.0 - o.fail_rate() - o.pass_rate();
        let median = o.median_to_decision();
        let ratio = median.map_or("—".into(), |m| format!("{:.2}", m as f64 / o.fixed));
        let harm = match (c.truth, median) {
            (Truth::TwiceTolerance, Some(m)) => {
                let h = harm_horizon(c.base, c.tol, c.share, alpha, alpha);
                format!("{h:.0} | {:.2}", m as f64 / h)
            }
            _ => "— | —".into(),
        };
        s.push_str(&format!(
            "| {:.1}% | {:.1} pp | {:.0}% | {} | {fr} | {miss} | {:.3} | {} | {:.0} | {ratio} | {harm} |\n",
            c.base * 100.0,
            c.tol * 100.0,
            c.share * 100.0,
            c.truth.name(),
            undecided,
            median.map_or("—".into(), |m| m.to_string()),
            o.fixed
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHA: f64 = 0.05;

    /// Reduced grid, every cell within its bound + 2 s.e.: 1 % and 5 %
    /// stages, 0.1 % base rates with a 0.1 pp tolerance, 0/1 labels.
    #[test]
    fn false_rollback_and_miss_stay_within_alpha_in_the_realistic_regime() {
        let runs = 300;
        for &(base, tol) in &[(0.001, 0.001), (0.003, 0.01), (0.1, 0.02)] {
            for &share in &[0.01, 0.05, 0.5] {
                for truth in [Truth::Equal, Truth::AtTolerance, Truth::TwiceTolerance] {
                    let per_look = (fixed_horizon(base, tol, share, ALPHA, ALPHA) / 10.0).ceil() as u64;
                    let cell = RateCell { base, tol, share, truth, per_look, max_looks: 30 };
                    let o = run_rate(cell, ALPHA, runs, 42);
                    let (rate, what) = match truth {
                        Truth::TwiceTolerance => (o.pass_rate(), "miss"),
                        _ => (o.fail_rate(), "false rollback"),
                    };
                    assert!(rate <= ALPHA + 2.0 * o.se(ALPHA), "{what} {rate} > {ALPHA} + 2 se in {cell:?}");
                }
            }
        }
    }

    /// The case 1: look 4 of a 0.1 pp tolerance, champion 167/167 112,
    /// challenger 9/1 688 — within what noise gives a challenger at the
    /// tolerance (0.2 %): no rollback.
    #[test]
    fn unequal_traffic_small_counts_do_not_roll_back_a_challenger_at_tolerance() {
        // Four looks, a quarter of the counts each.
        let mut p = RateProcess::default();
        for k in 1..=4 {
            let f = f64::from(k) / 4.0;
            p.update((167.0 * f, 167_112.0 * f), (9.0 * f, 1688.0 * f), 0.001, ALPHA);
        }
        let v = p.verdict(ALPHA);
        assert!(!v.harm, "{v:?}");
        // Case 2: champion 0/9 vs challenger 1/1 decides nothing, whether
        // the response came in the first look or a later one.
        for first in [(0.0, 0.0), (0.0, 5.0)] {
            let mut p = RateProcess::default();
            p.update(first, (0.0, 0.0), 0.01, ALPHA);
            p.update((0.0, 9.0), (1.0, 1.0), 0.01, ALPHA);
            let v = p.verdict(ALPHA);
            assert!(!v.harm && !v.fine, "{v:?}");
        }
    }

    /// Power one: a challenger 1.2 × the tolerance worse, between the
    /// margin and the main alternative (2 δ), is rolled back once the
    /// sample is large enough. Its likelihood under 2 δ falls behind the
    /// margin's, so only the adaptive alternative carries the evidence;
    /// without it this process never decides.
    #[test]
    fn a_challenger_just_beyond_tolerance_is_rolled_back_eventually() {
        let (p1, tol) = (0.01, 0.01);
        let mut process = RateProcess::default();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (mut s1, mut n1, mut s2, mut n2) = (0u64, 0u64, 0u64, 0u64);
        let mut decided = None;
        for look in 1..=400 {
            s1 += binomial(&mut rng, 38_000, p1);
            n1 += 38_000;
            s2 += binomial(&mut rng, 2_000, p1 + 1.2 * tol);
            n2 += 2_000;
            process.update((s1 as f64, n1 as f64), (s2 as f64, n2 as f64), tol, ALPHA);
            let v = process.verdict(ALPHA);
            assert!(!v.fine, "passed a challenger beyond tolerance at look {look}: {v:?}");
            if v.harm {
                decided = Some(n2);
                break;
            }
        }
        let n = decided.expect("rolled back within 800 000 challenger responses");
        eprintln!("1.2 x tolerance rolled back after {n} challenger responses");
    }

    /// Pooling across stages keeps the promise over the whole rollout: a
    /// challenger exactly at the tolerance, judged through 1 %, 5 %, 20 %
    /// and a 50 % stage (the no-harm evidence carried from stage to stage,
    /// the harm test a mixture over stage starts with the stages' shares of
    /// α), is proven harmless — a miss — in at most α of rollouts, and
    /// rolled back in at most α of rollouts (all stages together). An
    /// equal challenger reaches the 50 % stage's proof sooner with the
    /// pooled evidence than without.
    #[test]
    fn pooling_the_no_harm_evidence_across_stages_keeps_alpha_over_the_rollout() {
        let (base, tol, runs) = (0.01, 0.005, 600u32);
        // (challenger share, looks), and the challenger's responses per look.
        let stages = [(0.01, 40u32), (0.05, 40), (0.2, 40), (0.5, 80)];
        let per_look = [200u64, 200, 300, 400];
        let run = |delta: f64, pool: bool, seed: u64| -> (u32, u32, Vec<u64>) {
            let (mut passed, mut failed, mut last_stage_n) = (0u32, 0u32, vec![]);
            for r in 0..runs {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(r) << 20));
                match rollout(&mut rng, &stages, |i, _| per_look[i], (base, delta, tol), pool) {
                    End::RolledBack => failed += 1,
                    End::Proven(n2) => {
                        passed += 1;
                        last_stage_n.push(n2);
                    }
                    End::Undecided => {}
                }
            }
            last_stage_n.sort_unstable();
            (passed, failed, last_stage_n)
        };
        let se = (ALPHA * (1.0 - ALPHA) / f64::from(runs)).sqrt();
        let (passed, failed, _) = run(tol, true, 31);
        let (miss, rollbacks) = (f64::from(passed) / f64::from(runs), f64::from(failed) / f64::from(runs));
        eprintln!("at tolerance, pooled: proven {miss:.3}, rolled back {rollbacks:.3}");
        assert!(miss <= ALPHA + 2.0 * se, "proven at tolerance in {miss} of rollouts");
        assert!(rollbacks <= ALPHA + 2.0 * se, "rolled back at tolerance in {rollbacks} of rollouts");
        let (p_pool, _, n_pool) = run(0.0, true, 32);
        let (p_alone, _, n_alone) = run(0.0, false, 32);
        let (m_pool, m_alone) = (n_pool[n_pool.len() / 2], n_alone[n_alone.len() / 2]);
        eprintln!("equal: proven in the 50 % stage after a median {m_pool} responses pooled, {m_alone} alone ({p_pool}, {p_alone} of {runs})");
        assert!(m_pool < m_alone, "pooled {m_pool} vs alone {m_alone}");
    }

    /// The case 7 at 200 requests a second in a 1 % stage, one look
    /// a second (2 challenger responses, 198 champion): a challenger with
    /// 5 % 5xx against 0.3 % (tolerance 1 point) is rolled back within the
    /// first few hundred challenger responses. The stage has half the
    /// rollout's harm budget (the first of four judged stages). Measured
    /// (400 runs): median 86 s (172 responses), 95th percentile 208 s, 31 %
    /// within 60 s (with the whole α in this one stage, as before the budget
    /// was shared over the stages: 73 s, 174 s, 42 %). No valid test does
    /// much better: an SPRT that knew both rates exactly (0.05 against the
    /// margin 0.013) needs ln 20 / KL ≈ 96 responses (48 s) on average, and
    /// the best fixed test at 60 s (120 responses, reject at ≥ 5 errors)
    /// has power 0.72 — "always within 60 s" is not reachable at α = 5 %.
    #[test]
    fn a_bad_challenger_at_200_requests_a_second_is_rolled_back_within_a_minute() {
        let cell = RateCell { base: 0.003, tol: 0.01, share: 0.01, truth: Truth::Equal, per_look: 2, max_looks: 600 };
        let runs: u32 = 400;
        let mut within = 0u32;
        let mut seconds = vec![];
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(77 ^ (u64::from(run) << 20));
            let (mut s1, mut n1, mut s2, mut n2) = (0u64, 0u64, 0u64, 0u64);
            // The first of four judged stages (1 / 5 / 20 / 50 %): half the
            // rollout's harm budget.
            let mut process = RateProcess::for_stage(anytime::harm_share(0, 4));
            for look in 1..=cell.max_looks {
                s1 += binomial(&mut rng, 198, cell.base);
                n1 += 198;
                s2 += binomial(&mut rng, cell.per_look, 0.05);
                n2 += cell.per_look;
                process.update((s1 as f64, n1 as f64), (s2 as f64, n2 as f64), cell.tol, ALPHA);
                let v = process.verdict(ALPHA);
                assert!(!v.fine, "passed a 5 % challenger at look {look}");
                if v.harm {
                    seconds.push(look);
                    within += u32::from(look <= 60);
                    break;
                }
            }
        }
        seconds.sort_unstable();
        assert_eq!(seconds.len(), runs as usize, "every run rolled back within 10 minutes");
        let (median, p95) = (seconds[seconds.len() / 2], seconds[seconds.len() * 95 / 100]);
        eprintln!("rolled back: median {median} s, 95th percentile {p95} s, {within}/{runs} within 60 s");
        assert!(median <= 100 && p95 <= 300, "median {median} s, 95th percentile {p95} s");
    }

    /// 0/1 labels: 50/50 correct each cannot pass a 0.02 tolerance on 50
    /// labels (the interval is not [0, 0]); a challenger 2 × tolerance worse
    /// (0.999 vs 0.959) at n = 30 passes at most α of the time.
    #[test]
    fn binary_labels_are_judged_as_proportions() {
        let mut p = RateProcess::default();
        for k in 1..=5 {
            let n = f64::from(k) * 10.0;
            p.update((0.0, n), (0.0, n), 0.02, ALPHA);
        }
        let v = p.verdict(ALPHA);
        assert!(!v.fine && p.difference(ALPHA).high > 0.02, "{v:?}");
        let cell =
            RateCell { base: 0.001, tol: 0.02, share: 0.5, truth: Truth::TwiceTolerance, per_look: 30, max_looks: 40 };
        let o = run_rate(cell, ALPHA, 400, 7);
        assert!(o.pass_rate() <= ALPHA + 2.0 * o.se(ALPHA), "{}", o.pass_rate());
    }

    /// Efficiency: for an equal challenger and one 2 × beyond tolerance, the
    /// median sample to a verdict against the fixed-horizon design with the
    /// same α and β — the non-inferiority design for the equal challenger,
    /// the harm design (α at the margin, β at 2 δ) for the harmful one — with
    /// a look every hundredth of the former (a 10 s interval at a small
    /// stage's traffic).
    #[test]
    fn decisions_take_less_than_the_fixed_horizon_sample() {
        for &share in &[0.01, 0.05] {
            for truth in [Truth::Equal, Truth::TwiceTolerance] {
                let (base, tol) = (0.01, 0.01);
                let fixed = fixed_horizon(base, tol, share, ALPHA, ALPHA);
                let design = if truth == Truth::Equal { fixed } else { harm_horizon(base, tol, share, ALPHA, ALPHA) };
                let per_look = (fixed / 100.0).ceil() as u64;
                let cell = RateCell { base, tol, share, truth, per_look, max_looks: 500 };
                let o = run_rate(cell, ALPHA, 200, 3);
                let median = o.median_to_decision().unwrap_or(u64::MAX) as f64;
                eprintln!("share {share} {truth:?}: median {median} vs design {design:.0}: {:.2}", median / design);
                // Measured 0.48 and 0.55 (equal), 0.46 and 0.44 (2 ×); the
                // earlier weights (0.8 on the main alternatives, 0.15
                // adaptive, 0.1 α for the first batch) gave 0.49, 0.58,
                // 0.48, 0.45.
                assert!(median <= 0.6 * design, "{truth:?} at {share}: {median} vs design {design:.0}");
            }
        }
    }

    /// How a simulated rollout ended.
    enum End {
        RolledBack,
        /// Proven harmless in the last stage, with the challenger responses
        /// of that stage.
        Proven(u64),
        Undecided,
    }

    /// One simulated rollout: `stages` as (challenger share, looks), the
    /// challenger's responses at look `k` of stage `i` from `traffic(i, k)`
    /// (the champion's follow from the share), rates `(base, delta, tol)`:
    /// the champion errs at `base`, the challenger at `base + delta`. The
    /// harm budget is shared over the stages; the no-harm evidence carries
    /// into the next stage when `pool` (else each stage starts afresh).
    /// Only the last (promoting) stage stops on a proof.
    fn rollout(
        rng: &mut ChaCha8Rng,
        stages: &[(f64, u32)],
        traffic: impl Fn(usize, u32) -> u64,
        (base, delta, tol): (f64, f64, f64),
        pool: bool,
    ) -> End {
        let judged = stages.len();
        let mut process = RateProcess::for_stage(anytime::harm_share(0, judged));
        for (i, &(share, looks)) in stages.iter().enumerate() {
            if i > 0 {
                let w = anytime::harm_share(i, judged);
                process = if pool { process.into_next_stage(w) } else { RateProcess::for_stage(w) };
            }
            let (mut s1, mut n1, mut s2, mut n2) = (0u64, 0u64, 0u64, 0u64);
            for k in 0..looks {
                let challenger = traffic(i, k);
                let champion = champion_per_look(challenger, share);
                s1 += binomial(rng, champion, base);
                n1 += champion;
                s2 += binomial(rng, challenger, base + delta);
                n2 += challenger;
                process.update((s1 as f64, n1 as f64), (s2 as f64, n2 as f64), tol, ALPHA);
                let v = process.verdict(ALPHA);
                if v.harm {
                    return End::RolledBack;
                }
                if v.fine && i == judged - 1 {
                    return End::Proven(n2);
                }
            }
        }
        End::Undecided
    }

    /// Regimes outside the grid, drawn at random: base rates 0.05–20 %,
    /// tolerances 0.05–5 points, four stages of random shares (0.5–50 %,
    /// rising) judged as one rollout (no-harm evidence pooled, the harm
    /// budget shared), traffic per look that swings ×0.1–×1.9 (a daily
    /// cycle) and starts each stage with a handful of responses; a
    /// challenger at the tolerance (must not be rolled back: ≤ α over the
    /// rollout) or 2 × beyond it (must not be proven in the promoting stage:
    /// ≤ β). Returns the table's rows; panics on a cell beyond α + 2 se.
    fn random_regimes(cells: u32, runs: u32, seed: u64) -> Vec<String> {
        use rand::Rng;
        let mut pick = ChaCha8Rng::seed_from_u64(seed);
        let log_uniform = |r: &mut ChaCha8Rng, lo: f64, hi: f64| (lo.ln() + r.random::<f64>() * (hi / lo).ln()).exp();
        let mut rows = vec![];
        for cell in 0..cells {
            let base = log_uniform(&mut pick, 0.0005, 0.2);
            let tol = log_uniform(&mut pick, 0.0005, 0.05).min((0.9 - base) / 3.0);
            let mut shares: Vec<f64> = (0..4).map(|_| log_uniform(&mut pick, 0.005, 0.5)).collect();
            shares.sort_by(f64::total_cmp);
            let truth = if pick.random::<bool>() { Truth::AtTolerance } else { Truth::TwiceTolerance };
            let delta = truth.multiple() * tol;
            // About a fixed-horizon sample over 40 looks in each stage.
            let per_look: Vec<f64> =
                shares.iter().map(|&s| (fixed_horizon(base, tol, s, ALPHA, ALPHA) / 40.0).max(1.0)).collect();
            const LOOKS: u32 = 60;
            let plan: Vec<(f64, u32)> = shares.iter().map(|&share| (share, LOOKS)).collect();
            let (mut rolled_back, mut proven) = (0u32, 0u32);
            for r in 0..runs {
                let mut rng = ChaCha8Rng::seed_from_u64((u64::from(cell) << 32) ^ u64::from(r) ^ seed);
                let traffic = |i: usize, k: u32| {
                    let look = i as u32 * LOOKS + k + 1;
                    let cycle = 1.0 + 0.9 * (f64::from(look) * 0.21).sin();
                    let ramp = if k < 3 { 0.02 } else { 1.0 };
                    (per_look[i] * cycle * ramp).round().max(1.0) as u64
                };
                match rollout(&mut rng, &plan, traffic, (base, delta, tol), true) {
                    End::RolledBack => rolled_back += 1,
                    End::Proven(_) => proven += 1,
                    End::Undecided => {}
                }
            }
            let wrong = if truth == Truth::TwiceTolerance { proven } else { rolled_back };
            let rate = f64::from(wrong) / f64::from(runs);
            let se = (ALPHA * (1.0 - ALPHA) / f64::from(runs)).sqrt();
            rows.push(format!(
                "| {:.3}% | {:.3} pp | {} | {} | {rate:.4} | {:.4} | {:.4} |",
                base * 100.0,
                tol * 100.0,
                shares.iter().map(|s| format!("{:.1}%", s * 100.0)).collect::<Vec<_>>().join(" / "),
                truth.name(),
                f64::from(rolled_back) / f64::from(runs),
                f64::from(proven) / f64::from(runs),
            ));
            assert!(rate <= ALPHA + 2.0 * se, "{}: wrong decisions {rate} > α + 2 se", rows.last().unwrap());
        }
        rows
    }

    /// A few random regimes on every `make test` (the full run below).
    #[test]
    fn random_regimes_keep_alpha_over_the_rollout() {
        random_regimes(12, 200, 7);
    }

    /// 60 random regimes, 300 rollouts each (slow: `cargo test -p
    /// canary-judge --release --lib -- --ignored random_regimes_table
    /// --nocapture`); the result is in docs/gates.md.
    #[test]
    #[ignore]
    fn random_regimes_table() {
        let cells = std::env::var("REGIMES").ok().and_then(|r| r.parse().ok()).unwrap_or(60);
        let runs = std::env::var("CALIBRATION_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(300);
        println!("| base | tolerance | stage shares | truth | wrong decisions | rolled back | proven |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for row in random_regimes(cells, runs, 2027) {
            println!("{row}");
        }
        println!("{cells} regimes, {runs} rollouts each, alpha = beta = {ALPHA}");
    }

    /// The full table for the docs and `bench/results/` (slow: `cargo test
    /// -p canary-controller --release -- --ignored calibration_table --nocapture`).
    #[test]
    #[ignore]
    fn calibration_table() {
        let runs = std::env::var("CALIBRATION_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(1000);
        // Looks per fixed-horizon sample: 20 is coarse (the median moves in
        // steps of 0.05 of it); 100 is what a 10 s interval gives a small
        // stage (a 1 % stage at 200 requests/s: 20 challenger responses a
        // look against a fixed horizon of 770–16 000).
        for looks in [20u32, 100] {
            println!("{}", rate_table(&rate_grid(f64::from(looks), 6 * looks), ALPHA, runs, 2026));
            println!(
                "{runs} runs per row, alpha = beta = {ALPHA}, looks of 1/{looks} of the fixed-horizon sample, at most {}\n",
                6 * looks
            );
        }
    }

    /// Latency, the cases 3 and 4: at n = 200 per look no upper
    /// bound of p99 exists yet, so a 3.1 × slower challenger cannot pass; a
    /// challenger within tolerance is not failed however many samples.
    #[test]
    fn latency_bounds_are_conservative_at_bucket_edges() {
        let slow = LatencyCell {
            q: 0.99,
            multiplier: 1.5,
            factor: 3.1,
            median_us: 8000.0,
            sigma: 0.5,
            share: 0.5,
            per_look: 200,
            max_looks: 1,
        };
        let o = run_latency(slow, ALPHA, 200, 11);
        assert_eq!(o.passed, 0, "no upper bound of p99 from 200 samples");
        assert!(anytime::samples_for_upper_bound(0.99, ALPHA / 2.0) > 200);
        let within = LatencyCell { factor: 1.2, per_look: 2000, max_looks: 10, ..slow };
        let o = run_latency(within, ALPHA, 100, 12);
        assert!(o.fail_rate() <= ALPHA + 2.0 * o.se(ALPHA), "{}", o.fail_rate());
    }
}

#[cfg(test)]
mod oracle {
    use super::*;
    /// A reference floor: an SPRT that knows the champion's rate exactly and
    /// whose alternative is the truth, at threshold 1/α (a test that must
    /// learn the champion's rate cannot expect to beat it). Measured (300 runs, looks of a twentieth of the fixed
    /// sample): 0.50 (equal) and 0.65–0.80 (2 × tolerance) of the fixed
    /// horizon at a 1 % stage (1.17 at 0.3 % base with a 1-point
    /// tolerance); the engine needs 0.55–0.66 and 0.60–1.00 (1.12–1.25)
    /// at the same looks (docs/gates.md)
    /// (`cargo test -p canary-judge --release -- --ignored oracle_floor
    /// --nocapture`).
    #[test]
    #[ignore]
    fn oracle_floor() {
        let runs = 300u32;
        for &(base, tol) in &[(0.001, 0.001), (0.01, 0.005), (0.003, 0.01), (0.05, 0.02)] {
            for &share in &[0.01, 0.5] {
                let fixed = fixed_horizon(base, tol, share, 0.05, 0.05);
                let per_look = (fixed / 20.0).ceil().max(1.0) as u64;
                let mut line = format!("b{base} t{tol} s{share} fixed {fixed:.0}:");
                for (name, d, alt) in [("eq", 0.0, 0.0), ("2x", 2.0, 2.0)] {
                    let mut to = vec![];
                    for run in 0..runs {
                        let mut rng = ChaCha8Rng::seed_from_u64(run as u64 * 7 + 1);
                        let (mut s, mut n) = (0u64, 0u64);
                        for _ in 0..400 {
                            s += binomial(&mut rng, per_look, base + d * tol);
                            n += per_look;
                            let l = anytime::log_likelihood(s as f64, n as f64, base + alt * tol)
                                - anytime::log_likelihood(s as f64, n as f64, base + tol);
                            if l >= (20.0f64).ln() {
                                to.push(n);
                                break;
                            }
                        }
                    }
                    to.sort_unstable();
                    let m = to.get(runs as usize / 2).copied().unwrap_or(u64::MAX) as f64 / fixed;
                    line += &format!(" {name} {m:.2}");
                }
                println!("{line}");
            }
        }
    }
}
