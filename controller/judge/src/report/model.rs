//! The report as data: what one stage's (or the whole rollout's) comparison
//! holds, built from the decision log, the state and the spec only
//! (`stage_report`, `rollout_report`), serialized as the JSON document
//! (`canary.report/v1`, `controller/report.schema.json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::gates::GateResult;
use crate::labels::LabelStats;
use crate::rollout::{Action, Decision, Millis, RolloutState, Target};
use crate::spec::RolloutSpec;
use crate::stats::{newcombe_diff, quantile_interval, welch_diff, wilson, Interval};
use crate::window::{Bucket, VersionWindow};

pub const SCHEMA: &str = "canary.report/v1";
/// Confidence of the intervals shown (the gates' own levels are in their results).
pub const CONFIDENCE: f64 = 0.95;

/// A value with its interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub value: Option<f64>,
    pub interval: Option<Interval>,
    pub n: u64,
}

/// One metric compared between the versions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricRow {
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub champion: Estimate,
    pub challenger: Estimate,
    /// Challenger − champion, with its interval when one exists.
    pub difference: Estimate,
    /// The challenger is worse by a meaningful amount: the 95 % interval of
    /// the difference lies wholly on the worse side of 0 (for quantiles: the
    /// two versions' intervals do not overlap) and the difference is at
    /// least `min_difference`.
    pub challenger_worse: bool,
    /// The least difference (in `unit`; percentage points for shares)
    /// highlighted as worse.
    pub min_difference: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentRow {
    pub segment: String,
    pub rows: Vec<MetricRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    pub seq: u64,
    pub at: Millis,
    /// `at` as ISO 8601 in UTC.
    pub at_iso: String,
    pub action: Action,
    pub manual: bool,
    pub from: Target,
    pub to: Target,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inputs {
    pub spec_sha256: String,
    pub spec: serde_json::Value,
    pub filter_config_sha256: String,
    pub filter_config: serde_json::Value,
    pub epoch: u64,
    /// Milliseconds the window covered.
    pub window_ms: u64,
    /// Decision-log sequence numbers the report is built from.
    pub decisions: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distributions {
    pub latency_us: BTreeMap<String, Vec<Bucket>>,
    /// Bin names, then per version the count per bin.
    pub prediction_bins: Vec<String>,
    pub predictions: BTreeMap<String, Vec<u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub action: String,
    /// The action in plain words, for people.
    pub summary: String,
    pub reasons: Vec<String>,
}

/// The least differences a report highlights as worse: smaller ones are
/// noise to a reviewer even when the interval excludes 0.
pub const MIN_RATE_DIFFERENCE_PP: f64 = 0.1;
/// Latency quantiles: at least this many milliseconds, and [`MIN_LATENCY_RATIO`] of the champion's.
pub const MIN_LATENCY_DIFFERENCE_MS: f64 = 1.0;
pub const MIN_LATENCY_RATIO: f64 = 0.05;
/// Label means (the outcome's own units).
pub const MIN_LABEL_DIFFERENCE: f64 = 0.01;

/// Unix milliseconds as ISO 8601 in UTC (`2026-11-22T10:15:30.123Z`).
pub fn iso_time(at: Millis) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(at)).to_string()
}

/// A recommendation's action in plain words.
pub(super) fn plain_action(action: &str) -> String {
    match action {
        "advance" => {
            "advance: the challenger is within every tolerance at this stage; give it the next stage's traffic"
        }
        "rollback" => {
            "roll back: a gate showed the challenger worse than allowed; every user goes back to the champion"
        }
        "promoted" => "promoted: the challenger passed every stage and now serves everyone",
        "rolled back" => "rolled back: the challenger was taken out of traffic",
        _ => "hold: not enough evidence yet either way; keep the stage running",
    }
    .to_string()
}

/// One report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub rollout: String,
    pub champion: String,
    pub challenger: String,
    /// `stage` or `rollout`.
    pub scope: String,
    pub stage: Option<String>,
    pub stage_index: Option<usize>,
    pub generated_at: Millis,
    /// `generated_at` as ISO 8601 in UTC.
    pub generated_at_iso: String,
    pub inputs: Inputs,
    pub comparison: Vec<MetricRow>,
    pub gates: Vec<GateResult>,
    /// Metrics where the challenger's estimate is worse.
    pub worse: Vec<String>,
    pub segments: Vec<SegmentRow>,
    pub distributions: Distributions,
    pub timeline: Vec<TimelineEntry>,
    pub recommendation: Recommendation,
    /// For the whole-rollout report: the stage reports' comparisons.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub action: Action,
    pub comparison: Vec<MetricRow>,
}

pub(super) fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(super) fn rate_row(metric: &str, a: (u64, u64), b: (u64, u64)) -> MetricRow {
    let est = |(x, n): (u64, u64)| Estimate {
        value: (n > 0).then(|| x as f64 / n as f64),
        interval: wilson(x, n, CONFIDENCE),
        n,
    };
    let (ca, cb) = (est(a), est(b));
    let diff = Estimate {
        value: ca.value.zip(cb.value).map(|(x, y)| y - x),
        interval: newcombe_diff(a.0, a.1, b.0, b.1, CONFIDENCE),
        n: a.1.min(b.1),
    };
    let min = MIN_RATE_DIFFERENCE_PP / 100.0;
    let worse = diff.interval.is_some_and(|i| i.low > 0.0) && diff.value.is_some_and(|d| d >= min);
    MetricRow {
        metric: metric.into(),
        unit: "share".into(),
        higher_is_better: false,
        champion: ca,
        challenger: cb,
        difference: diff,
        challenger_worse: worse,
        min_difference: MIN_RATE_DIFFERENCE_PP,
    }
}

pub(super) fn quantile_row(q: f64, a: &VersionWindow, b: &VersionWindow) -> MetricRow {
    let est = |w: &VersionWindow| Estimate {
        value: w.latency_us.quantile(q).map(|v| v / 1000.0),
        interval: quantile_interval(&w.latency_us, q, CONFIDENCE)
            .map(|i| Interval { low: i.low / 1000.0, high: i.high / 1000.0 }),
        n: w.latency_us.count(),
    };
    let (ca, cb) = (est(a), est(b));
    let min = ca.value.map_or(MIN_LATENCY_DIFFERENCE_MS, |x| (x * MIN_LATENCY_RATIO).max(MIN_LATENCY_DIFFERENCE_MS));
    let apart = matches!((ca.interval, cb.interval), (Some(x), Some(y)) if y.low > x.high);
    let worse = apart && matches!((ca.value, cb.value), (Some(x), Some(y)) if y - x >= min);
    MetricRow {
        metric: format!("latency p{}", q * 100.0),
        unit: "ms".into(),
        higher_is_better: false,
        difference: Estimate { value: ca.value.zip(cb.value).map(|(x, y)| y - x), interval: None, n: ca.n.min(cb.n) },
        champion: ca,
        challenger: cb,
        challenger_worse: worse,
        min_difference: min,
    }
}

pub(super) fn label_row(a: LabelStats, b: LabelStats) -> MetricRow {
    let est = |s: LabelStats| {
        let interval = (s.n >= 2).then(|| {
            let m = s.sum / s.n as f64;
            let var = ((s.sum_sq - s.sum * s.sum / s.n as f64) / (s.n as f64 - 1.0)).max(0.0);
            let half = crate::stats::z_two_sided(CONFIDENCE) * (var / s.n as f64).sqrt();
            Interval { low: m - half, high: m + half }
        });
        Estimate { value: s.mean(), interval, n: s.n }
    };
    let (ca, cb) = (est(a), est(b));
    let interval = welch_diff(a.n, a.sum, a.sum_sq, b.n, b.sum, b.sum_sq, CONFIDENCE);
    let worse = interval.is_some_and(|i| i.high < 0.0)
        && matches!((ca.value, cb.value), (Some(x), Some(y)) if x - y >= MIN_LABEL_DIFFERENCE);
    MetricRow {
        metric: "label metric".into(),
        unit: "mean outcome".into(),
        higher_is_better: true,
        difference: Estimate { value: ca.value.zip(cb.value).map(|(x, y)| y - x), interval, n: a.n.min(b.n) },
        champion: ca,
        challenger: cb,
        challenger_worse: worse,
        min_difference: MIN_LABEL_DIFFERENCE,
    }
}

pub(super) fn comparison(
    a: &VersionWindow,
    b: &VersionWindow,
    labels: Option<(LabelStats, LabelStats)>,
) -> Vec<MetricRow> {
    let mut rows = vec![
        rate_row("error rate (5xx)", (a.errors(), a.answered()), (b.errors(), b.answered())),
        rate_row("timeout rate (504)", (a.timeouts, a.answered()), (b.timeouts, b.answered())),
        quantile_row(0.5, a, b),
        quantile_row(0.99, a, b),
    ];
    if let Some((x, y)) = labels.filter(|(x, y)| x.n + y.n > 0) {
        rows.push(label_row(x, y));
    }
    if b.shadow.requests > 0 {
        let s = &b.shadow;
        let compared = s.agree + s.disagree;
        let interval = wilson(s.agree, compared, CONFIDENCE);
        rows.push(MetricRow {
            metric: "shadow agreement".into(),
            unit: "share".into(),
            higher_is_better: true,
            champion: Estimate { value: Some(1.0), interval: None, n: compared },
            challenger: Estimate {
                value: (compared > 0).then(|| s.agree as f64 / compared as f64),
                interval,
                n: compared,
            },
            difference: Estimate { value: None, interval: None, n: compared },
            challenger_worse: interval.is_some_and(|i| i.high < 1.0 - MIN_RATE_DIFFERENCE_PP / 100.0),
            min_difference: MIN_RATE_DIFFERENCE_PP,
        });
    }
    rows
}

/// The decisions of one stage (by its epoch), and the one with the evidence.
pub(super) fn stage_decisions(log: &[Decision], epoch: u64) -> (Vec<&Decision>, Option<&Decision>) {
    let of_stage: Vec<&Decision> = log.iter().filter(|d| d.from.epoch == epoch).collect();
    let evidence = of_stage.iter().rev().find(|d| d.window.is_some()).copied();
    (of_stage, evidence)
}

pub(super) fn timeline(log: &[&Decision]) -> Vec<TimelineEntry> {
    log.iter()
        .filter(|d| d.action != Action::Hold)
        .map(|d| TimelineEntry {
            seq: d.seq,
            at: d.at,
            at_iso: iso_time(d.at),
            action: d.action,
            manual: d.manual,
            from: d.from.clone(),
            to: d.to.clone(),
            reasons: d.reasons.clone(),
        })
        .collect()
}

pub(super) fn recommendation_of(
    d: Option<&Decision>,
    state: &RolloutState,
    ended: Option<&Decision>,
) -> Recommendation {
    let (action, reasons) = match ended.or(d) {
        Some(d) => (
            match d.action {
                Action::Advance | Action::Promote => "advance",
                Action::Rollback => "rollback",
                _ => "hold",
            },
            d.reasons.clone(),
        ),
        None => ("hold", vec![format!("no evaluation yet ({})", state.phase)]),
    };
    Recommendation { action: action.into(), summary: plain_action(action), reasons }
}

/// Builds the report of the stage whose configuration had `epoch`.
pub fn stage_report(
    spec: &RolloutSpec,
    state: &RolloutState,
    log: &[Decision],
    epoch: u64,
    now: Millis,
) -> Option<Report> {
    let (decisions, evidence) = stage_decisions(log, epoch);
    let first = decisions.first()?;
    let stage_index = first.from.stage;
    let stage_name = first.from.stage_name.clone();
    let ended = decisions
        .iter()
        .rev()
        .find(|d| matches!(d.action, Action::Advance | Action::Promote | Action::Rollback))
        .copied();
    let window = evidence.and_then(|d| d.window.as_ref());
    let empty = VersionWindow::default();
    let (a, b) = window.map_or((&empty, &empty), |w| (&w.champion, &w.challenger));
    let labels = (state.labels.stats(&stage_name, &spec.champion), state.labels.stats(&stage_name, &spec.challenger));
    let rows = comparison(a, b, Some(labels));
    let worse = rows.iter().filter(|r| r.challenger_worse).map(|r| r.metric.clone()).collect();
    let mut segments = vec![];
    for (name, sa) in &a.segments {
        let sb = b.segments.get(name).cloned().unwrap_or_default();
        let as_version = |s: &crate::window::SegmentWindow| VersionWindow {
            requests: s.requests,
            unkeyed: s.unkeyed,
            responses: s.responses,
            timeouts: s.timeouts,
            latency_us: s.latency_us.clone(),
            ..Default::default()
        };
        segments.push(SegmentRow { segment: name.clone(), rows: comparison(&as_version(sa), &as_version(&sb), None) });
    }
    let bins: Vec<String> = {
        let mut names: Vec<String> = a.predictions.keys().chain(b.predictions.keys()).cloned().collect();
        names.sort_by_key(|n| bin_order(n));
        names.dedup();
        names
    };
    let counts =
        |w: &VersionWindow| bins.iter().map(|n| w.predictions.get(n).copied().unwrap_or(0)).collect::<Vec<_>>();
    let target = Target { stage: stage_index, stage_name: stage_name.clone(), weight: first.from.weight, epoch };
    let filter = spec.filter_config(
        &target.stage_name,
        target.weight,
        epoch,
        spec.stages.get(stage_index).is_some_and(|s| s.shadow),
    );
    let spec_json = serde_json::to_value(spec).unwrap_or_default();
    Some(Report {
        schema: SCHEMA,
        rollout: spec.rollout.clone(),
        champion: spec.champion.clone(),
        challenger: spec.challenger.clone(),
        scope: "stage".into(),
        stage: Some(stage_name),
        stage_index: Some(stage_index),
        generated_at: now,
        generated_at_iso: iso_time(now),
        inputs: Inputs {
            spec_sha256: sha256(spec.to_yaml().as_bytes()),
            spec: spec_json,
            filter_config_sha256: sha256(filter.to_json().as_bytes()),
            filter_config: serde_json::from_str(&filter.to_json()).unwrap_or_default(),
            epoch,
            window_ms: window.map_or(0, |w| w.elapsed_ms),
            decisions: decisions.iter().map(|d| d.seq).collect(),
        },
        comparison: rows,
        gates: evidence.map(|d| d.gates.clone()).unwrap_or_default(),
        worse,
        segments,
        distributions: Distributions {
            latency_us: BTreeMap::from([
                (spec.champion.clone(), a.latency_us.buckets().copied().collect()),
                (spec.challenger.clone(), b.latency_us.buckets().copied().collect()),
            ]),
            predictions: BTreeMap::from([(spec.champion.clone(), counts(a)), (spec.challenger.clone(), counts(b))]),
            prediction_bins: bins,
        },
        timeline: timeline(&decisions),
        recommendation: recommendation_of(evidence, state, ended),
        stages: vec![],
    })
}

/// `b0 < b1 < … < b10`, labels in name order, `other`, then `unparsed`.
pub(super) fn bin_order(name: &str) -> (u8, u64, String) {
    match name {
        "unparsed" => (3, 0, String::new()),
        "other" => (2, 0, String::new()),
        n => match n.strip_prefix('b').and_then(|d| d.parse::<u64>().ok()) {
            Some(i) => (0, i, String::new()),
            None => (1, 0, n.to_string()),
        },
    }
}

/// The whole rollout: every stage's comparison, the timeline, the outcome.
pub fn rollout_report(spec: &RolloutSpec, state: &RolloutState, log: &[Decision], now: Millis) -> Option<Report> {
    let mut epochs: Vec<u64> = log.iter().map(|d| d.from.epoch).collect();
    epochs.dedup();
    let stage_reports: Vec<Report> = epochs.iter().filter_map(|e| stage_report(spec, state, log, *e, now)).collect();
    let last = stage_reports.iter().rev().find(|r| !r.gates.is_empty()).or(stage_reports.last())?.clone();
    let all: Vec<&Decision> = log.iter().collect();
    let final_reasons =
        log.iter().rev().find(|d| d.action != Action::Hold).map(|d| d.reasons.clone()).unwrap_or_default();
    let action = match state.phase {
        crate::rollout::Phase::Promoted => "promoted".into(),
        crate::rollout::Phase::RolledBack => "rolled back".into(),
        _ => last.recommendation.action.clone(),
    };
    Some(Report {
        scope: "rollout".into(),
        stage: None,
        stage_index: None,
        timeline: timeline(&all),
        recommendation: Recommendation {
            summary: plain_action(&action),
            action,
            reasons: if state.phase.is_final() { final_reasons } else { last.recommendation.reasons.clone() },
        },
        stages: stage_reports
            .iter()
            .filter_map(|r| {
                Some(StageSummary {
                    stage: r.stage.clone()?,
                    action: r.timeline.last().map_or(Action::Hold, |t| t.action),
                    comparison: r.comparison.clone(),
                })
            })
            .collect(),
        ..last
    })
}
