//! The rollout spec: what an operator writes (YAML) to roll a challenger out.
//! Parsed with unknown fields refused, then validated; every error names its
//! field. Durations are humantime strings (`500ms`, `2s`, `1d`), so a test can
//! run a whole rollout in seconds and production in days.

use std::path::{Path, PathBuf};
use std::time::Duration;

use canary_core::config::{KeySource, OwnedHeaders, UnkeyedPolicy};
use canary_core::{FilterConfig, Weight};
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

/// The whole spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Name (defaults to `<weight>pct`); sent in the stage header.
    #[serde(default)]
    pub name: Option<String>,
    /// Challenger share in percent, e.g. `1`, `0.5`, `100` (resolution 0.01).
    pub weight_percent: f64,
    /// Least time in the stage before it may advance (it may roll back earlier).
    #[serde(with = "humantime_serde", default)]
    pub min_duration: Duration,
    /// Least responses per version before gates are evaluated at all.
    #[serde(default)]
    pub min_requests: u64,
}

const DAY: u64 = 24 * 3600;

/// 1 % on day 1, 5 % on day 2, 20 % on day 3, 50 % on day 5, 100 % on day 7.
pub fn default_stages() -> Vec<StageSpec> {
    let s = |w: f64, days: u64, min_requests| StageSpec {
        name: None,
        weight_percent: w,
        min_duration: Duration::from_secs(days * DAY),
        min_requests,
    };
    vec![s(1.0, 1, 1000), s(5.0, 1, 1000), s(20.0, 2, 1000), s(50.0, 2, 1000), s(100.0, 0, 0)]
}

/// The gates; each is optional, at least one is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesSpec {
    #[serde(default)]
    pub error_rate: Option<ErrorRateGate>,
    #[serde(default)]
    pub latency: Option<LatencyGate>,
    #[serde(default)]
    pub prediction: Option<PredictionGate>,
    #[serde(default)]
    pub timeouts: Option<TimeoutGate>,
    #[serde(default)]
    pub labels: Option<LabelGate>,
}

/// Challenger 5xx rate ≤ champion's + `error_tolerance` percentage points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateGate {
    pub error_tolerance: f64,
}

/// Challenger latency quantile ≤ champion's × `latency_tolerance_multiplier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyGate {
    pub latency_tolerance_multiplier: f64,
    /// The quantile compared, default 0.99.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
}

fn default_quantile() -> f64 {
    0.99
}

/// What a gate without data does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoDataPolicy {
    /// Hold the stage (the safe default).
    #[default]
    Hold,
    /// Do not block advancing (the gate is reported as "no data").
    Ignore,
}

/// PSI(challenger ‖ champion) < `max_psi` over the prediction bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictionGate {
    pub max_psi: f64,
    /// The filter does not count predictions yet: this says whether that blocks.
    #[serde(default)]
    pub on_no_data: NoDataPolicy,
}

/// Challenger 504 rate ≤ champion's + `timeout_tolerance` percentage points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutGate {
    pub timeout_tolerance: f64,
}

/// Challenger label metric ≥ champion's − `min_degradation_tolerance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelGate {
    /// In the metric's own units (e.g. 0.02 = two accuracy points).
    pub min_degradation_tolerance: f64,
    /// Labels needed per version for the stage before the gate can pass.
    pub min_labels: u64,
}

/// The Envoys this rollout drives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoySpec {
    /// Admin API base URLs, e.g. `http://127.0.0.1:9901`.
    pub admin: Vec<String>,
    /// Directory Envoy watches for `canary.json` (file-based ECDS).
    pub ecds_dir: PathBuf,
    /// Path of `canary_filter.wasm` as Envoy sees it.
    pub wasm: PathBuf,
    /// Per-endpoint timeout for stats reads.
    #[serde(with = "humantime_serde", default = "default_admin_timeout")]
    pub timeout: Duration,
    /// Time allowed for every Envoy to apply a new configuration before an alert.
    #[serde(with = "humantime_serde", default = "default_apply_timeout")]
    pub apply_timeout: Duration,
}

fn default_admin_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_apply_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Filter settings passed through to its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSpec {
    /// `[{header: x-user-id}, {cookie: uid}]`, as in the plugin configuration.
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub key: Vec<KeySource>,
    pub unkeyed: UnkeyedPolicy,
    pub headers: OwnedHeaders,
}

impl Default for FilterSpec {
    fn default() -> Self {
        FilterSpec {
            key: vec![KeySource::Header("x-user-id".into())],
            unkeyed: UnkeyedPolicy::default(),
            headers: OwnedHeaders::default(),
        }
    }
}

/// Where alerts go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSpec {
    pub webhooks: Vec<WebhookSpec>,
    /// Consecutive failed reads of the stats before an alert.
    pub source_failures: u32,
}

impl Default for AlertsSpec {
    fn default() -> Self {
        AlertsSpec { webhooks: vec![], source_failures: 3 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The alert as a JSON object.
    #[default]
    Json,
    /// `{"text": ...}`, what Slack incoming webhooks take.
    Slack,
}

/// Where labels (ground-truth outcomes) come from, besides `POST /labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsSpec {
    /// A JSONL file of outcomes, read as it grows.
    #[serde(default)]
    pub jsonl: Option<PathBuf>,
}

/// The daemon's HTTP server (labels intake).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
            Some(s) => format!("{}pct", s.weight_percent).replace('.', "_"),
            None => format!("stage{index}"),
        }
    }

    pub fn stage_weight(&self, index: usize) -> Weight {
        self.stages.get(index).and_then(|s| percent_to_weight(s.weight_percent).ok()).unwrap_or(Weight::ZERO)
    }

    /// The filter configuration for a stage name, weight and epoch.
    pub fn filter_config(&self, stage: &str, weight: Weight, epoch: u64) -> FilterConfig {
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
            prediction: None,
            segment: None,
            shadow: None,
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
            let w = percent_to_weight(stage.weight_percent).map_err(|e| invalid(&field, e))?;
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
        // The filter's own rules check names, salt and headers, for every stage.
        for i in 0..self.stages.len() {
            let config = self.filter_config(&self.stage_name(i), self.stage_weight(i), 0);
            config.validate().map_err(|e| {
                let field = match e.field() {
                    "stage" => format!("stages[{i}].name"),
                    f if f.starts_with("key") || f.starts_with("headers") || f == "unkeyed" => format!("filter.{f}"),
                    f => f.to_string(),
                };
                invalid(field, e)
            })?;
        }
        if self.interval.is_zero() {
            return Err(invalid("interval", "must be above 0"));
        }
        let g = &self.gates;
        if g.error_rate.is_none()
            && g.latency.is_none()
            && g.prediction.is_none()
            && g.timeouts.is_none()
            && g.labels.is_none()
        {
            return Err(invalid("gates", "needs at least one gate; a rollout with no gate advances on time alone"));
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
        }
        if let Some(t) = &g.timeouts {
            non_negative("gates.timeouts.timeout_tolerance", t.timeout_tolerance)?;
        }
        if let Some(l) = &g.labels {
            non_negative("gates.labels.min_degradation_tolerance", l.min_degradation_tolerance)?;
            if l.min_labels == 0 {
                return Err(invalid("gates.labels.min_labels", "must be >= 1: a label gate never passes on no labels"));
            }
        }
        if self.envoy.admin.is_empty() {
            return Err(invalid("envoy.admin", "needs at least one Envoy admin URL"));
        }
        for (i, url) in self.envoy.admin.iter().enumerate() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    format!("envoy.admin[{i}]"),
                    format!("`{url}` must start with http:// or https://"),
                ));
            }
        }
        for (i, hook) in self.alerts.webhooks.iter().enumerate() {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(invalid(format!("alerts.webhooks[{i}].url"), "must start with http:// or https://"));
            }
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!("`{}` is not an address like 127.0.0.1:8080", self.server.listen),
            ));
        }
        Ok(())
    }
}

/// Percent with at most two decimals → basis points.
pub fn percent_to_weight(percent: f64) -> Result<Weight, String> {
    let bp = percent * 100.0;
    if !bp.is_finite() || bp < 0.0 || (bp - bp.round()).abs() > 1e-6 {
        return Err(format!("{percent} is not a percentage with at most two decimals"));
    }
    Weight::from_bp(bp.round() as u64).map_err(|e| e.to_string())
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
        let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(EXAMPLE).unwrap();
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
            (vec!["envoy", "admin"], Value::Sequence(vec![]), "envoy.admin"),
            (vec!["envoy", "admin"], Value::Sequence(vec!["127.0.0.1:9901".into()]), "envoy.admin[0]"),
            (vec!["server", "listen"], "everywhere".into(), "server.listen"),
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
        assert_eq!(field_of(with(&["stages"], stages(&[]))), "stages");
        assert!(with(&["stages"], stages(&[0.5, 100.0])).is_ok());
    }

    #[test]
    fn no_gate_is_refused() {
        assert_eq!(field_of(with(&["gates"], serde_yaml_ng::from_str("{}").unwrap())), "gates");
    }

    #[test]
    fn filter_config_follows_the_stage() {
        let spec = RolloutSpec::from_yaml(EXAMPLE).unwrap();
        let c = spec.filter_config(&spec.stage_name(1), spec.stage_weight(1), 7);
        assert_eq!((c.stage.as_str(), c.challenger_weight_bp.bp(), c.epoch), ("5pct", 500, 7));
        assert!(c.validate().is_ok());
    }
}
