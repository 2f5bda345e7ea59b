//! Ground-truth outcomes ("labels") that arrive after the requests: posted in
//! batches to the daemon's `POST /labels`, or appended to a JSONL file. Each
//! outcome names the version that served the request and the stage it was
//! served in (both from the response's tags), so it lands in the right
//! stage's window however late it comes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One outcome: `{"version": "v2", "stage": "5pct", "correct": true}` or with
/// `"value": 0.83` for a continuous metric (higher is better).
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
}

impl LabelStats {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
        self.min = Some(self.min.map_or(x, |m| m.min(x)));
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
    }

    /// Every outcome lies in [0, 1] (0/1 labels, or scores): the anytime
    /// engine judges them exactly; others go through Welch's interval.
    pub fn within_unit(&self) -> bool {
        self.n > 0 && self.min.is_some_and(|m| m >= 0.0) && self.max.is_some_and(|m| m <= 1.0)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Outcomes by stage, then by version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelBook {
    pub by_stage: BTreeMap<String, BTreeMap<String, LabelStats>>,
}

/// What happened to a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intake {
    pub accepted: u64,
    pub rejected: u64,
    /// The first few reasons, for the sender.
    pub errors: Vec<String>,
}

impl LabelBook {
    pub fn stats(&self, stage: &str, version: &str) -> LabelStats {
        self.by_stage.get(stage).and_then(|v| v.get(version)).copied().unwrap_or_default()
    }

    /// Adds records of `rollout`; refuses records of another rollout and ones
    /// without an outcome. Versions and stages unknown to the rollout are
    /// refused too (`known` says which are valid).
    pub fn add(&mut self, rollout: &str, records: &[LabelRecord], known: impl Fn(&str, &str) -> bool) -> Intake {
        let mut intake = Intake::default();
        for (i, r) in records.iter().enumerate() {
            let result = match &r.rollout {
                Some(other) if other != rollout => Err(LabelError::OtherRollout(other.clone()).to_string()),
                _ if !known(&r.stage, &r.version) => {
                    Err(format!("stage `{}` / version `{}` is not part of this rollout", r.stage, r.version))
                }
                _ => r.outcome().map_err(|e| e.to_string()),
            };
            match result {
                Ok(x) => {
                    self.by_stage.entry(r.stage.clone()).or_default().entry(r.version.clone()).or_default().add(x);
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
        LabelRecord { version: version.into(), stage: stage.into(), rollout: None, correct: Some(correct), value: None }
    }

    #[test]
    fn outcomes_are_summed_per_stage_and_version() {
        let mut book = LabelBook::default();
        let intake =
            book.add("r", &[rec("v1", "1pct", true), rec("v1", "1pct", false), rec("v2", "1pct", true)], |_, _| true);
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
        let intake = book.add("r", &[other, both, nan, rec("v9", "1pct", true)], |_, v| v != "v9");
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
}
