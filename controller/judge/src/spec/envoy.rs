//! Where the rollout reads its evidence and writes the filter's
//! configuration (`envoy` in the spec): the Envoys' admin API or
//! Prometheus, and the sinks.

use std::path::PathBuf;
use std::time::Duration;

use canary_core::config::Counts;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{invalid, RolloutSpec, SpecError};
pub use crate::evidence::cluster::prometheus::ClusterMetrics;

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
    /// With `envoy.counts: cluster`: under which names Prometheus holds the
    /// per-version status codes and latency: `envoy` (Envoy's own
    /// `envoy_cluster_upstream_rq_*`, per `envoy_cluster_name`; the
    /// default) or `istio` (`istio_requests_total` and
    /// `istio_request_duration_milliseconds`, per `destination_version`,
    /// `reporter="source"`). See `evidence::cluster::prometheus`.
    #[serde(default, skip_serializing_if = "ClusterMetrics::is_envoy")]
    pub cluster_metrics: ClusterMetrics,
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

impl RolloutSpec {
    /// The stats source: admin URLs or Prometheus, and the missing share.
    pub(super) fn validate_envoy(&self) -> Result<(), SpecError> {
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
        if let Some(p) = &self.envoy.prometheus {
            if self.envoy.counts == Counts::Filter && !p.cluster_metrics.is_envoy() {
                return Err(invalid(
                    "envoy.prometheus.cluster_metrics",
                    "names where Prometheus holds per-version status codes and latency, read only with \
                     `envoy.counts: cluster`: set envoy.counts to `cluster` or remove cluster_metrics",
                ));
            }
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
        Ok(())
    }

    /// Every sink the spec names: `envoy.ecds_dir` first, then `envoy.sinks`.
    pub fn sinks(&self) -> Vec<SinkSpec> {
        let file = self.envoy.ecds_dir.clone().map(|dir| SinkSpec::File { dir });
        file.into_iter().chain(self.envoy.sinks.iter().cloned()).collect()
    }

    pub(super) fn validate_sinks(&self) -> Result<(), SpecError> {
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
