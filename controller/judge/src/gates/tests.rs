use canary_core::metrics::Counter;

use canary_core::metrics::ShadowStat;

use super::judge::evalue;
use super::*;
use crate::labels::LabelStats;
use crate::psi;
use crate::spec::NoDataPolicy;
use crate::spec::{ErrorRateGate, GateMethod, LabelGate, LatencyGate, PredictionGate, ShadowGate, TimeoutGate};
use crate::window::MergedHistogram as Histogram;

#[test]
fn e_values_read_as_decimals_near_the_threshold_and_powers_of_ten_beyond() {
    assert_eq!(evalue(0.5), "0.500");
    assert_eq!(evalue(62.5), "62.500");
    assert_eq!(evalue(21_403_307_422_086_432.0), "2.1e16");
    assert_eq!(crate::report::unreadable_numbers(&evalue(5.7e15)), Vec::<String>::new());
}

fn window(ok: u64, errors: u64, timeouts: u64, latency_ms: f64) -> VersionWindow {
    let mut w = VersionWindow::default();
    w.add_responses(ok + errors, errors);
    w.add_counter(Counter::RqTimeout, timeouts);
    w.latency_us.add(latency_ms * 1000.0, latency_ms * 10.0, ok + errors);
    w
}

/// Every gate, judged by the threshold rule (point estimates).
fn all_gates() -> GatesSpec {
    GatesSpec {
        method: GateMethod::Threshold,
        error_rate: Some(ErrorRateGate { error_tolerance: 1.0, segments: Default::default() }),
        latency: Some(LatencyGate { latency_tolerance_multiplier: 1.5, quantile: 0.99, segments: Default::default() }),
        prediction: Some(PredictionGate { max_psi: 0.2, on_no_data: NoDataPolicy::Ignore, min_predictions: 0 }),
        timeouts: Some(TimeoutGate { timeout_tolerance: 0.5, segments: Default::default() }),
        labels: Some(LabelGate { min_degradation_tolerance: 0.02, min_labels: 10, segments: Default::default() }),
        ..GatesSpec::default()
    }
}

fn outcome(results: &[GateResult], gate: GateKind) -> (Outcome, bool) {
    let r = results.iter().find(|r| r.gate == gate).unwrap();
    (r.outcome, r.blocks)
}

fn labels(a: (u64, f64), b: (u64, f64)) -> LabelEvidence {
    let stats = |(n, mean): (u64, f64)| LabelStats { n, sum: mean * n as f64, sum_sq: 0.0, ..Default::default() };
    LabelEvidence { champion: stats(a), challenger: stats(b) }
}

/// The 4xx gate (issue 14's "add a gate" exercise): off unless the spec
/// names it; then judged like the 5xx gate, on the 4xx class, by every
/// method.
#[test]
fn the_client_error_gate_is_off_by_default_and_judges_the_4xx_rate() {
    let with_4xx = |ok: u64, client: u64| {
        let mut w = window(ok, 0, 0, 10.0);
        w.add_counter(Counter::Rq4xx, client);
        w
    };
    let (a, b) = (with_4xx(9_900, 100), with_4xx(9_600, 400));
    let plain = evaluate(&all_gates(), &a, &b, &LabelEvidence::default(), StageContext::live(1), &[]);
    assert!(plain.iter().all(|r| r.gate != GateKind::ClientErrors), "off by default");
    let spec =
        GatesSpec { client_errors: Some(crate::spec::ClientErrorGate { client_error_tolerance: 1.0 }), ..all_gates() };
    let r = evaluate(&spec, &a, &b, &LabelEvidence::default(), StageContext::live(1), &[]);
    let g = r.iter().find(|r| r.gate == GateKind::ClientErrors).unwrap();
    assert_eq!(g.outcome, Outcome::Fail, "4 % vs 1 % + 1 point: {}", g.detail);
    assert!(
        g.detail.starts_with("4xx rate: challenger 4.000% (400/10000) vs champion 1.000% (100/10000)"),
        "{}",
        g.detail
    );
    let r = evaluate(&spec, &a, &with_4xx(9_850, 150), &LabelEvidence::default(), StageContext::live(1), &[]);
    assert_eq!(outcome(&r, GateKind::ClientErrors).0, Outcome::Pass);
    // The anytime engine, two looks: rolled back on the 4xx rate alone.
    let anytime = GatesSpec { method: GateMethod::Anytime, ..spec.clone() };
    let first = evaluate(
        &anytime,
        &with_4xx(4_950, 50),
        &with_4xx(4_800, 200),
        &LabelEvidence::default(),
        StageContext::live(1),
        &[],
    );
    let spent: Vec<GateResult> = first.into_iter().filter(|r| r.spends_look()).collect();
    let r = evaluate(&anytime, &a, &b, &LabelEvidence::default(), StageContext::live(1), &spent);
    assert_eq!(outcome(&r, GateKind::ClientErrors).0, Outcome::Fail);
    let refused = crate::spec::RolloutSpec::from_yaml(
        "rollout: r\nchampion: v1\nchallenger: v2\nstages: [{ weight_percent: 10 }, { weight_percent: 100 }]\n\
         gates: { client_errors: { client_error_tolerance: -1 } }\nenvoy: { admin: [\"http://a\"], ecds_dir: /x, wasm: /y }\n",
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(refused.contains("gates.client_errors.client_error_tolerance"), "{refused}");
}

#[test]
fn a_healthy_challenger_passes_every_gate_with_data() {
    let r = evaluate(
        &all_gates(),
        &window(990, 10, 1, 100.0),
        &window(995, 5, 0, 110.0),
        &labels((50, 0.9), (50, 0.89)),
        StageContext::live(1),
        &[],
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
    let r = evaluate(&g, &base, &window(970, 30, 0, 100.0), &ok_labels, StageContext::live(1), &[]);
    assert_eq!(outcome(&r, GateKind::ErrorRate).0, Outcome::Fail, "3% vs 1% + 1pp");
    let r = evaluate(&g, &base, &window(990, 10, 0, 300.0), &ok_labels, StageContext::live(1), &[]);
    assert_eq!(outcome(&r, GateKind::Latency).0, Outcome::Fail, "3x p99");
    let r = evaluate(&g, &base, &window(990, 10, 10, 100.0), &ok_labels, StageContext::live(1), &[]);
    assert_eq!(outcome(&r, GateKind::Timeouts).0, Outcome::Fail, "1% timeouts vs 0 + 0.5pp");
    let r = evaluate(&g, &base, &base, &labels((50, 0.9), (50, 0.85)), StageContext::live(1), &[]);
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
        &[],
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
    let r = evaluate(&g, &window(100, 0, 0, 10.0), &empty, &labels((50, 0.9), (3, 1.0)), StageContext::live(1), &[]);
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
        &[],
    );
    assert_eq!(outcome(&r, GateKind::Latency), (Outcome::NoData, true));
    let r = evaluate(
        &all_gates(),
        &window(990, 10, 0, 100.0),
        &window(199, 1, 0, 300.0),
        &LabelEvidence::default(),
        StageContext::live(200),
        &[],
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
    GatesSpec {
        method: GateMethod::Threshold,
        prediction: Some(PredictionGate { max_psi, on_no_data, min_predictions }),
        ..GatesSpec::default()
    }
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
        &evaluate(
            &psi_gate(0.2, NoDataPolicy::Hold, 0),
            &a,
            &b,
            &LabelEvidence::default(),
            StageContext::live(50),
            &[],
        ),
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
            &[],
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
            &[],
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
                    &[],
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
        &evaluate(&psi_gate(0.2, NoDataPolicy::Hold, 0), &a, &c, &LabelEvidence::default(), StageContext::live(1), &[]),
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
    let r = evaluate(&shadow_spec(), &champion, &challenger, &LabelEvidence::default(), StageContext::shadow(100), &[]);
    let gates: Vec<GateKind> = r.iter().map(|g| g.gate).collect();
    assert_eq!(
        gates,
        [GateKind::Prediction, GateKind::ShadowAgreement, GateKind::ShadowErrorRate, GateKind::ShadowLatency],
        "live-traffic gates are not judged: the challenger served nobody"
    );
    assert_eq!(outcome(&r, GateKind::Prediction), (Outcome::NoData, false), "never blocks a shadow stage");
    let a = only(&r, GateKind::ShadowAgreement);
    assert_eq!((a.outcome, a.challenger, a.threshold, a.challenger_n), (Outcome::Pass, Some(0.95), Some(0.9), 1000));
    assert!((a.margin.unwrap() - 0.05).abs() < 1e-12);
    assert_eq!(a.notes["disagree"], 50.0);
    let e = only(&r, GateKind::ShadowErrorRate);
    // 5 / 1000 = 0.5 % vs 10 / 1010 = 0.99 % + 1 pp.
    assert_eq!((e.outcome, e.challenger), (Outcome::Pass, Some(0.005)));
    assert!((e.threshold.unwrap() - (10.0 / 1010.0 + 0.01)).abs() < 1e-12);
    let l = only(&r, GateKind::ShadowLatency);
    assert_eq!(l.outcome, Outcome::Pass, "{}", l.detail);
    // Same gates in a live stage: the shadow gate is not judged there.
    let live = evaluate(&shadow_spec(), &champion, &champion, &LabelEvidence::default(), StageContext::live(1), &[]);
    assert!(live
        .iter()
        .all(|g| !matches!(g.gate, GateKind::ShadowAgreement | GateKind::ShadowErrorRate | GateKind::ShadowLatency)));
}

#[test]
fn each_shadow_check_fails_on_its_own_fault() {
    let champion = window(1000, 10, 0, 100.0);
    let judge = |w: &VersionWindow| {
        evaluate(&shadow_spec(), &champion, w, &LabelEvidence::default(), StageContext::shadow(100), &[])
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
        &[],
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
        &[],
    );
    assert!(
        r.iter().filter(|g| g.gate != GateKind::Prediction).all(|g| (g.outcome, g.blocks) == (Outcome::NoData, true)),
        "{r:?}"
    );
}

/// The same gates, judged sequentially (the default method).
fn sequential() -> GatesSpec {
    GatesSpec {
        method: GateMethod::Sequential,
        labels: Some(LabelGate { min_degradation_tolerance: 0.02, min_labels: 1000, segments: Default::default() }),
        ..all_gates()
    }
}

/// `n` responses with `errors` 5xx and log-normal-ish latency around
/// `latency_ms` (spread over ten buckets, 10 % apart).
fn spread(n: u64, errors: u64, latency_ms: f64) -> VersionWindow {
    let mut w = window(n - errors, errors, 0, latency_ms);
    w.latency_us = Histogram::default();
    let weights = [1u64, 3, 8, 15, 23, 23, 15, 8, 3, 1];
    let total: u64 = weights.iter().sum();
    let mut left = n;
    for (i, wt) in weights.iter().enumerate() {
        let c = if i == weights.len() - 1 { left } else { n * wt / total };
        left -= c;
        let lower = latency_ms * 1000.0 * 1.1f64.powi(i as i32 - 5);
        w.latency_us.add(lower, lower * 0.1, c);
    }
    w
}

#[test]
fn sequential_rates_fail_pass_or_say_how_many_more_they_need() {
    let g = sequential();
    let champion = spread(100_000, 1000, 10.0);
    let judge = |challenger: &VersionWindow| {
        only(
            &evaluate(&g, &champion, challenger, &LabelEvidence::default(), StageContext::live(1000), &[]),
            GateKind::ErrorRate,
        )
    };
    // Look 1 at 1000 responses: 93.9 % intervals (alpha_1 = 0.05 · 6 / π² per side).
    let bad = judge(&spread(1000, 50, 10.0));
    assert_eq!((bad.outcome, bad.look), (Outcome::Fail, Some(1)), "{}", bad.detail);
    assert!((bad.confidence.unwrap() - (1.0 - 2.0 * 0.05 * 6.0 / std::f64::consts::PI.powi(2))).abs() < 1e-12);
    let i = bad.difference_interval.unwrap();
    assert!(i.low > 0.01 && i.contains(0.04), "{i:?}");
    assert!(bad.detail.starts_with("5xx rate: challenger 5.000% (50/1000) vs champion 1.000% (1000/100000)"));
    let good = judge(&spread(1000, 10, 10.0));
    assert_eq!((good.outcome, good.blocks, good.needed), (Outcome::Pass, false, None), "{}", good.detail);
    assert!(good.difference_interval.unwrap().high <= 0.01);
    // 1.8 % vs 1 % + 1 pp: the interval straddles the tolerance.
    let unsure = judge(&spread(1000, 18, 10.0));
    assert_eq!((unsure.outcome, unsure.blocks), (Outcome::Inconclusive, true), "{}", unsure.detail);
    let more = unsure.needed.unwrap();
    assert!(unsure.detail.ends_with(&format!("inconclusive: needs ~{more} more responses per version")));
    // 0.2 pp from the tolerance with a standard error of 0.42 pp at 1000: a look k
    // decides with 80 % power once (z_k + 0.84) · se ≤ 0.2 pp, i.e. at about
    // 130 times the sample: look 13 (1000 · 1.5¹², z_13 = 3.57).
    assert_eq!(more, 129_747 - 1000);
    // Below the first look there is no verdict at all.
    let early = judge(&spread(999, 50, 10.0));
    assert_eq!((early.outcome, early.blocks), (Outcome::NoData, true));
}

#[test]
fn a_spent_look_is_carried_until_the_next_look() {
    let g = sequential();
    let champion = spread(100_000, 1000, 10.0);
    let run = |challenger: &VersionWindow, spent: &[GateResult]| {
        only(
            &evaluate(&g, &champion, challenger, &LabelEvidence::default(), StageContext::live(1000), spent),
            GateKind::ErrorRate,
        )
    };
    let first = run(&spread(1000, 18, 10.0), &[]);
    assert!(first.spends_look());
    // 1400 < 1500: still look 1. Even with a clear fault the spent verdict stands until look 2.
    let carried = run(&spread(1400, 100, 10.0), std::slice::from_ref(&first));
    assert_eq!((carried.outcome, carried.look, carried.carried), (Outcome::Inconclusive, Some(1), true));
    assert_eq!(carried.challenger_n, 1000, "the numbers of the look that decided");
    assert!(carried.detail.contains("next look is at 1500 per version, now 100000 and 1400"), "{}", carried.detail);
    assert!(!carried.spends_look());
    let next = run(&spread(1500, 100, 10.0), std::slice::from_ref(&first));
    assert_eq!((next.outcome, next.look, next.carried), (Outcome::Fail, Some(2), false));
}

#[test]
fn sequential_latency_compares_order_statistic_bounds() {
    let g = sequential();
    let champion = spread(100_000, 0, 10.0);
    let judge = |challenger: &VersionWindow| {
        only(
            &evaluate(&g, &champion, challenger, &LabelEvidence::default(), StageContext::live(1000), &[]),
            GateKind::Latency,
        )
    };
    let slow = judge(&spread(2000, 0, 30.0));
    assert_eq!(slow.outcome, Outcome::Fail, "{}", slow.detail);
    let (a, b) = (slow.champion_interval.unwrap(), slow.challenger_interval.unwrap());
    assert!(b.low > a.high * 1.5 && a.contains(slow.champion.unwrap()) && b.contains(slow.challenger.unwrap()));
    assert!(slow.detail.starts_with("p99: challenger"), "{}", slow.detail);
    // Each version's interval is at 1 − alpha_k (two one-sided bounds).
    assert!((slow.confidence.unwrap() - (1.0 - g.schedule().alpha_at(2))).abs() < 1e-12);
    let same = judge(&spread(2000, 0, 10.0));
    assert_eq!(same.outcome, Outcome::Pass, "{}", same.detail);
    // Exactly 1.5× with 1.5× allowed: no sample size can tell.
    let close = judge(&spread(2000, 0, 15.0));
    assert_eq!((close.outcome, close.needed), (Outcome::Inconclusive, None), "{}", close.detail);
    assert!(close.detail.ends_with("inconclusive: more data needed"), "{}", close.detail);
    // 1.4×: within, but 300 samples cannot show it yet.
    let few = only(
        &evaluate(&g, &champion, &spread(300, 0, 14.0), &LabelEvidence::default(), StageContext::live(300), &[]),
        GateKind::Latency,
    );
    assert_eq!(few.outcome, Outcome::Inconclusive, "{}", few.detail);
    assert!(few.needed.is_some_and(|n| n > 0), "{few:?}");
}

#[test]
fn sequential_labels_judge_the_welch_interval_of_the_difference() {
    let g = sequential();
    let w = spread(1000, 0, 10.0);
    // 0/1 outcomes: sum_sq = sum.
    let stats =
        |n: u64, mean: f64| LabelStats { n, sum: mean * n as f64, sum_sq: mean * n as f64, ..Default::default() };
    let judge = |a: LabelStats, b: LabelStats| {
        only(
            &evaluate(&g, &w, &w, &LabelEvidence { champion: a, challenger: b }, StageContext::live(1), &[]),
            GateKind::Labels,
        )
    };
    let worse = judge(stats(2000, 0.9), stats(2000, 0.8));
    assert_eq!((worse.outcome, worse.look), (Outcome::Fail, Some(2)), "{}", worse.detail);
    assert!(worse.difference_interval.unwrap().high < -0.02);
    let same = judge(stats(6000, 0.9), stats(6000, 0.9));
    assert_eq!(same.outcome, Outcome::Pass, "{}", same.detail);
    assert!(same.difference_interval.unwrap().low >= -0.02);
    let unsure = judge(stats(1000, 0.9), stats(1000, 0.89));
    assert_eq!(unsure.outcome, Outcome::Inconclusive, "{}", unsure.detail);
    assert!(unsure.needed.unwrap() > 1000, "{unsure:?}");
    assert_eq!(judge(stats(999, 0.9), stats(5000, 0.5)).outcome, Outcome::NoData, "min_labels is 1000");
}

#[test]
fn sequential_psi_allows_for_the_noise_floor_and_the_sampling_spread() {
    let base = window(100, 0, 0, 10.0);
    let g = GatesSpec { method: GateMethod::Sequential, ..psi_gate(0.2, NoDataPolicy::Hold, 0) };
    let judge = |a: &[(&str, u64)], b: &[(&str, u64)], min: u64| {
        let (a, b) = (with_predictions(base.clone(), a), with_predictions(base.clone(), b));
        only(&evaluate(&g, &a, &b, &LabelEvidence::default(), StageContext::live(min), &[]), GateKind::Prediction)
    };
    // PSI 0.234 from 96 and 98 predictions: above 0.2, but well within the noise.
    let small = judge(&QUARTERS, &SHIFTED, 50);
    assert_eq!(small.outcome, Outcome::Inconclusive, "{}", small.detail);
    assert!((small.notes["noise_floor"] - 3.0 * (1.0 / 96.0 + 1.0 / 98.0)).abs() < 1e-12);
    // "Needs ~N more" is projected through the χ² test the verdict uses:
    // the same shares with N more predictions are failed.
    let more = small.needed.expect("a projection");
    let t = (96 + more) as f64 / 96.0;
    let scaled = |bins: &[(&'static str, u64)]| {
        bins.iter().map(|(b, n)| (*b, (*n as f64 * t).round() as u64)).collect::<Vec<_>>()
    };
    let projected = judge(&scaled(&QUARTERS), &scaled(&SHIFTED), 50);
    assert_eq!(projected.outcome, Outcome::Fail, "needs ~{more} more, then: {}", projected.detail);
    // The same shares from 100 times as many, at look 1: the spread at the boundary
    // is ≈ 0.013 and the noise floor 0.0006, so 0.234 is clearly above 0.2.
    let x100 = |bins: &[(&'static str, u64)]| bins.iter().map(|(b, n)| (*b, n * 100)).collect::<Vec<_>>();
    let big = judge(&x100(&QUARTERS), &x100(&SHIFTED), 9000);
    assert_eq!(big.outcome, Outcome::Fail, "{}", big.detail);
    assert!(big.challenger_interval.unwrap().low > 0.2);
    let same = judge(&x100(&QUARTERS), &x100(&QUARTERS), 9000);
    assert_eq!(same.outcome, Outcome::Pass, "{}", same.detail);
    assert!(same.challenger_interval.unwrap().high < 0.2);
}

#[test]
fn sequential_shadow_agreement_uses_a_wilson_interval() {
    let champion = window(1000, 0, 0, 100.0);
    let g = GatesSpec { method: GateMethod::Sequential, ..shadow_spec() };
    let judge = |w: &VersionWindow| {
        only(
            &evaluate(&g, &champion, w, &LabelEvidence::default(), StageContext::shadow(100), &[]),
            GateKind::ShadowAgreement,
        )
    };
    assert_eq!(judge(&shadow_window(200, 140, 60, 0, 0, 100.0)).outcome, Outcome::Fail);
    assert_eq!(judge(&shadow_window(1000, 990, 10, 0, 0, 100.0)).outcome, Outcome::Pass);
    let unsure = judge(&shadow_window(100, 91, 9, 0, 0, 100.0));
    assert_eq!(unsure.outcome, Outcome::Inconclusive, "{}", unsure.detail);
    assert!(unsure.challenger_interval.unwrap().contains(0.9));
}

#[test]
fn every_gate_kind_has_its_descriptor_in_the_registry_once() {
    use GateKind::*;
    let kinds = [
        ErrorRate,
        Latency,
        Prediction,
        Timeouts,
        ClientErrors,
        Labels,
        ShadowAgreement,
        ShadowErrorRate,
        ShadowLatency,
    ];
    for k in kinds {
        assert_eq!(k.descriptor().kind, k);
        assert_eq!(crate::wire_name(&k), k.id(), "the id is the serde name");
        assert_eq!(descriptors().filter(|d| d.kind == k).count(), 1);
    }
    assert_eq!(descriptors().count(), kinds.len());
    assert_eq!(live_fields(), "error_rate, latency, prediction, timeouts, client_errors or labels");
}

#[test]
fn anytime_labels_outside_the_unit_interval_use_the_normal_mixture_sequence() {
    let g = GatesSpec { method: GateMethod::Anytime, ..sequential() };
    let w = spread(1000, 0, 10.0);
    // Revenue-like outcomes: mean `mean`, standard deviation 1, no range kept (unbounded).
    let stats = |n: u64, mean: f64| LabelStats {
        n,
        sum: mean * n as f64,
        sum_sq: n as f64 * (1.0 + mean * mean),
        ..Default::default()
    };
    let judge = |a: LabelStats, b: LabelStats| {
        only(
            &evaluate(&g, &w, &w, &LabelEvidence { champion: a, challenger: b }, StageContext::live(1), &[]),
            GateKind::Labels,
        )
    };
    let tol = g.labels.as_ref().unwrap().min_degradation_tolerance;
    let worse = judge(stats(20_000, 10.0), stats(20_000, 10.0 - 0.2));
    assert_eq!(worse.outcome, Outcome::Fail, "{}", worse.detail);
    assert!(worse.detail.contains("confidence sequence"), "{}", worse.detail);
    assert!(worse.difference_interval.unwrap().high < -tol);
    let same = judge(stats(100_000, 10.0), stats(100_000, 10.0));
    assert_eq!(same.outcome, Outcome::Pass, "{}", same.detail);
    assert!(same.difference_interval.unwrap().low >= -tol);
    // Too few to tell 0.01 below from the tolerance: inconclusive, with a
    // projection that the gate itself confirms.
    let unsure = judge(stats(2000, 10.0), stats(2000, 10.0 - 0.5 * tol));
    assert_eq!(unsure.outcome, Outcome::Inconclusive, "{}", unsure.detail);
    let more = unsure.needed.expect("a projection");
    let n = 2000 + more;
    assert_eq!(judge(stats(n, 10.0), stats(n, 10.0 - 0.5 * tol)).outcome, Outcome::Pass);
    // Every label the same value: no spread, no verdict.
    let flat = LabelStats { n: 100, sum: 500.0, sum_sq: 2500.0, ..Default::default() };
    assert_eq!(judge(flat, flat).outcome, Outcome::NoData);
}

#[test]
fn skewed_labels_wait_for_what_cochrans_rule_needs_then_decide() {
    let labels = Some(LabelGate { min_degradation_tolerance: 5.0, min_labels: 30, segments: Default::default() });
    let g = GatesSpec { method: GateMethod::Anytime, labels, ..sequential() };
    let w = spread(1000, 0, 10.0);
    // A long tail: one champion label in ten is 0, the rest 100
    // (skewness −2.67, so 25 · 2.67² ≈ 178 labels per version); the
    // challenger's are all 50, far worse.
    let champion = {
        let mut l = LabelStats::default();
        (0..5000).for_each(|i| l.add(if i < 500 { 0.0 } else { 100.0 }));
        l
    };
    let challenger = |n: u64| {
        let mut l = LabelStats::default();
        (0..n).for_each(|_| l.add(50.0));
        l
    };
    let judge = |b: LabelStats| {
        only(
            &evaluate(&g, &w, &w, &LabelEvidence { champion, challenger: b }, StageContext::live(1), &[]),
            GateKind::Labels,
        )
    };
    let (g1, need) = crate::mean_difference::labels_for_skewness(&champion, &challenger(150)).unwrap();
    // scipy.stats.skew([0.0] * 500 + [100.0] * 4500, bias=False)
    assert!((g1 + 2.6674669734547156).abs() < 1e-9 && need == 178, "{g1} {need}");
    // 150 challenger labels: the bounds alone would roll back; held,
    // saying why and how many more it waits for.
    let early = judge(challenger(150));
    assert_eq!(early.outcome, Outcome::Inconclusive, "{}", early.detail);
    assert!(early.difference_interval.unwrap().high < -5.0, "{:?}", early.difference_interval);
    assert!(
        early.detail.contains("skewed labels (skewness -2.67) are judged from 178 per version"),
        "{}",
        early.detail
    );
    assert_eq!(early.needed, Some(28));
    // From there on the sequence decides.
    let late = judge(challenger(178));
    assert_eq!(late.outcome, Outcome::Fail, "{}", late.detail);
    // State written before the sums were kept: no skewness, no wait.
    let old = |l: LabelStats| LabelStats { shifted: None, ..l };
    let r = only(
        &evaluate(
            &g,
            &w,
            &w,
            &LabelEvidence { champion: old(champion), challenger: old(challenger(150)) },
            StageContext::live(1),
            &[],
        ),
        GateKind::Labels,
    );
    assert_eq!(r.outcome, Outcome::Fail, "{}", r.detail);
}
