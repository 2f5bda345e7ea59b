//! The time series the page charts: per version, interval deltas of the
//! epoch's cumulative window ([`Point`]), merged in pairs past a bound, and the
//! expected time left at the current pace. The same per segment, for the
//! segments the gates judge (the page switches its charts to one).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::hub::*;
use canary_judge::rollout::Millis;
use canary_judge::spec::RolloutSpec;
use canary_judge::window::{MergedHistogram, SegmentWindow, VersionWindow};

/// Cumulative counts of one version in an epoch's window.
#[derive(Debug, Clone, Default)]
pub(super) struct Cumulative {
    pub(super) answered: u64,
    pub(super) errors: u64,
    pub(super) latency_us: MergedHistogram,
}

impl Cumulative {
    pub(super) fn of(w: &VersionWindow) -> Cumulative {
        Cumulative { answered: w.answered(), errors: w.errors(), latency_us: w.latency_us.clone() }
    }

    pub(super) fn of_segment(w: &SegmentWindow) -> Cumulative {
        Cumulative { answered: w.answered(), errors: w.errors(), latency_us: w.latency_us.clone() }
    }

    /// `self - earlier`, bucket by bucket (never negative).
    pub(super) fn minus(&self, earlier: &Cumulative) -> Cumulative {
        let before: HashMap<u64, u64> = earlier.latency_us.buckets().map(|b| (b.lower.to_bits(), b.count)).collect();
        let mut latency_us = MergedHistogram::default();
        for b in self.latency_us.buckets() {
            let old = before.get(&b.lower.to_bits()).copied().unwrap_or(0);
            latency_us.add(b.lower, b.width, b.count.saturating_sub(old));
        }
        Cumulative {
            answered: self.answered.saturating_sub(earlier.answered),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_us,
        }
    }

    pub(super) fn merge(&mut self, other: &Cumulative) {
        self.answered = self.answered.saturating_add(other.answered);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency_us.merge(&other.latency_us);
    }
}

/// What one evaluation added, per version, and the gate values it saw.
#[derive(Debug, Clone)]
pub(super) struct Point {
    pub(super) at: Millis,
    pub(super) epoch: u64,
    pub(super) weight_bp: u16,
    /// Time the deltas cover (unknown for the first point of the first epoch).
    pub(super) span_ms: Option<u64>,
    pub(super) delta: [Cumulative; 2],
    pub(super) psi: Option<f64>,
    pub(super) labels: [Option<f64>; 2],
    pub(super) agreement: Option<f64>,
    /// The same per judged segment (empty without per-segment gates).
    pub(super) segments: BTreeMap<String, SegmentPoint>,
}

/// What one evaluation added in one segment, per version, and the
/// segment's label values (its label gate result's).
#[derive(Debug, Clone, Default)]
pub(super) struct SegmentPoint {
    pub(super) delta: [Cumulative; 2],
    pub(super) labels: [Option<f64>; 2],
}

impl Point {
    pub(super) fn merge(&mut self, later: &Point) {
        self.at = later.at;
        self.span_ms = match (self.span_ms, later.span_ms) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        for (a, b) in self.delta.iter_mut().zip(later.delta.iter()) {
            a.merge(b);
        }
        self.weight_bp = later.weight_bp;
        self.psi = later.psi;
        self.labels = later.labels;
        self.agreement = later.agreement;
        for (name, b) in &later.segments {
            let a = self.segments.entry(name.clone()).or_default();
            for (x, y) in a.delta.iter_mut().zip(b.delta.iter()) {
                x.merge(y);
            }
            a.labels = b.labels;
        }
    }
}

/// What the current traffic says about the time still to go.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Pace {
    pub(super) epoch: u64,
    /// Responses per second, champion and challenger, over the stage so far.
    pub(super) per_s: [f64; 2],
    /// The largest number of further samples per version an inconclusive
    /// gate of the stage says it needs.
    pub(super) needed: u64,
}

/// Expected milliseconds until the current stage can end and until the
/// rollout is promoted, if the traffic keeps its current pace: the stage
/// needs its minimum duration, its minimum responses per version, and the
/// further samples its inconclusive gates say they need (of the smaller
/// version); each later judged stage needs its minimum duration and
/// responses at the same total traffic split by its weight. A lower bound
/// when gates of later stages come out inconclusive. `None` without traffic.
pub(super) fn expected_remaining(
    spec: &RolloutSpec,
    stage: usize,
    time_left_ms: Option<u64>,
    requests_left: Option<(u64, u64)>,
    pace: Pace,
) -> Option<(u64, u64)> {
    let [champion, challenger] = pace.per_s;
    if champion <= 0.0 || challenger <= 0.0 {
        return None;
    }
    let secs = |n: u64, per_s: f64| n as f64 / per_s;
    let (left_a, left_b) = requests_left.unwrap_or((0, 0));
    let this = [
        time_left_ms.unwrap_or(0) as f64 / 1000.0,
        secs(left_a, champion),
        secs(left_b, challenger),
        secs(pace.needed, champion.min(challenger)),
    ]
    .into_iter()
    .fold(0.0, f64::max);
    let total = champion + challenger;
    // The last stage (100 %) is the promotion itself: nothing to wait for.
    let later: f64 = (stage + 1..spec.stages.len().saturating_sub(1))
        .map(|i| {
            let share = f64::from(spec.stage_weight(i).bp()) / 10_000.0;
            let slower = (total * share).min(total * (1.0 - share)).max(f64::MIN_POSITIVE);
            let s = &spec.stages[i];
            s.min_duration.as_secs_f64().max(secs(spec.min_requests(i), slower))
        })
        .sum();
    Some(((this * 1000.0) as u64, ((this + later) * 1000.0) as u64))
}

/// Halves the points by merging neighbours of the same epoch.
pub(super) fn merge_pairs(points: Vec<Point>) -> Vec<Point> {
    let mut out: Vec<Point> = Vec::with_capacity(points.len() / 2 + 1);
    let mut pending: Option<Point> = None;
    for p in points {
        match pending.take() {
            Some(mut a) if a.epoch == p.epoch => {
                a.merge(&p);
                out.push(a);
            }
            Some(a) => {
                out.push(a);
                pending = Some(p);
            }
            None => pending = Some(p),
        }
    }
    out.extend(pending);
    out
}

/// One version's series, aligned with [`Series::t`].
#[derive(Debug, Default, Serialize)]
pub(super) struct VersionSeries {
    /// Responses per second.
    pub(super) rps: Vec<Option<f64>>,
    /// 5xx share of the responses in the interval (0..1).
    pub(super) error_rate: Vec<Option<f64>>,
    pub(super) p50_ms: Vec<Option<f64>>,
    pub(super) p99_ms: Vec<Option<f64>>,
    /// Responses in the interval.
    pub(super) n: Vec<u64>,
    /// Mean label outcome in the stage so far (the label gate's value).
    pub(super) label: Vec<Option<f64>>,
}

/// One segment's series, aligned with [`Series::t`] (no value where the
/// segment was not judged).
#[derive(Debug, Default, Serialize)]
pub(super) struct SegmentSeries {
    pub(super) champion: VersionSeries,
    pub(super) challenger: VersionSeries,
}

/// The time series the page charts. Each point covers the interval since
/// the one before; PSI, labels and agreement are the stage's values so far
/// (what the gates judged).
#[derive(Debug, Default, Serialize)]
pub(super) struct Series {
    pub(super) t: Vec<Millis>,
    pub(super) weight_bp: Vec<u16>,
    pub(super) epoch: Vec<u64>,
    pub(super) champion: VersionSeries,
    pub(super) challenger: VersionSeries,
    pub(super) psi: Vec<Option<f64>>,
    pub(super) agreement: Vec<Option<f64>>,
    /// Per segment a gate judged (by name; absent without any).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) segments: BTreeMap<String, SegmentSeries>,
}

impl VersionSeries {
    /// Appends one interval's values: `d` over `span_ms`, and the label value.
    fn push(&mut self, d: Option<&Cumulative>, span_ms: Option<u64>, label: Option<f64>) {
        let Some(d) = d else {
            self.rps.push(None);
            self.error_rate.push(None);
            self.p50_ms.push(None);
            self.p99_ms.push(None);
            self.n.push(0);
            self.label.push(label);
            return;
        };
        self.rps.push(span_ms.filter(|ms| *ms > 0).map(|ms| round(d.answered as f64 * 1000.0 / ms as f64, 2)));
        self.error_rate.push((d.answered > 0).then(|| round(d.errors as f64 / d.answered as f64, 6)));
        self.p50_ms.push(d.latency_us.quantile(0.5).map(|us| round(us / 1000.0, 3)));
        self.p99_ms.push(d.latency_us.quantile(0.99).map(|us| round(us / 1000.0, 3)));
        self.n.push(d.answered);
        self.label.push(label);
    }
}

pub(super) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

pub(super) fn series(points: &[Point]) -> Series {
    let mut s = Series::default();
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return s };
    let per_point = (last.at.saturating_sub(first.at) / MAX_POINTS as u64).max(1);
    let mut groups: Vec<Point> = vec![];
    let mut group_start = 0;
    for p in points {
        match groups.last_mut() {
            Some(g) if g.epoch == p.epoch && p.at.saturating_sub(group_start) < per_point => g.merge(p),
            _ => {
                group_start = p.at;
                groups.push(p.clone());
            }
        }
    }
    let names: BTreeSet<&String> = groups.iter().flat_map(|g| g.segments.keys()).collect();
    for g in &groups {
        s.t.push(g.at);
        s.weight_bp.push(g.weight_bp);
        s.epoch.push(g.epoch);
        s.champion.push(Some(&g.delta[0]), g.span_ms, g.labels[0]);
        s.challenger.push(Some(&g.delta[1]), g.span_ms, g.labels[1]);
        s.psi.push(g.psi);
        s.agreement.push(g.agreement);
        for name in &names {
            let out = s.segments.entry((*name).clone()).or_default();
            let p = g.segments.get(*name);
            out.champion.push(p.map(|p| &p.delta[0]), g.span_ms, p.and_then(|p| p.labels[0]));
            out.challenger.push(p.map(|p| &p.delta[1]), g.span_ms, p.and_then(|p| p.labels[1]));
        }
    }
    s
}
