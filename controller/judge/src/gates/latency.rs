//! The latency gate: the challenger's latency quantile against the
//! champion's × `latency_tolerance_multiplier` (the shadow gate's latency
//! check uses the same comparison).

use super::judge::{needed, verdict_words, Judge};
use super::rate::projected_need;
use super::{Descriptor, Digits, Evidence, Gate, GateKind, GateResult, Outcome, Stages};
use crate::anytime;
use crate::spec::NoDataPolicy;
use crate::stats::{self, Interval};
use crate::window::MergedHistogram as Histogram;

pub(super) const GATE: Gate = Gate {
    field: "latency",
    results: &[DESCRIPTOR],
    stages: Stages::Live,
    configured: |s| s.latency.is_some(),
    remove: |s| s.latency = None,
    segments: |s| s.latency.as_ref().map(|g| &g.segments),
    rate_tolerance: |_| None,
    judge,
};

const DESCRIPTOR: Descriptor = Descriptor {
    kind: GateKind::Latency,
    id: "latency",
    title: "latency",
    scale: 0.001,
    unit: " ms",
    digits: Digits::Significant(3),
    difference: false,
    reference: false,
};

pub(super) fn judge(e: &Evidence<'_>, judge: Judge<'_>) -> Vec<GateResult> {
    let Some(g) = &e.spec.latency else { return vec![] };
    vec![latency_gate(
        GateKind::Latency,
        "challenger",
        (&e.champion.latency_us, &e.challenger.latency_us),
        g.quantile,
        g.latency_tolerance_multiplier,
        e.min_samples,
        judge,
    )]
}

/// Challenger quantile ≤ champion's × `multiplier`. Threshold: the point
/// quantiles. Sequential: a distribution-free order-statistic interval per
/// version, each at confidence `1 − alpha_k` (so each one-sided bound errs
/// with probability `alpha_k / 2`, and a verdict, which needs both bounds,
/// with at most `alpha_k`): fail when the challenger's low end is above the
/// champion's high end × multiplier, pass when its high end is at most the
/// champion's low end × multiplier.
pub(super) fn latency_gate(
    kind: GateKind,
    who: &str,
    h: (&Histogram, &Histogram),
    q: f64,
    multiplier: f64,
    min_samples: u64,
    judge: Judge<'_>,
) -> GateResult {
    let hn = (h.0.count(), h.1.count());
    if judge.anytime() {
        return anytime_latency(kind, who, h, q, multiplier, judge);
    }
    let (a, b) = match (h.0.quantile(q), h.1.quantile(q)) {
        (Some(a), Some(b)) if hn.0 >= min_samples && hn.1 >= min_samples => (a, b),
        _ => {
            return GateResult::no_data(
                kind,
                hn.0,
                hn.1,
                NoDataPolicy::Hold,
                format!(
                    "{} champion and {} {who} latency samples of {min_samples} each (histograms refresh at Envoy's stats flush)",
                    hn.0, hn.1
                ),
            )
        }
    };
    let limit = a * multiplier;
    let head = format!(
        "p{}: {who} {:.1} ms vs champion {:.1} ms × {multiplier} = {:.1} ms",
        q * 100.0,
        b / 1000.0,
        a / 1000.0,
        limit / 1000.0
    );
    if !judge.sequential() {
        return GateResult::at_most(kind, hn, (a, b), limit, head);
    }
    let small = hn.0.min(hn.1);
    let k = judge.schedule.look(small, min_samples);
    if let Some(r) = judge.carried(kind, k, hn, min_samples) {
        return r;
    }
    let per_version = 1.0 - judge.schedule.alpha_at(k);
    let (Some(ia), Some(ib)) =
        (stats::quantile_interval(h.0, q, per_version), stats::quantile_interval(h.1, q, per_version))
    else {
        return GateResult::no_data(kind, hn.0, hn.1, NoDataPolicy::Hold, head);
    };
    let outcome = if ib.low > ia.high * multiplier {
        Outcome::Fail
    } else if ib.high <= ia.low * multiplier {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    };
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            let z_at = |l| stats::z_two_sided(1.0 - judge.schedule.alpha_at(l));
            needed(small, min_samples, k, &judge.schedule, z_at, |t, level| {
                let bounds = (
                    stats::quantile_interval_scaled(h.0, q, level, t),
                    stats::quantile_interval_scaled(h.1, q, level, t),
                );
                bounds
                    .0
                    .zip(bounds.1)
                    .is_some_and(|(ia, ib)| ib.low > ia.high * multiplier || ib.high <= ia.low * multiplier)
            })
        })
        .flatten();
    let ms = |x: f64| format!("{:.1}", x / 1000.0);
    let detail = format!(
        "{head}; {:.2}% intervals: {who} [{}, {}] ms, champion [{}, {}] ms, at look {k}: {}",
        per_version * 100.0,
        ms(ib.low),
        ms(ib.high),
        ms(ia.low),
        ms(ia.high),
        verdict_words(outcome, need, "latency samples")
    );
    GateResult {
        champion: Some(a),
        challenger: Some(b),
        threshold: Some(limit),
        margin: Some(limit - b),
        champion_interval: Some(ia),
        challenger_interval: Some(ib),
        look: Some(k),
        confidence: Some(per_version),
        needed: need,
        ..GateResult::base(kind, outcome, hn, detail)
    }
}

/// Anytime method for latency: per version, bounds of the quantile valid
/// at every sample size ([`anytime::quantile_bounds`], each version's
/// sequence at α/2, so each verdict errs with probability ≤ α), read at
/// the histogram's bucket edges (conservative). Fail when the challenger's
/// lower bound exceeds the champion's upper bound × multiplier; pass when
/// the challenger's upper bound is at most the champion's lower bound ×
/// multiplier. No upper bound (too few samples for this quantile, or the
/// rank lies beyond the last finite bucket) can never pass.
pub(super) fn anytime_latency(
    kind: GateKind,
    who: &str,
    h: (&Histogram, &Histogram),
    q: f64,
    multiplier: f64,
    judge: Judge<'_>,
) -> GateResult {
    let hn = (h.0.count(), h.1.count());
    let alpha = judge.schedule.alpha / 2.0;
    // Rolling back spends the stage's share of α, passing the whole α (a
    // pass is final only in the promoting stage).
    let alpha_fail = alpha * anytime::clamp_share(judge.harm_share);
    if hn.0 == 0 || hn.1 == 0 {
        return GateResult::no_data(
            kind,
            hn.0,
            hn.1,
            NoDataPolicy::Hold,
            format!("{} champion and {} {who} latency samples (histograms refresh at Envoy's stats flush)", hn.0, hn.1),
        );
    }
    let decide = |t: f64| {
        let (a, b) = (anytime::quantile_bounds(h.0, q, alpha, t), anytime::quantile_bounds(h.1, q, alpha, t));
        let (af, bf) = if alpha_fail < alpha {
            (anytime::quantile_bounds(h.0, q, alpha_fail, t), anytime::quantile_bounds(h.1, q, alpha_fail, t))
        } else {
            (a, b)
        };
        let fail = af.1.is_some_and(|a_high| bf.0 > a_high * multiplier);
        let pass = b.1.is_some_and(|b_high| b_high <= a.0 * multiplier);
        (a, b, fail, pass)
    };
    let (ca, cb, fail, pass) = decide(1.0);
    let outcome = if fail {
        Outcome::Fail
    } else if pass {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    };
    let small = hn.0.min(hn.1);
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            projected_need(small as f64, |t| {
                let (_, _, f, p) = decide(t);
                f || p
            })
        })
        .flatten();
    let ms = |x: Option<f64>| x.map_or("none yet".to_string(), |x| format!("{:.1} ms", x / 1000.0));
    let (a, b) = (h.0.quantile(q).unwrap_or(0.0), h.1.quantile(q).unwrap_or(0.0));
    let no_upper = if cb.1.is_none() {
        format!(
            "; no upper bound for the {who}'s p{} yet (needs ≥ {} samples and the rank below the last finite bucket)",
            q * 100.0,
            anytime::samples_for_upper_bound(q, alpha)
        )
    } else {
        String::new()
    };
    let detail = format!(
        "p{}: {who} {:.1} ms vs champion {:.1} ms × {multiplier}; {:.1}% sequences at bucket edges: {who} [{}, {}], champion [{}, {}]{no_upper}: {}",
        q * 100.0,
        b / 1000.0,
        a / 1000.0,
        (1.0 - alpha) * 100.0,
        ms(Some(cb.0)),
        ms(cb.1),
        ms(Some(ca.0)),
        ms(ca.1),
        verdict_words(outcome, need, "latency samples")
    );
    // No upper bound: no interval (JSON has no infinity); the detail says why.
    let interval = |x: (f64, Option<f64>)| x.1.map(|high| Interval { low: x.0, high });
    GateResult {
        champion: Some(a),
        challenger: Some(b),
        threshold: Some(a * multiplier),
        margin: Some(a * multiplier - b),
        champion_interval: interval(ca),
        challenger_interval: interval(cb),
        confidence: Some(1.0 - alpha),
        needed: need,
        ..GateResult::base(kind, outcome, hn, detail)
    }
}
