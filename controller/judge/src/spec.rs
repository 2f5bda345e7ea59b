//! The rollout spec: what an operator writes (YAML) to roll a challenger out.
//! Parsed with unknown fields refused, then validated; every error names its
//! field. Durations are humantime strings (`500ms`, `2s`, `1d`), so a test can
//! run a whole rollout in seconds and production in days.

use std::path::{Path, PathBuf};
use std::time::Duration;

use canary_core::config::{Counts, KeySource, OwnedHeaders, ShadowConfig, UnkeyedPolicy};
use canary_core::predict::{PredictionConfig, SegmentConfig};
use canary_core::{FilterConfig, Weight};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// The Envoys this rollout drives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvoySpec {
    /// Admin API base URLs, e.g. `http://127.0.0.1:9901`.
    pub admin: Vec<String>,
    /// Directory Envoy watches for `canary.json` (file-based ECDS): the
    /// same as a `file` entry in `sinks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecds_dir: Option<PathBuf>,
    /// Path of `canary_filter.wasm` as Envoy sees it (written into the ECDS
    /// resource of the file and ConfigMap sinks).
    pub wasm: PathBuf,
    /// Where each new filter configuration goes, besides `ecds_dir`: every
    /// entry gets every configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "serde_yaml_ng::with::singleton_map_recursive")]
    #[schemars(with = "Vec<SinkSpec>")]
    pub sinks: Vec<SinkSpec>,
    /// How a failed push is retried, per sink.
    #[serde(default, skip_serializing_if = "RetrySpec::is_default")]
    pub sink_retry: RetrySpec,
    /// Deadline of one stats read of the whole fleet, from its start: every
    /// endpoint must have answered by then (one hanging Envoy costs one
    /// timeout wherever it sits in the list).
    #[serde(with = "humantime_serde", default = "default_admin_timeout")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub timeout: Duration,
    /// Time allowed for every Envoy to apply a new configuration before an alert.
    #[serde(with = "humantime_serde", default = "default_apply_timeout")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub apply_timeout: Duration,
    /// Read the stats from Prometheus instead of every Envoy's admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    /// Share of Envoys (0 ≤ x < 1) that may fail to answer, or not have
    /// applied the stage's configuration yet, while the gates still judge on
    /// the others (the decision names the missing ones). Above it: no data,
    /// hold. 0 (the default): every Envoy must answer and have applied.
    #[serde(default, skip_serializing_if = "is_zero_share")]
    pub max_missing_share: f64,
    /// Where the per-version response counts (status classes, 504s) and
    /// latency come from: `filter` (the filter counts them; the default) or
    /// `cluster` (Envoy's own `cluster.<version>.upstream_rq_*` stats, one
    /// cluster per version named after it; the filter then skips that work).
    /// See `evidence::cluster`.
    #[serde(default, skip_serializing_if = "Counts::is_filter")]
    #[schemars(schema_with = "crate::status::schema::counts")]
    pub counts: Counts,
}

fn is_zero_share(x: &f64) -> bool {
    *x == 0.0
}

/// The Prometheus that scrapes this rollout's Envoys (`/stats/prometheus`
/// with the stats tags of `envoy/sidecar.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSpec {
    /// Base URL, e.g. `http://prometheus:9090`.
    pub url: String,
    /// PromQL label matchers (no braces) that select exactly this rollout's
    /// Envoys, one series per Envoy per `instance`, e.g. `job="canary-envoys"`.
    pub selector: String,
    /// For one read (its four queries run at once).
    #[serde(with = "humantime_serde", default = "default_admin_timeout")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub timeout: Duration,
}

/// One place the filter's configuration is written to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSpec {
    /// An ECDS file in a directory Envoy watches (`path_config_source`).
    File { dir: PathBuf },
    /// A ConfigMap holding the ECDS file under `key`, mounted into sidecars
    /// whose Envoy watches the mount. The ConfigMap must exist.
    ConfigMap {
        namespace: String,
        name: String,
        #[serde(default = "default_configmap_key")]
        key: String,
    },
    /// An Istio `WasmPlugin` (extensions.istio.io/v1alpha1) whose
    /// `spec.pluginConfig` becomes the configuration; Istio delivers it.
    WasmPlugin { namespace: String, name: String },
}

fn default_configmap_key() -> String {
    crate::ECDS_FILE_NAME.to_string()
}

/// Retries of a failed push: `attempts` in all, waiting `backoff`, then
/// twice as long each time (at most `max_backoff`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub max_backoff: Duration,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec { attempts: 4, backoff: Duration::from_millis(250), max_backoff: Duration::from_secs(5) }
    }
}

impl RetrySpec {
    fn is_default(&self) -> bool {
        *self == RetrySpec::default()
    }
}

fn default_admin_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_apply_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Filter settings passed through to its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSpec {
    /// `[{header: x-user-id}, {cookie: uid}]`, as in the plugin configuration.
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    #[schemars(schema_with = "crate::status::schema::key_list")]
    pub key: Vec<KeySource>,
    #[schemars(schema_with = "crate::status::schema::unkeyed")]
    pub unkeyed: UnkeyedPolicy,
    #[schemars(schema_with = "crate::status::schema::headers")]
    pub headers: OwnedHeaders,
    /// Where responses carry their prediction and how it is binned, as in
    /// the plugin configuration (`from: {header: x-prediction}`, `bins:
    /// {numeric: [0.25, 0.5, 0.75]}`). Every stage gets it. Numeric edges
    /// are fixed for the whole rollout: derive them from the champion
    /// beforehand (`canary bin-edges`).
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::status::schema::prediction")]
    pub prediction: Option<PredictionConfig>,
    /// A request header whose allowed values split the counters. Every
    /// stage gets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::status::schema::segment")]
    pub segment: Option<SegmentConfig>,
    /// Where and how shadow copies go; only shadow stages get it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// A QA override header and its secret (`<secret>:<version>`); every
    /// stage gets it. Overridden requests are not counted.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::status::schema::qa_override")]
    pub qa_override: Option<canary_core::config::OverrideConfig>,
}

impl Default for FilterSpec {
    fn default() -> Self {
        FilterSpec {
            key: vec![KeySource::Header("x-user-id".into())],
            unkeyed: UnkeyedPolicy::default(),
            headers: OwnedHeaders::default(),
            prediction: None,
            segment: None,
            shadow: None,
            qa_override: None,
        }
    }
}

/// `filter.shadow`: the filter's `shadow` configuration in spec units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowSpec {
    /// Envoy cluster of the challenger; default: the challenger's version
    /// name (`envoy/sidecar.yaml` names clusters after versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// How long the filter waits for a shadow answer (1 ms – 60 s).
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub timeout: Duration,
    /// Share of champion-served requests copied, in percent (0.01 resolution).
    pub sample_percent: f64,
    /// Requests with a longer body are not copied (counted as skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
    /// Most shadow calls in flight per Envoy worker; more are skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl Default for ShadowSpec {
    fn default() -> Self {
        ShadowSpec {
            cluster: None,
            timeout: Duration::from_secs(1),
            sample_percent: 100.0,
            max_body_bytes: None,
            max_in_flight: None,
        }
    }
}

/// Where alerts go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSpec {
    pub webhooks: Vec<WebhookSpec>,
    /// Consecutive failed reads of the stats before an alert.
    pub source_failures: u32,
    /// Delivery attempts per alert and webhook, the first included.
    pub retry_attempts: u32,
    /// Wait before the second attempt; it doubles after each failed one, up
    /// to `retry_max_backoff`.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub retry_max_backoff: Duration,
}

impl Default for AlertsSpec {
    /// 8 attempts over about 30 s (0.5, 1, 2, 4, 8, 8, 8 s apart): a webhook
    /// restarting or briefly unreachable still gets the alert.
    fn default() -> Self {
        AlertsSpec {
            webhooks: vec![],
            source_failures: 3,
            retry_attempts: 8,
            retry_backoff: Duration::from_millis(500),
            retry_max_backoff: Duration::from_secs(8),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The alert as a JSON object.
    #[default]
    Json,
    /// `{"text": ...}`, what Slack incoming webhooks take.
    Slack,
}

/// Where labels (ground-truth outcomes) come from, besides `POST /labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelsSpec {
    /// A JSONL file of outcomes, read as it grows.
    #[serde(default)]
    pub jsonl: Option<PathBuf>,
}

/// The daemon's HTTP server (labels intake).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Address to listen on; `127.0.0.1:0` picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for ServerSpec {
    fn default() -> Self {
        ServerSpec { listen: default_listen() }
    }
}

fn default_listen() -> String {
    "127.0.0.1:0".into()
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
        let tolerances = [
            self.gates.error_rate.as_ref().map(|g| g.error_tolerance),
            self.gates.timeouts.as_ref().map(|g| g.timeout_tolerance),
            self.gates.client_errors.as_ref().map(|g| g.client_error_tolerance),
            self.gates.shadow.as_ref().map(|g| g.error_tolerance),
        ];
        tolerances
            .into_iter()
            .flatten()
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
        let has_shadow_stage = self.stages.iter().any(|s| s.shadow);
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
        let g = &self.gates;
        if g.error_rate.is_none()
            && g.latency.is_none()
            && g.prediction.is_none()
            && g.timeouts.is_none()
            && g.client_errors.is_none()
            && g.labels.is_none()
        {
            let what = if g.shadow.is_some() {
                "needs a gate over live traffic too (error_rate, latency, prediction, timeouts, client_errors or labels): \
                 the shadow gate only judges the shadow stage, and the others would advance on time alone"
            } else {
                "needs at least one gate; a rollout with no gate advances on time alone"
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
        self.validate_segments()?;
        if self.envoy.admin.is_empty() && self.envoy.prometheus.is_none() {
            return Err(invalid("envoy.admin", "needs at least one Envoy admin URL (or set envoy.prometheus)"));
        }
        if let Some(p) = &self.envoy.prometheus {
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                return Err(invalid(
                    "envoy.prometheus.url",
                    format!("`{}` must start with http:// or https://", p.url),
                ));
            }
            let sel = p.selector.trim();
            if sel.is_empty() || sel.contains(['{', '}']) || !sel.contains(['=', '~']) {
                return Err(invalid(
                    "envoy.prometheus.selector",
                    "must be PromQL label matchers without braces that pick this rollout's Envoys, e.g. job=\"canary-envoys\"",
                ));
            }
            if p.timeout.is_zero() {
                return Err(invalid("envoy.prometheus.timeout", "must be above 0, e.g. 2s"));
            }
        }
        if self.envoy.counts == Counts::Cluster && self.envoy.prometheus.is_some() {
            return Err(invalid(
                "envoy.counts",
                "`cluster` is read from the Envoys' admin API only for now: remove envoy.prometheus or use `filter`",
            ));
        }
        let share = self.envoy.max_missing_share;
        if !(share.is_finite() && (0.0..1.0).contains(&share)) {
            return Err(invalid(
                "envoy.max_missing_share",
                format!("{share} must be within 0 (every Envoy must answer) and below 1, e.g. 0.01"),
            ));
        }
        for (i, url) in self.envoy.admin.iter().enumerate() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    format!("envoy.admin[{i}]"),
                    format!("`{url}` must start with http:// or https://"),
                ));
            }
        }
        self.validate_guardrails()?;
        self.validate_sinks()?;
        for (i, hook) in self.alerts.webhooks.iter().enumerate() {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(invalid(format!("alerts.webhooks[{i}].url"), "must start with http:// or https://"));
            }
        }
        let a = &self.alerts;
        if !(1..=100).contains(&a.retry_attempts) {
            return Err(invalid("alerts.retry_attempts", "must be 1..=100 (1 means no retry)"));
        }
        if a.retry_backoff.is_zero() || a.retry_backoff > a.retry_max_backoff {
            return Err(invalid("alerts.retry_backoff", "must be above 0 and at most alerts.retry_max_backoff"));
        }
        if a.retry_max_backoff > Duration::from_secs(600) {
            return Err(invalid("alerts.retry_max_backoff", "must be at most 10m"));
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!("`{}` is not an address like 127.0.0.1:8080", self.server.listen),
            ));
        }
        Ok(())
    }

    /// Every sink the spec names: `envoy.ecds_dir` first, then `envoy.sinks`.
    pub fn sinks(&self) -> Vec<SinkSpec> {
        let file = self.envoy.ecds_dir.clone().map(|dir| SinkSpec::File { dir });
        file.into_iter().chain(self.envoy.sinks.iter().cloned()).collect()
    }

    /// Each gate's `segments` names segments the filter counts.
    fn validate_segments(&self) -> Result<(), SpecError> {
        let g = &self.gates;
        let selections = [
            ("error_rate", g.error_rate.as_ref().map(|x| &x.segments)),
            ("latency", g.latency.as_ref().map(|x| &x.segments)),
            ("timeouts", g.timeouts.as_ref().map(|x| &x.segments)),
            ("labels", g.labels.as_ref().map(|x| &x.segments)),
        ];
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

    fn validate_guardrails(&self) -> Result<(), SpecError> {
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

    fn validate_sinks(&self) -> Result<(), SpecError> {
        if self.sinks().is_empty() {
            return Err(invalid(
                "envoy.sinks",
                "needs a sink: set envoy.ecds_dir (file-based ECDS) or list envoy.sinks (file, config_map, wasm_plugin)",
            ));
        }
        for (i, sink) in self.envoy.sinks.iter().enumerate() {
            match sink {
                SinkSpec::File { dir } if dir.as_os_str().is_empty() => {
                    return Err(invalid(format!("envoy.sinks[{i}].file.dir"), "must be a directory path"));
                }
                SinkSpec::File { .. } => {}
                SinkSpec::ConfigMap { namespace, name, key } => {
                    dns_label(&format!("envoy.sinks[{i}].config_map.namespace"), namespace, 63)?;
                    dns_label(&format!("envoy.sinks[{i}].config_map.name"), name, 253)?;
                    let ok = !key.is_empty()
                        && key.len() <= 253
                        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                    if !ok {
                        return Err(invalid(
                            format!("envoy.sinks[{i}].config_map.key"),
                            format!("`{key}` is not a ConfigMap key ([-._a-zA-Z0-9]+), e.g. canary.json"),
                        ));
                    }
                }
                SinkSpec::WasmPlugin { namespace, name } => {
                    dns_label(&format!("envoy.sinks[{i}].wasm_plugin.namespace"), namespace, 63)?;
                    dns_label(&format!("envoy.sinks[{i}].wasm_plugin.name"), name, 253)?;
                }
            }
        }
        let r = &self.envoy.sink_retry;
        if !(1..=20).contains(&r.attempts) {
            return Err(invalid("envoy.sink_retry.attempts", format!("{} must be within 1..=20", r.attempts)));
        }
        if r.backoff.is_zero() || r.backoff > Duration::from_secs(60) {
            return Err(invalid("envoy.sink_retry.backoff", "must be within 1ms..=60s, e.g. 250ms"));
        }
        if r.max_backoff < r.backoff || r.max_backoff > Duration::from_secs(300) {
            return Err(invalid("envoy.sink_retry.max_backoff", "must be within backoff..=5m, e.g. 5s"));
        }
        Ok(())
    }

    fn validate_shadow_spec(&self, shadow: &ShadowSpec) -> Result<(), SpecError> {
        if let Some(cluster) = &shadow.cluster {
            if cluster.is_empty() || cluster.len() > 128 {
                return Err(invalid("filter.shadow.cluster", "must be an Envoy cluster name, 1-128 bytes"));
            }
        }
        let ms = shadow.timeout.as_millis();
        if !(1..=60_000).contains(&ms) {
            return Err(invalid(
                "filter.shadow.timeout",
                format!("{} must be within 1ms..=60s", humantime::format_duration(shadow.timeout)),
            ));
        }
        let sample =
            percent_to_weight(shadow.sample_percent).map_err(|e| invalid("filter.shadow.sample_percent", e))?;
        if sample == Weight::ZERO {
            return Err(invalid("filter.shadow.sample_percent", "must be above 0: a shadow stage needs copies"));
        }
        Ok(())
    }
}

/// A Kubernetes name: lowercase letters, digits and `-` (and `.` in longer
/// names), starting and ending with a letter or digit.
fn dns_label(field: &str, value: &str, max: usize) -> Result<(), SpecError> {
    let bytes = value.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = !value.is_empty()
        && value.len() <= max
        && edge(bytes.first())
        && edge(bytes.last())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || (max > 63 && *b == b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("`{value}` is not a Kubernetes name (lowercase letters, digits, `-`; at most {max})"),
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = r#"
rollout: recs-v2
champion: v1
challenger: v2
interval: 30s
stages:
  - { weight_percent: 1, min_duration: 1d, min_requests: 1000 }
  - { weight_percent: 5, min_duration: 1d, min_requests: 1000 }
  - { name: half, weight_percent: 50, min_duration: 2d, min_requests: 2000 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 0.5 }
  latency: { latency_tolerance_multiplier: 1.2 }
  prediction: { max_psi: 0.2, on_no_data: ignore }
  timeouts: { timeout_tolerance: 0.2 }
  labels: { min_degradation_tolerance: 0.02, min_labels: 500 }
envoy:
  admin: ["http://127.0.0.1:9901"]
  ecds_dir: /var/run/canary
  wasm: /etc/envoy/canary_filter.wasm
filter:
  key: [{ header: x-user-id }, { cookie: uid }]
alerts:
  webhooks: [{ url: "https://hooks.slack.com/services/x", format: slack }]
"#;

    fn with(path: &[&str], value: serde_yaml_ng::Value) -> Result<RolloutSpec, SpecError> {
        edited(EXAMPLE, path, value)
    }

    /// `base` with the value at `path` set to `value`, parsed.
    fn edited(base: &str, path: &[&str], value: serde_yaml_ng::Value) -> Result<RolloutSpec, SpecError> {
        let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(base).unwrap();
        let mut at = &mut doc;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[*key] = value.clone();
            } else {
                at = &mut at[*key];
            }
        }
        RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap())
    }

    fn field_of(r: Result<RolloutSpec, SpecError>) -> String {
        match r {
            Err(SpecError::Invalid { field, .. }) => field,
            Err(SpecError::Parse { path, .. }) => path,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_example_parses() {
        let spec = RolloutSpec::from_yaml(EXAMPLE).unwrap();
        assert_eq!(spec.stages.len(), 4);
        assert_eq!(spec.stage_name(0), "1pct");
        assert_eq!(spec.stage_name(2), "half");
        assert_eq!(spec.stage_weight(1).bp(), 500);
        assert_eq!(spec.interval, Duration::from_secs(30));
        assert_eq!(spec.stages[0].min_duration, Duration::from_secs(DAY));
        assert_eq!(spec.salt(), "recs-v2");
        assert_eq!(spec.gates.prediction.as_ref().unwrap().on_no_data, NoDataPolicy::Ignore);
        assert_eq!((spec.gates.method, spec.gates.alpha, spec.gates.look_growth), (GateMethod::Anytime, 0.05, 1.5));
        let threshold = with(&["gates", "method"], "threshold".into()).unwrap();
        assert_eq!(threshold.gates.method, GateMethod::Threshold);
        let tuned = with(&["gates", "alpha"], 0.01.into()).unwrap();
        assert_eq!(tuned.gates.schedule(), crate::stats::LookSchedule { alpha: 0.01, growth: 1.5 });
        assert_eq!(spec.filter.key, vec![KeySource::Header("x-user-id".into()), KeySource::Cookie("uid".into())]);
        // What the store writes back reads the same.
        assert_eq!(RolloutSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
    }

    #[test]
    fn default_stages_are_the_documented_schedule() {
        let spec = with(&["stages"], serde_yaml_ng::Value::Null);
        // `stages: null` is a type error; omitting the field gives the default.
        assert!(spec.is_err());
        let text =
            EXAMPLE.split("stages:").next().unwrap().to_string() + "gates:" + EXAMPLE.split("gates:").nth(1).unwrap();
        let spec = RolloutSpec::from_yaml(&text).unwrap();
        let weights: Vec<u16> = (0..spec.stages.len()).map(|i| spec.stage_weight(i).bp()).collect();
        assert_eq!(weights, [100, 500, 2000, 5000, 10_000]);
        let days: Vec<u64> = spec.stages.iter().map(|s| s.min_duration.as_secs() / DAY).collect();
        // Entered on day 1, 2, 3, 5 and 7.
        assert_eq!(days, [1, 1, 2, 2, 0]);
    }

    #[test]
    fn errors_name_the_field() {
        use serde_yaml_ng::Value;
        let cases: Vec<(Vec<&str>, Value, &str)> = vec![
            (vec!["rollout"], "bad name".into(), "rollout"),
            (vec!["challenger"], "v1".into(), "challenger"),
            (vec!["interval"], "soon".into(), "interval"),
            (vec!["colour"], "red".into(), "colour"),
            (
                vec!["gates", "latency", "latency_tolerance_multiplier"],
                0.5.into(),
                "gates.latency.latency_tolerance_multiplier",
            ),
            (vec!["gates", "error_rate", "error_tolerance"], (-1.0).into(), "gates.error_rate.error_tolerance"),
            (vec!["gates", "labels", "min_labels"], 0.into(), "gates.labels.min_labels"),
            (vec!["gates", "prediction", "on_no_data"], "maybe".into(), "gates.prediction.on_no_data"),
            (vec!["gates", "method"], "bayesian".into(), "gates.method"),
            (vec!["gates", "alpha"], 0.5.into(), "gates.alpha"),
            (vec!["gates", "alpha"], 0.0.into(), "gates.alpha"),
            (vec!["gates", "look_growth"], 1.0.into(), "gates.look_growth"),
            (vec!["gates", "look_growth"], "fast".into(), "gates.look_growth"),
            (vec!["envoy", "admin"], Value::Sequence(vec![]), "envoy.admin"),
            (vec!["envoy", "admin"], Value::Sequence(vec!["127.0.0.1:9901".into()]), "envoy.admin[0]"),
            (vec!["server", "listen"], "everywhere".into(), "server.listen"),
            (vec!["envoy", "max_missing_share"], 1.0.into(), "envoy.max_missing_share"),
            (vec!["envoy", "max_missing_share"], (-0.1).into(), "envoy.max_missing_share"),
            (
                vec!["envoy", "prometheus"],
                serde_yaml_ng::from_str("{url: prom:9090, selector: 'job=\"x\"'}").unwrap(),
                "envoy.prometheus.url",
            ),
            (
                vec!["envoy", "prometheus"],
                serde_yaml_ng::from_str("{url: 'http://p:9090', selector: '{job=\"x\"}'}").unwrap(),
                "envoy.prometheus.selector",
            ),
            (
                vec!["envoy", "prometheus"],
                serde_yaml_ng::from_str("{url: 'http://p:9090', selector: ''}").unwrap(),
                "envoy.prometheus.selector",
            ),
            (
                vec!["envoy", "prometheus"],
                serde_yaml_ng::from_str("{url: 'http://p:9090', selector: 'job=\"x\"', timeout: 0s}").unwrap(),
                "envoy.prometheus.timeout",
            ),
            (
                vec!["envoy", "prometheus"],
                serde_yaml_ng::from_str("{url: 'http://p:9090', selector: 'job=\"x\"', query: up}").unwrap(),
                "envoy.prometheus.query",
            ),
            (vec!["alerts", "retry_attempts"], 0.into(), "alerts.retry_attempts"),
            (vec!["alerts", "retry_backoff"], "0s".into(), "alerts.retry_backoff"),
            (vec!["alerts", "retry_backoff"], "1m".into(), "alerts.retry_backoff"),
            (vec!["alerts", "retry_max_backoff"], "1h".into(), "alerts.retry_max_backoff"),
        ];
        for (path, value, field) in cases {
            assert_eq!(field_of(with(&path, value.clone())), field, "{path:?} = {value:?}");
        }
    }

    #[test]
    fn stage_weights_must_rise_to_100() {
        let stages = |ws: &[f64]| {
            serde_yaml_ng::Value::Sequence(
                ws.iter()
                    .map(|w| serde_yaml_ng::from_str(&format!("{{weight_percent: {w}, min_requests: 1}}")).unwrap())
                    .collect(),
            )
        };
        assert_eq!(field_of(with(&["stages"], stages(&[5.0, 1.0, 100.0]))), "stages[1].weight_percent");
        assert_eq!(field_of(with(&["stages"], stages(&[1.0, 50.0]))), "stages[1].weight_percent");
        assert_eq!(field_of(with(&["stages"], stages(&[0.001, 100.0]))), "stages[0].weight_percent");
        assert_eq!(field_of(with(&["stages"], stages(&[1.0, 101.0]))), "stages[1].weight_percent");
        let err = with(&["stages"], stages(&[1.0, 150.0])).unwrap_err().to_string();
        assert!(err.contains("weight_percent`: 150 must be within 0..=100"), "{err}");
        assert!(!err.contains("basis points"), "{err}");
        assert_eq!(field_of(with(&["stages"], stages(&[]))), "stages");
        assert!(with(&["stages"], stages(&[0.5, 100.0])).is_ok());
    }

    #[test]
    fn gate_segments_read_all_none_or_a_list_and_name_what_is_wrong() {
        let segmented = |segments: &str| {
            let spec = edited(
                EXAMPLE,
                &["filter", "segment"],
                serde_yaml_ng::from_str("{header: x-tier, values: [free, pro]}").unwrap(),
            )
            .unwrap();
            let mut doc = serde_yaml_ng::to_value(&spec).unwrap();
            doc["gates"]["error_rate"]["segments"] = serde_yaml_ng::from_str(segments).unwrap();
            RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap())
        };
        let spec = RolloutSpec::from_yaml(EXAMPLE).unwrap();
        let e = spec.gates.error_rate.as_ref().unwrap();
        assert_eq!(e.segments, SegmentSelection::None, "default: today's specs keep their meaning");
        assert_eq!(spec.gates.segment_min_responses, 100);
        assert_eq!(spec.gates.on_segment_too_small, SegmentTooSmall::Ignore);
        let all = segmented("all").unwrap();
        let sel = &all.gates.error_rate.as_ref().unwrap().segments;
        assert_eq!(sel, &SegmentSelection::All);
        assert_eq!(sel.names(all.filter.segment.as_ref()), ["free", "pro", "other"]);
        let listed = segmented("[pro, other]").unwrap();
        assert_eq!(
            listed.gates.error_rate.unwrap().segments,
            SegmentSelection::Only(vec!["pro".into(), "other".into()])
        );
        assert_eq!(segmented("none").unwrap().gates.error_rate.unwrap().segments, SegmentSelection::None);
        // Round trip: what serializes parses back the same.
        let back = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&all).unwrap()).unwrap();
        assert_eq!(back, all);
        assert_eq!(field_of(segmented("[gold]")), "gates.error_rate.segments[0]");
        let err = segmented("[pro, gold]").unwrap_err().to_string();
        assert!(err.contains("`gold` is not a segment the filter counts: one of `free`, `pro` or `other`"), "{err}");
        assert_eq!(field_of(segmented("[pro, pro]")), "gates.error_rate.segments[1]");
        assert_eq!(field_of(segmented("[]")), "gates.error_rate.segments");
        let err = segmented("some").unwrap_err().to_string();
        assert!(err.contains("expected `all`, `none` or a list of segment names"), "{err}");
        // Without filter.segment there is nothing to split by.
        assert_eq!(
            field_of(with(
                &["gates", "timeouts"],
                serde_yaml_ng::from_str("{timeout_tolerance: 1, segments: all}").unwrap()
            )),
            "gates.timeouts.segments"
        );
        assert_eq!(
            field_of(with(
                &["gates", "labels"],
                serde_yaml_ng::from_str("{min_degradation_tolerance: 0.02, min_labels: 10, segments: all}").unwrap()
            )),
            "gates.labels.segments"
        );
        // The labels gate takes `segments` like the others.
        let mut doc = serde_yaml_ng::to_value(&all).unwrap();
        doc["gates"]["labels"] =
            serde_yaml_ng::from_str("{min_degradation_tolerance: 0.02, min_labels: 10, segments: [pro]}").unwrap();
        let labelled = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
        assert_eq!(labelled.gates.labels.unwrap().segments, SegmentSelection::Only(vec!["pro".into()]));
        doc["gates"]["labels"]["segments"] = serde_yaml_ng::from_str("[gold]").unwrap();
        let bad = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap());
        assert_eq!(field_of(bad), "gates.labels.segments[0]");
        assert_eq!(field_of(with(&["gates", "segment_min_responses"], 0.into())), "gates.segment_min_responses");
        assert_eq!(field_of(with(&["gates", "on_segment_too_small"], "hold".into())), "gates.on_segment_too_small");
        let block = with(&["gates", "on_segment_too_small"], "block".into()).unwrap();
        assert_eq!(block.gates.on_segment_too_small, SegmentTooSmall::Block);
    }

    #[test]
    fn a_prometheus_source_needs_no_admin_list() {
        let prometheus = serde_yaml_ng::from_str("{url: 'http://p:9090', selector: 'job=\"canary\"'}").unwrap();
        let spec = with(&["envoy", "prometheus"], prometheus).unwrap();
        let mut value: serde_yaml_ng::Value = serde_yaml_ng::to_value(&spec).unwrap();
        value["envoy"]["admin"] = serde_yaml_ng::Value::Sequence(vec![]);
        let spec = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&value).unwrap()).unwrap();
        let p = spec.envoy.prometheus.unwrap();
        assert_eq!((p.url.as_str(), p.timeout), ("http://p:9090", Duration::from_secs(2)));
        assert_eq!(spec.envoy.max_missing_share, 0.0, "default: every Envoy must answer");
    }

    #[test]
    fn sinks_list_file_configmap_and_wasmplugin_and_ecds_dir_stays_a_file_sink() {
        let spec = RolloutSpec::from_yaml(EXAMPLE).unwrap();
        assert_eq!(spec.sinks(), [SinkSpec::File { dir: "/var/run/canary".into() }]);
        let listed = with(
            &["envoy", "sinks"],
            serde_yaml_ng::from_str(
                "[{file: {dir: /b}}, {config_map: {namespace: shop, name: canary-ecds}}, \
                 {wasm_plugin: {namespace: istio-system, name: canary}}]",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            listed.sinks(),
            [
                SinkSpec::File { dir: "/var/run/canary".into() },
                SinkSpec::File { dir: "/b".into() },
                SinkSpec::ConfigMap { namespace: "shop".into(), name: "canary-ecds".into(), key: "canary.json".into() },
                SinkSpec::WasmPlugin { namespace: "istio-system".into(), name: "canary".into() },
            ]
        );
        assert_eq!(RolloutSpec::from_yaml(&listed.to_yaml()).unwrap(), listed, "round-trips through the stored copy");
        assert_eq!(listed.envoy.sink_retry, RetrySpec::default());
    }

    #[test]
    fn sink_errors_name_the_field() {
        use serde_yaml_ng::Value;
        let v = |text: &str| -> Value { serde_yaml_ng::from_str(text).unwrap() };
        let cases: Vec<(Vec<&str>, Value, &str)> = vec![
            (
                vec!["envoy", "sinks"],
                v("[{config_map: {namespace: Shop, name: x}}]"),
                "envoy.sinks[0].config_map.namespace",
            ),
            (vec!["envoy", "sinks"], v("[{wasm_plugin: {namespace: a, name: -x}}]"), "envoy.sinks[0].wasm_plugin.name"),
            (
                vec!["envoy", "sinks"],
                v("[{config_map: {namespace: a, name: b, key: 'a/b'}}]"),
                "envoy.sinks[0].config_map.key",
            ),
            (vec!["envoy", "sinks"], v("[{s3: {bucket: x}}]"), "envoy.sinks[0]"),
            (vec!["envoy", "sink_retry", "attempts"], 0.into(), "envoy.sink_retry.attempts"),
            (vec!["envoy", "sink_retry", "backoff"], "0s".into(), "envoy.sink_retry.backoff"),
        ];
        for (path, value, field) in cases {
            let got = field_of(with(&path, value.clone()));
            assert!(got.starts_with(field), "{path:?} = {value:?}: {got}");
        }
        let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(EXAMPLE).unwrap();
        doc["envoy"].as_mapping_mut().unwrap().remove("ecds_dir");
        let err = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap()).unwrap_err();
        assert!(matches!(&err, SpecError::Invalid { field, .. } if field == "envoy.sinks"), "{err}");
    }

    #[test]
    fn no_gate_is_refused() {
        assert_eq!(field_of(with(&["gates"], serde_yaml_ng::from_str("{}").unwrap())), "gates");
    }

    #[test]
    fn filter_config_follows_the_stage() {
        let spec = RolloutSpec::from_yaml(EXAMPLE).unwrap();
        let c = spec.filter_config(&spec.stage_name(1), spec.stage_weight(1), 7, false);
        assert_eq!((c.stage.as_str(), c.challenger_weight_bp.bp(), c.epoch), ("5pct", 500, 7));
        assert!(c.validate().is_ok());
    }

    const SHADOW_SPEC: &str = r#"
rollout: recs-v3
champion: v1
challenger: v2
interval: 1s
stages:
  - { shadow: true, min_duration: 1h, min_requests: 500 }
  - { weight_percent: 5, min_duration: 1h, min_requests: 500 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 0.5 }
  prediction: { max_psi: 0.2, min_predictions: 300 }
  shadow: { min_agreement: 0.9, error_tolerance: 1.0, latency_tolerance_multiplier: 1.5 }
envoy: { admin: ["http://127.0.0.1:9901"], ecds_dir: /x, wasm: /y.wasm }
filter:
  prediction:
    from: { header: x-prediction }
    bins: { numeric: [0.25, 0.5, 0.75] }
  segment: { header: x-tier, values: [free, pro] }
  shadow: { timeout: 250ms, sample_percent: 50 }
"#;

    fn shadow_with(path: &[&str], value: serde_yaml_ng::Value) -> Result<RolloutSpec, SpecError> {
        edited(SHADOW_SPEC, path, value)
    }

    #[test]
    fn a_shadow_stage_gets_the_shadow_configuration_and_no_other_stage_does() {
        let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
        assert_eq!((spec.stage_name(0), spec.stage_weight(0)), ("shadow".to_string(), Weight::ZERO));
        assert!(spec.is_shadow_stage(0) && !spec.is_shadow_stage(1) && !spec.is_shadow_stage(9));
        let c = spec.filter_config(&spec.stage_name(0), spec.stage_weight(0), 1, true);
        assert_eq!(
            c.shadow,
            Some(ShadowConfig {
                cluster: "v2".into(),
                sample_bp: Weight::from_bp(5000).unwrap(),
                timeout_ms: 250,
                max_body_bytes: 64 * 1024,
                max_in_flight: 1000,
            })
        );
        assert!(c.validate().is_ok());
        for i in 1..3 {
            let c = spec.filter_config(&spec.stage_name(i), spec.stage_weight(i), 1, spec.is_shadow_stage(i));
            assert_eq!(c.shadow, None, "stage {i}");
        }
        assert_eq!(spec.gates.prediction.as_ref().unwrap().min_predictions, 300);
        assert_eq!(RolloutSpec::from_yaml(&spec.to_yaml()).unwrap(), spec, "round-trips through the stored copy");
    }

    #[test]
    fn prediction_and_segment_pass_through_to_every_stage() {
        use canary_core::predict::{Bins, PredictionSource};
        let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
        for i in 0..spec.stages.len() {
            let c = spec.filter_config(&spec.stage_name(i), spec.stage_weight(i), 3, spec.is_shadow_stage(i));
            let p = c.prediction.as_ref().unwrap();
            assert_eq!(p.from, PredictionSource::Header("x-prediction".into()));
            assert_eq!(p.bins, Bins::Numeric(vec![0.25, 0.5, 0.75]));
            assert_eq!(c.segment.as_ref().unwrap().values, ["free", "pro"]);
            let plan = c.validate().unwrap();
            assert_eq!(plan.prediction.unwrap().names, ["b0", "b1", "b2", "b3", "unparsed"]);
        }
        // Categorical bins and a JSON pointer, as YAML.
        let text = SHADOW_SPEC.replace(
            "    from: { header: x-prediction }\n    bins: { numeric: [0.25, 0.5, 0.75] }",
            "    from: { json_pointer: /label }\n    bins: { categorical: [cat, dog] }\n    max_body_bytes: 1024",
        );
        let spec = RolloutSpec::from_yaml(&text).unwrap();
        let p = spec.filter.prediction.clone().unwrap();
        assert_eq!(
            (p.from, p.bins, p.max_body_bytes),
            (PredictionSource::JsonPointer("/label".into()), Bins::Categorical(vec!["cat".into(), "dog".into()]), 1024)
        );
        assert_eq!(RolloutSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
    }

    #[test]
    fn shadow_prediction_and_segment_errors_name_the_field() {
        use serde_yaml_ng::Value;
        let stage = |text: &str| -> Value { serde_yaml_ng::from_str(text).unwrap() };
        let cases: Vec<(Vec<&str>, Value, &str)> = vec![
            (
                vec!["stages"],
                Value::Sequence(vec![
                    stage("{weight_percent: 5}"),
                    stage("{shadow: true}"),
                    stage("{weight_percent: 100}"),
                ]),
                "stages[1].shadow",
            ),
            (
                vec!["stages"],
                Value::Sequence(vec![stage("{shadow: true, weight_percent: 5}"), stage("{weight_percent: 100}")]),
                "stages[0].weight_percent",
            ),
            (
                vec!["stages"],
                Value::Sequence(vec![
                    stage("{shadow: true}"),
                    stage("{weight_percent: 0}"),
                    stage("{weight_percent: 100}"),
                ]),
                "stages[1].weight_percent",
            ),
            (
                vec!["stages"],
                Value::Sequence(vec![
                    stage("{shadow: true}"),
                    stage("{min_requests: 5}"),
                    stage("{weight_percent: 100}"),
                ]),
                "stages[1].weight_percent",
            ),
            (
                vec!["stages"],
                Value::Sequence(vec![stage("{weight_percent: 5}"), stage("{weight_percent: 100}")]),
                "gates.shadow",
            ),
            (vec!["gates", "shadow"], Value::Null, "gates.shadow"),
            (vec!["gates", "shadow", "min_agreement"], 1.5.into(), "gates.shadow.min_agreement"),
            (vec!["gates", "shadow", "error_tolerance"], (-1.0).into(), "gates.shadow.error_tolerance"),
            (
                vec!["gates", "shadow", "latency_tolerance_multiplier"],
                0.9.into(),
                "gates.shadow.latency_tolerance_multiplier",
            ),
            (vec!["gates", "shadow", "colour"], "red".into(), "gates.shadow.colour"),
            (vec!["filter", "shadow", "timeout"], "0s".into(), "filter.shadow.timeout"),
            (vec!["filter", "shadow", "timeout"], "2m".into(), "filter.shadow.timeout"),
            (vec!["filter", "shadow", "sample_percent"], 0.into(), "filter.shadow.sample_percent"),
            (vec!["filter", "shadow", "sample_percent"], 100.5.into(), "filter.shadow.sample_percent"),
            (vec!["filter", "shadow", "cluster"], "".into(), "filter.shadow.cluster"),
            (vec!["filter", "shadow", "max_in_flight"], 0.into(), "filter.shadow.max_in_flight"),
            (
                vec!["filter", "prediction", "bins"],
                stage("{numeric: [0.5, 0.25]}"),
                "filter.prediction.bins.numeric[1]",
            ),
            (vec!["filter", "prediction", "from"], stage("{header: 'bad header'}"), "filter.prediction.from.header"),
            (vec!["filter", "prediction", "max_body_bytes"], 0.into(), "filter.prediction.max_body_bytes"),
            (vec!["filter", "segment", "values"], Value::Sequence(vec!["other".into()]), "filter.segment.values[0]"),
            (vec!["filter", "segment", "header"], "x-model-version".into(), "filter.segment.header"),
            (vec!["filter", "prediction"], Value::Null, "filter.prediction"),
        ];
        for (path, value, field) in cases {
            assert_eq!(field_of(shadow_with(&path, value.clone())), field, "{path:?} = {value:?}");
        }
    }

    #[test]
    fn the_shadow_gate_alone_is_not_enough() {
        let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(SHADOW_SPEC).unwrap();
        let gates = doc["gates"].as_mapping_mut().unwrap();
        gates.remove("error_rate");
        gates.remove("prediction");
        let err = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap()).unwrap_err();
        assert!(err.to_string().contains("needs a gate over live traffic too"), "{err}");
    }

    #[test]
    fn a_prediction_gate_that_ignores_missing_data_needs_no_prediction_config() {
        // The pre-existing shape of specs (and tests): allowed, and never blocks.
        let spec = with(&["filter"], serde_yaml_ng::from_str("{key: [{header: x-user-id}]}").unwrap()).unwrap();
        assert!(spec.filter.prediction.is_none());
        assert_eq!(spec.gates.prediction.unwrap().on_no_data, NoDataPolicy::Ignore);
    }
}
