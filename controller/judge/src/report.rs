//! Canary analysis reports: per stage and for the whole rollout, as a JSON
//! document (schema `canary.report/v1`, documented in the README), a
//! self-contained HTML page (inline CSS and SVG, no network fetch) and a
//! Markdown summary. Built only from what the controller recorded — the
//! decision log, the state and the spec — so a report can be rebuilt and
//! checked at any time.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::gates::{GateResult, Outcome};
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
fn plain_action(action: &str) -> String {
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

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn rate_row(metric: &str, a: (u64, u64), b: (u64, u64)) -> MetricRow {
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

fn quantile_row(q: f64, a: &VersionWindow, b: &VersionWindow) -> MetricRow {
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

fn label_row(a: LabelStats, b: LabelStats) -> MetricRow {
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

fn comparison(a: &VersionWindow, b: &VersionWindow, labels: Option<(LabelStats, LabelStats)>) -> Vec<MetricRow> {
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
fn stage_decisions(log: &[Decision], epoch: u64) -> (Vec<&Decision>, Option<&Decision>) {
    let of_stage: Vec<&Decision> = log.iter().filter(|d| d.from.epoch == epoch).collect();
    let evidence = of_stage.iter().rev().find(|d| d.window.is_some()).copied();
    (of_stage, evidence)
}

fn timeline(log: &[&Decision]) -> Vec<TimelineEntry> {
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

fn recommendation_of(d: Option<&Decision>, state: &RolloutState, ended: Option<&Decision>) -> Recommendation {
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
fn bin_order(name: &str) -> (u8, u64, String) {
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

/// The Markdown summary (stdout, alerts): the same facts as the HTML page.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## canary {} — {}: recommend **{}**\n", r.rollout, scope_title(r), r.recommendation.action);
    let _ = writeln!(s, "{}\n", r.recommendation.summary);
    for reason in &r.recommendation.reasons {
        let _ = writeln!(s, "- {}", readable(reason));
    }
    if !r.worse.is_empty() {
        let _ = writeln!(s, "\nThe challenger is worse on: **{}**.", r.worse.join(", "));
    }
    let _ = writeln!(
        s,
        "\n| metric | {} (champion) | {} (challenger) | difference | |\n| --- | --- | --- | --- | --- |",
        r.champion, r.challenger
    );
    for row in &r.comparison {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            row.metric,
            fmt_est(&row.champion, &row.unit),
            fmt_est(&row.challenger, &row.unit),
            fmt_est(&row.difference, diff_unit(&row.unit)),
            if row.challenger_worse { "**worse**" } else { "" }
        );
    }
    let _ = writeln!(s, "\n{}", worse_rule());
    if !r.gates.is_empty() {
        let _ = writeln!(
            s,
            "\n| gate | outcome | champion | challenger | limit | interval | look (confidence) | needed | detail |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for g in &r.gates {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                gate_label(g),
                outcome_name(g.outcome),
                gate_champion(g),
                gate_value(g, g.challenger),
                gate_value(g, g.threshold),
                gate_interval(g),
                gate_look(g),
                g.needed.map_or("—".to_string(), |n| format!("~{n} more")),
                readable(&g.detail)
            );
        }
    }
    if r.gates.iter().any(|g| g.segment.is_some()) {
        s.push_str(&segment_verdicts_md(&r.gates));
    }
    if !r.timeline.is_empty() {
        let _ = writeln!(s, "\n| # | at (UTC) | action | from → to | reasons |\n| --- | --- | --- | --- | --- |");
        for e in &r.timeline {
            let _ = writeln!(
                s,
                "| {} | {} | {}{} | {} ({}) → {} ({}) | {} |",
                e.seq,
                e.at_iso,
                e.action.word(),
                if e.manual { " (operator)" } else { "" },
                e.from.stage_name,
                e.from.weight,
                e.to.stage_name,
                e.to.weight,
                readable(&e.reasons.join("; "))
            );
        }
    }
    let _ = writeln!(s, "\n{}", inputs_line(r));
    s
}

/// "stage 5pct (5%)" or "whole rollout".
fn scope_title(r: &Report) -> String {
    r.stage.as_ref().map_or_else(|| "whole rollout".to_string(), |st| format!("stage {st}"))
}

/// What the highlighting means, in the report's own words.
fn worse_rule() -> String {
    format!(
        "Highlighted as worse: the {:.0} % interval of the difference lies wholly on the worse side (for latency \
         quantiles, the versions' intervals do not overlap) and the difference is at least {MIN_RATE_DIFFERENCE_PP} pp \
         for rates, {MIN_LATENCY_DIFFERENCE_MS} ms and {:.0} % of the champion's for latency, {MIN_LABEL_DIFFERENCE} for label means.",
        CONFIDENCE * 100.0,
        MIN_LATENCY_RATIO * 100.0
    )
}

fn inputs_line(r: &Report) -> String {
    format!(
        "Generated {} · epoch {} · window {:.1} s · decisions #{}–#{} · spec sha256 {} · filter configuration sha256 {}",
        r.generated_at_iso,
        r.inputs.epoch,
        r.inputs.window_ms as f64 / 1000.0,
        r.inputs.decisions.first().copied().unwrap_or(0),
        r.inputs.decisions.last().copied().unwrap_or(0),
        r.inputs.spec_sha256,
        r.inputs.filter_config_sha256
    )
}

/// Text recorded by the gates (reasons, details) as people read it: any
/// number with more than four decimals rounded to three significant digits.
fn readable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        let len = from.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(from.len());
        let number = from[..len].trim_end_matches('.');
        let decimals = number.split_once('.').map_or(0, |(_, d)| d.len());
        match number.parse::<f64>() {
            Ok(x) if decimals > 0 && x >= 1e12 => out.push_str(&format!("{x:.1e}")),
            Ok(x) if decimals > 4 => out.push_str(&round3(x)),
            _ => out.push_str(number),
        }
        rest = &from[number.len()..];
    }
    out.push_str(rest);
    out
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::Inconclusive => "inconclusive",
        Outcome::NoData => "no_data",
    }
}

/// How a gate's numbers read for people: the factor from the gate's own
/// units (shares, microseconds) and the unit shown.
fn gate_units(g: &GateResult) -> (f64, &'static str) {
    use crate::gates::GateKind;
    match g.gate {
        GateKind::ErrorRate | GateKind::Timeouts | GateKind::ShadowErrorRate | GateKind::ShadowAgreement => {
            (100.0, "%")
        }
        GateKind::Latency | GateKind::ShadowLatency => (0.001, " ms"),
        GateKind::Prediction | GateKind::Labels => (1.0, ""),
    }
}

/// Whether the gate is judged on challenger − champion (rates, label means).
fn judged_on_difference(g: &GateResult) -> bool {
    use crate::gates::GateKind;
    matches!(g.gate, GateKind::ErrorRate | GateKind::Timeouts | GateKind::ShadowErrorRate | GateKind::Labels)
}

/// One of a gate's values, rounded, with its unit.
fn gate_value(g: &GateResult, x: Option<f64>) -> String {
    let (k, unit) = gate_units(g);
    x.filter(|v| v.is_finite()).map_or("—".to_string(), |v| format!("{}{unit}", round3(v * k)))
}

/// The gate's id, with the segment it judges alone if any.
fn gate_label(g: &GateResult) -> String {
    match &g.segment {
        Some(seg) => format!("{} · segment {seg}", g.gate.id()),
        None => g.gate.id().to_string(),
    }
}

/// The per-segment verdicts of the gates with `segments`, as a Markdown
/// table, the worst segment marked.
fn segment_verdicts_md(gates: &[GateResult]) -> String {
    let worst = crate::segments::worst(gates);
    let mut s = String::from(
        "\n### Segments judged by the gates\n\n| gate | segment | outcome | champion | challenger | limit | responses (champion / challenger) | |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (i, g) in gates.iter().enumerate() {
        let Some(seg) = &g.segment else { continue };
        let _ = writeln!(
            s,
            "| {} | {seg} | {} | {} | {} | {} | {} / {} | {} |",
            g.gate.id(),
            outcome_name(g.outcome),
            gate_champion(g),
            gate_value(g, g.challenger),
            gate_value(g, g.threshold),
            g.champion_n,
            g.challenger_n,
            if Some(i) == worst { "**worst**" } else { "" }
        );
    }
    s
}

/// The same as an HTML table, the worst segment's row highlighted.
fn segment_verdicts_html(gates: &[GateResult]) -> String {
    let worst = crate::segments::worst(gates);
    let mut b = String::from("<h2>Segments judged by the gates</h2><table class=\"segments\"><tr><th>gate</th><th>segment</th><th>outcome</th><th>champion</th><th>challenger</th><th>limit</th><th>responses (champion / challenger)</th><th></th></tr>");
    for (i, g) in gates.iter().enumerate() {
        let Some(seg) = &g.segment else { continue };
        let o = outcome_name(g.outcome);
        let is_worst = Some(i) == worst;
        let _ = write!(
            b,
            "<tr{}><td>{}</td><td>{}</td><td class=\"{o}\">{o}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
            if is_worst { " class=\"worse\"" } else { "" },
            g.gate.id(),
            esc(seg),
            esc(&gate_champion(g)),
            esc(&gate_value(g, g.challenger)),
            esc(&gate_value(g, g.threshold)),
            g.champion_n,
            g.challenger_n,
            if is_worst { "<b>worst</b>" } else { "" }
        );
    }
    b.push_str("</table><p class=\"muted\">Each segment's challenger against the same segment's champion; a gate with K segments spends alpha/2 on all traffic and alpha/(2K) on each segment (Bonferroni), so the family's chance of a wrong verdict stays within alpha. The worst segment: a failed one, else the least room left before its limit.</p>");
    b
}

/// The champion's column: PSI compares the challenger with the champion,
/// which is the reference and has no value of its own.
fn gate_champion(g: &GateResult) -> String {
    match g.gate {
        crate::gates::GateKind::Prediction => "reference".into(),
        _ => gate_value(g, g.champion),
    }
}

/// A difference in the gate's units: percentage points for rates.
fn gate_diff(g: &GateResult, x: f64) -> String {
    let (k, unit) = gate_units(g);
    let unit = if unit == "%" { " pp" } else { unit };
    format!("{}{unit}", signed(x * k))
}

/// The interval a sequential gate judged, in the gate's units.
fn gate_interval(g: &GateResult) -> String {
    let (k, unit) = gate_units(g);
    match (g.difference_interval, g.champion_interval, g.challenger_interval) {
        (Some(i), _, _) => format!(
            "Δ {} [{}, {}]",
            gate_diff(g, g.difference.unwrap_or(f64::NAN)),
            signed(i.low * k),
            gate_diff(g, i.high)
        ),
        (None, Some(a), Some(b)) => format!(
            "challenger [{}, {}]{unit}, champion [{}, {}]{unit}",
            round3(b.low * k),
            round3(b.high * k),
            round3(a.low * k),
            round3(a.high * k)
        ),
        (None, None, Some(b)) => format!("[{}, {}]{unit}", round3(b.low * k), round3(b.high * k)),
        _ => "—".into(),
    }
}

/// What a gate's "forest plot" shows, in the units people read (%, pp, ms):
/// the estimate the gate judged, its interval (sequential gates), and the
/// limit it is held to. Difference gates (rates, label means) are judged on
/// challenger − champion, drawn around 0; the others on the challenger's
/// value (latency quantile, PSI, agreement). The report and the dashboard
/// draw the same numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forest {
    pub point: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub limit: Option<f64>,
    /// Drawn around 0 (a difference).
    pub difference: bool,
    /// "pp", "ms", "%" or "".
    pub unit: &'static str,
}

/// The forest plot of a gate, if it has an estimate.
pub fn forest(g: &GateResult) -> Option<Forest> {
    let (k, unit) = gate_units(g);
    let difference = judged_on_difference(g);
    let (point, interval, limit) = if difference {
        (g.difference, g.difference_interval, g.threshold.zip(g.champion).map(|(t, c)| t - c))
    } else {
        (g.challenger, g.challenger_interval, g.threshold)
    };
    let unit = match unit.trim() {
        "%" if difference => "pp",
        u => u,
    };
    Some(Forest {
        point: point.filter(|p| p.is_finite())? * k,
        low: interval.map(|i| i.low * k),
        high: interval.map(|i| i.high * k),
        limit: limit.map(|l| l * k),
        difference,
        unit,
    })
}

/// A gate's interval against its limit, as a small "forest plot": the
/// limit as a dashed line, the interval as a bar, the estimate as a dot
/// coloured by the outcome. Difference gates are drawn around 0.
fn forest_svg(g: &GateResult) -> String {
    let Some(f) = forest(g) else { return "—".into() };
    let with_unit = |x: f64| {
        let sep = if f.unit == "%" || f.unit.is_empty() { "" } else { " " };
        format!("{}{sep}{}", if f.difference { signed(x) } else { round3(x) }, f.unit)
    };
    let mut xs = vec![f.point];
    xs.extend(f.low.into_iter().chain(f.high).chain(f.limit));
    if f.difference {
        xs.push(0.0);
    }
    let xs: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = (hi - lo).max(1e-9);
    let (lo, hi) = (lo - span * 0.1, hi + span * 0.1);
    let (w, h) = (220.0, 34.0);
    let x = |v: f64| 6.0 + (v - lo) / (hi - lo) * (w - 12.0);
    let colour = match g.outcome {
        Outcome::Pass => "#15803d",
        Outcome::Fail => "#b91c1c",
        Outcome::Inconclusive => "#a16207",
        Outcome::NoData => "#6b7280",
    };
    let mut svg = format!(
        "<svg class=\"forest\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{} against its limit\">\
         <line x1=\"6\" y1=\"14\" x2=\"{}\" y2=\"14\" stroke=\"#ddd\"/>",
        esc(g.gate.id()),
        w - 6.0
    );
    if f.difference {
        let _ = write!(svg, "<line x1=\"{0:.1}\" y1=\"4\" x2=\"{0:.1}\" y2=\"24\" stroke=\"#999\"/>", x(0.0));
    }
    if let Some(l) = f.limit {
        let _ = write!(
            svg,
            "<line x1=\"{0:.1}\" y1=\"2\" x2=\"{0:.1}\" y2=\"26\" stroke=\"#b91c1c\" stroke-dasharray=\"3,2\"/>\
             <text x=\"{0:.1}\" y=\"33\" font-size=\"9\" text-anchor=\"{2}\" fill=\"#b91c1c\">limit {1}</text>",
            x(l),
            esc(&with_unit(l)),
            match x(l) {
                at if at > w * 0.7 => "end",
                at if at < w * 0.3 => "start",
                _ => "middle",
            }
        );
    }
    if let (Some(low), Some(high)) = (f.low, f.high) {
        let _ = write!(
            svg,
            "<line x1=\"{:.1}\" y1=\"14\" x2=\"{:.1}\" y2=\"14\" stroke=\"{colour}\" stroke-width=\"4\" stroke-linecap=\"round\"/>",
            x(low),
            x(high)
        );
    }
    let _ = write!(
        svg,
        "<circle cx=\"{:.1}\" cy=\"14\" r=\"4\" fill=\"{colour}\" stroke=\"#fff\"><title>{}</title></circle></svg>",
        x(f.point),
        esc(&gate_interval(g))
    );
    svg
}

fn gate_look(g: &GateResult) -> String {
    match (g.look, g.confidence) {
        (Some(k), Some(c)) => format!("{k} ({:.2}%){}", c * 100.0, if g.carried { ", carried" } else { "" }),
        _ => "—".into(),
    }
}

/// Three significant digits, at most four decimals, no trailing zeros.
fn round3(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let decimals = if x == 0.0 { 0 } else { (2 - x.abs().log10().floor() as i32).clamp(0, 4) as usize };
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// [`round3`] with a sign.
fn signed(x: f64) -> String {
    let s = round3(x);
    if x > 0.0 && s != "0" {
        format!("+{s}")
    } else {
        s
    }
}

/// A value in a row's unit: shares as %, differences of shares as pp.
fn fmt_num(x: f64, unit: &str) -> String {
    match unit {
        "share" => format!("{}%", round3(x * 100.0)),
        "pp" => format!("{} pp", signed(x * 100.0)),
        "ms" => format!("{} ms", round3(x)),
        "Δ ms" => format!("{} ms", signed(x)),
        "Δ" => signed(x),
        _ => round3(x),
    }
}

/// The unit of a row's difference.
fn diff_unit(unit: &str) -> &'static str {
    match unit {
        "share" => "pp",
        "ms" => "Δ ms",
        _ => "Δ",
    }
}

fn fmt_est(e: &Estimate, unit: &str) -> String {
    match (e.value, e.interval) {
        (Some(v), Some(i)) => format!("{} [{} – {}]", fmt_num(v, unit), fmt_num(i.low, unit), fmt_num(i.high, unit)),
        (Some(v), None) => fmt_num(v, unit),
        _ => "—".into(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const COLORS: [&str; 2] = ["#2563eb", "#dc2626"];

/// Latency distributions as step lines over a log-scaled axis: x the
/// latency (ms, log scale), y each version's share of responses per bucket,
/// with both axes labelled and a legend.
fn latency_svg(d: &BTreeMap<String, Vec<Bucket>>, order: [&str; 2]) -> String {
    let (w, h, left, right, top, bottom) = (680.0, 260.0, 64.0, 16.0, 34.0, 46.0);
    let all: Vec<&Bucket> = d.values().flatten().filter(|b| b.count > 0).collect();
    if all.is_empty() {
        return "<p class=\"muted\">no latency samples</p>".into();
    }
    let lo = all.iter().map(|b| b.lower.max(1.0)).fold(f64::INFINITY, f64::min).log10();
    let hi = all.iter().map(|b| (b.lower + b.width).max(1.0)).fold(0.0, f64::max).log10().max(lo + 0.1);
    let x = |v: f64| left + (v.max(1.0).log10() - lo) / (hi - lo) * (w - left - right);
    let mut svg = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"latency distributions\">"
    );
    let max_share = order
        .iter()
        .filter_map(|v| d.get(*v))
        .flat_map(|bs| {
            let n: u64 = bs.iter().map(|b| b.count).sum();
            bs.iter().map(move |b| b.count as f64 / n.max(1) as f64)
        })
        .fold(0.0, f64::max)
        .max(1e-9);
    let y = |share: f64| h - bottom - share / max_share * (h - top - bottom);
    // The y axis: share of each version's responses in a bucket.
    for i in 0..=4 {
        let share = max_share * i as f64 / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#eee\"/>\
             <text x=\"{2}\" y=\"{3:.1}\" font-size=\"11\" text-anchor=\"end\">{4}%</text>",
            y(share),
            w - right,
            left - 6.0,
            y(share) + 4.0,
            round3(share * 100.0)
        );
    }
    let _ = write!(
        svg,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" font-size=\"11\" text-anchor=\"middle\">share of responses per bucket</text>",
        (top + h - bottom) / 2.0
    );
    for (i, v) in order.iter().enumerate() {
        let Some(bs) = d.get(*v) else { continue };
        let n: u64 = bs.iter().map(|b| b.count).sum();
        let mut path = String::new();
        for b in bs {
            let share = b.count as f64 / n.max(1) as f64;
            let _ =
                write!(path, "M{:.1},{:.1}H{:.1} ", x(b.lower), y(share), x(b.lower + b.width).max(x(b.lower) + 1.0));
        }
        let _ = write!(svg, "<path d=\"{path}\" stroke=\"{}\" stroke-width=\"2\" fill=\"none\"/>", COLORS[i]);
        // Legend.
        let lx = left + 190.0 * i as f64;
        let _ = write!(
            svg,
            "<line x1=\"{lx}\" y1=\"14\" x2=\"{}\" y2=\"14\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"18\" font-size=\"12\">{} ({}, {n} responses)</text>",
            lx + 18.0,
            COLORS[i],
            lx + 24.0,
            esc(v),
            ["champion", "challenger"][i]
        );
    }
    // The x axis: latency, log scale, ticks at 1-2-5.
    let ticks = (0..8).flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)));
    for t in ticks {
        if t.log10() >= lo && t.log10() <= hi {
            let _ = write!(
                svg,
                "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#888\"/>\
                 <text x=\"{0:.1}\" y=\"{3}\" font-size=\"11\" text-anchor=\"middle\">{4}</text>",
                x(t),
                h - bottom,
                h - bottom + 4.0,
                h - bottom + 16.0,
                round3(t / 1000.0)
            );
        }
    }
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#888\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{0}\" stroke=\"#888\"/>\
         <text x=\"{2:.1}\" y=\"{3}\" font-size=\"11\" text-anchor=\"middle\">latency (ms, log scale)</text></svg>",
        h - bottom,
        w - right,
        (left + w - right) / 2.0,
        h - 8.0
    );
    svg
}

/// Prediction distributions as grouped bars (share of each version's answers).
fn predictions_svg(bins: &[String], d: &BTreeMap<String, Vec<u64>>, order: [&str; 2]) -> String {
    if bins.is_empty() {
        return "<p class=\"muted\">no prediction counters (the filter is not reading predictions)</p>".into();
    }
    let (w, h, pad) = (640.0, 220.0, 40.0);
    let slot = (w - 2.0 * pad) / bins.len() as f64;
    let shares: Vec<Vec<f64>> = order
        .iter()
        .map(|v| {
            let c = d.get(*v).cloned().unwrap_or_default();
            let n: u64 = c.iter().sum();
            c.iter().map(|x| *x as f64 / n.max(1) as f64).collect()
        })
        .collect();
    let max = shares.iter().flatten().copied().fold(0.0, f64::max).max(1e-9);
    let mut svg = format!("<svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"prediction distributions\">");
    for (i, s) in shares.iter().enumerate() {
        for (j, share) in s.iter().enumerate() {
            let bh = share / max * (h - 2.0 * pad);
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {:.2}%</title></rect>",
                pad + j as f64 * slot + 2.0 + i as f64 * (slot - 4.0) / 2.0,
                h - pad - bh,
                (slot - 4.0) / 2.0,
                bh,
                COLORS[i],
                esc(order[i]),
                esc(&bins[j]),
                share * 100.0
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"16\" fill=\"{}\" font-size=\"12\">{}</text>",
            pad + 140.0 * i as f64,
            COLORS[i],
            esc(order[i])
        );
    }
    for (j, b) in bins.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            pad + (j as f64 + 0.5) * slot,
            h - 10.0,
            esc(b)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn table(rows: &[MetricRow], champion: &str, challenger: &str) -> String {
    let mut t = format!(
        "<table><tr><th>metric</th><th>{} (champion)</th><th>{} (challenger)</th><th>difference</th></tr>",
        esc(champion),
        esc(challenger)
    );
    for r in rows {
        let _ = write!(
            t,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if r.challenger_worse { "worse" } else { "" },
            esc(&r.metric),
            esc(&fmt_est(&r.champion, &r.unit)),
            esc(&fmt_est(&r.challenger, &r.unit)),
            esc(&fmt_est(&r.difference, diff_unit(&r.unit)))
        );
    }
    t.push_str("</table>");
    t
}

/// The self-contained HTML page.
pub fn html(r: &Report) -> String {
    let order = [r.champion.as_str(), r.challenger.as_str()];
    let title = scope_title(r);
    let mut b = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Canary analysis: {}, rollout {} — {}</title><style>\
body{{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#111;max-width:1000px}}table{{border-collapse:collapse;margin:8px 0 16px}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.worse td{{background:#fee2e2}}.pass{{color:#15803d}}.fail{{color:#b91c1c;font-weight:bold}}\
.no_data{{color:#92400e}}.inconclusive{{color:#a16207}}.rec{{font-size:18px;padding:8px 12px;border-radius:6px;background:#eef2ff;display:inline-block}}.muted{{color:#666}}code{{font-size:12px}}\
svg.forest{{display:block}}td.detail{{min-width:300px;font-size:12px}}</style></head><body>",
        esc(&title),
        esc(&r.rollout),
        esc(&r.recommendation.action)
    );
    let _ = write!(b, "<h1>Canary analysis: {}, rollout {}</h1>", esc(&title), esc(&r.rollout));
    let _ = write!(
        b,
        "<p class=\"rec\">Recommendation: <b>{}</b></p><p>{}</p><ul>",
        esc(&r.recommendation.action),
        esc(&r.recommendation.summary)
    );
    for reason in &r.recommendation.reasons {
        let _ = write!(b, "<li>{}</li>", esc(&readable(reason)));
    }
    b.push_str("</ul>");
    if !r.worse.is_empty() {
        let _ = write!(b, "<p>The challenger is worse on: <b>{}</b> (highlighted).</p>", esc(&r.worse.join(", ")));
    }
    b.push_str("<h2>Champion vs challenger</h2>");
    b.push_str(&table(&r.comparison, &r.champion, &r.challenger));
    let _ = write!(b, "<p class=\"muted\">Intervals: {:.0} % (Wilson for rates, Newcombe for their difference, order statistics for latency quantiles, normal / Welch for label means). {}</p>", CONFIDENCE * 100.0, esc(&worse_rule()));
    if !r.gates.is_empty() {
        b.push_str("<h2>Gates</h2><table><tr><th>gate</th><th>outcome</th><th>champion</th><th>challenger</th><th>limit</th><th>interval against the limit</th><th>interval</th><th>look (confidence)</th><th>needed</th><th>detail</th></tr>");
        for g in &r.gates {
            let o = outcome_name(g.outcome);
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"{o}\">{o}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"detail\">{}</td></tr>",
                esc(&gate_label(g)),
                esc(&gate_champion(g)),
                esc(&gate_value(g, g.challenger)),
                esc(&gate_value(g, g.threshold)),
                forest_svg(g),
                esc(&gate_interval(g)),
                esc(&gate_look(g)),
                g.needed.map_or("—".to_string(), |n| format!("~{n} more")),
                esc(&readable(&g.detail))
            );
        }
        b.push_str("</table>");
        b.push_str("<p class=\"muted\">Sequential gates judge intervals at looks on a geometric sample-size schedule with alpha spending: fail when the interval is wholly worse than the tolerance, pass when wholly within it, inconclusive (hold) otherwise; \"needed\" is about how many more samples per version a verdict likely needs.</p>");
    }
    if r.gates.iter().any(|g| g.segment.is_some()) {
        b.push_str(&segment_verdicts_html(&r.gates));
    }
    if !r.segments.is_empty() {
        b.push_str("<h2>Segments</h2>");
        for s in &r.segments {
            let _ = write!(b, "<h3>{}</h3>{}", esc(&s.segment), table(&s.rows, &r.champion, &r.challenger));
        }
    }
    if !r.stages.is_empty() {
        b.push_str("<h2>Stages</h2>");
        for s in &r.stages {
            let _ = write!(
                b,
                "<h3>{} — {}</h3>{}",
                esc(&s.stage),
                s.action.word(),
                table(&s.comparison, &r.champion, &r.challenger)
            );
        }
    }
    b.push_str("<h2>Latency distributions</h2>");
    b.push_str(&latency_svg(&r.distributions.latency_us, order));
    b.push_str("<h2>Prediction distributions</h2>");
    b.push_str(&predictions_svg(&r.distributions.prediction_bins, &r.distributions.predictions, order));
    b.push_str("<h2>Decision timeline</h2><table><tr><th>#</th><th>at (UTC)</th><th>action</th><th>from → to</th><th>reasons</th></tr>");
    for t in &r.timeline {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{} ({}) → {} ({})</td><td>{}</td></tr>",
            t.seq,
            esc(&t.at_iso),
            t.action.word(),
            if t.manual { " (operator)" } else { "" },
            esc(&t.from.stage_name),
            t.from.weight,
            esc(&t.to.stage_name),
            t.to.weight,
            esc(&readable(&t.reasons.join("; ")))
        );
    }
    b.push_str("</table><h2>Inputs</h2>");
    let _ = write!(b, "<p>{}</p>", esc(&inputs_line(r)));
    let _ = write!(
        b,
        "<details><summary>filter configuration</summary><pre>{}</pre></details>",
        esc(&serde_json::to_string_pretty(&r.inputs.filter_config).unwrap_or_default())
    );
    b.push_str("</body></html>\n");
    b
}

/// Numbers a reviewer should not have to read: raw epoch milliseconds
/// (13 digits) and floats with more than four decimals; hashes are skipped.
/// Reports hold themselves to this (their tests and the browser tests check it).
pub fn unreadable_numbers(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .filter(|w| w.len() < 40 && w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .filter(|w| {
            let w = w.trim_end_matches('.');
            let (int, dec) = w.split_once('.').unwrap_or((w, ""));
            int.chars().all(|c| c.is_ascii_digit())
                && dec.chars().all(|c| c.is_ascii_digit())
                && (int.len() >= 13 || dec.len() > 4)
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::rollout::RolloutState;
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
        assert!(
            page.contains("<tr class=\"worse\"><td>error_rate</td><td>ent</td><td class=\"fail\">fail</td>"),
            "{page}"
        );
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
        assert_eq!(
            readable("v2 (5pct) #12, 99.96% [+5.043, +11.467] pp"),
            "v2 (5pct) #12, 99.96% [+5.043, +11.467] pp"
        );
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
}
