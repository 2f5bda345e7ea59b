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
    };
    let s = series(&[p(1000, a), p(2000, d)]);
    assert_eq!(s.champion.rps, vec![Some(100.0), Some(200.0)]);
    assert_eq!(s.challenger.error_rate, vec![Some(0.01), Some(0.1)]);
    let merged = merge_pairs(vec![p(1000, cumulative(10, 1, &[])), p(2000, cumulative(30, 0, &[]))]);
    assert_eq!(merged.len(), 1);
    assert_eq!((merged[0].delta[0].answered, merged[0].span_ms, merged[0].at), (40, Some(2000), 2000));
}
