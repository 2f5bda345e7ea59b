//! Health gates: champion vs challenger over the same window. Pure: numbers
//! in, one [`GateResult`] per configured gate out, each with its inputs,
//! values, threshold and margin, so every decision can say why.
//!
//! | gate | passes when |
//! | --- | --- |
//! | error_rate | challenger 5xx rate ≤ champion's + `error_tolerance` points |
//! | latency | challenger p99 ≤ champion p99 × `latency_tolerance_multiplier` |
//! | prediction | PSI(challenger ‖ champion) < `max_psi` (no prediction counters yet: no data) |
//! | timeouts | challenger 504 rate ≤ champion's + `timeout_tolerance` points |
//! | labels | challenger mean outcome ≥ champion's − `min_degradation_tolerance` |

use serde::{Deserialize, Serialize};

use crate::labels::LabelStats;
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
        }
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

/// Evaluates every configured gate. `min_samples` is the least number of
/// latency samples per version for the latency gate to judge (histograms
/// refresh at Envoy's stats flush, so they can lag the counters).
pub fn evaluate(
    spec: &GatesSpec,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    labels: &LabelEvidence,
    min_samples: u64,
) -> Vec<GateResult> {
    let mut out = vec![];
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
            (Some(a), Some(b)) if hn.0 >= min_samples.max(1) && hn.1 >= min_samples.max(1) => {
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
                    min_samples.max(1)
                ),
            ),
        });
    }
    if let Some(g) = &spec.prediction {
        out.push(GateResult::no_data(
            GateKind::Prediction,
            0,
            0,
            g.on_no_data,
            "the filter does not count predictions yet: no PSI".into(),
        ));
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

    use super::*;
    use crate::spec::{ErrorRateGate, LabelGate, LatencyGate, PredictionGate, TimeoutGate};

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
            prediction: Some(PredictionGate { max_psi: 0.2, on_no_data: NoDataPolicy::Ignore }),
            timeouts: Some(TimeoutGate { timeout_tolerance: 0.5 }),
            labels: Some(LabelGate { min_degradation_tolerance: 0.02, min_labels: 10 }),
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
            1,
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
        let r = evaluate(&g, &base, &window(970, 30, 0, 100.0), &ok_labels, 1);
        assert_eq!(outcome(&r, GateKind::ErrorRate).0, Outcome::Fail, "3% vs 1% + 1pp");
        let r = evaluate(&g, &base, &window(990, 10, 0, 300.0), &ok_labels, 1);
        assert_eq!(outcome(&r, GateKind::Latency).0, Outcome::Fail, "3x p99");
        let r = evaluate(&g, &base, &window(990, 10, 10, 100.0), &ok_labels, 1);
        assert_eq!(outcome(&r, GateKind::Timeouts).0, Outcome::Fail, "1% timeouts vs 0 + 0.5pp");
        let r = evaluate(&g, &base, &base, &labels((50, 0.9), (50, 0.85)), 1);
        assert_eq!(outcome(&r, GateKind::Labels).0, Outcome::Fail, "0.85 < 0.9 - 0.02");
    }

    #[test]
    fn margins_and_thresholds_are_reported() {
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 0, 100.0),
            &window(980, 20, 0, 100.0),
            &LabelEvidence::default(),
            1,
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
        let r = evaluate(&g, &window(100, 0, 0, 10.0), &empty, &labels((50, 0.9), (3, 1.0)), 1);
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
            200,
        );
        assert_eq!(outcome(&r, GateKind::Latency), (Outcome::NoData, true));
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 0, 100.0),
            &window(199, 1, 0, 300.0),
            &LabelEvidence::default(),
            200,
        );
        assert_eq!(outcome(&r, GateKind::Latency).0, Outcome::Fail);
    }
}
