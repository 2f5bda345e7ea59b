//! `canary plan`: what a spec's stages will take at a given traffic, from the
//! engine itself. Per stage: the challenger's traffic, the time to
//! `min_requests`, the expected (median) time to a decision for a challenger
//! equal to the champion and for one 2 × tolerance worse — simulated with
//! the gates' own e-processes ([`crate::calibration`]) at the stage's split
//! and evaluation interval — and a warning where a stage cannot decide
//! within its `max_duration`. When gates judge segments, also per stage the
//! smallest judged segment it can estimate: its challenger traffic, the time
//! until it has `gates.segment_min_responses` per version, and a warning
//! where that is beyond `max_duration` (the segment would stay "not enough
//! data"). Pure: spec and assumptions in, rows out.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::anytime;
use crate::calibration::{self, RateCell, Truth};
use crate::gates::GateKind;
use crate::spec::{AdvanceWhen, RolloutSpec};

/// What the plan assumes about traffic and the champion.
#[derive(Debug, Clone, Default)]
pub struct Assumptions {
    /// Requests per second through the Envoys, both versions together.
    pub rps: f64,
    /// The champion's 5xx rate (0.003 = 0.3 %).
    pub error_rate: f64,
    /// The champion's 504 rate.
    pub timeout_rate: f64,
    /// Simulated runs per estimate.
    pub runs: u32,
    /// Each segment's share of the requests (0..=1), by name; empty: equal
    /// shares over `filter.segment.values` (said in a note).
    pub segment_shares: BTreeMap<String, f64>,
}

/// The smallest judged segment of a stage, at the assumed traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentStage {
    pub name: String,
    /// Its share of the requests (assumed or given).
    pub share: f64,
    /// The challenger's responses per second in it.
    pub challenger_rps: f64,
    /// The challenger's responses in it within the stage's `max_duration`.
    pub challenger_responses: u64,
    /// `gates.segment_min_responses`, and the time until the slower version
    /// has that many in the segment.
    pub min_responses: u64,
    pub to_min_responses: Duration,
}

/// The plan: a row per stage, and what it assumed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
    /// Assumptions worth saying (e.g. segment shares taken as equal).
    pub notes: Vec<String>,
}

/// One stage of the plan.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub name: String,
    pub weight_percent: f64,
    pub challenger_rps: f64,
    pub min_requests: u64,
    pub to_min_requests: Duration,
    pub advance_when: AdvanceWhen,
    /// Median time to the stage's decision with an equal challenger (`None`:
    /// not within `max_duration` in most runs).
    pub equal: Option<Duration>,
    /// Median time to a rollback of a challenger 2 × tolerance worse.
    pub harmful: Option<Duration>,
    pub max_duration: Duration,
    /// With per-segment gates: the smallest judged segment (`None` without
    /// them, in a shadow stage, or when no judged segment's share is known).
    pub segment: Option<SegmentStage>,
    pub warnings: Vec<String>,
}

/// The judged segments whose traffic the plan can estimate, smallest share
/// first, and what it assumed about them. Only the gates judged on
/// responses count (labels arrive at their own pace).
fn segment_shares(spec: &RolloutSpec, a: &Assumptions) -> (Vec<(String, f64)>, Vec<String>) {
    let filter = spec.filter.segment.as_ref();
    let families = crate::segments::families(&spec.gates, filter);
    let mut notes = vec![];
    if families.iter().any(|(k, _)| *k == GateKind::Labels) {
        notes.push(
            "labels: per-segment label counts depend on when labels arrive and are not estimated here".to_string(),
        );
    }
    let mut judged: Vec<String> = vec![];
    for (_, names) in families.iter().filter(|(k, _)| *k != GateKind::Labels) {
        for n in names {
            if !judged.contains(n) {
                judged.push(n.clone());
            }
        }
    }
    if judged.is_empty() {
        return (vec![], notes);
    }
    let shares: BTreeMap<String, f64> = if a.segment_shares.is_empty() {
        let values = filter.map(|f| f.values.clone()).unwrap_or_default();
        let each = 1.0 / values.len().max(1) as f64;
        notes.push(format!(
            "segments: no segment shares given (--segment-share NAME=SHARE): assumed equal shares over filter.segment.values ({} each of {}); `{}` not estimated",
            (each * 1e4).round() / 1e4,
            values.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", "),
            canary_core::predict::OTHER
        ));
        values.into_iter().map(|v| (v, each)).collect()
    } else {
        a.segment_shares.clone()
    };
    let mut known: Vec<(String, f64)> =
        judged.iter().filter_map(|n| shares.get(n).map(|s| (n.clone(), *s))).filter(|(_, s)| *s > 0.0).collect();
    let unknown: Vec<&String> = judged.iter().filter(|n| !known.iter().any(|(k, _)| k == *n)).collect();
    if !unknown.is_empty() && !a.segment_shares.is_empty() {
        notes.push(format!(
            "segments: no share given for {}: not estimated",
            unknown.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    known.sort_by(|x, y| x.1.total_cmp(&y.1).then_with(|| x.0.cmp(&y.0)));
    (known, notes)
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e9))
}

/// The plan of every stage but the last (100 %).
pub fn plan(spec: &RolloutSpec, a: &Assumptions) -> Plan {
    let (segments, notes) = segment_shares(spec, a);
    let interval = spec.interval.as_secs_f64().max(0.001);
    let alpha = spec.gates.alpha;
    let rates: Vec<(&str, f64, f64)> = [
        spec.gates.error_rate.as_ref().map(|g| ("error_rate", a.error_rate, g.error_tolerance / 100.0)),
        spec.gates.timeouts.as_ref().map(|g| ("timeouts", a.timeout_rate, g.timeout_tolerance / 100.0)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut out = vec![];
    for i in 0..spec.stages.len().saturating_sub(1) {
        let stage = &spec.stages[i];
        let weight = stage.weight_percent.unwrap_or(0.0);
        let share = (weight / 100.0).clamp(1e-4, 0.9999);
        let challenger_rps = a.rps * share;
        let slower_rps = challenger_rps.min(a.rps - challenger_rps).max(1e-9);
        let min_requests = spec.min_requests(i);
        let to_min = min_requests as f64 / slower_rps;
        let max_duration = spec.max_duration(i);
        let looks = ((max_duration.as_secs_f64() / interval).ceil() as u32).clamp(1, 400);
        // Looks coarser than the interval when the stage is long: the
        // simulation stays bounded; the verdict is the same or later.
        let step = (max_duration.as_secs_f64() / interval / f64::from(looks)).max(1.0);
        let per_look = (challenger_rps * interval * step).ceil().max(1.0) as u64;
        let median = |base: f64, tol: f64, truth: Truth| {
            let cell = RateCell { base, tol, share, truth, per_look, max_looks: looks };
            let o = calibration::run_rate(cell, alpha, a.runs, 2026 + i as u64);
            o.median_to_decision().map(|n| n as f64 / challenger_rps)
        };
        let policy = spec.advance_when(i);
        let floor = stage.min_duration.as_secs_f64().max(to_min);
        let mut warnings = vec![];
        let equal = match policy {
            AdvanceWhen::NoHarm => Some(floor),
            AdvanceWhen::Proven => rates.iter().try_fold(floor, |acc, &(gate, base, tol)| match median(base, tol, Truth::Equal) {
                Some(t) => Some(acc.max(t)),
                None => {
                    warnings.push(format!(
                        "{gate}: an equal challenger is not proven within max_duration ({}) in most runs at this traffic",
                        humantime::format_duration(max_duration)
                    ));
                    None
                }
            }),
        };
        if policy == AdvanceWhen::Proven {
            if let Some(g) = &spec.gates.latency {
                let n = anytime::samples_for_upper_bound(g.quantile, alpha / 2.0);
                let t = n as f64 / slower_rps;
                if t > max_duration.as_secs_f64() {
                    warnings.push(format!(
                        "latency: an upper bound of p{} needs {n} samples per version (~{}), beyond max_duration",
                        g.quantile * 100.0,
                        humantime::format_duration(seconds(t.round()))
                    ));
                }
            }
        }
        let harmful =
            rates.iter().filter_map(|&(_, base, tol)| median(base, tol, Truth::TwiceTolerance)).reduce(f64::min);
        if let Some(t) = equal.filter(|t| *t > max_duration.as_secs_f64()) {
            warnings.push(format!(
                "decides in ~{} but max_duration is {}",
                humantime::format_duration(seconds(t.round())),
                humantime::format_duration(max_duration)
            ));
        }
        let segment = segments.first().filter(|_| !spec.is_shadow_stage(i)).map(|(name, seg_share)| {
            let min = spec.gates.segment_min_responses.max(1);
            let rps = (challenger_rps * seg_share, (a.rps - challenger_rps) * seg_share);
            let slower = rps.0.min(rps.1).max(1e-9);
            SegmentStage {
                name: name.clone(),
                share: *seg_share,
                challenger_rps: rps.0,
                challenger_responses: (rps.0 * max_duration.as_secs_f64()).floor() as u64,
                min_responses: min,
                to_min_responses: seconds((min as f64 / slower).round()),
            }
        });
        if let Some(seg) = segment.as_ref().filter(|s| s.to_min_responses > max_duration) {
            let policy = match spec.gates.on_segment_too_small {
                crate::spec::SegmentTooSmall::Block => "on_segment_too_small: block holds the stage",
                crate::spec::SegmentTooSmall::Ignore => "on_segment_too_small: ignore, so it is never judged",
            };
            warnings.push(format!(
                "segment `{}` (~{:.1}% of requests): {} responses per version take ~{}, beyond max_duration ({}): it stays \"not enough data\" ({policy})",
                seg.name,
                seg.share * 100.0,
                seg.min_responses,
                humantime::format_duration(seconds(seg.to_min_responses.as_secs_f64().round())),
                humantime::format_duration(max_duration)
            ));
        }
        out.push(StagePlan {
            name: spec.stage_name(i),
            weight_percent: weight,
            challenger_rps,
            min_requests,
            to_min_requests: seconds(to_min),
            advance_when: policy,
            equal: equal.map(seconds),
            harmful: harmful.map(seconds),
            max_duration,
            segment,
            warnings,
        });
    }
    Plan { stages: out, notes }
}

/// The plan as a table.
pub fn render(plan: &Plan, a: &Assumptions) -> String {
    let rows = &plan.stages;
    let t = |d: Option<Duration>| {
        d.map_or("not within max_duration".to_string(), |d| {
            humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
        })
    };
    let mut s = format!(
        "plan at {} req/s, champion 5xx {:.2}%, 504 {:.2}% (medians of {} simulated runs per cell)\n\n",
        a.rps,
        a.error_rate * 100.0,
        a.timeout_rate * 100.0,
        a.runs
    );
    s.push_str("| stage | weight | challenger req/s | min_requests (time) | advance_when | equal challenger decided | 2x tolerance rolled back | max_duration |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {}% | {:.1} | {} ({}) | {} | {} | {} | {} |\n",
            r.name,
            r.weight_percent,
            r.challenger_rps,
            r.min_requests,
            t(Some(r.to_min_requests)),
            r.advance_when,
            t(r.equal),
            t(r.harmful),
            humantime::format_duration(r.max_duration)
        ));
    }
    if rows.iter().any(|r| r.segment.is_some()) {
        s.push_str("\n| stage | smallest judged segment | share | challenger req/s in it | challenger responses by max_duration | segment_min_responses (time) |\n| --- | --- | --- | --- | --- | --- |\n");
        for r in rows {
            let Some(g) = &r.segment else { continue };
            s.push_str(&format!(
                "| {} | {} | {:.1}% | {:.2} | {} | {} ({}) |\n",
                r.name,
                g.name,
                g.share * 100.0,
                g.challenger_rps,
                g.challenger_responses,
                g.min_responses,
                t(Some(g.to_min_responses))
            ));
        }
    }
    for r in rows {
        for w in &r.warnings {
            s.push_str(&format!("warning: {}: {w}\n", r.name));
        }
    }
    for n in &plan.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
rollout: r
champion: v1
challenger: v2
interval: 10s
stages:
  - { weight_percent: 1, min_duration: 20s, min_requests: 150 }
  - { weight_percent: 50, min_duration: 20s, min_requests: 150 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 1 }
  latency: { latency_tolerance_multiplier: 1.5, quantile: 0.95 }
  timeouts: { timeout_tolerance: 1 }
envoy: { admin: ["http://a"], ecds_dir: /x, wasm: /y }
"#;

    #[test]
    fn the_plan_of_the_issue_traffic() {
        // The issue's case 7: 200 req/s, gates error 1 pp, p95 × 1.5, timeouts 1 pp.
        let spec = RolloutSpec::from_yaml(SPEC).unwrap();
        let a = Assumptions { rps: 200.0, error_rate: 0.003, timeout_rate: 0.001, runs: 60, ..Default::default() };
        let p = plan(&spec, &a);
        let rows = &p.stages;
        assert_eq!(rows.len(), 2);
        let one = &rows[0];
        assert_eq!((one.advance_when, one.min_requests), (AdvanceWhen::NoHarm, 150));
        // 150 challenger responses at 2 req/s: 75 s; a healthy challenger leaves within 5 minutes.
        assert_eq!(one.to_min_requests.as_secs(), 75);
        assert!(one.equal.is_some_and(|t| t <= Duration::from_secs(300)), "{one:?}");
        assert!(one.harmful.is_some(), "{one:?}");
        let half = &rows[1];
        assert_eq!(half.advance_when, AdvanceWhen::Proven);
        assert!(half.equal.is_some_and(|t| t >= Duration::from_secs(20)), "{half:?}");
        assert!(rows.iter().all(|r| r.segment.is_none()) && p.notes.is_empty(), "no segment judged");
        let text = render(&p, &a);
        assert!(text.contains("| 1pct | 1% | 2.0 | 150 (1m 15s) | no_harm |"), "{text}");
        assert!(!text.contains("smallest judged segment"), "{text}");
    }

    #[test]
    fn a_stage_too_short_for_its_proof_is_warned_about() {
        let spec = RolloutSpec::from_yaml(&SPEC.replace(
            "{ weight_percent: 50, min_duration: 20s, min_requests: 150 }",
            "{ weight_percent: 50, min_duration: 20s, min_requests: 150, max_duration: 30s }",
        ))
        .unwrap();
        let a = Assumptions { rps: 2.0, error_rate: 0.003, timeout_rate: 0.001, runs: 30, ..Default::default() };
        let rows = plan(&spec, &a).stages;
        assert!(!rows[1].warnings.is_empty(), "{:?}", rows[1]);
    }

    #[test]
    fn segments_judged_get_the_smallest_ones_traffic_and_a_warning_when_it_cannot_reach_its_minimum() {
        let segmented = SPEC
            .replace(
                "error_rate: { error_tolerance: 1 }",
                "error_rate: { error_tolerance: 1, segments: all }\n  segment_min_responses: 200",
            )
            .replace("envoy:", "filter:\n  segment: { header: x-tier, values: [free, pro, ent, gov] }\nenvoy:")
            .replace(
                "{ weight_percent: 1, min_duration: 20s, min_requests: 150 }",
                "{ weight_percent: 1, min_duration: 20s, min_requests: 150, max_duration: 10m }",
            );
        let spec = RolloutSpec::from_yaml(&segmented).unwrap();
        // No shares given: a quarter each of the four values; `other` not estimated.
        let a = Assumptions { rps: 200.0, error_rate: 0.003, timeout_rate: 0.001, runs: 30, ..Default::default() };
        let p = plan(&spec, &a);
        assert!(
            p.notes.iter().any(|n| n.contains("assumed equal shares over filter.segment.values (0.25 each")),
            "{:?}",
            p.notes
        );
        let one = p.stages[0].segment.as_ref().unwrap();
        // 1 % of 200 req/s is 2 req/s; a quarter of it 0.5/s: 200 responses take 400 s, within 10 min.
        assert_eq!((one.name.as_str(), one.min_responses), ("ent", 200), "equal shares: the first by name");
        assert!((one.challenger_rps - 0.5).abs() < 1e-9, "{one:?}");
        assert_eq!((one.to_min_responses.as_secs(), one.challenger_responses), (400, 300));
        assert!(p.stages[0].warnings.iter().all(|w| !w.contains("segment")), "{:?}", p.stages[0].warnings);
        // The 50 % stage: 25 req/s in the segment per version, 8 s.
        assert_eq!(p.stages[1].segment.as_ref().unwrap().to_min_responses.as_secs(), 8);
        let text = render(&p, &a);
        assert!(text.contains("| 1pct | ent | 25.0% | 0.50 | 300 | 200 (6m 40s) |"), "{text}");
        assert!(text.contains("note: segments: no segment shares given"), "{text}");

        // `gov` is 1 % of the requests: 0.02/s at 1 %, 10 000 s for 200 > 10 min: warned.
        let shares = [("free", 0.6), ("pro", 0.3), ("ent", 0.09), ("gov", 0.01)];
        let a = Assumptions { segment_shares: shares.iter().map(|(n, s)| (n.to_string(), *s)).collect(), ..a };
        let p = plan(&spec, &a);
        let one = p.stages[0].segment.as_ref().unwrap();
        assert_eq!(one.name, "gov");
        assert_eq!(one.to_min_responses.as_secs(), 10_000);
        let warned = p.stages[0].warnings.iter().find(|w| w.contains("segment `gov`")).expect("a warning");
        assert!(
            warned.contains("beyond max_duration (10m)") && warned.contains("on_segment_too_small: ignore"),
            "{warned}"
        );
        assert!(p.notes.iter().all(|n| !n.contains("equal shares")), "{:?}", p.notes);
        assert!(p.notes.iter().any(|n| n.contains("no share given for `other`")), "{:?}", p.notes);
    }
}
