use super::*;
use crate::window::{Coverage, EndpointFailure};

const SPEC: &str = r#"
rollout: r
champion: v1
challenger: v2
interval: 1s
stages:
  - { weight_percent: 1, min_duration: 10s, min_requests: 100 }
  - { weight_percent: 20, min_duration: 10s, min_requests: 100 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 1 }
envoy: { admin: ["http://a", "http://b"], ecds_dir: /x, wasm: /y.wasm, apply_timeout: 5s }
alerts: { source_failures: 2 }
"#;

fn spec() -> RolloutSpec {
    RolloutSpec::from_yaml(SPEC).unwrap()
}

/// A source that answered nothing at all.
fn refused() -> SourceError {
    let reason = "connection refused".into();
    SourceError::Prometheus(crate::evidence::prometheus::QueryError::Connect { query: "up", reason })
}

/// A window for `epoch` with `n` responses per version and the given 5xx counts.
fn window(epoch: u64, n: u64, champion_errors: u64, challenger_errors: u64) -> Window {
    Window::of(
        epoch,
        2,
        [("v1", VersionWindow::served(n, champion_errors)), ("v2", VersionWindow::served(n, challenger_errors))],
    )
}

#[test]
fn labels_naming_a_segment_are_judged_in_it_and_a_segment_worse_by_its_labels_rolls_back() {
    use crate::gates::GateKind;
    use crate::labels::LabelRecord;
    let text = SPEC
        .replace(
            "  error_rate: { error_tolerance: 1 }",
            "  error_rate: { error_tolerance: 1 }\n  labels: { min_degradation_tolerance: 0.05, min_labels: 100, segments: [ent] }\n  segment_min_responses: 200",
        )
        .replace("envoy:", "filter:\n  segment: { header: x-tier, values: [free, ent] }\nenvoy:");
    let spec = RolloutSpec::from_yaml(&text).unwrap();
    let tiers = spec.filter.segment.clone().unwrap();
    let batch = |version: &str, segment: &str, n: u64, correct: u64| -> Vec<LabelRecord> {
        (0..n)
            .map(|i| LabelRecord {
                version: version.into(),
                stage: "1pct".into(),
                rollout: None,
                correct: Some(i < correct),
                value: None,
                segment: Some(segment.into()),
                served_at: None,
            })
            .collect()
    };
    // Per evaluation, each version gets 5 000 labels in `free` (97 % correct)
    // and 500 in `ent`: 97 % for the champion, 70 % for the challenger.
    let mut s = RolloutState::start(&spec, 0);
    let mut last = None;
    for step in 1..=3u64 {
        for (v, ent_correct) in [("v1", 485), ("v2", 350)] {
            s.labels.add("r", &batch(v, "free", 5_000, 4_850), |_, _| true, Some(&tiers));
            s.labels.add("r", &batch(v, "ent", 500, ent_correct), |_, _| true, Some(&tiers));
        }
        let (next, d) = s.step(&spec, Ok(&window(s.epoch, 200 * step, 0, 0)), step * 1000);
        s = next;
        last = Some(d);
        if s.phase.is_final() {
            break;
        }
    }
    let d = last.unwrap();
    assert_eq!(d.action, Action::Rollback, "{:?}", d.reasons);
    assert!(
        d.reasons.iter().any(|r| r.starts_with("labels gate failed: segment `ent`: label metric")),
        "{:?}",
        d.reasons
    );
    let of = |segment: Option<&str>| {
        d.gates.iter().find(|g| g.gate == GateKind::Labels && g.segment.as_deref() == segment).unwrap()
    };
    assert_eq!(of(Some("ent")).outcome, Outcome::Fail);
    assert_ne!(of(None).outcome, Outcome::Fail, "all traffic loses 2.5 points, within 5: {}", of(None).detail);
    // The decision records the segment's label evidence beside all traffic's.
    let recorded = d.labels.as_ref().unwrap();
    let ent = recorded.segments["ent"];
    assert_eq!(
        (ent.champion.n, ent.challenger.n),
        (recorded.totals.champion.n / 11, recorded.totals.challenger.n / 11)
    );
    assert!(!recorded.segments.contains_key("other"));
}

#[test]
fn healthy_rollout_advances_through_every_stage_to_promotion() {
    let spec = spec();
    let mut s = RolloutState::start(&spec, 0);
    let mut t = 0;
    let mut actions = vec![];
    while !s.phase.is_final() {
        t += 1000;
        // 0 errors in 400 more per second and version: proven within 1 pp
        // after a few looks.
        let (next, d) = s.step(&spec, Ok(&window(s.epoch, 2 * t / 5, 0, 0)), t);
        assert!(!d.reasons.is_empty());
        if d.action != Action::Hold {
            actions.push((d.action, d.to.weight.bp(), d.to.epoch));
        }
        s = next;
        assert!(t < 100_000, "never finished");
    }
    assert_eq!(actions, vec![(Action::Advance, 2000, 2), (Action::Promote, 10_000, 3)]);
    assert_eq!(s.phase, Phase::Promoted);
    assert_eq!(s.seq as usize, s.history.last().unwrap().seq as usize);
}

#[test]
fn an_advance_pools_the_no_harm_evidence_into_the_next_stage() {
    let spec = spec();
    let mut s = RolloutState::start(&spec, 0);
    let mut t = 0;
    let carried = loop {
        t += 1000;
        let (next, d) = s.step(&spec, Ok(&window(s.epoch, 2 * t / 5, 0, 0)), t);
        if d.action == Action::Advance {
            let before = d.gates[0].process.clone().unwrap();
            break (before, next);
        }
        s = next;
        assert!(t < 100_000, "never advanced");
    };
    let (before, s) = carried;
    let p = s.looks[0].process.as_ref().unwrap();
    assert_eq!((p.n, p.n1, p.pooled_stages), (0.0, 0.0, 1), "{p:?}");
    assert_eq!(p.fine, before.fine, "the no-harm evidence goes on");
    // The harm test is a mixture over stage starts: the earlier term
    // (started at the first stage's share) goes on, the new stage adds
    // its share (two judged stages: ½ each).
    let share = crate::anytime::harm_share(1, spec.stages.len() - 1);
    assert_eq!(share, 0.5);
    for k in 0..3 {
        let want = before.harm[k].exp() + share;
        assert!((p.harm[k].exp() - want).abs() < 1e-12, "{k}: {} vs {want}", p.harm[k].exp());
    }
    assert_eq!(p.prior_champion, (before.s1, before.n1));
    // The next stage's first look is scored (anchored at the earlier
    // stage's rate) and says the evidence is pooled.
    let (_, d) = s.step(&spec, Ok(&window(s.epoch, 400, 0, 0)), t + 1000);
    let g = &d.gates[0];
    assert!(g.detail.contains("(pooled with the stage before)"), "{}", g.detail);
    assert!(g.process.as_ref().unwrap().fine[0] > before.fine[0], "{g:?}");
}

#[test]
fn minimum_duration_is_counted_from_when_every_envoy_applied() {
    let spec = spec();
    let s = RolloutState::start(&spec, 0);
    let mut w = window(1, 2000, 0, 0);
    w.coverage.applied = 1;
    let (s, d) = s.step(&spec, Ok(&w), 60_000);
    assert_eq!(d.action, Action::Hold);
    assert!(d.reasons[0].contains("waiting for 1 of 2 Envoys"), "{:?}", d.reasons);
    assert_eq!(d.alerts, vec![AlertKind::NotApplied], "60 s > apply_timeout 5 s");
    let (s, d) = s.step(&spec, Ok(&window(1, 2000, 0, 0)), 61_000);
    assert_eq!(d.action, Action::Hold, "window just started");
    assert_eq!(s.window_started_at, Some(61_000));
    let (_, d) = s.step(&spec, Ok(&window(1, 2000, 0, 0)), 71_000);
    assert_eq!(d.action, Action::Advance);
}

#[test]
fn an_inconclusive_gate_holds_saying_how_many_more_then_passes_at_a_later_look() {
    let spec = RolloutSpec::from_yaml(&SPEC.replace("gates:\n", "gates:\n  method: sequential\n")).unwrap();
    let s = RolloutState::start(&spec, 0);
    // 2 errors in 300 each (0.67 %): the 1 pp tolerance is inside the interval.
    let (s, d) = s.step(&spec, Ok(&window(1, 300, 2, 2)), 20_000);
    assert_eq!(d.action, Action::Hold, "{:?}", d.reasons);
    let g = &d.gates[0];
    assert_eq!((g.outcome, g.look, g.carried), (Outcome::Inconclusive, Some(3), false));
    let more = g.needed.unwrap();
    assert!(d.reasons[0].contains(&format!("needs ~{more} more responses per version")), "{:?}", d.reasons);
    assert!(more > 300 && more < 20_000, "{more}");
    assert_eq!(s.looks.len(), 1, "look 3 is spent");
    // Same look (300 → 320, look 3 until 338): the verdict is carried, not judged again.
    let (s, d) = s.step(&spec, Ok(&window(1, 320, 2, 2)), 21_000);
    let g = &d.gates[0];
    assert_eq!((g.outcome, g.look, g.carried, g.challenger_n), (Outcome::Inconclusive, Some(3), true, 300));
    assert!(g.detail.contains("carried"), "{}", g.detail);
    // Much later, plenty of data: a fresh look passes and the stage advances.
    let (s, d) = s.step(&spec, Ok(&window(1, 300 + more * 2, 2, 2)), 40_000);
    assert_eq!(d.action, Action::Advance, "{:?}", d.reasons);
    let g = &d.gates[0];
    assert!(g.look.unwrap() > 3 && !g.carried && g.outcome == Outcome::Pass, "{g:?}");
    assert!(s.looks.is_empty(), "a new stage starts with no spent look");
    let labels = d.labels.unwrap();
    assert_eq!(labels.totals.champion.n, 0, "the label evidence is recorded with the decision");
}

#[test]
fn failing_gate_rolls_back_at_once_and_alerts() {
    let spec = spec();
    let s = RolloutState::start(&spec, 0);
    // 20 % errors vs 0 % (100, then 200 responses each): rolls back
    // before the minimum duration and before min_requests.
    let (s, d) = s.step(&spec, Ok(&window(1, 100, 0, 20)), 500);
    assert_eq!(d.action, Action::Hold, "the first look learns the champion's rate: {:?}", d.reasons);
    let (s, d) = s.step(&spec, Ok(&window(1, 200, 0, 40)), 1000);
    assert_eq!(d.action, Action::Rollback, "{:?}", d.reasons);
    assert_eq!(d.alerts, vec![AlertKind::Rollback]);
    assert_eq!((d.to.weight, d.to.epoch, d.to.stage_name.as_str()), (Weight::ZERO, 2, ROLLED_BACK_STAGE));
    assert_eq!(s.phase, Phase::RolledBack);
    assert!(d.reasons[0].contains("error_rate gate failed"), "{:?}", d.reasons);
    assert_eq!(s.filter_config(&spec).challenger_weight_bp, Weight::ZERO);
    // Nothing moves it afterwards.
    let (_, d) = s.step(&spec, Ok(&window(2, 500, 0, 0)), 2000);
    assert_eq!(d.action, Action::Hold);
}

#[test]
fn too_few_requests_holds_and_says_how_many_more() {
    let spec = spec();
    let s = RolloutState::start(&spec, 0);
    let (_, d) = s.step(&spec, Ok(&window(1, 40, 0, 0)), 60_000);
    assert_eq!(d.action, Action::Hold, "no error in 40 requests is not enough to advance");
    assert!(d.reasons[0].contains("need 60 more from the champion and 60 more"), "{:?}", d.reasons);
}

#[test]
fn missing_or_partial_data_never_advances_and_alerts_once() {
    let spec = spec();
    let mut s = RolloutState::start(&spec, 0);
    let mut partial = window(1, 500, 0, 0);
    partial.coverage.failures.push(EndpointFailure { endpoint: "http://b".into(), error: "timed out".into() });
    let mut alerts = vec![];
    for (i, w) in
        [Err(refused()), Ok(partial.clone()), Err(refused()), Ok(window(7, 500, 0, 0))].into_iter().enumerate()
    {
        let (next, d) = s.step(&spec, w.as_ref(), 100_000 + i as u64 * 1000);
        assert_eq!(d.action, Action::Hold, "{:?}", d.reasons);
        assert!(d.reasons[0].starts_with("no data"), "{:?}", d.reasons);
        alerts.extend(d.alerts);
        s = next;
    }
    assert_eq!(alerts, vec![AlertKind::SourceFailing], "alert when the count reaches 2, once");
    assert_eq!(s.source_failures, 4);
    let (s, _) = s.step(&spec, Ok(&window(1, 500, 0, 0)), 200_000);
    assert_eq!(s.source_failures, 0);
}

#[test]
fn paused_rollout_does_not_progress_but_still_rolls_back_unless_frozen() {
    let spec = spec();
    let s = RolloutState::start(&spec, 0);
    let (s, d) = s.command(&spec, Command::Pause, "looking", 1).unwrap();
    assert_eq!((d.action, d.manual, s.phase), (Action::Pause, true, Phase::Paused));
    let (s, d) = s.step(&spec, Ok(&window(1, 500, 0, 0)), 100_000);
    assert_eq!(d.action, Action::Hold);
    let (s, d) = s.step(&spec, Ok(&window(1, 1500, 0, 0)), 120_000);
    assert_eq!(d.action, Action::Hold);
    assert!(d.reasons[0].starts_with("paused by an operator: would advance"), "{:?}", d.reasons);
    // The safety net stays on: a failing gate rolls back while paused.
    let (rolled, d) = s.step(&spec, Ok(&window(1, 2000, 0, 50)), 120_001);
    assert_eq!((d.action, d.alerts.clone()), (Action::Rollback, vec![AlertKind::Rollback]), "{:?}", d.reasons);
    assert_eq!(rolled.phase, Phase::RolledBack);
    // Frozen: nothing automatic at all, until resumed.
    let (s, d) = s.command(&spec, Command::Freeze, "incident review", 2).unwrap();
    assert_eq!((d.action, s.phase, s.frozen), (Action::Pause, Phase::Paused, true));
    let (s, d) = s.step(&spec, Ok(&window(1, 2000, 0, 50)), 120_002);
    assert_eq!(d.action, Action::Hold, "frozen: not even a rollback by the gates");
    assert!(s.command(&spec, Command::Pause, "", 3).is_err());
    let (s, _) = s.command(&spec, Command::Resume, "", 4).unwrap();
    assert_eq!((s.phase, s.frozen), (Phase::Running, false));
}

#[test]
fn manual_advance_and_rollback_act_at_once() {
    let spec = spec();
    let s = RolloutState::start(&spec, 0);
    let (s, d) = s.command(&spec, Command::Advance, "", 1).unwrap();
    assert_eq!((d.action, d.to.weight.bp(), d.to.epoch), (Action::Advance, 2000, 2));
    let (s, d) = s.command(&spec, Command::Advance, "", 2).unwrap();
    assert_eq!((d.action, s.phase), (Action::Promote, Phase::Promoted));
    assert!(s.command(&spec, Command::Advance, "", 3).is_err());
    let (s, d) = s.command(&spec, Command::Rollback, "bad reviews", 4).unwrap();
    assert_eq!((d.action, d.to.weight, s.phase), (Action::Rollback, Weight::ZERO, Phase::RolledBack));
    assert_eq!(d.reasons, vec!["operator: bad reviews".to_string()]);
    let err = s.command(&spec, Command::Rollback, "", 5).unwrap_err();
    assert_eq!(err.to_string(), "cannot rollback: the rollout is rolled back");
    assert_eq!(s.history.len(), 3);
    assert_eq!(s.seq, 3);
}

#[test]
fn stale_epoch_is_no_data() {
    let spec = spec();
    let s = RolloutState::start(&spec, 0);
    let (_, d) = s.step(&spec, Ok(&window(9, 500, 0, 0)), 1000);
    assert_eq!(d.action, Action::Hold);
    assert!(d.reasons[0].contains("epoch 9, not 1"), "{:?}", d.reasons);
}

const SHADOW_SPEC: &str = r#"
rollout: r
champion: v1
challenger: v2
interval: 1s
stages:
  - { shadow: true, min_duration: 10s, min_requests: 100 }
  - { weight_percent: 10, min_duration: 10s, min_requests: 100 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 1 }
  prediction: { max_psi: 0.2 }
  shadow: { min_agreement: 0.9, error_tolerance: 1, latency_tolerance_multiplier: 2 }
envoy: { admin: ["http://a"], ecds_dir: /x, wasm: /y.wasm }
filter:
  prediction: { from: { header: x-prediction }, bins: { numeric: [0.25, 0.5, 0.75] } }
"#;

/// A shadow-stage window: the champion served `n`, the challenger got
/// `sent` copies of which `agree` agreed (the rest disagreed).
fn shadow_window(epoch: u64, n: u64, sent: u64, agree: u64) -> Window {
    use canary_core::metrics::ShadowStat;
    let mut w = window(epoch, n, 0, 0);
    for vw in w.versions.values_mut() {
        vw.latency_us.add(10_000.0, 100.0, n);
    }
    let c = w.versions.get_mut("v2").unwrap();
    *c = VersionWindow::default();
    c.shadow.add_counter(ShadowStat::RqTotal, sent);
    c.shadow.add_counter(ShadowStat::Agree, agree);
    c.shadow.add_counter(ShadowStat::Disagree, sent - agree);
    c.shadow.latency_us.add(12_000.0, 100.0, sent);
    w.coverage.endpoints = 1;
    w.coverage.applied = 1;
    w.coverage.answered = 1;
    w
}

#[test]
fn a_shadow_stage_counts_shadow_calls_advances_on_agreement_and_stops_the_copies() {
    let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
    let s = RolloutState::start(&spec, 0);
    assert!(s.in_shadow_stage(&spec));
    let c = s.filter_config(&spec);
    assert_eq!((c.challenger_weight_bp, c.stage.as_str()), (Weight::ZERO, "shadow"));
    assert_eq!(c.shadow.as_ref().map(|s| s.cluster.as_str()), Some("v2"));
    assert!(c.prediction.is_some());

    // 500 champion responses but only 60 copies sent: hold, counting shadow calls.
    let (s, d) = s.step(&spec, Ok(&shadow_window(1, 500, 60, 60)), 1_000);
    assert_eq!(d.action, Action::Hold);
    assert!(
        d.reasons[0].contains("need 0 more responses from the champion and 40 more shadow calls"),
        "{:?}",
        d.reasons
    );
    // Enough, all agreeing, but too early.
    let (s, d) = s.step(&spec, Ok(&shadow_window(1, 500, 200, 195)), 2_000);
    assert_eq!(d.action, Action::Hold);
    assert!(d.reasons.iter().any(|r| r.contains("more in the stage")), "{:?}", d.reasons);
    let (s, d) = s.step(&spec, Ok(&shadow_window(1, 5000, 2000, 1950)), 12_000);
    assert_eq!(d.action, Action::Advance, "{:?}", d.reasons);
    assert!(d.reasons[0].contains("5000 champion responses and 2000 shadow calls"), "{:?}", d.reasons);
    let kinds: Vec<_> = d.gates.iter().map(|g| g.gate).collect();
    assert!(
        kinds.contains(&crate::gates::GateKind::ShadowAgreement) && !kinds.contains(&crate::gates::GateKind::ErrorRate)
    );
    // The next stage serves users and sends no copies.
    assert!(!s.in_shadow_stage(&spec));
    let c = s.filter_config(&spec);
    assert_eq!((c.challenger_weight_bp.bp(), c.shadow.is_none(), c.prediction.is_some()), (1000, true, true));
}

#[test]
fn disagreement_in_the_shadow_stage_rolls_back_and_the_copies_stop() {
    let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
    let s = RolloutState::start(&spec, 0);
    let (s, d) = s.step(&spec, Ok(&shadow_window(1, 500, 200, 140)), 1_000);
    assert_eq!(d.action, Action::Rollback);
    assert!(d.reasons[0].contains("shadow_agreement gate failed: shadow agreement 70.000%"), "{:?}", d.reasons);
    assert_eq!(s.phase, Phase::RolledBack);
    assert!(!s.in_shadow_stage(&spec));
    assert_eq!(s.filter_config(&spec).shadow, None, "a rollback stops the copies too");
}

#[test]
fn a_shifted_prediction_distribution_rolls_back_a_live_stage() {
    let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
    let (s, _) = RolloutState::start(&spec, 0).command(&spec, Command::Advance, "", 1).unwrap();
    let mut w = window(2, 1000, 0, 0);
    for (version, bins) in [("v1", [250, 250, 250, 250]), ("v2", [40, 250, 250, 460])] {
        for (i, n) in bins.into_iter().enumerate() {
            w.versions.get_mut(version).unwrap().add_prediction(&format!("b{i}"), n);
        }
    }
    w.coverage.endpoints = 1;
    w.coverage.applied = 1;
    let (s, d) = s.step(&spec, Ok(&w), 2_000);
    assert_eq!(d.action, Action::Rollback, "{:?}", d.reasons);
    assert!(d.reasons[0].starts_with("prediction gate failed: PSI 0.5"), "{:?}", d.reasons);
    let psi = d.gates.iter().find(|g| g.gate == crate::gates::GateKind::Prediction).unwrap().challenger.unwrap();
    // Shares (0.04, 0.25, 0.25, 0.46) vs quarters: 0.21·ln(6.25) + 0.21·ln(1.84) ≈ 0.3848 + 0.1281 = 0.513,
    // a little less after smoothing.
    assert!((psi - 0.51).abs() < 0.01, "{psi}");
    assert_eq!(s.phase, Phase::RolledBack);
    // The summary carries the bins for the record.
    assert_eq!(d.window.unwrap().challenger.predictions["b3"], 460);
}
fn coverage(endpoints: usize, failed: usize, applied: usize) -> Coverage {
    Coverage {
        endpoints,
        answered: endpoints - failed,
        applied,
        failures: (0..failed)
            .map(|i| EndpointFailure { endpoint: format!("http://e{i}"), error: "timed out".into() })
            .collect(),
        resets: vec![],
        departed: vec![],
    }
}

#[test]
fn the_missing_share_rule_judges_on_the_answered_envoys_only_within_the_share() {
    use CoverageCheck::*;
    let enough = |c: &Coverage, s| matches!(check_coverage(c, s), Enough { .. });
    // (endpoints, failed, applied, share) → judged?
    let cases = [
        ((2, 0, 2, 0.0), true),
        ((2, 1, 1, 0.0), false), // today's rule: any failure is no data
        ((500, 2, 498, 0.0), false),
        ((500, 2, 498, 0.01), true), // 0.4 % ≤ 1 %
        ((500, 5, 495, 0.01), true), // exactly the share
        ((500, 6, 494, 0.01), false),
        ((500, 2, 490, 0.01), false), // 10 not applied (2 failed + 8 late) > 5
        ((500, 0, 497, 0.01), true),
        ((1, 1, 0, 0.9), false), // nobody answered
        ((0, 0, 0, 0.5), false), // no Envoy at all
    ];
    for ((endpoints, failed, applied, share), want) in cases {
        let c = coverage(endpoints, failed, applied);
        assert_eq!(enough(&c, share), want, "{endpoints} endpoints, {failed} failed, {applied} applied, share {share}");
    }
    assert_eq!(check_coverage(&coverage(2, 0, 2,), 0.0), Enough { partial: None });
    let mut gone = coverage(2, 0, 2);
    gone.departed = vec!["10.0.0.7:15000".into()];
    let Enough { partial: Some(why) } = check_coverage(&gone, 0.0) else { panic!() };
    assert_eq!(why, "kept the last counts of 1 Envoy no longer in the fleet: 10.0.0.7:15000");
    assert_eq!(check_coverage(&coverage(500, 0, 490,), 0.01), NotApplied { waiting: 10 });
    assert!(
        matches!(check_coverage(&coverage(500, 6, 494), 0.01), NoData(why) if why.contains("6 of 500 Envoys failed (more than envoy.max_missing_share 0.01)"))
    );
    let Enough { partial: Some(why) } = check_coverage(&coverage(500, 2, 497), 0.01) else { panic!() };
    assert_eq!(why, "judged on 497 of 500 Envoys (envoy.max_missing_share 0.01); 2 failed: http://e0: timed out; http://e1: timed out; 1 not yet on this epoch");
    let NoData(why) = check_coverage(&coverage(100, 30, 70), 0.0) else { panic!() };
    assert!(why.ends_with("and 20 more"), "{why}");
}

#[test]
fn a_decision_on_partial_data_names_the_missing_envoys() {
    let mut spec = spec();
    spec.envoy.max_missing_share = 0.5;
    let s = RolloutState::start(&spec, 0);
    let mut w = window(1, 2000, 0, 0);
    w.coverage = coverage(2, 1, 1);
    let (s, d) = s.step(&spec, Ok(&w), 1000);
    assert_eq!(d.action, Action::Hold, "{:?}", d.reasons);
    assert!(!d.reasons[0].starts_with("no data"), "{:?}", d.reasons);
    assert!(d.reasons.last().unwrap().contains("judged on 1 of 2 Envoys"), "{:?}", d.reasons);
    assert!(d.reasons.last().unwrap().contains("http://e0: timed out"), "{:?}", d.reasons);
    // A failing gate on the answered half still rolls back.
    let mut w = window(1, 4000, 0, 400);
    w.coverage = coverage(2, 1, 1);
    let (_, d) = s.step(&spec, Ok(&w), 2000);
    assert_eq!(d.action, Action::Rollback);
}

#[test]
fn labels_of_requests_served_during_an_incident_are_left_out_with_its_responses() {
    let spec = spec();
    let labels = |version: &str, served_at: Option<u64>, n: usize| -> Vec<LabelRecord> {
        let one = LabelRecord {
            version: version.into(),
            stage: "1pct".into(),
            rollout: None,
            correct: Some(false),
            value: None,
            segment: None,
            served_at,
        };
        vec![one; n]
    };
    let s = RolloutState::start(&spec, 0);
    let (mut s, _) = s.step(&spec, Ok(&window(1, 200, 0, 0)), 1_000);
    // Before the incident: 3 labels a version, counted until the restart.
    s.add_labels(&spec, &labels("v1", Some(900), 3));
    s.add_labels(&spec, &labels("v2", None, 3));
    // Every champion response since the last evaluation is a 5xx: an incident.
    let (mut s, d) = s.step(&spec, Ok(&window(1, 400, 200, 200)), 2_000);
    assert_eq!(d.action, Action::Hold);
    assert_eq!(d.alerts, vec![AlertKind::Incident], "{:?}", d.reasons);
    s.add_labels(&spec, &labels("v1", Some(1_500), 4));
    s.add_labels(&spec, &labels("v2", None, 4));
    // Healthy again: the window restarts, without the labels so far.
    let (mut s, d) = s.step(&spec, Ok(&window(1, 600, 200, 200)), 3_000);
    assert!(d.reasons.iter().any(|r| r.contains("7 champion and 7 challenger labels are left out")), "{:?}", d.reasons);
    assert_eq!(s.stage_labels(&spec).totals.champion.n, 0);
    // A late label of a request served before the restart is left out;
    // one served after it, or of unknown time (arrived after), counts.
    let late = s.add_labels(&spec, &labels("v1", Some(2_999), 2));
    assert_eq!((late.accepted, late.excluded), (2, 2));
    let after = s.add_labels(&spec, &labels("v1", Some(3_001), 5));
    assert_eq!((after.accepted, after.excluded), (5, 0));
    s.add_labels(&spec, &labels("v2", None, 6));
    let evidence = s.stage_labels(&spec).totals;
    assert_eq!((evidence.champion.n, evidence.challenger.n), (5, 6));
    assert_eq!(evidence.champion.sum, 0.0);
    let (_, d) = s.step(&spec, Ok(&window(1, 800, 200, 200)), 4_000);
    assert!(
        d.reasons.iter().any(|r| r.contains("2 labels of requests served before the window restarted were left out")),
        "{:?}",
        d.reasons
    );
}

/// What the reaction bench met: a challenger erring 10.6 % against a
/// champion with none at 1 : 24 traffic, at the first evaluation. Rolled
/// back at once, and every state on the way reads back (an infinite
/// e-value was written as null, and the daemon could not read its state).
#[test]
fn a_gross_fault_at_high_traffic_rolls_back_at_once_and_the_state_reads_back() {
    let spec = spec();
    for challenger_errors in [0, 10, 100, 1_000, 5_000, 9_424] {
        let s = RolloutState::start(&spec, 0);
        let w = Window::of(
            1,
            2,
            [("v1", VersionWindow::served(228_560, 0)), ("v2", VersionWindow::served(9_424, challenger_errors))],
        );
        let (s, d) = s.step(&spec, Ok(&w), 60_000);
        if challenger_errors >= 1_000 {
            assert_eq!(d.action, Action::Rollback, "{challenger_errors}: {:?}", d.reasons);
        }
        let text = serde_json::to_string(&s).unwrap();
        let back: RolloutState =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{challenger_errors}: {e}: {}", &text[900..1200]));
        assert_eq!((back.phase, back.seq), (s.phase, s.seq));
    }
}
