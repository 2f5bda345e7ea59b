//! The report's tests: built from recorded decisions, rendered, read back.

use super::format::*;
use super::html::*;
use super::markdown::*;
use super::model::*;

use crate::rollout::{Action, RolloutState};
use crate::spec::RolloutSpec;
use crate::window::VersionWindow;
use crate::window::{Coverage, Window};

fn spec() -> RolloutSpec {
    RolloutSpec::from_yaml(
        r#"
rollout: r
champion: v1
challenger: v2
stages: [{ weight_percent: 10, min_requests: 10 }, { weight_percent: 100 }]
gates: { method: sequential, error_rate: { error_tolerance: 1 } }
envoy: { admin: ["http://a"], ecds_dir: /x, wasm: /y }
"#,
    )
    .unwrap()
}

fn window(epoch: u64, errors: u64) -> Window {
    let mut w = Window { epoch, ..Default::default() };
    for (v, e) in [("v1", 1), ("v2", errors)] {
        let mut vw = VersionWindow::served(1000, e);
        vw.latency_us.add(10_000.0, 1000.0, 990);
        vw.latency_us.add(50_000.0, 5000.0, 10);
        vw.predictions.insert("b0".into(), 600);
        vw.predictions.insert("b1".into(), 400);
        w.versions.insert(v.into(), vw);
    }
    w.coverage = Coverage::complete(1);
    w
}

#[test]
fn a_rolled_back_stage_report_highlights_what_got_worse_and_says_why() {
    let spec = spec();
    let s0 = RolloutState::start(&spec, 0);
    let mut few = window(1, 0);
    few.versions.get_mut("v2").unwrap().responses[1] = 5;
    let (s1, d1) = s0.step(&spec, Ok(&few), 1000);
    assert_eq!(d1.action, Action::Hold, "{:?}", d1.reasons);
    let (s2, d2) = s1.step(&spec, Ok(&window(1, 80)), 2000);
    assert_eq!(d2.action, Action::Rollback, "{:?}", d2.reasons);
    let log = vec![d1, d2];
    let r = stage_report(&spec, &s2, &log, 1, 3000).unwrap();
    assert_eq!(r.schema, SCHEMA);
    assert_eq!(r.recommendation.action, "rollback");
    assert!(r.worse.contains(&"error rate (5xx)".to_string()), "{:?}", r.worse);
    let err = &r.comparison[0];
    assert_eq!(err.challenger.value, Some(0.08));
    assert!(err.difference.interval.unwrap().low > 0.0, "the difference is clearly above 0: {err:?}");
    assert_eq!(r.inputs.decisions, vec![1, 2]);
    assert_eq!(r.inputs.filter_config["challenger_weight_bp"], 1000);
    assert_eq!(r.distributions.prediction_bins, ["b0", "b1"]);
    let page = html(&r);
    assert!(
        page.contains("<svg")
            && page.contains("class=\"worse\"")
            && !page.contains("http://")
            && !page.contains("https://")
    );
    let md = markdown(&r);
    assert!(md.contains("recommend **rollback**") && md.contains("**worse**"), "{md}");
    // The sequential gate's values with units, its interval, look and
    // confidence are shown (look 12: 1000 from a first look at 10).
    assert!(md.contains("| error_rate | fail | 0.1% | 8% | 1.1% | Δ +7.9 pp [+5.04, +11.5 pp] |"), "{md}");
    assert!(md.contains("| 12 (99.96%) |"), "{md}");
    assert!(page.contains("<th>look (confidence)</th>") && page.contains("12 (99.96%)"));
    // Plain words first, a forest plot per gate, a latency chart with axes and a legend.
    assert!(page.contains("<title>Canary analysis: stage 10pct, rollout r — rollback</title>"), "{page}");
    assert!(md.contains("roll back: a gate showed the challenger worse"), "{md}");
    assert_eq!(page.matches("<svg class=\"forest\"").count(), r.gates.len());
    assert!(page.contains("latency (ms, log scale)") && page.contains("v2 (challenger, 1000 responses)"));
    // Times in ISO 8601 with zone, no raw epoch, no unrounded float, in either form.
    assert!(md.contains("| 1970-01-01T00:00:02.000Z |") && page.contains("1970-01-01T00:00:02.000Z"));
    for text in [&md, &page] {
        assert_eq!(unreadable_numbers(text), Vec::<String>::new());
    }
    let whole = rollout_report(&spec, &s2, &log, 3000).unwrap();
    assert_eq!((whole.scope.as_str(), whole.recommendation.action.as_str()), ("rollout", "rolled back"));
    assert_eq!(whole.stages.len(), 1);
}

#[test]
fn a_segment_that_fails_rolls_back_by_name_and_is_the_highlighted_worst_segment() {
    let spec = RolloutSpec::from_yaml(
        r#"
rollout: r
champion: v1
challenger: v2
stages: [{ weight_percent: 50, min_requests: 100 }, { weight_percent: 100 }]
gates: { error_rate: { error_tolerance: 3, segments: all } }
envoy: { admin: ["http://a"], ecds_dir: /x, wasm: /y }
filter: { key: [{ header: x-user-id }], segment: { header: x-tier, values: [free, pro, ent] } }
"#,
    )
    .unwrap();
    // 0.3 % 5xx everywhere, but 6 % for the challenger's `ent`; two
    // looks (the first learns the champion's rate).
    let window = |scale: u64| {
        let mut w = Window { epoch: 1, ..Default::default() };
        for (v, ent_errors) in [("v1", 6), ("v2", 120)] {
            let mut vw = VersionWindow::default();
            for (seg, errors) in [("free", 6), ("pro", 6), ("ent", ent_errors)] {
                let (n, errors) = (2000 * scale / 2, errors * scale / 2);
                let s = vw.segment_mut(seg);
                s.responses = [0, n - errors, 0, 0, errors];
                s.requests = n;
                vw.add_responses(n, errors);
            }
            w.versions.insert(v.into(), vw);
        }
        w.coverage = Coverage::complete(1);
        w
    };
    let (s0, d0) = RolloutState::start(&spec, 0).step(&spec, Ok(&window(1)), 500);
    assert_eq!(d0.action, Action::Hold, "{:?}", d0.reasons);
    let (s1, d1) = s0.step(&spec, Ok(&window(2)), 1000);
    assert_eq!(d1.action, Action::Rollback, "{:?}", d1.reasons);
    assert_eq!(d1.reasons.len(), 1, "{:?}", d1.reasons);
    assert!(
        d1.reasons[0].starts_with("error_rate gate failed: segment `ent`: 5xx rate: challenger 6.000% (120/2000)"),
        "{:?}",
        d1.reasons
    );
    let r = stage_report(&spec, &s1, &[d1], 1, 2000).unwrap();
    let md = markdown(&r);
    assert!(md.contains("### Segments judged by the gates"), "{md}");
    assert!(md.contains("| error_rate | ent | fail | 0.3% | 6% | 3.3% | 2000 / 2000 | **worst** |"), "{md}");
    assert!(md.contains("| error_rate | free | "), "{md}");
    assert!(md.contains("| error_rate · segment ent | fail |"), "{md}");
    let page = html(&r);
    assert!(page.contains("<tr class=\"worse\"><td>error_rate</td><td>ent</td><td class=\"fail\">fail</td>"), "{page}");
    for text in [&md, &page] {
        assert_eq!(unreadable_numbers(text), Vec::<String>::new());
    }
}

#[test]
fn readable_rounds_long_floats_in_recorded_text_and_leaves_the_rest() {
    assert_eq!(readable("PSI 0.002868721825053504 over 19950.000000000004 at 1.5"), "PSI 0.0029 over 19950 at 1.5");
    // Decisions recorded before e-values were formatted for people.
    assert_eq!(
        readable("no-harm e-value 21403307422086432.000 at 1796393730430"),
        "no-harm e-value 2.1e16 at 1796393730430"
    );
    assert_eq!(readable("v2 (5pct) #12, 99.96% [+5.043, +11.467] pp"), "v2 (5pct) #12, 99.96% [+5.043, +11.467] pp");
    assert_eq!(
        unreadable_numbers("at 1796393730430 and 0.002868721825053504"),
        ["1796393730430", "0.002868721825053504"]
    );
    assert_eq!(unreadable_numbers("at 2026-11-22T10:15:30.123Z, 27.3 ms, sha 10db4452"), Vec::<String>::new());
}

#[test]
fn a_negligible_latency_difference_is_not_highlighted_but_a_real_one_is() {
    let with_p99 = |tail_us: f64| {
        let mut w = VersionWindow::served(1000, 0);
        w.latency_us.add(10_000.0, 1000.0, 970);
        w.latency_us.add(tail_us, 100.0, 30);
        w
    };
    // 0.03 ms worse at p99: not worth a reviewer's attention.
    let row = quantile_row(0.99, &with_p99(27_000.0), &with_p99(27_030.0));
    let d = row.difference.value.unwrap();
    assert!(d > 0.0 && d < 0.1 && !row.challenger_worse, "{row:?}");
    // Three times slower everywhere: highlighted.
    let mut slow = VersionWindow::served(1000, 0);
    slow.latency_us.add(30_000.0, 3000.0, 990);
    slow.latency_us.add(81_000.0, 300.0, 10);
    let row = quantile_row(0.5, &with_p99(27_000.0), &slow);
    assert!(row.challenger_worse, "{row:?}");
    // One more error in a thousand is inside the interval: not highlighted.
    assert!(!rate_row("e", (1, 1000), (2, 1000)).challenger_worse);
}

#[test]
fn bins_are_ordered_numerically_then_labels_other_unparsed() {
    let mut names = vec!["unparsed", "b10", "other", "b2", "cat"];
    names.sort_by_key(|n| bin_order(n));
    assert_eq!(names, ["b2", "b10", "cat", "other", "unparsed"]);
}
