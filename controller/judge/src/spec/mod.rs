//! The rollout spec: what an operator writes (YAML) to roll a challenger out.
//! Parsed with unknown fields refused, then validated; every error names its
//! field. Durations are humantime strings (`500ms`, `2s`, `1d`), so a test can
//! run a whole rollout in seconds and production in days.
//!
//! One file per part of the spec: this one the top level (stages, and
//! [`RolloutSpec::validate`], which runs each part's checks in turn),
//! `gates.rs` the gates' settings, `envoy.rs` the Envoys, their stats
//! source and the sinks, `filter.rs` the filter's settings, `daemon.rs`
//! alerts, labels intake and the HTTP server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use canary_core::config::ShadowConfig;
use canary_core::{FilterConfig, Weight};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod daemon;
mod envoy;
mod filter;
mod gates;
#[cfg(test)]
mod tests;

pub use daemon::*;
pub use envoy::*;
pub use filter::*;
pub use gates::*;

/// A refused spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read the spec {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spec is not valid: at `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("spec field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> SpecError {
    SpecError::Invalid { field: field.into(), reason: reason.to_string() }
}

/// The rollout spec (as a Kubernetes resource: the spec of a CanaryRollout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource),
    kube(
        group = "canary.dev",
        version = "v1alpha1",
        kind = "CanaryRollout",
        namespaced,
        status = "crate::status::CanaryRolloutStatus",
        shortname = "canary",
        printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
        printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.stageName"}"#,
        printcolumn = r#"{"name":"Weight","type":"string","jsonPath":".status.weight"}"#,
        printcolumn = r#"{"name":"Last","type":"string","jsonPath":".status.lastDecision.action"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Rollout name: `[A-Za-z0-9_-]`, 1–64.
    pub rollout: String,
    /// Version now serving everyone.
    pub champion: String,
    /// Version being rolled out.
    pub challenger: String,
    /// Hash salt; defaults to the rollout name. A new rollout needs a new one.
    #[serde(default)]
    pub salt: Option<String>,
    /// How often the controller evaluates.
    #[serde(with = "humantime_serde", default = "default_interval")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub interval: Duration,
    /// The stages, in order; the last one must be 100 %.
    #[serde(default = "default_stages")]
    pub stages: Vec<StageSpec>,
    /// Health gates, fixed when the rollout starts.
    pub gates: GatesSpec,
    /// The Envoys: where to read stats and where to write the filter's configuration.
    pub envoy: EnvoySpec,
    /// How the filter keys and tags requests.
    #[serde(default)]
    pub filter: FilterSpec,
    #[serde(default)]
    pub alerts: AlertsSpec,
    #[serde(default)]
    pub labels: LabelsSpec,
    #[serde(default)]
    pub server: ServerSpec,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Name (defaults to `<weight>pct`, or `shadow`); sent in the stage header.
    #[serde(default)]
    pub name: Option<String>,
    /// Challenger share in percent, e.g. `1`, `0.5`, `100` (resolution 0.01).
    /// Required, except in a shadow stage, where it is 0 (left out or 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_percent: Option<f64>,
    /// A shadow stage: no user is served by the challenger; the filter sends
    /// copies of champion-served requests to it (`filter.shadow`) and the
    /// `shadow` gate judges its answers. Only the first stage may be one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
    /// Least time in the stage before it may advance (it may roll back earlier).
    #[serde(with = "humantime_serde", default)]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub min_duration: Duration,
    /// Least responses per version before the stage may advance (in a
    /// shadow stage: champion responses and shadow answers). 0 or left out:
    /// derived from the gates ([`RolloutSpec::min_requests`]). With the
    /// default (anytime) method a failing gate rolls back before it; with
    /// the others, gates are evaluated only from it on.
    #[serde(default)]
    pub min_requests: u64,
    /// What the stage must show to advance: `no_harm` (no gate failed,
    /// every gate has data; an inconclusive gate does not hold) or `proven`
    /// (every gate passed: non-inferiority shown). Default: `proven` for the
    /// stage that promotes (and every stage with the `sequential` or
    /// `threshold` methods), `no_harm` before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advance_when: Option<AdvanceWhen>,
    /// The terminal rule: the longest the stage may hold before
    /// `on_max_duration` applies. Default: 3 × `min_duration`, at least 1h.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub max_duration: Option<Duration>,
    /// What happens when the stage reaches `max_duration` undecided.
    #[serde(default, skip_serializing_if = "TerminalOutcome::is_default")]
    pub on_max_duration: TerminalOutcome,
}

/// When a stage may advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdvanceWhen {
    /// No gate failed and every gate has data: small stages exist to catch harm.
    NoHarm,
    /// Every gate passed: the challenger is shown to be within tolerance.
    Proven,
}

impl std::fmt::Display for AdvanceWhen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdvanceWhen::NoHarm => "no_harm",
            AdvanceWhen::Proven => "proven",
        })
    }
}

/// The outcome of a stage that reached its `max_duration` undecided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminalOutcome {
    /// Keep holding, and alert once (people decide: advance or roll back).
    #[default]
    HoldAndAlert,
    /// Roll back.
    Rollback,
    /// Advance, provided no gate failed, every gate has data and no
    /// incident is under way.
    Advance,
}

impl TerminalOutcome {
    fn is_default(&self) -> bool {
        *self == TerminalOutcome::HoldAndAlert
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

const DAY: u64 = 24 * 3600;

/// 1 % on day 1, 5 % on day 2, 20 % on day 3, 50 % on day 5, 100 % on day 7.
pub fn default_stages() -> Vec<StageSpec> {
    let s = |w: f64, days: u64, min_requests| StageSpec {
        name: None,
        weight_percent: Some(w),
        shadow: false,
        min_duration: Duration::from_secs(days * DAY),
        min_requests,
        advance_when: None,
        max_duration: None,
        on_max_duration: TerminalOutcome::HoldAndAlert,
    };
    vec![s(1.0, 1, 1000), s(5.0, 1, 1000), s(20.0, 2, 1000), s(50.0, 2, 1000), s(100.0, 0, 0)]
}

impl RolloutSpec {
    pub fn from_yaml(text: &str) -> Result<RolloutSpec, SpecError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let spec: RolloutSpec = serde_path_to_error::deserialize(de)
            .map_err(|e| SpecError::Parse { path: e.path().to_string(), message: e.into_inner().to_string() })?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn load(path: &Path) -> Result<RolloutSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.into(), source })?;
        RolloutSpec::from_yaml(&text)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    pub fn salt(&self) -> &str {
        self.salt.as_deref().unwrap_or(&self.rollout)
    }

    /// The stage's name as sent in the stage header.
    pub fn stage_name(&self, index: usize) -> String {
        match self.stages.get(index) {
            Some(StageSpec { name: Some(n), .. }) => n.clone(),
            Some(StageSpec { shadow: true, .. }) => "shadow".into(),
            Some(s) => format!("{}pct", s.weight_percent.unwrap_or(0.0)).replace('.', "_"),
            None => format!("stage{index}"),
        }
    }

    pub fn stage_weight(&self, index: usize) -> Weight {
        self.stages
            .get(index)
            .and_then(|s| percent_to_weight(s.weight_percent.unwrap_or(0.0)).ok())
            .unwrap_or(Weight::ZERO)
    }

    /// The stage's `min_requests`, or when 0 the default derived from the
    /// gates: the challenger responses with which the anytime engine rolls
    /// back a challenger erring 2 × tolerance more than a flawless champion
    /// (with the stage's traffic split), at least 100. So a stage that
    /// advances on `no_harm` has seen enough to catch that harm.
    pub fn min_requests(&self, index: usize) -> u64 {
        let Some(stage) = self.stages.get(index) else { return 0 };
        if stage.min_requests > 0 {
            return stage.min_requests;
        }
        // A stage that only has to show no harm is there to catch gross
        // harm early (3 × the tolerance) at little traffic; the stage that
        // promotes waits for the sample that catches 2 × (its proof of
        // no harm needs more still).
        let harm = match self.advance_when(index) {
            AdvanceWhen::NoHarm => 3.0,
            AdvanceWhen::Proven => 2.0,
        };
        let share = stage.weight_percent.unwrap_or(50.0).clamp(0.01, 100.0) / 100.0;
        let ratio = if stage.shadow || share >= 0.5 { 1.0 } else { (1.0 - share) / share };
        let harm_share = self.harm_share(index);
        crate::gates::GATES
            .iter()
            .filter_map(|g| (g.rate_tolerance)(&self.gates))
            .filter(|t| *t > 0.0)
            .map(|t| crate::anytime::responses_to_detect(t / 100.0, self.gates.alpha, ratio, harm, harm_share))
            .fold(100, u64::max)
    }

    /// Stage `index`'s share of the harm budget, as the gates judge it
    /// ([`crate::anytime::harm_share`]): every stage but the last (100 %,
    /// where the rollout has ended) is judged.
    pub fn harm_share(&self, index: usize) -> f64 {
        crate::anytime::harm_share(index, self.stages.len().saturating_sub(1))
    }

    /// What stage `index` must show to advance.
    pub fn advance_when(&self, index: usize) -> AdvanceWhen {
        if let Some(w) = self.stages.get(index).and_then(|s| s.advance_when) {
            return w;
        }
        let promotes = index + 2 >= self.stages.len();
        if promotes || self.gates.method != GateMethod::Anytime {
            AdvanceWhen::Proven
        } else {
            AdvanceWhen::NoHarm
        }
    }

    /// The stage's terminal time: `max_duration`, or 3 × `min_duration`
    /// and at least one hour.
    pub fn max_duration(&self, index: usize) -> Duration {
        let Some(stage) = self.stages.get(index) else { return Duration::MAX };
        stage.max_duration.unwrap_or_else(|| (stage.min_duration * 3).max(Duration::from_secs(3600)))
    }

    /// Whether stage `index` is a shadow stage.
    pub fn is_shadow_stage(&self, index: usize) -> bool {
        self.stages.get(index).is_some_and(|s| s.shadow)
    }

    /// The filter's `shadow` configuration for a shadow stage: `filter.shadow`
    /// or its defaults. Out-of-range values are clamped here and refused by
    /// [`RolloutSpec::validate`], so what is pushed always passes the filter.
    pub fn shadow_config(&self) -> ShadowConfig {
        let spec = self.filter.shadow.clone().unwrap_or_default();
        ShadowConfig {
            cluster: spec.cluster.unwrap_or_else(|| self.challenger.clone()),
            sample_bp: percent_to_weight(spec.sample_percent).unwrap_or(Weight::FULL),
            timeout_ms: u32::try_from(spec.timeout.as_millis()).unwrap_or(u32::MAX),
            max_body_bytes: spec.max_body_bytes.unwrap_or_else(canary_core::predict::default_max_body),
            max_in_flight: spec.max_in_flight.unwrap_or(1000),
        }
    }

    /// The filter configuration for a stage name, weight and epoch. `shadow`
    /// adds the `shadow` configuration: only for a shadow stage, never after
    /// a rollback or a promotion. `prediction` and `segment` go to every stage
    /// (the same bins everywhere, so stages compare).
    pub fn filter_config(&self, stage: &str, weight: Weight, epoch: u64, shadow: bool) -> FilterConfig {
        FilterConfig {
            rollout: self.rollout.clone(),
            epoch,
            stage: stage.to_string(),
            salt: self.salt().to_string(),
            champion: self.champion.clone(),
            challenger: self.challenger.clone(),
            challenger_weight_bp: weight,
            key: self.filter.key.clone(),
            unkeyed: self.filter.unkeyed,
            headers: self.filter.headers.clone(),
            prediction: self.filter.prediction.clone(),
            segment: self.filter.segment.clone(),
            shadow: shadow.then(|| self.shadow_config()),
            qa_override: self.filter.qa_override.clone(),
            counts: self.envoy.counts,
        }
    }

    /// Every check; the first problem is returned, naming its field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.stages.is_empty() {
            return Err(invalid("stages", "needs at least one stage"));
        }
        let mut previous = Weight::ZERO;
        for (i, stage) in self.stages.iter().enumerate() {
            let field = format!("stages[{i}].weight_percent");
            if stage.shadow {
                if i != 0 {
                    return Err(invalid(
                        format!("stages[{i}].shadow"),
                        "only the first stage may be a shadow stage (it comes before any user is served)",
                    ));
                }
                if stage.weight_percent.is_some_and(|w| w != 0.0) {
                    return Err(invalid(
                        &field,
                        "a shadow stage serves no user from the challenger: leave weight_percent out or set 0",
                    ));
                }
                continue;
            }
            let Some(percent) = stage.weight_percent else {
                return Err(invalid(&field, "is required (only a shadow stage may leave it out)"));
            };
            let w = percent_to_weight(percent).map_err(|e| invalid(&field, e))?;
            if w == Weight::ZERO {
                return Err(invalid(&field, "0 is only allowed in a shadow stage (`shadow: true`, the first stage)"));
            }
            if w <= previous {
                return Err(invalid(&field, format!("{w} must be above the previous stage's {previous}")));
            }
            previous = w;
        }
        if previous != Weight::FULL {
            return Err(invalid(
                format!("stages[{}].weight_percent", self.stages.len() - 1),
                "the last stage must be 100",
            ));
        }
        if let Some(shadow) = &self.filter.shadow {
            self.validate_shadow_spec(shadow)?;
        }
        // The filter's own rules check names, salt, headers, prediction and
        // segment settings, for every stage.
        for i in 0..self.stages.len() {
            let config = self.filter_config(&self.stage_name(i), self.stage_weight(i), 0, self.is_shadow_stage(i));
            config.validate().map_err(|e| {
                let field = match e.field() {
                    "stage" => format!("stages[{i}].name"),
                    "shadow.timeout_ms" => "filter.shadow.timeout".into(),
                    "shadow.sample_bp" => "filter.shadow.sample_percent".into(),
                    f if ["key", "headers", "unkeyed", "prediction", "segment", "shadow"]
                        .iter()
                        .any(|p| f.starts_with(p)) =>
                    {
                        format!("filter.{f}")
                    }
                    f => f.to_string(),
                };
                invalid(field, e)
            })?;
        }
        if self.interval.is_zero() {
            return Err(invalid("interval", "must be above 0, e.g. 1m"));
        }
        self.validate_gates()?;
        self.validate_envoy()?;
        self.validate_guardrails()?;
        self.validate_sinks()?;
        self.validate_daemon()
    }
}

/// A percentage of traffic that is not a weight: why [`percent_to_weight`]
/// refused it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PercentError {
    /// Below 0, above 100, or not a number.
    #[error("{0} must be within 0..=100 (a percentage of traffic, e.g. 5 for 5 %)")]
    OutOfRange(f64),
    /// Finer than a basis point (0.01 %).
    #[error("{0} is not a percentage with at most two decimals")]
    TooPrecise(f64),
    /// The basis points are not a weight (cannot happen after the range check;
    /// kept so the conversion needs no panic).
    #[error(transparent)]
    Weight(#[from] canary_core::split::WeightOutOfRange),
}

/// Percent with at most two decimals → basis points.
pub fn percent_to_weight(percent: f64) -> Result<Weight, PercentError> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(PercentError::OutOfRange(percent));
    }
    let bp = percent * 100.0;
    if !bp.is_finite() || bp < 0.0 || (bp - bp.round()).abs() > 1e-6 {
        return Err(PercentError::TooPrecise(percent));
    }
    Ok(Weight::from_bp(bp.round() as u64)?)
}

#[cfg(test)]
mod percent_tests {
    use super::*;

    #[test]
    fn percent_to_weight_says_why_it_refuses() {
        assert_eq!(percent_to_weight(5.25).map(Weight::bp), Ok(525));
        assert_eq!(percent_to_weight(100.0).map(Weight::bp), Ok(10_000));
        assert_eq!(percent_to_weight(100.5), Err(PercentError::OutOfRange(100.5)));
        assert_eq!(percent_to_weight(-1.0), Err(PercentError::OutOfRange(-1.0)));
        assert!(matches!(percent_to_weight(f64::NAN), Err(PercentError::OutOfRange(_))));
        assert_eq!(percent_to_weight(0.125), Err(PercentError::TooPrecise(0.125)));
        assert_eq!(
            percent_to_weight(0.125).unwrap_err().to_string(),
            "0.125 is not a percentage with at most two decimals"
        );
    }
}
