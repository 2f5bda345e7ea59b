//! Ground-truth outcomes ("labels") that arrive after the requests: posted in
//! batches to the daemon's `POST /labels`, or appended to a JSONL file. Each
//! outcome names the version that served the request and the stage it was
//! served in (both from the response's tags), so it lands in the right
//! stage's window however late it comes. An outcome may also name the
//! request's segment (the value of `filter.segment.header`): it then also
//! counts in that segment's evidence, which the labels gate with `segments`
//! judges segment by segment ([`crate::segments`]).

use std::collections::BTreeMap;

use canary_core::predict::{SegmentConfig, OTHER};
use serde::{Deserialize, Serialize};

use crate::gates::LabelEvidence;

/// One outcome: `{"version": "v2", "stage": "5pct", "correct": true}` or with
/// `"value": 0.83` for a continuous metric (higher is better); optionally
/// `"segment": "enterprise"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRecord {
    pub version: String,
    pub stage: String,
    #[serde(default)]
    pub rollout: Option<String>,
    #[serde(default)]
    pub correct: Option<bool>,
    #[serde(default)]
    pub value: Option<f64>,
    /// The request's segment (the value of `filter.segment.header`, as the
    /// filter saw it). A value not in `filter.segment.values` counts as
    /// `other`, as in the filter; ignored when the rollout has no
    /// `filter.segment`. Absent: the outcome counts for all traffic only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// When the request was served, in milliseconds since the Unix epoch.
    /// Lets a late outcome be placed in time: one of a request served
    /// before its stage's window restarted (after an incident, see
    /// [`crate::rollout`]) is left out, as that request's response is.
    /// Absent: the outcome counts from when it arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label is not valid JSON: {0}")]
    Parse(String),
    #[error("label must have exactly one of `correct` (bool) or `value` (finite number)")]
    NoOutcome,
    #[error("label is for rollout `{0}`, not this one")]
    OtherRollout(String),
}

impl LabelRecord {
    /// The outcome as a number: `correct` is 1 or 0.
    pub fn outcome(&self) -> Result<f64, LabelError> {
        match (self.correct, self.value) {
            (Some(c), None) => Ok(if c { 1.0 } else { 0.0 }),
            (None, Some(v)) if v.is_finite() => Ok(v),
            _ => Err(LabelError::NoOutcome),
        }
    }
}

/// Running sums of one version's outcomes in one stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelStats {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
    /// The smallest and largest outcome seen (absent in state written
    /// before they were kept: such outcomes count as unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Sums about the first outcome, for the skewness (absent in state
    /// written before it was kept, and while there are no outcomes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shifted: Option<ShiftedSums>,
}

/// Σ(x − origin), Σ(x − origin)², Σ(x − origin)³: raw third powers of
/// outcomes far from 0 (revenue in cents, say) would lose the skewness to
/// rounding; about a sample value they keep it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftedSums {
    pub origin: f64,
    pub s1: f64,
    pub s2: f64,
    pub s3: f64,
}

impl LabelStats {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
        self.min = Some(self.min.map_or(x, |m| m.min(x)));
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
        let s = self.shifted.get_or_insert(ShiftedSums { origin: x, s1: 0.0, s2: 0.0, s3: 0.0 });
        let d = x - s.origin;
        s.s1 += d;
        s.s2 += d * d;
        s.s3 += d * d * d;
    }

    /// The sample skewness G₁ (adjusted Fisher–Pearson, scipy's
    /// `skew(bias=False)`): `None` below three outcomes, without spread, or
    /// in state written before the sums were kept.
    pub fn skewness(&self) -> Option<f64> {
        let s = self.shifted?;
        if self.n < 3 {
            return None;
        }
        let n = self.n as f64;
        let m1 = s.s1 / n;
        let m2 = s.s2 / n - m1 * m1;
        let m3 = s.s3 / n - 3.0 * m1 * s.s2 / n + 2.0 * m1 * m1 * m1;
        // Rounding below a millionth of the squared mean: no spread.
        if m2 <= 1e-12 * (s.s2 / n).max(f64::MIN_POSITIVE) {
            return None;
        }
        let g1 = m3 / m2.powf(1.5);
        let g = g1 * (n * (n - 1.0)).sqrt() / (n - 2.0);
        g.is_finite().then_some(g)
    }

    /// Every outcome lies in [0, 1] (0/1 labels, or scores): the anytime
    /// engine judges them exactly; others go through Welch's interval.
    pub fn within_unit(&self) -> bool {
        self.n > 0 && self.min.is_some_and(|m| m >= 0.0) && self.max.is_some_and(|m| m <= 1.0)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The outcomes added after `base` was taken (a window restarted).
    /// The range stays the whole one's: a subset of outcomes within [0, 1]
    /// is within it too.
    pub fn since(&self, base: &LabelStats) -> LabelStats {
        // Both snapshots of one accumulator share the origin of its first
        // outcome; a base without sums had no outcomes yet.
        let shifted = match (self.shifted, base.shifted) {
            (s, None) if base.n == 0 => s,
            (Some(s), Some(b)) if s.origin == b.origin => {
                Some(ShiftedSums { origin: s.origin, s1: s.s1 - b.s1, s2: s.s2 - b.s2, s3: s.s3 - b.s3 })
            }
            _ => None,
        };
        LabelStats {
            n: self.n.saturating_sub(base.n),
            sum: self.sum - base.sum,
            sum_sq: (self.sum_sq - base.sum_sq).max(0.0),
            shifted,
            ..*self
        }
    }
}

/// Outcomes by stage, then by version; and those that named a segment also
/// by stage, version and segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelBook {
    pub by_stage: BTreeMap<String, BTreeMap<String, LabelStats>>,
    /// Stage → version → segment (absent in state written before labels
    /// carried segments).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_segment: BTreeMap<String, BTreeMap<String, BTreeMap<String, LabelStats>>>,
    /// Stage → outcomes left out because their request was served before
    /// the stage's window restarted (see [`LabelRecord::served_at`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub excluded: BTreeMap<String, u64>,
}

/// The segment a label's `segment` counts under: itself when it is one of
/// the filter's values, `other` otherwise (as the filter counts requests).
pub fn segment_of(config: &SegmentConfig, value: &str) -> String {
    if config.values.iter().any(|v| v == value) {
        value.to_string()
    } else {
        OTHER.to_string()
    }
}

/// A stage's label evidence: all traffic, and each segment its labels named.
/// Serialized as the [`LabelEvidence`] of all traffic plus `segments`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageLabels {
    #[serde(flatten)]
    pub totals: LabelEvidence,
    /// Per segment (absent in decisions written before labels carried segments).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub segments: BTreeMap<String, LabelEvidence>,
}

impl StageLabels {
    /// One segment's evidence (none: empty).
    pub fn segment(&self, name: &str) -> LabelEvidence {
        self.segments.get(name).copied().unwrap_or_default()
    }

    /// The evidence added after `base` was taken.
    pub fn since(&self, base: &StageLabels) -> StageLabels {
        let less = |e: &LabelEvidence, b: &LabelEvidence| LabelEvidence {
            champion: e.champion.since(&b.champion),
            challenger: e.challenger.since(&b.challenger),
        };
        StageLabels {
            totals: less(&self.totals, &base.totals),
            segments: self.segments.iter().map(|(name, e)| (name.clone(), less(e, &base.segment(name)))).collect(),
        }
    }
}

/// What happened to a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intake {
    pub accepted: u64,
    pub rejected: u64,
    /// Accepted but left out: served before their stage's window restarted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub excluded: u64,
    /// The first few reasons, for the sender.
    pub errors: Vec<String>,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

impl LabelBook {
    pub fn stats(&self, stage: &str, version: &str) -> LabelStats {
        self.by_stage.get(stage).and_then(|v| v.get(version)).copied().unwrap_or_default()
    }

    /// One segment's outcomes of one version in one stage.
    pub fn segment_stats(&self, stage: &str, version: &str, segment: &str) -> LabelStats {
        self.by_segment
            .get(stage)
            .and_then(|v| v.get(version))
            .and_then(|s| s.get(segment))
            .copied()
            .unwrap_or_default()
    }

    /// The evidence of `stage`, champion against challenger: all traffic,
    /// and every segment either version has labels in.
    pub fn evidence(&self, stage: &str, champion: &str, challenger: &str) -> StageLabels {
        let totals = LabelEvidence { champion: self.stats(stage, champion), challenger: self.stats(stage, challenger) };
        let names: std::collections::BTreeSet<&String> = [champion, challenger]
            .iter()
            .filter_map(|v| self.by_segment.get(stage).and_then(|by| by.get(*v)))
            .flat_map(|s| s.keys())
            .collect();
        let segments = names
            .into_iter()
            .map(|name| {
                let e = LabelEvidence {
                    champion: self.segment_stats(stage, champion, name),
                    challenger: self.segment_stats(stage, challenger, name),
                };
                (name.clone(), e)
            })
            .collect();
        StageLabels { totals, segments }
    }

    /// Adds records of `rollout`; refuses records of another rollout and ones
    /// without an outcome. Versions and stages unknown to the rollout are
    /// refused too (`known` says which are valid). A record naming a
    /// segment also counts in that segment (see [`segment_of`]) when the
    /// rollout splits by segment (`segments`: the filter's `segment`).
    pub fn add(
        &mut self,
        rollout: &str,
        records: &[LabelRecord],
        known: impl Fn(&str, &str) -> bool,
        segments: Option<&SegmentConfig>,
    ) -> Intake {
        self.add_since(rollout, records, known, segments, None)
    }

    /// [`LabelBook::add`], leaving out (accepted, counted in `excluded`)
    /// the records of stage `restart.0` served before `restart.1` (ms since
    /// the epoch): the moment that stage's window restarted.
    pub fn add_since(
        &mut self,
        rollout: &str,
        records: &[LabelRecord],
        known: impl Fn(&str, &str) -> bool,
        segments: Option<&SegmentConfig>,
        restart: Option<(&str, u64)>,
    ) -> Intake {
        let mut intake = Intake::default();
        for (i, r) in records.iter().enumerate() {
            let result = match &r.rollout {
                Some(other) if other != rollout => Err(LabelError::OtherRollout(other.clone()).to_string()),
                _ if !known(&r.stage, &r.version) => {
                    Err(format!("stage `{}` / version `{}` is not part of this rollout", r.stage, r.version))
                }
                _ => r.outcome().map_err(|e| e.to_string()),
            };
            let before_restart =
                restart.is_some_and(|(stage, at)| r.stage == stage && r.served_at.is_some_and(|t| t < at));
            match result {
                Ok(_) if before_restart => {
                    *self.excluded.entry(r.stage.clone()).or_default() += 1;
                    intake.accepted += 1;
                    intake.excluded += 1;
                }
                Ok(x) => {
                    self.by_stage.entry(r.stage.clone()).or_default().entry(r.version.clone()).or_default().add(x);
                    if let (Some(config), Some(value)) = (segments, &r.segment) {
                        self.by_segment
                            .entry(r.stage.clone())
                            .or_default()
                            .entry(r.version.clone())
                            .or_default()
                            .entry(segment_of(config, value))
                            .or_default()
                            .add(x);
                    }
                    intake.accepted += 1;
                }
                Err(e) => {
                    intake.rejected += 1;
                    if intake.errors.len() < 5 {
                        intake.errors.push(format!("record {i}: {e}"));
                    }
                }
            }
        }
        intake
    }
}

/// Parses JSONL: one record per non-empty line; bad lines become errors.
pub fn parse_jsonl(text: &str) -> (Vec<LabelRecord>, Vec<String>) {
    let mut records = vec![];
    let mut errors = vec![];
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<LabelRecord>(line) {
            Ok(r) => records.push(r),
            Err(e) => errors.push(format!("line {}: {}", n + 1, LabelError::Parse(e.to_string()))),
        }
    }
    (records, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: &str, stage: &str, correct: bool) -> LabelRecord {
        LabelRecord {
            version: version.into(),
            stage: stage.into(),
            rollout: None,
            correct: Some(correct),
            value: None,
            segment: None,
            served_at: None,
        }
    }

    fn in_segment(version: &str, segment: &str, correct: bool) -> LabelRecord {
        LabelRecord { segment: Some(segment.into()), ..rec(version, "1pct", correct) }
    }

    fn tiers() -> SegmentConfig {
        SegmentConfig { header: "x-tier".into(), values: vec!["free".into(), "ent".into()] }
    }

    fn stats(xs: &[f64]) -> LabelStats {
        let mut l = LabelStats::default();
        xs.iter().for_each(|&x| l.add(x));
        l
    }

    /// scipy 1.17: `scipy.stats.skew(xs, bias=False)`; the second sample
    /// sits at a million, where raw third powers would lose it.
    #[test]
    fn skewness_matches_scipy_far_from_zero_and_across_a_restart() {
        for (xs, g) in [
            (&[1.0, 2.0, 3.0, 10.0][..], 1.763632614803888),
            (&[1e6 + 0.5, 1e6 + 1.5, 1e6 + 1.0, 1e6 + 7.25, 1e6 + 2.0][..], 2.006948067827349),
            (&[5.0, 4.0, 4.0, 4.0, 1.0][..], -1.7487916903105662),
        ] {
            let got = stats(xs).skewness().unwrap();
            assert!((got - g).abs() < 1e-9, "{xs:?}: {got}, scipy {g}");
        }
        // The outcomes after a restart: the later ones' own skewness.
        let base = stats(&[100.0, -50.0]);
        let mut all = base;
        [1.0, 2.0, 3.0, 10.0].iter().for_each(|&x| all.add(x));
        assert!((all.since(&base).skewness().unwrap() - 1.763632614803888).abs() < 1e-9);
        assert_eq!(all.since(&LabelStats::default()), all);
        // No spread, too few, or state without the sums: unknown.
        assert_eq!(stats(&[3.0; 5]).skewness(), None);
        assert_eq!(stats(&[1.0, 2.0]).skewness(), None);
        assert_eq!(LabelStats { shifted: None, ..stats(&[1.0, 2.0, 9.0]) }.skewness(), None);
    }

    #[test]
    fn outcomes_are_summed_per_stage_and_version() {
        let mut book = LabelBook::default();
        let intake = book.add(
            "r",
            &[rec("v1", "1pct", true), rec("v1", "1pct", false), rec("v2", "1pct", true)],
            |_, _| true,
            None,
        );
        assert_eq!((intake.accepted, intake.rejected), (3, 0));
        assert_eq!(book.stats("1pct", "v1").mean(), Some(0.5));
        assert_eq!(book.stats("1pct", "v2").n, 1);
        assert_eq!(book.stats("5pct", "v2").mean(), None);
    }

    #[test]
    fn bad_records_are_refused_and_explained() {
        let mut book = LabelBook::default();
        let mut other = rec("v1", "1pct", true);
        other.rollout = Some("else".into());
        let mut both = rec("v1", "1pct", true);
        both.value = Some(1.0);
        let mut nan = rec("v1", "1pct", true);
        (nan.correct, nan.value) = (None, Some(f64::NAN));
        let intake = book.add("r", &[other, both, nan, rec("v9", "1pct", true)], |_, v| v != "v9", None);
        assert_eq!((intake.accepted, intake.rejected), (0, 4));
        assert!(intake.errors[0].contains("rollout `else`"), "{:?}", intake.errors);
        assert!(intake.errors[3].contains("v9"), "{:?}", intake.errors);
    }

    #[test]
    fn jsonl_lines_parse_one_by_one() {
        let (records, errors) =
            parse_jsonl("{\"version\":\"v1\",\"stage\":\"s\",\"value\":0.5}\n\nnot json\n{\"version\":\"v2\",\"stage\":\"s\",\"correct\":false}\n");
        assert_eq!(records.len(), 2);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("line 3"), "{errors:?}");
    }

    #[test]
    fn labels_naming_a_segment_count_in_it_and_in_all_traffic_unknown_values_as_other() {
        let mut book = LabelBook::default();
        let batch = [
            in_segment("v1", "ent", true),
            in_segment("v1", "ent", false),
            in_segment("v2", "ent", false),
            in_segment("v2", "gold", true),
            rec("v2", "1pct", true),
        ];
        let intake = book.add("r", &batch, |_, _| true, Some(&tiers()));
        assert_eq!((intake.accepted, intake.rejected), (5, 0));
        assert_eq!(
            (book.stats("1pct", "v1").n, book.stats("1pct", "v2").n),
            (2, 3),
            "every label counts in the totals"
        );
        assert_eq!(book.segment_stats("1pct", "v1", "ent").mean(), Some(0.5));
        assert_eq!(book.segment_stats("1pct", "v2", "other").n, 1, "`gold` is not a value: `other`");
        assert_eq!(book.segment_stats("1pct", "v2", "gold").n, 0);
        let e = book.evidence("1pct", "v1", "v2");
        assert_eq!(e.segments.keys().collect::<Vec<_>>(), ["ent", "other"]);
        assert_eq!((e.segment("ent").champion.n, e.segment("ent").challenger.n), (2, 1));
        assert_eq!((e.segment("other").champion.n, e.segment("free").challenger.n), (0, 0));
        assert_eq!(e.totals.challenger.n, 3);
        // Without filter.segment the segment is not kept.
        let mut plain = LabelBook::default();
        plain.add("r", &batch, |_, _| true, None);
        assert!(plain.by_segment.is_empty());
        assert_eq!(plain.stats("1pct", "v2").n, 3);
    }

    #[test]
    fn records_state_and_evidence_without_segments_still_read() {
        // A record, a book and a decision's evidence as written before labels carried segments.
        let r: LabelRecord = serde_json::from_str(r#"{"version":"v1","stage":"s","correct":true}"#).unwrap();
        assert_eq!(r.segment, None);
        let (records, errors) = parse_jsonl("{\"version\":\"v1\",\"stage\":\"s\",\"value\":1,\"segment\":\"ent\"}\n");
        assert_eq!((records[0].segment.as_deref(), errors.len()), (Some("ent"), 0));
        let old = r#"{"by_stage":{"s":{"v1":{"n":2,"sum":1.0,"sum_sq":1.0}}}}"#;
        let book: LabelBook = serde_json::from_str(old).unwrap();
        assert_eq!((book.stats("s", "v1").n, book.by_segment.len()), (2, 0));
        assert_eq!(serde_json::to_string(&book).unwrap(), old, "no segment: written as before");
        let evidence = r#"{"champion":{"n":2,"sum":1.0,"sum_sq":1.0},"challenger":{"n":0,"sum":0.0,"sum_sq":0.0}}"#;
        let e: StageLabels = serde_json::from_str(evidence).unwrap();
        assert_eq!((e.totals.champion.n, e.segments.len()), (2, 0));
        assert_eq!(serde_json::to_string(&e).unwrap(), evidence);
        // With segments: the same layout plus `segments`.
        let mut book = LabelBook::default();
        book.add("r", &[in_segment("v1", "ent", true)], |_, _| true, Some(&tiers()));
        let e = book.evidence("1pct", "v1", "v2");
        let back: StageLabels = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
