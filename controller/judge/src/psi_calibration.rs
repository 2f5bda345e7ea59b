//! Calibration of the prediction gate (PSI, [`crate::psi`]) in the regime
//! real rollouts live in: unequal traffic (the champion 9 or 99 × the
//! challenger's predictions), small counts, a look after every interval.
//! The champion predicts uniformly over `k` bins (quantile edges make bins
//! of equal champion share); the challenger's shares are tilted
//! (`c_i = p_i (1 ± ε)`, alternating) so that the population PSI between
//! them is exactly `max_psi` (**at the limit**, the boundary of both of the
//! gate's tests: a pass and a fail are each an error the gate bounds by its
//! alpha), or twice it (**beyond**: passing is a miss), or 0 (**equal**:
//! failing is a false rollback, passing is the job). Each run grows both versions' windows look by
//! look and judges them with [`gates::evaluate`] — the state machine's own
//! call, carrying the spent looks — until the gate fails or passes, or the
//! looks run out. Monte-Carlo standard errors are √(p(1 − p)/runs).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::gates::{self, GateResult, LabelEvidence, Outcome, StageContext};
use crate::simulate::multinomial;
use crate::spec::{GateMethod, GatesSpec, NoDataPolicy, PredictionGate};
use crate::window::VersionWindow;

/// Population PSI between shares `c` and `p`.
pub fn population_psi(c: &[f64], p: &[f64]) -> f64 {
    c.iter().zip(p).map(|(c, p)| (c - p) * (c / p).ln()).sum()
}

/// The challenger's shares over `k` equal champion bins with population PSI
/// `target` (alternating tilt ±ε, bisected).
pub fn tilted(k: usize, target: f64) -> Vec<f64> {
    let shares =
        |eps: f64| -> Vec<f64> { (0..k).map(|i| (1.0 + if i % 2 == 0 { eps } else { -eps }) / k as f64).collect() };
    let p = vec![1.0 / k as f64; k];
    let (mut lo, mut hi) = (0.0, 0.999);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if population_psi(&shares(mid), &p) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    shares(0.5 * (lo + hi))
}

/// One cell: `k` bins, the truth as a multiple of `max_psi`, the challenger's
/// predictions per look and the champion's multiple of them.
#[derive(Debug, Clone, Copy)]
pub struct PsiCell {
    pub k: usize,
    pub max_psi: f64,
    pub multiple: f64,
    pub per_look: u64,
    pub ratio: u64,
    pub looks: u32,
    pub min_samples: u64,
}

/// Fails, passes and the challenger's predictions at each decision.
#[derive(Debug, Default)]
pub struct PsiOutcome {
    pub runs: u32,
    pub failed: u32,
    pub passed: u32,
    pub to_decision: Vec<u64>,
}

impl PsiOutcome {
    pub fn rate(&self, x: u32) -> f64 {
        f64::from(x) / f64::from(self.runs)
    }

    pub fn median(&mut self) -> Option<u64> {
        self.to_decision.sort_unstable();
        self.to_decision.get(self.to_decision.len() / 2).copied()
    }
}

fn window(counts: &[u64]) -> VersionWindow {
    let mut w = VersionWindow::default();
    let n: u64 = counts.iter().sum();
    w.add_responses(n, 0);
    for (i, c) in counts.iter().enumerate() {
        w.add_prediction(&format!("b{i}"), *c);
    }
    w
}

pub fn run_psi(cell: PsiCell, method: GateMethod, runs: u32, seed: u64) -> PsiOutcome {
    let spec = GatesSpec {
        method,
        prediction: Some(PredictionGate { max_psi: cell.max_psi, on_no_data: NoDataPolicy::Hold, min_predictions: 0 }),
        ..GatesSpec::default()
    };
    let p = vec![1.0 / cell.k as f64; cell.k];
    let c = if cell.multiple == 0.0 { p.clone() } else { tilted(cell.k, cell.multiple * cell.max_psi) };
    let mut out = PsiOutcome { runs, ..PsiOutcome::default() };
    for run in 0..runs {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(run) << 20));
        let (mut a, mut b) = (vec![0u64; cell.k], vec![0u64; cell.k]);
        let mut spent: Vec<GateResult> = vec![];
        for look in 1..=cell.looks {
            multinomial(&mut rng, cell.per_look * cell.ratio, &p, &mut a);
            multinomial(&mut rng, cell.per_look, &c, &mut b);
            let results = gates::evaluate(
                &spec,
                &window(&a),
                &window(&b),
                &LabelEvidence::default(),
                StageContext::live(cell.min_samples),
                &spent,
            );
            let r = &results[0];
            if r.spends_look() {
                spent = vec![r.clone()];
            }
            match r.outcome {
                Outcome::Fail => out.failed += 1,
                Outcome::Pass => out.passed += 1,
                _ => continue,
            }
            out.to_decision.push(u64::from(look) * cell.per_look);
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilted_shares_have_the_target_psi() {
        let c = tilted(10, 0.1);
        assert!((population_psi(&c, &[0.1; 10]) - 0.1).abs() < 1e-9);
        assert!((c.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    /// α + 2 Monte-Carlo standard errors.
    fn ceiling(alpha: f64, runs: u32) -> f64 {
        alpha + 2.0 * (alpha * (1.0 - alpha) / f64::from(runs)).sqrt()
    }

    /// The claim of docs/gates.md, on one cell of the probe below (the
    /// champion 9 × the challenger, 20 challenger predictions a look, 10
    /// bins): at the limit neither a pass nor a fail above α; at twice the
    /// limit a pass at most α; an equal challenger passes.
    #[test]
    fn the_prediction_gate_errs_at_most_alpha_on_unequal_traffic() {
        let runs = 200;
        let cell =
            |multiple| PsiCell { k: 10, max_psi: 0.1, multiple, per_look: 20, ratio: 9, looks: 300, min_samples: 50 };
        let alpha = GatesSpec::default().alpha;
        let at = run_psi(cell(1.0), GateMethod::Anytime, runs, 5);
        assert!(at.rate(at.failed) <= ceiling(alpha, runs), "fail at the limit {}", at.rate(at.failed));
        assert!(at.rate(at.passed) <= ceiling(alpha, runs), "pass at the limit {}", at.rate(at.passed));
        let beyond = run_psi(cell(2.0), GateMethod::Anytime, runs, 6);
        assert!(beyond.rate(beyond.passed) <= ceiling(alpha, runs), "pass at 2x {}", beyond.rate(beyond.passed));
        assert!(beyond.rate(beyond.failed) >= 0.9, "2x caught only {}", beyond.rate(beyond.failed));
        let equal = run_psi(cell(0.0), GateMethod::Anytime, runs, 7);
        assert!(equal.rate(equal.passed) >= 0.95, "equal passed only {}", equal.rate(equal.passed));
        assert!(equal.rate(equal.failed) <= ceiling(alpha, runs), "equal failed {}", equal.rate(equal.failed));
    }

    #[test]
    #[ignore]
    fn psi_probe() {
        for method in [GateMethod::Anytime] {
            for &(k, max_psi) in &[(10usize, 0.1), (20, 0.1), (4, 0.25)] {
                for &ratio in &[1u64, 9, 99] {
                    for &multiple in &[0.0, 1.0, 2.0] {
                        let cell = PsiCell { k, max_psi, multiple, per_look: 20, ratio, looks: 300, min_samples: 50 };
                        let mut o = run_psi(cell, method, 400, 11);
                        let m = o.median();
                        eprintln!(
                            "k {k} max {max_psi} ratio {ratio} truth {multiple}x: fail {:.3} pass {:.3} undecided {:.3} median {m:?}",
                            o.rate(o.failed),
                            o.rate(o.passed),
                            1.0 - o.rate(o.failed) - o.rate(o.passed)
                        );
                    }
                }
            }
        }
    }
}
