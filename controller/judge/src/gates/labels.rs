//! The labels gate: the challenger's mean label outcome against the
//! champion's − `min_degradation_tolerance`, once both have `min_labels`.

use super::judge::{needed, scaled, verdict, verdict_words, Judge, LabelEvidence};
use super::rate::{anytime_rate, projected_need};
use super::{Descriptor, Digits, Evidence, Gate, GateKind, GateResult, Outcome, Stages};
use crate::labels::LabelStats;
use crate::mean_difference::{labels_for_skewness, MeanDifference};
use crate::spec::NoDataPolicy;
use crate::stats::{self, Interval};

pub(super) const GATE: Gate = Gate {
    field: "labels",
    results: &[DESCRIPTOR],
    stages: Stages::Live,
    configured: |s| s.labels.is_some(),
    remove: |s| s.labels = None,
    segments: |s| s.labels.as_ref().map(|g| &g.segments),
    rate_tolerance: |_| None,
    judge,
};

const DESCRIPTOR: Descriptor = Descriptor {
    kind: GateKind::Labels,
    id: "labels",
    title: "labels",
    scale: 1.0,
    unit: "",
    digits: Digits::Decimals(4),
    difference: true,
    reference: false,
};

pub(super) fn judge(e: &Evidence<'_>, judge: Judge<'_>) -> Vec<GateResult> {
    let Some(g) = &e.spec.labels else { return vec![] };
    vec![label_gate(g, e.labels, judge)]
}

/// Challenger mean ≥ champion's − `min_degradation_tolerance`, once both
/// have `min_labels`. Anytime (the default): outcomes in [0, 1] as a rate
/// ([`anytime_rate`]), others by the normal-mixture confidence sequence
/// ([`anytime_means`]). Sequential: Welch's interval of the difference
/// (challenger − champion) at looks from `min_labels`. Either way fail when
/// the interval's high end is below −tolerance, pass when its low end is at
/// least −tolerance.
pub(super) fn label_gate(g: &crate::spec::LabelGate, labels: &LabelEvidence, judge: Judge<'_>) -> GateResult {
    let (a, b) = (labels.champion, labels.challenger);
    let n = (a.n, b.n);
    let (ma, mb) = match (a.mean(), b.mean()) {
        (Some(ma), Some(mb)) if a.n >= g.min_labels && b.n >= g.min_labels => (ma, mb),
        _ => {
            return GateResult::no_data(
                GateKind::Labels,
                a.n,
                b.n,
                NoDataPolicy::Hold,
                format!("waiting for labels: {} champion, {} challenger of {} each", a.n, b.n, g.min_labels),
            )
        }
    };
    let tol = g.min_degradation_tolerance;
    // Higher is better: express as "challenger shortfall ≤ tolerance".
    let threshold = ma - tol;
    let head = format!("label metric: challenger {mb:.4} vs champion {ma:.4} − {tol} = {threshold:.4}");
    if judge.anytime() && a.within_unit() && b.within_unit() {
        // Outcomes in [0, 1] (0/1 labels above all): the shortfall 1 − x is
        // a "higher is worse" rate, judged like the error rate.
        let shortfall = |l: LabelStats| (l.n as f64 - l.sum, l.n as f64);
        let mut r = anytime_rate(GateKind::Labels, (shortfall(a), shortfall(b)), tol, &tol.to_string(), judge, head);
        r.difference_interval = r.difference_interval.map(|i| Interval { low: -i.high, high: -i.low });
        return with_means(r, (ma, mb), tol);
    }
    if judge.anytime() {
        return with_means(anytime_means(g, labels, judge, head), (ma, mb), tol);
    }
    if !judge.sequential() {
        let mut r = GateResult::at_least(GateKind::Labels, n, (Some(ma), mb), threshold, head);
        r.difference = Some(mb - ma);
        return r;
    }
    let n0 = g.min_labels.max(1);
    let small = a.n.min(b.n);
    let k = judge.schedule.look(small, n0);
    if let Some(r) = judge.carried(GateKind::Labels, k, n, n0) {
        return r;
    }
    let confidence = judge.schedule.confidence_at(k);
    let d = mb - ma;
    let Some(di) = stats::welch_diff(a.n, a.sum, a.sum_sq, b.n, b.sum, b.sum_sq, confidence) else {
        return GateResult::no_data(GateKind::Labels, a.n, b.n, NoDataPolicy::Hold, head);
    };
    let outcome = verdict(di, -tol, false);
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            let z_at = |l| stats::z_two_sided(judge.schedule.confidence_at(l));
            needed(small, n0, k, &judge.schedule, z_at, |t, level| {
                let (n1, n2) = (scaled(a.n, t), scaled(b.n, t));
                let (f1, f2) = (n1 as f64 / a.n as f64, n2 as f64 / b.n as f64);
                stats::welch_diff(n1, a.sum * f1, a.sum_sq * f1, n2, b.sum * f2, b.sum_sq * f2, level)
                    .is_some_and(|i| verdict(i, -tol, false) != Outcome::Inconclusive)
            })
        })
        .flatten();
    let detail = format!(
        "{head}: difference {d:+.4}, {:.2}% interval [{:+.4}, {:+.4}] vs −{tol} at look {k}: {}",
        confidence * 100.0,
        di.low,
        di.high,
        verdict_words(outcome, need, "labels")
    );
    let r = GateResult {
        difference_interval: Some(di),
        look: Some(k),
        confidence: Some(confidence),
        needed: need,
        ..GateResult::base(GateKind::Labels, outcome, n, detail)
    };
    with_means(r, (ma, mb), tol)
}

/// The values every judged label result carries: both means, the
/// champion's less the tolerance as the threshold, and the difference.
fn with_means(r: GateResult, (ma, mb): (f64, f64), tol: f64) -> GateResult {
    let threshold = ma - tol;
    GateResult {
        champion: Some(ma),
        challenger: Some(mb),
        threshold: Some(threshold),
        margin: Some(mb - threshold),
        difference: Some(mb - ma),
        ..r
    }
}

/// Unbounded outcomes under the anytime method: the normal-mixture
/// confidence sequence of [`crate::mean_difference`] (asymptotically valid
/// at every look), harm at the stage's share of α, no harm at α.
fn anytime_means(g: &crate::spec::LabelGate, labels: &LabelEvidence, judge: Judge<'_>, head: String) -> GateResult {
    let (a, b) = (labels.champion, labels.challenger);
    let n = (a.n, b.n);
    let Some(d) = MeanDifference::of(&a, &b) else {
        return GateResult::no_data(
            GateKind::Labels,
            a.n,
            b.n,
            NoDataPolicy::Hold,
            format!(
                "{head}: every label so far has the same value, so there is no spread to bound the difference with yet"
            ),
        );
    };
    let tol = g.min_degradation_tolerance;
    let alpha = judge.schedule.alpha;
    let harm_alpha = alpha * judge.harm_share;
    // The mixture is tuned to differences of the tolerance's size; with no
    // tolerance, to a tenth of the outcomes' standard deviation.
    let tau = if tol > 0.0 { tol } else { 0.1 * d.spread() };
    let decide = |d: &MeanDifference| {
        if d.below(-tol, tau, harm_alpha) {
            Outcome::Fail
        } else if d.above(-tol, tau, alpha) {
            Outcome::Pass
        } else {
            Outcome::Inconclusive
        }
    };
    // Skewed labels: no verdict until both versions have what the normal
    // approximation needs (the bounds are still reported).
    let small = a.n.min(b.n);
    let skewed = labels_for_skewness(&a, &b).filter(|&(_, labels)| small < labels);
    let bounds_say = decide(&d);
    let outcome = if skewed.is_some() { Outcome::Inconclusive } else { bounds_say };
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            let projected = match bounds_say {
                Outcome::Inconclusive => {
                    projected_need(b.n as f64, |t| decide(&d.projected(t)) != Outcome::Inconclusive)
                }
                _ => Some(0),
            };
            match skewed {
                Some((_, labels)) => projected.map(|p| p.max(labels - small)),
                None => projected,
            }
        })
        .flatten();
    let di = d.bounds(tau, alpha, harm_alpha);
    let wait = skewed.map_or(String::new(), |(g, labels)| {
        format!(
            "skewed labels (skewness {g:.2}) are judged from {labels} per version on (Cochran's rule n > 25·skewness²); "
        )
    });
    let detail = format!(
        "{head}: difference {:+.4}, {:.0}% confidence sequence [{:+.4}, {:+.4}] vs −{tol} (valid at every look): {wait}{}",
        d.estimate(),
        (1.0 - alpha) * 100.0,
        di.low,
        di.high,
        verdict_words(outcome, need, "labels")
    );
    GateResult {
        difference_interval: Some(di),
        confidence: Some(1.0 - alpha),
        needed: need,
        ..GateResult::base(GateKind::Labels, outcome, n, detail)
    }
}
