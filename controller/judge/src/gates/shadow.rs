//! The shadow gate, judged only in a shadow stage on the copies the
//! challenger answered: agreement with the champion's predictions, the
//! shadow's error rate, and its latency — three results.

use super::judge::{needed, pct, scaled, verdict, verdict_words, Judge};
use super::latency::latency_gate;
use super::rate::{rate_descriptor, rate_verdict};
use super::{Descriptor, Digits, Evidence, Gate, GateKind, GateResult, Outcome, Stages};
use crate::anytime;
use crate::spec::NoDataPolicy;
use crate::stats;
use crate::window::VersionWindow;

pub(super) const GATE: Gate = Gate {
    field: "shadow",
    results: &[AGREEMENT, ERROR_RATE, LATENCY],
    stages: Stages::Shadow,
    configured: |s| s.shadow.is_some(),
    remove: |s| s.shadow = None,
    segments: super::no_segments,
    rate_tolerance: |s| s.shadow.as_ref().map(|g| g.error_tolerance),
    judge,
};

const AGREEMENT: Descriptor = Descriptor {
    kind: GateKind::ShadowAgreement,
    id: "shadow_agreement",
    title: "shadow agreement",
    scale: 100.0,
    unit: "%",
    digits: Digits::Significant(3),
    difference: false,
    reference: false,
};

const ERROR_RATE: Descriptor = rate_descriptor(GateKind::ShadowErrorRate, "shadow_error_rate", "shadow error rate");

const LATENCY: Descriptor = Descriptor {
    kind: GateKind::ShadowLatency,
    id: "shadow_latency",
    title: "shadow latency",
    scale: 0.001,
    unit: " ms",
    digits: Digits::Significant(3),
    difference: false,
    reference: false,
};

pub(super) fn judge(e: &Evidence<'_>, judge: Judge<'_>) -> Vec<GateResult> {
    let Some(g) = &e.spec.shadow else { return vec![] };
    shadow_gates(g, e.champion, e.challenger, e.min_samples, e.stage.shadow_timeout_us, judge)
}

/// The shadow stage's three checks, each its own result so every one keeps
/// its evidence: agreement, error rate, latency.
pub(super) fn shadow_gates(
    g: &crate::spec::ShadowGate,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    min: u64,
    shadow_timeout_us: u64,
    judge: Judge<'_>,
) -> Vec<GateResult> {
    let s = &challenger.shadow;
    let counts = [
        ("sent", s.requests),
        ("failed", s.failed),
        ("rq_5xx", s.rq_5xx),
        ("agree", s.agree),
        ("disagree", s.disagree),
        ("incomplete", s.incomplete),
        ("skipped", s.skipped),
    ]
    .map(|(k, v)| (k.to_string(), v as f64));
    let mut out = vec![];

    let compared = s.compared();
    out.push(
        match s.agreement() {
            Some(a) if compared >= min => agreement_gate(g, s.agree, compared, a, min, judge),
            _ => GateResult::no_data(
                GateKind::ShadowAgreement,
                0,
                compared,
                NoDataPolicy::Hold,
                format!(
                    "{compared} shadow predictions compared of {min} ({} incomplete, {} failed, {} skipped)",
                    s.incomplete, s.failed, s.skipped
                ),
            ),
        }
        .with_notes(counts.clone()),
    );

    let n = (champion.answered(), s.requests.max(s.errors()));
    let head = |a: f64, b: f64| {
        format!(
            "shadow errors {} ({} 5xx + {} failed of {} sent) vs champion 5xx {} ({}/{})",
            pct(b),
            s.rq_5xx,
            s.failed,
            n.1,
            pct(a),
            champion.errors(),
            n.0
        )
    };
    let events = (champion.errors(), s.errors().min(n.1));
    out.push(rate_verdict(GateKind::ShadowErrorRate, n, events, g.error_tolerance, min, judge, head));

    // Copies that got no answer (timed out, refused, reset) took at least
    // the timeout: they enter the latency evidence censored there, in an
    // open bucket, so they can fail the gate and never help it pass.
    let mut shadow_latency = s.latency_us.clone();
    if s.failed > 0 && shadow_timeout_us > 0 {
        shadow_latency.add(shadow_timeout_us as f64, crate::window::OPEN_WIDTH, s.failed);
    }
    out.push(latency_gate(
        GateKind::ShadowLatency,
        "shadow",
        (&champion.latency_us, &shadow_latency),
        g.quantile,
        g.latency_tolerance_multiplier,
        min,
        judge,
    ));
    out
}

/// agreement ≥ `min_agreement`. Sequential: the Wilson interval of the
/// agreement at the look's confidence; fail when its high end is below the
/// minimum, pass when its low end is at least the minimum.
pub(super) fn agreement_gate(
    g: &crate::spec::ShadowGate,
    agree: u64,
    compared: u64,
    a: f64,
    min: u64,
    judge: Judge<'_>,
) -> GateResult {
    let head =
        format!("shadow agreement {} ({agree} of {compared} compared) vs minimum {}", pct(a), pct(g.min_agreement));
    if !judge.sequential() {
        return GateResult::at_least(GateKind::ShadowAgreement, (0, compared), (None, a), g.min_agreement, head);
    }
    if judge.anytime() {
        let alpha = judge.schedule.alpha;
        let i = anytime::mean_cs(agree as f64, compared as f64, alpha);
        let outcome = verdict(i, g.min_agreement, false);
        let detail = format!(
            "{head}; {:.0}% confidence sequence [{}, {}]: {}",
            (1.0 - alpha) * 100.0,
            pct(i.low),
            pct(i.high),
            verdict_words(outcome, None, "comparisons")
        );
        return GateResult {
            challenger: Some(a),
            threshold: Some(g.min_agreement),
            margin: Some(a - g.min_agreement),
            challenger_interval: Some(i),
            confidence: Some(1.0 - alpha),
            ..GateResult::base(GateKind::ShadowAgreement, outcome, (0, compared), detail)
        };
    }
    let k = judge.schedule.look(compared, min);
    if let Some(r) = judge.carried(GateKind::ShadowAgreement, k, (0, compared), min) {
        return r;
    }
    let confidence = judge.schedule.confidence_at(k);
    let Some(i) = stats::wilson(agree, compared, confidence) else {
        return GateResult::no_data(GateKind::ShadowAgreement, 0, compared, NoDataPolicy::Hold, head);
    };
    let outcome = verdict(i, g.min_agreement, false);
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            let z_at = |l| stats::z_two_sided(judge.schedule.confidence_at(l));
            needed(compared, min, k, &judge.schedule, z_at, |t, level| {
                stats::wilson(scaled(agree, t), scaled(compared, t), level)
                    .is_some_and(|i| verdict(i, g.min_agreement, false) != Outcome::Inconclusive)
            })
        })
        .flatten();
    let detail = format!(
        "{head}; {:.2}% interval [{}, {}] at look {k}: {}",
        confidence * 100.0,
        pct(i.low),
        pct(i.high),
        verdict_words(outcome, need, "comparisons")
    );
    GateResult {
        challenger: Some(a),
        threshold: Some(g.min_agreement),
        margin: Some(a - g.min_agreement),
        challenger_interval: Some(i),
        look: Some(k),
        confidence: Some(confidence),
        needed: need,
        ..GateResult::base(GateKind::ShadowAgreement, outcome, (0, compared), detail)
    }
}
