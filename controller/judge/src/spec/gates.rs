//! The gates' settings (`gates` in the spec) and their checks: one config
//! type per gate of the registry ([`crate::gates`]), the method and alpha.

use canary_core::predict::SegmentConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{invalid, RolloutSpec, SpecError};
use crate::gates::GATES;

/// The gates; each is optional, at least one is required. `method`,
/// `alpha` and `look_growth` say how every gate turns its evidence into a
/// verdict (see [`crate::gates`] and the README's "How a stage is judged").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatesSpec {
    /// `anytime` (the default): confidence sequences and e-processes, valid
    /// at every evaluation and any traffic split, three-valued (pass, fail,
    /// inconclusive); see [`crate::anytime`]. `sequential`: the previous
    /// engine, intervals at looks on a geometric schedule with alpha
    /// spending. `threshold`: the point estimates against the tolerances at
    /// every evaluation (the naive rule, kept for comparison and `canary
    /// replay`).
    #[serde(default)]
    pub method: GateMethod,
    /// Per gate and stage: the most a gate may ever wrongly fail a challenger
    /// within tolerance, and the most it may ever wrongly pass one outside
    /// it, over every look of the stage (0 < alpha < 0.5; default 0.05).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Sample-size growth between two looks (default 1.5: looks at
    /// min_requests, ×1.5, ×2.25, …); within 1.1..=10.
    #[serde(default = "default_look_growth")]
    pub look_growth: f64,
    #[serde(default)]
    pub error_rate: Option<ErrorRateGate>,
    #[serde(default)]
    pub latency: Option<LatencyGate>,
    #[serde(default)]
    pub prediction: Option<PredictionGate>,
    #[serde(default)]
    pub timeouts: Option<TimeoutGate>,
    /// Off by default: a challenger that answers more 4xx (rejects valid
    /// input, say) is as bad for users as one that fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_errors: Option<ClientErrorGate>,
    #[serde(default)]
    pub labels: Option<LabelGate>,
    /// Judged only in a shadow stage, on the challenger's shadow answers.
    #[serde(default)]
    pub shadow: Option<ShadowGate>,
    /// Gates with `segments` judge each segment on its own: below this many
    /// responses per version in a segment, the segment is "not enough
    /// data" (default 100; see [`crate::segments`]).
    #[serde(default = "default_segment_min_responses", skip_serializing_if = "is_default_segment_min")]
    pub segment_min_responses: u64,
    /// What a segment below `segment_min_responses` does: `ignore` (the
    /// default: reported, does not hold the stage) or `block` (holds it).
    #[serde(default, skip_serializing_if = "SegmentTooSmall::is_default")]
    pub on_segment_too_small: SegmentTooSmall,
    /// Absolute ceilings that hold the rollout whatever the relative gates
    /// say (an outage makes both versions equally bad). On by default.
    #[serde(default, skip_serializing_if = "GuardrailsSpec::is_default")]
    pub guardrails: GuardrailsSpec,
}

/// Absolute health limits, judged on the responses since the previous
/// evaluation: an **incident** is the champion's 5xx share above
/// `max_error_percent`, or no 2xx at all from either version. During an
/// incident the stage holds (never advances, alerts once); when it ends,
/// the stage's window starts again without the incident's responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsSpec {
    /// `false` turns the guardrails off.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The champion's 5xx share (percent of responses since the previous
    /// evaluation) above which the fleet is in an incident.
    #[serde(default = "default_max_error_percent")]
    pub max_error_percent: f64,
    /// Fewest responses (champion's) since the previous evaluation for the
    /// guardrails to judge; fewer carry the previous judgement.
    #[serde(default = "default_guardrail_responses")]
    pub min_responses: u64,
}

impl Default for GuardrailsSpec {
    fn default() -> Self {
        GuardrailsSpec {
            enabled: true,
            max_error_percent: default_max_error_percent(),
            min_responses: default_guardrail_responses(),
        }
    }
}

impl GuardrailsSpec {
    fn is_default(&self) -> bool {
        *self == GuardrailsSpec::default()
    }
}

fn default_true() -> bool {
    true
}

fn default_max_error_percent() -> f64 {
    20.0
}

fn default_guardrail_responses() -> u64 {
    20
}

impl Default for GatesSpec {
    fn default() -> Self {
        GatesSpec {
            method: GateMethod::default(),
            alpha: default_alpha(),
            look_growth: default_look_growth(),
            error_rate: None,
            latency: None,
            prediction: None,
            timeouts: None,
            client_errors: None,
            labels: None,
            shadow: None,
            segment_min_responses: default_segment_min_responses(),
            on_segment_too_small: SegmentTooSmall::default(),
            guardrails: GuardrailsSpec::default(),
        }
    }
}

impl GatesSpec {
    /// The look schedule and error budget of the sequential method.
    pub fn schedule(&self) -> crate::stats::LookSchedule {
        crate::stats::LookSchedule { alpha: self.alpha, growth: self.look_growth }
    }
}

fn default_alpha() -> f64 {
    0.05
}

fn default_segment_min_responses() -> u64 {
    100
}

fn is_default_segment_min(n: &u64) -> bool {
    *n == default_segment_min_responses()
}

/// What a segment with too few responses to judge does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SegmentTooSmall {
    /// Reported as "not enough data"; does not hold the stage.
    #[default]
    Ignore,
    /// Holds the stage until the segment has enough responses.
    Block,
}

impl SegmentTooSmall {
    fn is_default(&self) -> bool {
        *self == SegmentTooSmall::default()
    }
}

/// Which segments (values of `filter.segment.header`, and `other`) a gate
/// also judges one by one: `none` (the default), `all`, or a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SegmentSelection {
    #[default]
    None,
    All,
    Only(Vec<String>),
}

impl SegmentSelection {
    pub fn is_none(&self) -> bool {
        *self == SegmentSelection::None
    }

    /// The segments judged, given the filter's segment configuration: its
    /// values then `other` for `all`; the list as written otherwise.
    pub fn names(&self, filter: Option<&SegmentConfig>) -> Vec<String> {
        match self {
            SegmentSelection::None => vec![],
            SegmentSelection::All => filter
                .map(|f| f.values.iter().cloned().chain([canary_core::predict::OTHER.to_string()]).collect())
                .unwrap_or_default(),
            SegmentSelection::Only(list) => list.clone(),
        }
    }
}

impl Serialize for SegmentSelection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SegmentSelection::None => s.serialize_str("none"),
            SegmentSelection::All => s.serialize_str("all"),
            SegmentSelection::Only(list) => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SegmentSelection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SegmentSelection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`all`, `none` or a list of segment names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SegmentSelection, E> {
                match v {
                    "all" => Ok(SegmentSelection::All),
                    "none" => Ok(SegmentSelection::None),
                    _ => Err(E::custom(format!(
                        "`{v}`: expected `all`, `none` or a list of segment names (e.g. [enterprise])"
                    ))),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SegmentSelection, A::Error> {
                let mut list = vec![];
                while let Some(name) = seq.next_element::<String>()? {
                    list.push(name);
                }
                Ok(SegmentSelection::Only(list))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for SegmentSelection {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SegmentSelection".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        crate::status::schema::segment_selection(g)
    }
}

fn default_look_growth() -> f64 {
    1.5
}

/// How the gates decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateMethod {
    /// Confidence sequences and e-processes: pass, fail or inconclusive at
    /// every evaluation.
    #[default]
    Anytime,
    /// Intervals at spent looks: pass, fail or inconclusive.
    Sequential,
    /// Point estimates against the tolerances at every evaluation.
    Threshold,
}

impl std::fmt::Display for GateMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GateMethod::Anytime => "anytime",
            GateMethod::Sequential => "sequential",
            GateMethod::Threshold => "threshold",
        })
    }
}

/// Challenger 5xx rate ≤ champion's + `error_tolerance` percentage points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateGate {
    pub error_tolerance: f64,
    /// Segments also judged one by one: `all`, `none` (default) or a list
    /// (a CanaryRollout resource takes the list form only).
    #[serde(default, skip_serializing_if = "SegmentSelection::is_none")]
    pub segments: SegmentSelection,
}

/// Challenger latency quantile ≤ champion's × `latency_tolerance_multiplier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyGate {
    pub latency_tolerance_multiplier: f64,
    /// The quantile compared, default 0.99.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// Segments also judged one by one: `all`, `none` (default) or a list
    /// (a CanaryRollout resource takes the list form only).
    #[serde(default, skip_serializing_if = "SegmentSelection::is_none")]
    pub segments: SegmentSelection,
}

fn default_quantile() -> f64 {
    0.99
}

/// What a gate without data does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoDataPolicy {
    /// Hold the stage (the safe default).
    #[default]
    Hold,
    /// Do not block advancing (the gate is reported as "no data").
    Ignore,
}

/// PSI(challenger ‖ champion) < `max_psi` over the prediction bins the
/// filter counts (`filter.prediction`); see [`crate::psi`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictionGate {
    pub max_psi: f64,
    /// Whether too few predictions block the stage (`hold`) or not (`ignore`).
    #[serde(default)]
    pub on_no_data: NoDataPolicy,
    /// Parsed predictions needed per version before PSI is judged; the
    /// stage's `min_requests` when larger. PSI of small samples is noisy
    /// (about (bins − 1) × (1/n + 1/m) for two samples of one distribution).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_predictions: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The shadow stage's gate, over the copies sent to the challenger:
/// agreement with the champion's prediction, errors and latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowGate {
    /// agree / (agree + disagree) must be at least this (0..=1).
    pub min_agreement: f64,
    /// Shadow (5xx + failed) / sent ≤ champion 5xx rate + this many points.
    pub error_tolerance: f64,
    /// Shadow latency quantile ≤ champion's × this (≥ 1).
    pub latency_tolerance_multiplier: f64,
    /// The latency quantile compared, default 0.99.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
}

/// Challenger 504 rate ≤ champion's + `timeout_tolerance` percentage points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutGate {
    pub timeout_tolerance: f64,
    /// Segments also judged one by one: `all`, `none` (default) or a list
    /// (a CanaryRollout resource takes the list form only).
    #[serde(default, skip_serializing_if = "SegmentSelection::is_none")]
    pub segments: SegmentSelection,
}

/// Challenger 4xx rate ≤ champion's + `client_error_tolerance` percentage
/// points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientErrorGate {
    pub client_error_tolerance: f64,
}

/// Challenger label metric ≥ champion's − `min_degradation_tolerance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelGate {
    /// In the metric's own units (e.g. 0.02 = two accuracy points).
    pub min_degradation_tolerance: f64,
    /// Labels needed per version for the stage before the gate can pass.
    pub min_labels: u64,
    /// Segments also judged one by one, on the labels that name their
    /// segment: `all`, `none` (default) or a list (a CanaryRollout resource
    /// takes the list form only).
    #[serde(default, skip_serializing_if = "SegmentSelection::is_none")]
    pub segments: SegmentSelection,
}

impl RolloutSpec {
    /// The gates' settings: at least one gate over live traffic, each
    /// gate's own limits, and their segments.
    pub(super) fn validate_gates(&self) -> Result<(), SpecError> {
        let g = &self.gates;
        let has_shadow_stage = self.stages.iter().any(|s| s.shadow);
        if !GATES.iter().any(|gate| gate.live() && (gate.configured)(g)) {
            let what = if g.shadow.is_some() {
                format!(
                    "needs a gate over live traffic too ({}): \
                     the shadow gate only judges the shadow stage, and the others would advance on time alone",
                    crate::gates::live_fields()
                )
            } else {
                "needs at least one gate; a rollout with no gate advances on time alone".to_string()
            };
            return Err(invalid("gates", what));
        }
        match (&g.shadow, has_shadow_stage) {
            (Some(_), false) => {
                return Err(invalid(
                    "gates.shadow",
                    "is only judged in a shadow stage: add `shadow: true` to the first stage, or remove the gate",
                ))
            }
            (None, true) => return Err(invalid(
                "gates.shadow",
                "a shadow stage needs the shadow gate: nothing else is judged there (the challenger serves no user)",
            )),
            _ => {}
        }
        if !(g.alpha.is_finite() && g.alpha > 0.0 && g.alpha < 0.5) {
            return Err(invalid(
                "gates.alpha",
                format!("{} must be within (0, 0.5): the error budget per gate and stage, e.g. 0.05", g.alpha),
            ));
        }
        if !(g.look_growth.is_finite() && (1.1..=10.0).contains(&g.look_growth)) {
            return Err(invalid(
                "gates.look_growth",
                format!("{} must be within 1.1..=10: sample-size growth between two looks, e.g. 1.5", g.look_growth),
            ));
        }
        if let Some(s) = &g.shadow {
            if !(s.min_agreement.is_finite() && (0.0..=1.0).contains(&s.min_agreement)) {
                return Err(invalid("gates.shadow.min_agreement", "must be within 0..=1 (0.9 = 90 % agreement)"));
            }
            if !(s.error_tolerance.is_finite() && s.error_tolerance >= 0.0) {
                return Err(invalid(
                    "gates.shadow.error_tolerance",
                    format!("{} must be a number >= 0", s.error_tolerance),
                ));
            }
            if !(s.latency_tolerance_multiplier.is_finite() && s.latency_tolerance_multiplier >= 1.0) {
                return Err(invalid(
                    "gates.shadow.latency_tolerance_multiplier",
                    "must be >= 1 (1.5 = 50 % slower allowed)",
                ));
            }
            if !(s.quantile > 0.0 && s.quantile < 1.0) {
                return Err(invalid("gates.shadow.quantile", "must be within (0, 1), e.g. 0.99"));
            }
        }
        let non_negative = |field: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(invalid(field, format!("{v} must be a number >= 0")))
            }
        };
        if let Some(e) = &g.error_rate {
            non_negative("gates.error_rate.error_tolerance", e.error_tolerance)?;
            self.provable("gates.error_rate.error_tolerance", e.error_tolerance)?;
        }
        if let Some(l) = &g.latency {
            if !(l.latency_tolerance_multiplier.is_finite() && l.latency_tolerance_multiplier >= 1.0) {
                return Err(invalid(
                    "gates.latency.latency_tolerance_multiplier",
                    "must be >= 1 (1.2 = 20 % slower allowed)",
                ));
            }
            if !(l.quantile > 0.0 && l.quantile < 1.0) {
                return Err(invalid("gates.latency.quantile", "must be within (0, 1), e.g. 0.99"));
            }
        }
        if let Some(p) = &g.prediction {
            if !(p.max_psi.is_finite() && p.max_psi > 0.0) {
                return Err(invalid("gates.prediction.max_psi", "must be > 0 (0.1 small shift, 0.25 large)"));
            }
            if self.filter.prediction.is_none() && p.on_no_data == NoDataPolicy::Hold {
                return Err(invalid(
                    "filter.prediction",
                    "is needed by gates.prediction (on_no_data: hold): without it the filter counts no \
                     prediction and every stage would hold forever",
                ));
            }
        }
        if let Some(t) = &g.timeouts {
            non_negative("gates.timeouts.timeout_tolerance", t.timeout_tolerance)?;
            self.provable("gates.timeouts.timeout_tolerance", t.timeout_tolerance)?;
        }
        if let Some(c) = &g.client_errors {
            non_negative("gates.client_errors.client_error_tolerance", c.client_error_tolerance)?;
            self.provable("gates.client_errors.client_error_tolerance", c.client_error_tolerance)?;
        }
        if let Some(l) = &g.labels {
            non_negative("gates.labels.min_degradation_tolerance", l.min_degradation_tolerance)?;
            if l.min_labels == 0 {
                return Err(invalid("gates.labels.min_labels", "must be >= 1: a label gate never passes on no labels"));
            }
        }
        self.validate_segments()
    }

    /// Each gate's `segments` names segments the filter counts.
    fn validate_segments(&self) -> Result<(), SpecError> {
        let g = &self.gates;
        let selections = GATES.iter().map(|gate| (gate.field, (gate.segments)(g)));
        let filter = self.filter.segment.as_ref();
        for (gate, selection) in selections {
            let Some(selection) = selection.filter(|s| !s.is_none()) else { continue };
            let field = format!("gates.{gate}.segments");
            let Some(f) = filter else {
                return Err(invalid(
                    field,
                    "needs filter.segment (the request header whose values split the traffic, and those values)",
                ));
            };
            if let SegmentSelection::Only(list) = selection {
                if list.is_empty() {
                    return Err(invalid(field, "an empty list judges no segment: write `none`, `all` or some names"));
                }
                for (i, name) in list.iter().enumerate() {
                    let known = f.values.contains(name) || name == canary_core::predict::OTHER;
                    if !known {
                        return Err(invalid(
                            format!("{field}[{i}]"),
                            format!(
                                "`{name}` is not a segment the filter counts: one of {} or `other`",
                                f.values.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                    if list[..i].contains(name) {
                        return Err(invalid(format!("{field}[{i}]"), format!("`{name}` is listed twice")));
                    }
                }
            }
        }
        if g.segment_min_responses == 0 {
            return Err(invalid(
                "gates.segment_min_responses",
                "must be >= 1: a segment is never judged on no response (default 100)",
            ));
        }
        Ok(())
    }

    /// With the anytime method a tolerance must leave room to prove: a
    /// challenger equal to the champion is never shown to be within 0.
    fn provable(&self, field: &str, tolerance: f64) -> Result<(), SpecError> {
        if self.gates.method == GateMethod::Anytime && tolerance <= 0.0 {
            return Err(invalid(
                field,
                "0 can never be proven for a challenger equal to the champion: set the most harm you accept (e.g. 0.5 points)",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_guardrails(&self) -> Result<(), SpecError> {
        let g = &self.gates.guardrails;
        if !(g.max_error_percent.is_finite() && g.max_error_percent > 0.0 && g.max_error_percent <= 100.0) {
            return Err(invalid(
                "gates.guardrails.max_error_percent",
                format!("{} must be within (0, 100] percent", g.max_error_percent),
            ));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.max_duration.is_some_and(|m| m < stage.min_duration) {
                return Err(invalid(format!("stages[{i}].max_duration"), "must be at least the stage's min_duration"));
            }
        }
        Ok(())
    }
}
