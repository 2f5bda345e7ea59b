//! The labels gate: the challenger's mean label outcome against the
//! champion's − `min_degradation_tolerance`, once both have `min_labels`.

use super::judge::{needed, scaled, verdict, verdict_words, Judge, LabelEvidence};
use super::rate::anytime_rate;
use super::{Descriptor, Digits, Evidence, Gate, GateKind, GateResult, Outcome, Stages};
use crate::labels::LabelStats;
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
/// have `min_labels`. Sequential: Welch's interval of the difference
/// (challenger − champion): fail when its high end is below −tolerance,
/// pass when its low end is at least −tolerance; looks from `min_labels`.
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
        r.champion = Some(ma);
        r.challenger = Some(mb);
        r.threshold = Some(threshold);
        r.margin = Some(mb - threshold);
        r.difference = Some(mb - ma);
        r.difference_interval = r.difference_interval.map(|i| Interval { low: -i.high, high: -i.low });
        return r;
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
    GateResult {
        champion: Some(ma),
        challenger: Some(mb),
        threshold: Some(threshold),
        margin: Some(mb - threshold),
        difference: Some(d),
        difference_interval: Some(di),
        look: Some(k),
        confidence: Some(confidence),
        needed: need,
        ..GateResult::base(GateKind::Labels, outcome, n, detail)
    }
}
