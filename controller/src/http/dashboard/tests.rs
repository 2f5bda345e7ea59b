//! The dashboard's tests: the pace, the hub following a log, the routes.

use axum::http::{header, HeaderMap, HeaderValue};

use super::auth::*;
use super::hub::*;
use super::routes::*;
use super::series::*;
use crate::context::ProcessContext;
use crate::store::Store;
use canary_judge::rollout::Command;
use canary_judge::spec::RolloutSpec;
use canary_judge::window::MergedHistogram;

#[test]
fn expected_remaining_time_follows_the_minimums_what_the_gates_need_and_the_traffic() {
    let spec = RolloutSpec::from_yaml(
            "rollout: r\nchampion: v1\nchallenger: v2\nstages:\n  - { weight_percent: 1, min_duration: 10m, min_requests: 100 }\n  \
             - { weight_percent: 5, min_duration: 1h, min_requests: 1000 }\n  - { weight_percent: 50, min_duration: 1m, min_requests: 6000 }\n  \
             - { weight_percent: 100 }\ngates: { error_rate: { error_tolerance: 1 } }\nenvoy: { admin: [\"http://a\"], ecds_dir: /x, wasm: /y }\n",
        )
        .unwrap();
    // 100 responses a second, 1 % of them on the challenger.
    let pace = Pace { epoch: 1, per_s: [99.0, 1.0], needed: 0 };
    // This stage: 10 min left on its clock, 50 challenger responses to go (50 s).
    // Then 5 %: an hour (1000 responses take 200 s); 50 %: 6000 at 50 a second is 2 min.
    assert_eq!(expected_remaining(&spec, 0, Some(600_000), Some((0, 50)), pace), Some((600_000, 4_320_000)));
    // An inconclusive gate needing 2000 more per version: 2000 s at the challenger's pace.
    let needy = Pace { needed: 2000, ..pace };
    assert_eq!(expected_remaining(&spec, 0, Some(600_000), Some((0, 0)), needy), Some((2_000_000, 5_720_000)));
    // The last judged stage: nothing after it but the promotion.
    assert_eq!(expected_remaining(&spec, 2, Some(0), Some((0, 0)), pace), Some((0, 0)));
    // No challenger traffic: nothing can be told.
    assert_eq!(expected_remaining(&spec, 0, None, None, Pace { per_s: [10.0, 0.0], ..pace }), None);
}

#[test]
fn tokens_match_only_themselves_and_never_print() {
    let t = Token::new(" s3cret\n").unwrap();
    assert!(t.matches("s3cret"));
    assert!(!t.matches("s3cre"));
    assert!(!t.matches("s3cret "));
    assert!(!t.matches(""));
    assert!(Token::new("  \n").is_none());
    assert_eq!(format!("{t:?}"), "Token(<redacted>)");
}

#[test]
fn bearer_is_read_case_insensitively() {
    let mut h = HeaderMap::new();
    assert_eq!(bearer(&h), None);
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer abc"));
    assert_eq!(bearer(&h), Some("abc"));
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
    assert_eq!(bearer(&h), None);
}

#[test]
fn report_names_cannot_leave_the_folder() {
    assert!(safe_name("stage-1-1pct-epoch1.html"));
    for bad in ["", "..", "../state.json", ".hidden", "a/b", "a\\b", "%2e%2e"] {
        assert!(!safe_name(bad), "{bad}");
    }
}

#[test]
fn the_hub_follows_the_log_and_counts_only_new_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let spec = RolloutSpec::from_yaml(
        "rollout: hubtest\nchampion: v1\nchallenger: v2\nstages: [{ weight_percent: 10 }, { weight_percent: 100 }]\n\
             gates: { error_rate: { error_tolerance: 1 } }\nenvoy: { admin: [\"http://a\"], ecds_dir: /x, wasm: /y }\n",
    )
    .unwrap();
    let s0 = canary_judge::rollout::RolloutState::start(&spec, 1_000);
    store.save_state(&s0).unwrap();
    let hub = Hub::new(store.clone(), spec.clone(), false, ProcessContext::default());
    let first = hub.current();
    let view: serde_json::Value = serde_json::from_str(&first.json).unwrap();
    assert_eq!((view["phase"].as_str(), view["weight_bp"].as_u64()), (Some("running"), Some(1000)));
    assert_eq!(view["controls"]["enabled"], false);
    assert!(view["controls"]["message"].as_str().unwrap().contains("--token-file"));

    let count = || {
        let text = hub.ctx.metrics.render(None);
        text.lines()
            .find(|l| l.starts_with("canary_decisions_total{action=\"pause\",manual=\"true\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = count();
    let (s1, d1) = s0.command(&spec, Command::Pause, "test", 2_000).unwrap();
    store.save_state(&s1).unwrap();
    store.append_decision(&d1).unwrap();
    hub.refresh();
    let snap = hub.current();
    assert!(snap.version > first.version);
    let view: serde_json::Value = serde_json::from_str(&snap.json).unwrap();
    assert_eq!(view["phase"], "paused");
    assert_eq!(view["last_decision"]["seq"], 1);
    assert_eq!(view["timeline"][0]["action"], "pause");
    assert!(count() >= before + 1.0, "the first decision of a new log counts");
    // Nothing new: nothing published.
    hub.refresh();
    assert_eq!(hub.current().version, snap.version);
}

fn cumulative(answered: u64, errors: u64, latencies: &[(f64, u64)]) -> Cumulative {
    let mut h = MergedHistogram::default();
    for (lower, n) in latencies {
        h.add(*lower, lower / 10.0, *n);
    }
    Cumulative { answered, errors, latency_us: h }
}

#[test]
fn deltas_of_cumulative_windows_give_interval_rates_and_quantiles() {
    let a = cumulative(100, 1, &[(1000.0, 100)]);
    let b = cumulative(300, 21, &[(1000.0, 100), (50_000.0, 200)]);
    let d = b.minus(&a);
    assert_eq!((d.answered, d.errors), (200, 20));
    // Only the new requests: all in the 50 ms bucket.
    assert!(d.latency_us.quantile(0.5).unwrap() >= 50_000.0);
    let p = |at, delta: Cumulative| Point {
        at,
        epoch: 1,
        weight_bp: 100,
        span_ms: Some(1000),
        delta: [delta.clone(), delta],
        psi: None,
        labels: [None, None],
        agreement: None,
        segments: Default::default(),
    };
    let s = series(&[p(1000, a), p(2000, d)]);
    assert_eq!(s.champion.rps, vec![Some(100.0), Some(200.0)]);
    assert_eq!(s.challenger.error_rate, vec![Some(0.01), Some(0.1)]);
    let merged = merge_pairs(vec![p(1000, cumulative(10, 1, &[])), p(2000, cumulative(30, 0, &[]))]);
    assert_eq!(merged.len(), 1);
    assert_eq!((merged[0].delta[0].answered, merged[0].span_ms, merged[0].at), (40, Some(2000), 2000));
}

/// A decision of epoch 1 at `at` whose cumulative window has `(segment,
/// responses, 5xx)` per version, judged by `gates` (JSON gate results).
fn segmented_decision(
    seq: u64,
    at: u64,
    counts: [&[(&str, u64, u64)]; 2],
    gates: serde_json::Value,
) -> canary_judge::rollout::Decision {
    use canary_judge::rollout::{Action, Decision, Target, WindowSummary};
    use canary_judge::window::VersionWindow;
    let window = |segments: &[(&str, u64, u64)]| {
        let mut w = VersionWindow::default();
        for &(name, n, errors) in segments {
            let s = w.segment_mut(name);
            s.responses = [0, n - errors, 0, 0, errors];
            w.add_responses(n, errors);
        }
        w
    };
    let target =
        Target { stage: 0, stage_name: "10pct".into(), weight: canary_core::Weight::from_bp(1000).unwrap(), epoch: 1 };
    Decision {
        seq,
        at,
        action: Action::Hold,
        manual: false,
        from: target.clone(),
        to: target,
        reasons: vec!["holding".into()],
        gates: serde_json::from_value(gates).unwrap(),
        window: Some(WindowSummary {
            champion: window(counts[0]),
            challenger: window(counts[1]),
            coverage: Default::default(),
            elapsed_ms: at - 1_000,
        }),
        alerts: vec![],
        labels: None,
    }
}

#[test]
fn segments_a_gate_judged_get_their_own_series_the_others_none() {
    let gates = |ent_labels: [f64; 2]| {
        serde_json::json!([
            {"gate": "error_rate", "outcome": "pass", "blocks": false, "champion_n": 0, "challenger_n": 0, "detail": ""},
            {"gate": "error_rate", "outcome": "pass", "blocks": false, "champion_n": 0, "challenger_n": 0, "detail": "", "segment": "ent"},
            {"gate": "labels", "outcome": "inconclusive", "blocks": true, "champion_n": 300, "challenger_n": 300,
             "champion": ent_labels[0], "challenger": ent_labels[1], "detail": "", "segment": "ent"},
        ])
    };
    let mut ing = Ingest::default();
    ing.epoch_started.insert(1, 1_000);
    // 10 s in: `ent` 100 responses each, the challenger 10 of them 5xx; `free` 900 (not judged).
    ing.add(&segmented_decision(
        1,
        11_000,
        [&[("free", 900, 0), ("ent", 100, 0)], &[("free", 900, 0), ("ent", 100, 10)]],
        gates([0.9, 0.8]),
    ));
    // 10 s later: 200 more in `ent`, 40 of the challenger's 5xx.
    ing.add(&segmented_decision(
        2,
        21_000,
        [&[("free", 1_800, 0), ("ent", 300, 0)], &[("free", 1_800, 0), ("ent", 300, 50)]],
        gates([0.9, 0.7]),
    ));
    let s = series(&ing.points);
    assert_eq!(s.segments.keys().collect::<Vec<_>>(), ["ent"], "only judged segments");
    let ent = &s.segments["ent"];
    assert_eq!(ent.challenger.n, vec![100, 200], "interval deltas, as for all traffic");
    assert_eq!(ent.challenger.error_rate, vec![Some(0.1), Some(0.2)]);
    assert_eq!(ent.champion.error_rate, vec![Some(0.0), Some(0.0)]);
    assert_eq!(ent.challenger.rps, vec![Some(10.0), Some(20.0)]);
    assert_eq!(ent.challenger.label, vec![Some(0.8), Some(0.7)], "the segment's label gate values");
    // All traffic's series is unchanged by the segments, and its labels are not the segment's.
    assert_eq!(s.challenger.n, vec![1_000, 1_100]);
    assert_eq!(s.challenger.label, vec![None, None]);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["segments"]["ent"]["challenger"]["error_rate"][1], 0.2);
    // Without per-segment results: no `segments` key at all.
    let mut plain = Ingest::default();
    plain.add(&segmented_decision(1, 11_000, [&[("ent", 100, 0)], &[("ent", 100, 0)]], serde_json::json!([])));
    assert!(serde_json::to_value(series(&plain.points)).unwrap().get("segments").is_none());
    // A segment judged in only some points has no value in the others.
    let mut late = Ingest::default();
    late.epoch_started.insert(1, 1_000);
    late.add(&segmented_decision(1, 11_000, [&[("ent", 100, 0)], &[("ent", 100, 0)]], serde_json::json!([])));
    late.add(&segmented_decision(2, 21_000, [&[("ent", 300, 0)], &[("ent", 300, 20)]], gates([0.9, 0.9])));
    let s = series(&late.points);
    assert_eq!(s.segments["ent"].challenger.error_rate, vec![None, Some(0.1)], "the delta from the base kept before");
}

#[test]
fn every_gate_result_carries_the_descriptor_the_page_renders_from() {
    let gates = serde_json::json!([
        {"gate": "client_errors", "outcome": "pass", "blocks": false, "champion_n": 10, "challenger_n": 10,
         "champion": 0.01, "challenger": 0.02, "detail": ""},
        {"gate": "prediction", "outcome": "pass", "blocks": false, "champion_n": 10, "challenger_n": 10, "detail": ""},
    ]);
    let mut ing = Ingest::default();
    ing.add(&segmented_decision(1, 11_000, [&[], &[]], gates));
    let results = &ing.gates.as_ref().unwrap().results;
    let format = &results[0]["format"];
    assert_eq!(
        (format["title"].as_str(), format["scale"].as_f64(), format["unit"].as_str()),
        (Some("client errors"), Some(100.0), Some("%"))
    );
    assert_eq!(format["digits"], serde_json::json!({"significant": 3}));
    assert_eq!(
        (results[1]["format"]["reference"].as_bool(), &results[1]["format"]["digits"]),
        (Some(true), &serde_json::json!({"decimals": 4}))
    );
}
