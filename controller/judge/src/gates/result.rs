//! What a gate says: its [`Outcome`] and the [`GateResult`] that carries the
//! evidence behind it (inputs, values, threshold, margin, intervals, look).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::GateKind;
use crate::anytime::RateProcess;
use crate::spec::NoDataPolicy;
use crate::stats::Interval;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// Sequential method: the interval straddles the tolerance; more data
    /// will tell (the stage holds).
    Inconclusive,
    /// Not enough data to even compute (no sample, or below the first look).
    NoData,
}

/// One gate's verdict and its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: GateKind,
    pub outcome: Outcome,
    /// Whether this outcome stops the stage from advancing (a pass never
    /// does; inconclusive always does; no data does unless the spec says to
    /// ignore it).
    pub blocks: bool,
    /// Sample sizes the values come from (responses, or labels).
    pub champion_n: u64,
    pub challenger_n: u64,
    pub champion: Option<f64>,
    pub challenger: Option<f64>,
    /// The limit the challenger's value is held to.
    pub threshold: Option<f64>,
    /// Room left before failing, in the value's units (negative: failing).
    pub margin: Option<f64>,
    /// The verdict in words.
    pub detail: String,
    /// Further numbers behind the verdict, by name (e.g. the PSI gate's
    /// unparsed shares and per-bin terms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, f64>,
    /// Sequential method: the champion's interval (latency quantile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_interval: Option<Interval>,
    /// Sequential method: the challenger's interval (latency quantile,
    /// shadow agreement, bias-corrected PSI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenger_interval: Option<Interval>,
    /// Challenger − champion (rates, label means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference: Option<f64>,
    /// Sequential method: the interval of the difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference_interval: Option<Interval>,
    /// Sequential method: the look the verdict was reached at (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub look: Option<u32>,
    /// Sequential method: two-sided confidence of the intervals at that look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Inconclusive: about how many more samples per version (of the
    /// smaller one) a verdict likely needs (80 % power, at the look that
    /// sample size reaches). `None` when it cannot be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needed: Option<u64>,
    /// The verdict of a look already spent earlier in the stage, carried
    /// until the sample reaches the next look (its numbers are that look's).
    #[serde(default, skip_serializing_if = "is_false")]
    pub carried: bool,
    /// Anytime method, rate-like gates: the challenger's e-process so far
    /// (carried from evaluation to evaluation within the stage's window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<RateProcess>,
    /// The segment this result judges alone (`None`: all traffic); see
    /// [`crate::segments`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

pub(super) fn is_false(b: &bool) -> bool {
    !*b
}

impl GateResult {
    pub(super) fn base(gate: GateKind, outcome: Outcome, n: (u64, u64), detail: String) -> GateResult {
        GateResult {
            gate,
            outcome,
            blocks: outcome != Outcome::Pass,
            champion_n: n.0,
            challenger_n: n.1,
            champion: None,
            challenger: None,
            threshold: None,
            margin: None,
            detail,
            notes: BTreeMap::new(),
            champion_interval: None,
            challenger_interval: None,
            difference: None,
            difference_interval: None,
            look: None,
            confidence: None,
            needed: None,
            carried: false,
            process: None,
            segment: None,
        }
    }

    pub(crate) fn no_data(
        gate: GateKind,
        champion_n: u64,
        challenger_n: u64,
        policy: NoDataPolicy,
        detail: String,
    ) -> GateResult {
        GateResult {
            blocks: policy == NoDataPolicy::Hold,
            ..GateResult::base(gate, Outcome::NoData, (champion_n, challenger_n), detail)
        }
    }

    /// Threshold method, "lower is better": pass iff challenger ≤ threshold.
    pub(super) fn at_most(
        gate: GateKind,
        n: (u64, u64),
        values: (f64, f64),
        threshold: f64,
        detail: String,
    ) -> GateResult {
        let margin = threshold - values.1;
        let outcome = if margin >= 0.0 { Outcome::Pass } else { Outcome::Fail };
        GateResult {
            champion: Some(values.0),
            challenger: Some(values.1),
            threshold: Some(threshold),
            margin: Some(margin),
            ..GateResult::base(gate, outcome, n, detail)
        }
    }

    /// Threshold method, "higher is better": pass iff value ≥ threshold.
    pub(super) fn at_least(
        gate: GateKind,
        n: (u64, u64),
        values: (Option<f64>, f64),
        threshold: f64,
        detail: String,
    ) -> GateResult {
        let margin = values.1 - threshold;
        let outcome = if margin >= 0.0 { Outcome::Pass } else { Outcome::Fail };
        GateResult {
            champion: values.0,
            challenger: Some(values.1),
            threshold: Some(threshold),
            margin: Some(margin),
            ..GateResult::base(gate, outcome, n, detail)
        }
    }

    pub(super) fn with_notes(mut self, notes: impl IntoIterator<Item = (String, f64)>) -> GateResult {
        self.notes.extend(notes);
        self
    }

    /// Whether this result spent a look (a sequential verdict reached now),
    /// or carries an anytime e-process the next evaluation continues.
    pub fn spends_look(&self) -> bool {
        (self.look.is_some() && !self.carried && self.outcome != Outcome::NoData) || self.process.is_some()
    }
}
