//! Health gates: champion vs challenger over the same window. Pure: numbers
//! in, one [`GateResult`] per configured gate out, each with its inputs,
//! values, threshold and margin, so every decision can say why.
//!
//! | gate | passes when |
//! | --- | --- |
//! | error_rate | challenger 5xx rate ≤ champion's + `error_tolerance` points |
//! | latency | challenger p99 ≤ champion p99 × `latency_tolerance_multiplier` |
//! | prediction | PSI(challenger ‖ champion) < `max_psi` over the prediction bins ([`crate::psi`]) |
//! | timeouts | challenger 504 rate ≤ champion's + `timeout_tolerance` points |
//! | labels | challenger mean outcome ≥ champion's − `min_degradation_tolerance` |
//! | shadow (3 results) | agreement ≥ `min_agreement`; shadow error rate ≤ champion's + `error_tolerance` points; shadow p99 ≤ champion p99 × `latency_tolerance_multiplier` |
//!
//! In a shadow stage the challenger serves no user, so the gates over its
//! live traffic (error_rate, latency, timeouts, labels) are not judged; the
//! shadow gate is, on the copies it answered. The prediction gate is judged
//! wherever both versions have enough parsed predictions; in a shadow stage
//! (where the challenger's predictions are only compared, not binned) its
//! lack of data never blocks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::LabelStats;
use crate::psi;
use crate::spec::{GatesSpec, NoDataPolicy};
use crate::window::VersionWindow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not enough data to say.
    NoData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    ErrorRate,
    Latency,
    Prediction,
    Timeouts,
    Labels,
    /// Shadow stage: agreement of the shadow's predictions with the champion's.
    ShadowAgreement,
    /// Shadow stage: the shadow's 5xx and failures against the champion's 5xx.
    ShadowErrorRate,
    /// Shadow stage: the shadow's latency quantile against the champion's.
    ShadowLatency,
}

/// One gate's verdict and its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: GateKind,
    pub outcome: Outcome,
    /// Whether this outcome stops the stage from advancing (a pass never
    /// does; no data does unless the spec says to ignore it).
    pub blocks: bool,
    /// Sample sizes the values come from (responses, or labels).
    pub champion_n: u64,
    pub challenger_n: u64,
    pub champion: Option<f64>,
    pub challenger: Option<f64>,
    /// The limit the challenger's value is held to.
    pub threshold: Option<f64>,
    /// Room left before failing, in the value's units (negative: failing).
    pub margin: Option<f64>,
    /// The verdict in words.
    pub detail: String,
    /// Further numbers behind the verdict, by name (e.g. the PSI gate's
    /// unparsed shares and per-bin terms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, f64>,
}

impl GateResult {
    fn no_data(gate: GateKind, champion_n: u64, challenger_n: u64, policy: NoDataPolicy, detail: String) -> GateResult {
        GateResult {
            gate,
            outcome: Outcome::NoData,
            blocks: policy == NoDataPolicy::Hold,
            champion_n,
            challenger_n,
            champion: None,
            challenger: None,
            threshold: None,
            margin: None,
            detail,
            notes: BTreeMap::new(),
        }
    }

    /// A "lower is better" comparison: pass iff challenger ≤ threshold.
    fn at_most(gate: GateKind, n: (u64, u64), values: (f64, f64), threshold: f64, detail: String) -> GateResult {
        let margin = threshold - values.1;
        let outcome = if margin >= 0.0 { Outcome::Pass } else { Outcome::Fail };
        GateResult {
            gate,
            outcome,
            blocks: outcome != Outcome::Pass,
            champion_n: n.0,
            challenger_n: n.1,
            champion: Some(values.0),
            challenger: Some(values.1),
            threshold: Some(threshold),
            margin: Some(margin),
            detail,
            notes: BTreeMap::new(),
        }
    }

    /// A "higher is better" comparison: pass iff value ≥ threshold.
    fn at_least(
        gate: GateKind,
        n: (u64, u64),
        values: (Option<f64>, f64),
        threshold: f64,
        detail: String,
    ) -> GateResult {
        let margin = values.1 - threshold;
        let outcome = if margin >= 0.0 { Outcome::Pass } else { Outcome::Fail };
        GateResult {
            gate,
            outcome,
            blocks: outcome != Outcome::Pass,
            champion_n: n.0,
            challenger_n: n.1,
            champion: values.0,
            challenger: Some(values.1),
            threshold: Some(threshold),
            margin: Some(margin),
            detail,
            notes: BTreeMap::new(),
        }
    }

    fn with_notes(mut self, notes: impl IntoIterator<Item = (String, f64)>) -> GateResult {
        self.notes.extend(notes);
        self
    }
}

/// The stage being judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StageContext {
    /// Least samples per version for a gate to judge (the stage's
    /// `min_requests`, at least 1): latency samples, parsed predictions,
    /// shadow comparisons.
    pub min_samples: u64,
    /// A shadow stage: the challenger serves no user, its shadow answers are judged.
    pub shadow: bool,
}

impl StageContext {
    pub fn live(min_samples: u64) -> StageContext {
        StageContext { min_samples, shadow: false }
    }

    pub fn shadow(min_samples: u64) -> StageContext {
        StageContext { min_samples, shadow: true }
    }
}

/// Label outcomes of the stage, per version.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LabelEvidence {
    pub champion: LabelStats,
    pub challenger: LabelStats,
}

fn pct(x: f64) -> String {
    format!("{:.3}%", x * 100.0)
}

/// Evaluates every gate configured for the stage. `stage.min_samples` is
/// the least number of samples per version for a sampled gate to judge
/// (latency samples, parsed predictions, shadow comparisons; histograms
/// refresh at Envoy's stats flush, so they can lag the counters).
pub fn evaluate(
    spec: &GatesSpec,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    labels: &LabelEvidence,
    stage: StageContext,
) -> Vec<GateResult> {
    let min_samples = stage.min_samples.max(1);
    let mut out = vec![];
    if stage.shadow {
        if let Some(g) = &spec.prediction {
            // The challenger's predictions are compared, not binned, in a
            // shadow stage: without bins PSI waits for the first live stage.
            out.push(prediction_gate(g, champion, challenger, min_samples, NoDataPolicy::Ignore));
        }
        if let Some(g) = &spec.shadow {
            out.extend(shadow_gates(g, champion, challenger, min_samples));
        }
        return out;
    }
    let n = (champion.answered(), challenger.answered());
    if let Some(g) = &spec.error_rate {
        out.push(rate_gate(
            GateKind::ErrorRate,
            "5xx rate",
            n,
            champion.errors(),
            challenger.errors(),
            g.error_tolerance,
        ));
    }
    if let Some(g) = &spec.latency {
        let q = g.quantile;
        let (a, b) = (champion.latency_us.quantile(q), challenger.latency_us.quantile(q));
        let hn = (champion.latency_us.count(), challenger.latency_us.count());
        out.push(match (a, b) {
            (Some(a), Some(b)) if hn.0 >= min_samples && hn.1 >= min_samples => {
                let limit = a * g.latency_tolerance_multiplier;
                GateResult::at_most(
                    GateKind::Latency,
                    hn,
                    (a, b),
                    limit,
                    format!(
                        "p{}: challenger {:.1} ms vs champion {:.1} ms × {} = {:.1} ms",
                        q * 100.0,
                        b / 1000.0,
                        a / 1000.0,
                        g.latency_tolerance_multiplier,
                        limit / 1000.0
                    ),
                )
            }
            _ => GateResult::no_data(
                GateKind::Latency,
                hn.0,
                hn.1,
                NoDataPolicy::Hold,
                format!(
                    "{} champion and {} challenger latency samples of {} each (histograms refresh at Envoy's stats flush)",
                    hn.0,
                    hn.1,
                    min_samples
                ),
            ),
        });
    }
    if let Some(g) = &spec.prediction {
        out.push(prediction_gate(g, champion, challenger, min_samples, g.on_no_data));
    }
    if let Some(g) = &spec.timeouts {
        out.push(rate_gate(
            GateKind::Timeouts,
            "timeout rate",
            n,
            champion.timeouts,
            challenger.timeouts,
            g.timeout_tolerance,
        ));
    }
    if let Some(g) = &spec.labels {
        let (a, b) = (labels.champion, labels.challenger);
        out.push(match (a.mean(), b.mean()) {
            (Some(ma), Some(mb)) if a.n >= g.min_labels && b.n >= g.min_labels => {
                // Higher is better: express as "challenger shortfall ≤ tolerance".
                let threshold = ma - g.min_degradation_tolerance;
                let margin = mb - threshold;
                let outcome = if margin >= 0.0 { Outcome::Pass } else { Outcome::Fail };
                GateResult {
                    gate: GateKind::Labels,
                    outcome,
                    blocks: outcome != Outcome::Pass,
                    champion_n: a.n,
                    challenger_n: b.n,
                    champion: Some(ma),
                    challenger: Some(mb),
                    threshold: Some(threshold),
                    margin: Some(margin),
                    detail: format!(
                        "label metric: challenger {mb:.4} vs champion {ma:.4} − {} = {threshold:.4}",
                        g.min_degradation_tolerance
                    ),
                    notes: BTreeMap::new(),
                }
            }
            _ => GateResult::no_data(
                GateKind::Labels,
                a.n,
                b.n,
                NoDataPolicy::Hold,
                format!("waiting for labels: {} champion, {} challenger of {} each", a.n, b.n, g.min_labels),
            ),
        });
    }
    out
}

/// PSI(challenger ‖ champion) < `max_psi`, once both versions have `min`
/// parsed predictions (and the gate's own `min_predictions`). The value is
/// reported as the challenger's, the champion's being 0 by definition; the
/// unparsed shares and per-bin terms go to `notes`.
fn prediction_gate(
    g: &crate::spec::PredictionGate,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    min: u64,
    on_no_data: NoDataPolicy,
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
    let detail = format!(
        "PSI {:.4} over {} bins vs max {} (must stay below); unparsed: champion {}, challenger {}",
        p.value,
        p.bins.len(),
        g.max_psi,
        share(p.champion_unparsed_share()),
        share(p.challenger_unparsed_share())
    );
    let margin = g.max_psi - p.value;
    // PSI at the limit fails: the limit is the first value that is too much.
    let outcome = if p.value < g.max_psi { Outcome::Pass } else { Outcome::Fail };
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
    GateResult {
        gate: GateKind::Prediction,
        outcome,
        blocks: outcome != Outcome::Pass,
        champion_n: n.0,
        challenger_n: n.1,
        champion: Some(0.0),
        challenger: Some(p.value),
        threshold: Some(g.max_psi),
        margin: Some(margin),
        detail,
        notes,
    }
}

/// The shadow stage's three checks, each its own result so every one keeps
/// its evidence: agreement, error rate, latency.
fn shadow_gates(
    g: &crate::spec::ShadowGate,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    min: u64,
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
            Some(a) if compared >= min => GateResult::at_least(
                GateKind::ShadowAgreement,
                (0, compared),
                (None, a),
                g.min_agreement,
                format!(
                    "shadow agreement {} ({} of {compared} compared) vs minimum {}",
                    pct(a),
                    s.agree,
                    pct(g.min_agreement)
                ),
            ),
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
    out.push(match (champion.error_rate(), s.error_rate()) {
        (Some(a), Some(b)) => {
            let limit = a + g.error_tolerance / 100.0;
            GateResult::at_most(
                GateKind::ShadowErrorRate,
                n,
                (a, b),
                limit,
                format!(
                    "shadow errors {} ({} 5xx + {} failed of {} sent) vs champion 5xx {} ({}/{}) + {} pp = {}",
                    pct(b),
                    s.rq_5xx,
                    s.failed,
                    n.1,
                    pct(a),
                    champion.errors(),
                    n.0,
                    g.error_tolerance,
                    pct(limit)
                ),
            )
        }
        _ => GateResult::no_data(
            GateKind::ShadowErrorRate,
            n.0,
            n.1,
            NoDataPolicy::Hold,
            format!("no responses yet ({} champion, {} shadow calls)", n.0, n.1),
        ),
    });

    let q = g.quantile;
    let hn = (champion.latency_us.count(), s.latency_us.count());
    out.push(match (champion.latency_us.quantile(q), s.latency_us.quantile(q)) {
        (Some(a), Some(b)) if hn.0 >= min && hn.1 >= min => {
            let limit = a * g.latency_tolerance_multiplier;
            GateResult::at_most(
                GateKind::ShadowLatency,
                hn,
                (a, b),
                limit,
                format!(
                    "p{}: shadow {:.1} ms vs champion {:.1} ms × {} = {:.1} ms",
                    q * 100.0,
                    b / 1000.0,
                    a / 1000.0,
                    g.latency_tolerance_multiplier,
                    limit / 1000.0
                ),
            )
        }
        _ => GateResult::no_data(
            GateKind::ShadowLatency,
            hn.0,
            hn.1,
            NoDataPolicy::Hold,
            format!(
                "{} champion and {} shadow latency samples of {min} each (histograms refresh at Envoy's stats flush)",
                hn.0, hn.1
            ),
        ),
    });
    out
}

fn rate_gate(kind: GateKind, what: &str, n: (u64, u64), a_events: u64, b_events: u64, tolerance_pp: f64) -> GateResult {
    if n.0 == 0 || n.1 == 0 {
        return GateResult::no_data(
            kind,
            n.0,
            n.1,
            NoDataPolicy::Hold,
            format!("no responses yet ({} champion, {} challenger)", n.0, n.1),
        );
    }
    let (a, b) = (a_events as f64 / n.0 as f64, b_events as f64 / n.1 as f64);
    let limit = a + tolerance_pp / 100.0;
    GateResult::at_most(
        kind,
        n,
        (a, b),
        limit,
        format!(
            "{what}: challenger {} ({b_events}/{}) vs champion {} ({a_events}/{}) + {tolerance_pp} pp = {}",
            pct(b),
            n.1,
            pct(a),
            n.0,
            pct(limit)
        ),
    )
}

#[cfg(test)]
mod tests {
    use canary_core::metrics::Counter;

    use canary_core::metrics::ShadowStat;

    use super::*;
    use crate::spec::{ErrorRateGate, LabelGate, LatencyGate, PredictionGate, ShadowGate, TimeoutGate};

    fn window(ok: u64, errors: u64, timeouts: u64, latency_ms: f64) -> VersionWindow {
        let mut w = VersionWindow::default();
        w.add_counter(Counter::RqTotal, ok + errors);
        w.add_counter(Counter::Rq2xx, ok);
        w.add_counter(Counter::Rq5xx, errors);
        w.add_counter(Counter::RqTimeout, timeouts);
        w.latency_us.add(latency_ms * 1000.0, latency_ms * 10.0, ok + errors);
        w
    }

    fn all_gates() -> GatesSpec {
        GatesSpec {
            error_rate: Some(ErrorRateGate { error_tolerance: 1.0 }),
            latency: Some(LatencyGate { latency_tolerance_multiplier: 1.5, quantile: 0.99 }),
            prediction: Some(PredictionGate { max_psi: 0.2, on_no_data: NoDataPolicy::Ignore, min_predictions: 0 }),
            timeouts: Some(TimeoutGate { timeout_tolerance: 0.5 }),
            labels: Some(LabelGate { min_degradation_tolerance: 0.02, min_labels: 10 }),
            shadow: None,
        }
    }

    fn outcome(results: &[GateResult], gate: GateKind) -> (Outcome, bool) {
        let r = results.iter().find(|r| r.gate == gate).unwrap();
        (r.outcome, r.blocks)
    }

    fn labels(a: (u64, f64), b: (u64, f64)) -> LabelEvidence {
        let stats = |(n, mean): (u64, f64)| LabelStats { n, sum: mean * n as f64, sum_sq: 0.0 };
        LabelEvidence { champion: stats(a), challenger: stats(b) }
    }

    #[test]
    fn a_healthy_challenger_passes_every_gate_with_data() {
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 1, 100.0),
            &window(995, 5, 0, 110.0),
            &labels((50, 0.9), (50, 0.89)),
            StageContext::live(1),
        );
        assert_eq!(outcome(&r, GateKind::ErrorRate), (Outcome::Pass, false));
        assert_eq!(outcome(&r, GateKind::Latency), (Outcome::Pass, false));
        assert_eq!(outcome(&r, GateKind::Timeouts), (Outcome::Pass, false));
        assert_eq!(outcome(&r, GateKind::Labels), (Outcome::Pass, false));
        // No prediction counters yet, and this spec says not to block on that.
        assert_eq!(outcome(&r, GateKind::Prediction), (Outcome::NoData, false));
    }

    #[test]
    fn each_gate_fails_on_its_own_fault() {
        let g = all_gates();
        let base = window(990, 10, 0, 100.0);
        let ok_labels = labels((50, 0.9), (50, 0.9));
        let r = evaluate(&g, &base, &window(970, 30, 0, 100.0), &ok_labels, StageContext::live(1));
        assert_eq!(outcome(&r, GateKind::ErrorRate).0, Outcome::Fail, "3% vs 1% + 1pp");
        let r = evaluate(&g, &base, &window(990, 10, 0, 300.0), &ok_labels, StageContext::live(1));
        assert_eq!(outcome(&r, GateKind::Latency).0, Outcome::Fail, "3x p99");
        let r = evaluate(&g, &base, &window(990, 10, 10, 100.0), &ok_labels, StageContext::live(1));
        assert_eq!(outcome(&r, GateKind::Timeouts).0, Outcome::Fail, "1% timeouts vs 0 + 0.5pp");
        let r = evaluate(&g, &base, &base, &labels((50, 0.9), (50, 0.85)), StageContext::live(1));
        assert_eq!(outcome(&r, GateKind::Labels).0, Outcome::Fail, "0.85 < 0.9 - 0.02");
    }

    #[test]
    fn margins_and_thresholds_are_reported() {
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 0, 100.0),
            &window(980, 20, 0, 100.0),
            &LabelEvidence::default(),
            StageContext::live(1),
        );
        let e = r.iter().find(|r| r.gate == GateKind::ErrorRate).unwrap();
        assert_eq!((e.champion_n, e.challenger_n), (1000, 1000));
        assert!((e.threshold.unwrap() - 0.02).abs() < 1e-12);
        assert!(e.margin.unwrap().abs() < 1e-12, "exactly at the limit passes: {e:?}");
        assert_eq!(e.outcome, Outcome::Pass);
        assert!(e.detail.contains("20/1000"), "{}", e.detail);
    }

    #[test]
    fn missing_data_never_passes() {
        let g = all_gates();
        let empty = VersionWindow::default();
        let r = evaluate(&g, &window(100, 0, 0, 10.0), &empty, &labels((50, 0.9), (3, 1.0)), StageContext::live(1));
        for gate in [GateKind::ErrorRate, GateKind::Latency, GateKind::Timeouts, GateKind::Labels] {
            assert_eq!(outcome(&r, gate), (Outcome::NoData, true), "{gate:?}");
        }
    }

    #[test]
    fn latency_waits_for_enough_samples() {
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 0, 100.0),
            &window(99, 1, 0, 300.0),
            &LabelEvidence::default(),
            StageContext::live(200),
        );
        assert_eq!(outcome(&r, GateKind::Latency), (Outcome::NoData, true));
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 0, 100.0),
            &window(199, 1, 0, 300.0),
            &LabelEvidence::default(),
            StageContext::live(200),
        );
        assert_eq!(outcome(&r, GateKind::Latency).0, Outcome::Fail);
    }

    fn with_predictions(mut w: VersionWindow, bins: &[(&str, u64)]) -> VersionWindow {
        for (bin, n) in bins {
            w.add_prediction(bin, *n);
        }
        w
    }

    fn psi_gate(max_psi: f64, on_no_data: NoDataPolicy, min_predictions: u64) -> GatesSpec {
        GatesSpec { prediction: Some(PredictionGate { max_psi, on_no_data, min_predictions }), ..GatesSpec::default() }
    }

    fn only(results: &[GateResult], gate: GateKind) -> GateResult {
        results.iter().find(|r| r.gate == gate).cloned().unwrap()
    }

    const QUARTERS: [(&str, u64); 4] = [("b0", 24), ("b1", 24), ("b2", 24), ("b3", 24)];
    /// PSI against QUARTERS = 0.233803 (see psi::tests for the arithmetic).
    const SHIFTED: [(&str, u64); 4] = [("b0", 9), ("b1", 24), ("b2", 24), ("b3", 41)];

    #[test]
    fn the_psi_gate_fails_at_or_above_max_psi_and_passes_below() {
        let base = window(100, 0, 0, 10.0);
        let a = with_predictions(base.clone(), &QUARTERS);
        let b = with_predictions(base.clone(), &SHIFTED);
        let r = only(
            &evaluate(&psi_gate(0.2, NoDataPolicy::Hold, 0), &a, &b, &LabelEvidence::default(), StageContext::live(50)),
            GateKind::Prediction,
        );
        assert_eq!((r.outcome, r.blocks), (Outcome::Fail, true));
        assert!((r.challenger.unwrap() - 0.233803).abs() < 1e-6, "{r:?}");
        assert_eq!((r.champion, r.threshold, r.champion_n, r.challenger_n), (Some(0.0), Some(0.2), 96, 98));
        assert!((r.margin.unwrap() + 0.033803).abs() < 1e-6);
        assert!(r.detail.starts_with("PSI 0.2338 over 4 bins vs max 0.2"), "{}", r.detail);
        assert!((r.notes["term.b0"] - 0.149976).abs() < 1e-6, "{:?}", r.notes);

        let r = only(
            &evaluate(
                &psi_gate(0.25, NoDataPolicy::Hold, 0),
                &a,
                &b,
                &LabelEvidence::default(),
                StageContext::live(50),
            ),
            GateKind::Prediction,
        );
        assert_eq!((r.outcome, r.blocks), (Outcome::Pass, false));
        // Exactly at the limit fails: PSI must stay below max_psi.
        let exact = psi::psi(&a.predictions, &b.predictions).unwrap().value;
        let r = only(
            &evaluate(
                &psi_gate(exact, NoDataPolicy::Hold, 0),
                &a,
                &b,
                &LabelEvidence::default(),
                StageContext::live(1),
            ),
            GateKind::Prediction,
        );
        assert_eq!(r.outcome, Outcome::Fail);
    }

    #[test]
    fn the_psi_gate_needs_enough_parsed_predictions_on_both_sides() {
        let base = window(100, 0, 0, 10.0);
        let a = with_predictions(base.clone(), &QUARTERS);
        // 98 parsed + 500 unparsed: only parsed ones count towards the minimum.
        let b = with_predictions(base.clone(), &[("b0", 9), ("b1", 24), ("b2", 24), ("b3", 41), ("unparsed", 500)]);
        for (min_samples, min_predictions, judged) in [(96, 0, true), (97, 0, false), (10, 97, false), (10, 96, true)] {
            for policy in [NoDataPolicy::Hold, NoDataPolicy::Ignore] {
                let r = only(
                    &evaluate(
                        &psi_gate(0.2, policy, min_predictions),
                        &a,
                        &b,
                        &LabelEvidence::default(),
                        StageContext::live(min_samples),
                    ),
                    GateKind::Prediction,
                );
                if judged {
                    assert_eq!(r.outcome, Outcome::Fail, "{min_samples}/{min_predictions}");
                    assert!((r.notes["challenger_unparsed_share"] - 500.0 / 598.0).abs() < 1e-12, "{:?}", r.notes);
                    assert!(r.detail.contains("challenger 83.612%"), "{}", r.detail);
                } else {
                    assert_eq!((r.outcome, r.blocks), (Outcome::NoData, policy == NoDataPolicy::Hold));
                    assert!(r.detail.contains("96 champion and 98 challenger parsed predictions"), "{}", r.detail);
                    assert!(r.detail.contains("(0 and 500 unparsed)"), "{}", r.detail);
                }
            }
        }
        // Only unparsed predictions: no distribution at all.
        let c = with_predictions(base, &[("unparsed", 500)]);
        let r = only(
            &evaluate(&psi_gate(0.2, NoDataPolicy::Hold, 0), &a, &c, &LabelEvidence::default(), StageContext::live(1)),
            GateKind::Prediction,
        );
        assert_eq!((r.outcome, r.blocks), (Outcome::NoData, true));
    }

    fn shadow_spec() -> GatesSpec {
        GatesSpec {
            shadow: Some(ShadowGate {
                min_agreement: 0.9,
                error_tolerance: 1.0,
                latency_tolerance_multiplier: 1.5,
                quantile: 0.99,
            }),
            ..all_gates()
        }
    }

    /// A challenger that served nobody, with shadow outcomes.
    fn shadow_window(sent: u64, agree: u64, disagree: u64, rq_5xx: u64, failed: u64, latency_ms: f64) -> VersionWindow {
        let mut w = VersionWindow::default();
        for (stat, n) in [
            (ShadowStat::RqTotal, sent),
            (ShadowStat::Agree, agree),
            (ShadowStat::Disagree, disagree),
            (ShadowStat::Rq5xx, rq_5xx),
            (ShadowStat::Failed, failed),
        ] {
            w.shadow.add_counter(stat, n);
        }
        w.shadow.latency_us.add(latency_ms * 1000.0, latency_ms * 10.0, sent.saturating_sub(failed));
        w
    }

    #[test]
    fn a_shadow_stage_is_judged_on_shadow_answers_only() {
        let champion = with_predictions(window(1000, 10, 0, 100.0), &QUARTERS);
        let challenger = shadow_window(1000, 950, 50, 5, 0, 120.0);
        let r = evaluate(&shadow_spec(), &champion, &challenger, &LabelEvidence::default(), StageContext::shadow(100));
        let gates: Vec<GateKind> = r.iter().map(|g| g.gate).collect();
        assert_eq!(
            gates,
            [GateKind::Prediction, GateKind::ShadowAgreement, GateKind::ShadowErrorRate, GateKind::ShadowLatency],
            "live-traffic gates are not judged: the challenger served nobody"
        );
        assert_eq!(outcome(&r, GateKind::Prediction), (Outcome::NoData, false), "never blocks a shadow stage");
        let a = only(&r, GateKind::ShadowAgreement);
        assert_eq!(
            (a.outcome, a.challenger, a.threshold, a.challenger_n),
            (Outcome::Pass, Some(0.95), Some(0.9), 1000)
        );
        assert!((a.margin.unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(a.notes["disagree"], 50.0);
        let e = only(&r, GateKind::ShadowErrorRate);
        // 5 / 1000 = 0.5 % vs 10 / 1010 = 0.99 % + 1 pp.
        assert_eq!((e.outcome, e.challenger), (Outcome::Pass, Some(0.005)));
        assert!((e.threshold.unwrap() - (10.0 / 1010.0 + 0.01)).abs() < 1e-12);
        let l = only(&r, GateKind::ShadowLatency);
        assert_eq!(l.outcome, Outcome::Pass, "{}", l.detail);
        // Same gates in a live stage: the shadow gate is not judged there.
        let live = evaluate(&shadow_spec(), &champion, &champion, &LabelEvidence::default(), StageContext::live(1));
        assert!(live.iter().all(|g| !matches!(
            g.gate,
            GateKind::ShadowAgreement | GateKind::ShadowErrorRate | GateKind::ShadowLatency
        )));
    }

    #[test]
    fn each_shadow_check_fails_on_its_own_fault() {
        let champion = window(1000, 10, 0, 100.0);
        let judge = |w: &VersionWindow| {
            evaluate(&shadow_spec(), &champion, w, &LabelEvidence::default(), StageContext::shadow(100))
        };
        // 70 % agreement.
        let r = judge(&shadow_window(1000, 700, 300, 0, 0, 100.0));
        assert_eq!(outcome(&r, GateKind::ShadowAgreement), (Outcome::Fail, true));
        assert_eq!(outcome(&r, GateKind::ShadowErrorRate).0, Outcome::Pass);
        // 3 % 5xx + failures (10 + 20 of 1000) vs 0.99 % + 1 pp.
        let r = judge(&shadow_window(1000, 970, 0, 10, 20, 100.0));
        assert_eq!(outcome(&r, GateKind::ShadowErrorRate), (Outcome::Fail, true));
        assert_eq!(outcome(&r, GateKind::ShadowAgreement).0, Outcome::Pass);
        // Every copy timed out: 100 % errors, nothing to compare.
        let r = judge(&shadow_window(1000, 0, 0, 0, 1000, 100.0));
        assert_eq!(outcome(&r, GateKind::ShadowErrorRate).0, Outcome::Fail);
        assert_eq!(outcome(&r, GateKind::ShadowAgreement), (Outcome::NoData, true));
        // Three times slower.
        let r = judge(&shadow_window(1000, 1000, 0, 0, 0, 300.0));
        assert_eq!(outcome(&r, GateKind::ShadowLatency), (Outcome::Fail, true));
    }

    #[test]
    fn shadow_checks_wait_for_enough_comparisons_and_samples() {
        let champion = window(1000, 0, 0, 100.0);
        let r = evaluate(
            &shadow_spec(),
            &champion,
            &shadow_window(50, 30, 20, 0, 0, 100.0),
            &LabelEvidence::default(),
            StageContext::shadow(100),
        );
        assert_eq!(outcome(&r, GateKind::ShadowAgreement), (Outcome::NoData, true), "60 % of 50 is not judged yet");
        assert_eq!(outcome(&r, GateKind::ShadowLatency), (Outcome::NoData, true));
        assert_eq!(
            outcome(&r, GateKind::ShadowErrorRate).0,
            Outcome::Pass,
            "rates need one call, like the live rate gates"
        );
        let r = evaluate(
            &shadow_spec(),
            &champion,
            &VersionWindow::default(),
            &LabelEvidence::default(),
            StageContext::shadow(100),
        );
        assert!(
            r.iter()
                .filter(|g| g.gate != GateKind::Prediction)
                .all(|g| (g.outcome, g.blocks) == (Outcome::NoData, true)),
            "{r:?}"
        );
    }
}
