//! The prediction gate: PSI(challenger ‖ champion) < `max_psi` over the
//! prediction bins ([`crate::psi`]), in live stages and (never blocking on
//! missing data) in a shadow stage.

use std::collections::BTreeMap;

use super::judge::{needed, pct, verdict_words, Judge};
use super::{Descriptor, Digits, Evidence, Gate, GateKind, GateResult, Outcome, Stages};
use crate::spec::NoDataPolicy;
use crate::stats;
use crate::window::VersionWindow;
use crate::{anytime, psi};

pub(super) const GATE: Gate = Gate {
    field: "prediction",
    results: &[DESCRIPTOR],
    stages: Stages::Both,
    configured: |s| s.prediction.is_some(),
    remove: |s| s.prediction = None,
    segments: super::no_segments,
    rate_tolerance: |_| None,
    judge,
};

const DESCRIPTOR: Descriptor = Descriptor {
    kind: GateKind::Prediction,
    id: "prediction",
    title: "prediction",
    scale: 1.0,
    unit: "",
    digits: Digits::Decimals(4),
    difference: false,
    reference: true,
};

pub(super) fn judge(e: &Evidence<'_>, judge: Judge<'_>) -> Vec<GateResult> {
    let Some(g) = &e.spec.prediction else { return vec![] };
    // The challenger's predictions are compared, not binned, in a shadow
    // stage: without bins PSI waits for the first live stage.
    let on_no_data = if e.stage.shadow { NoDataPolicy::Ignore } else { g.on_no_data };
    vec![prediction_gate(g, e.champion, e.challenger, e.min_samples, on_no_data, judge)]
}

/// PSI(challenger ‖ champion) < `max_psi`, once both versions have `min`
/// parsed predictions (and the gate's own `min_predictions`). The value is
/// reported as the challenger's, the champion's being 0 by definition; the
/// unparsed shares and per-bin terms go to `notes`.
///
/// Sequential: with `c = 1/N + 1/M` and `ν = bins − 1`, the PSI of two
/// samples is approximately `c` times a non-central χ²(ν, λ = PSI/c): its
/// mean is the true PSI plus the **noise floor** `ν·c` (what two samples of
/// one distribution give), its variance `2ν·c² + 4·PSI·c`. The gate
/// inverts that distribution's tails ([`psi::psi_bounds`]; a normal band
/// undercovered in the skewed small-sample tail): fail when the low end is
/// above `max_psi` (spending the stage's share of `alpha_k`), pass when the
/// high end, from the unsmoothed PSI, is below; inconclusive otherwise. The
/// error rates are measured in [`crate::psi_calibration`].
pub(super) fn prediction_gate(
    g: &crate::spec::PredictionGate,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    min: u64,
    on_no_data: NoDataPolicy,
    judge: Judge<'_>,
) -> GateResult {
    let need = min.max(g.min_predictions);
    let n = (champion.parsed_predictions(), challenger.parsed_predictions());
    let unparsed = (champion.unparsed_predictions(), challenger.unparsed_predictions());
    let p = match psi::psi(&champion.predictions, &challenger.predictions) {
        Some(p) if n.0 >= need && n.1 >= need => p,
        _ => {
            return GateResult::no_data(
                GateKind::Prediction,
                n.0,
                n.1,
                on_no_data,
                format!(
                    "{} champion and {} challenger parsed predictions of {need} each ({} and {} unparsed)",
                    n.0, n.1, unparsed.0, unparsed.1
                ),
            )
        }
    };
    let share = |x: Option<f64>| x.map_or("-".to_string(), pct);
    let head = format!(
        "PSI {:.4} over {} bins vs max {} (must stay below); unparsed: champion {}, challenger {}",
        p.value,
        p.bins.len(),
        g.max_psi,
        share(p.champion_unparsed_share()),
        share(p.challenger_unparsed_share())
    );
    let mut notes: BTreeMap<String, f64> = BTreeMap::new();
    if let Some(x) = p.champion_unparsed_share() {
        notes.insert("champion_unparsed_share".into(), x);
    }
    if let Some(x) = p.challenger_unparsed_share() {
        notes.insert("challenger_unparsed_share".into(), x);
    }
    for t in &p.bins {
        notes.insert(format!("term.{}", t.bin), t.term);
    }
    let values = GateResult {
        champion: Some(0.0),
        challenger: Some(p.value),
        threshold: Some(g.max_psi),
        margin: Some(g.max_psi - p.value),
        notes,
        ..GateResult::base(GateKind::Prediction, Outcome::Pass, n, String::new())
    };
    if !judge.sequential() {
        // PSI at the limit fails: the limit is the first value that is too much.
        let outcome = if p.value < g.max_psi { Outcome::Pass } else { Outcome::Fail };
        return GateResult { outcome, blocks: outcome != Outcome::Pass, detail: head, ..values };
    }
    let small = n.0.min(n.1);
    let k = judge.schedule.look(small, need.max(1));
    if let Some(r) = judge.carried(GateKind::Prediction, k, n, need.max(1)) {
        return r;
    }
    let confidence = judge.schedule.confidence_at(k);
    let nu = (p.bins.len().max(2) - 1) as f64;
    let c = 1.0 / n.0 as f64 + 1.0 / n.1 as f64;
    let noise = nu * c;
    let centre = p.value - noise;
    // The fail side spends the stage's share of the harm budget.
    let spend = judge.schedule.alpha_at(k);
    let interval = psi::psi_bounds(
        (p.value, p.raw()),
        p.bins.len(),
        n.0,
        n.1,
        spend * anytime::clamp_share(judge.harm_share),
        spend,
    );
    let outcome = if interval.low > g.max_psi {
        Outcome::Fail
    } else if interval.high < g.max_psi {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    };
    let need_more = (outcome == Outcome::Inconclusive)
        .then(|| {
            let z_at = |l| stats::z_two_sided(judge.schedule.confidence_at(l));
            // The noise floor shrinks with the samples; the shift measured
            // above it stays. The projection asks the same χ² test the
            // verdict uses (each side at the look's level with power).
            let shift = centre.max(0.0);
            let bins = p.bins.len();
            needed(small, need.max(1), k, &judge.schedule, z_at, |t, level| {
                let value = shift + nu * c / t;
                let side = (1.0 - level) / 2.0;
                let alphas = (side * anytime::clamp_share(judge.harm_share), side);
                psi::psi_decides(value, bins, (n.0 as f64 * t, n.1 as f64 * t), g.max_psi, alphas)
            })
        })
        .flatten();
    let detail = format!(
        "{head}; noise floor {noise:.4}, {:.2}% interval [{:.4}, {:.4}] at look {k}: {}",
        confidence * 100.0,
        interval.low,
        interval.high,
        verdict_words(outcome, need_more, "predictions")
    );
    let mut r = GateResult {
        outcome,
        blocks: outcome != Outcome::Pass,
        detail,
        challenger_interval: Some(interval),
        look: Some(k),
        confidence: Some(confidence),
        needed: need_more,
        ..values
    };
    r.notes.insert("noise_floor".into(), noise);
    r
}
