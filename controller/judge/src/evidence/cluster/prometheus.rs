//! `envoy.counts: cluster` over Prometheus: Envoy's per-cluster stats as
//! Prometheus holds them (or Istio's per-version request metrics), read
//! into the same cumulative per-endpoint samples as the admin API's
//! [`parse_cluster_stats`](super::parse_cluster_stats), so that
//! [`ClusterCounts`](super::ClusterCounts) windows them per stage the same
//! way (cumulative − the stage's baseline, restarts through its reset
//! tracker, per `instance`).
//!
//! ```text
//!  one more instant query, next to the filter's four (same selector SEL, same `up` and uptime):
//!  envoy (default): Envoy's own /stats/prometheus names (checked against Envoy 1.40, fixture below)
//!    sum by (__name__, instance, envoy_cluster_name, envoy_response_code_class, envoy_response_code, le) ({
//!      __name__=~"envoy_cluster_upstream_rq_xx|envoy_cluster_upstream_rq|envoy_cluster_upstream_rq_time_bucket",
//!      envoy_cluster_name=~"V1|V2", SEL})
//!    envoy_cluster_upstream_rq_xx{envoy_response_code_class="2"}   ─► rq_2xx (1 … 5)
//!    envoy_cluster_upstream_rq{envoy_response_code="504"}          ─► rq_timeout (other codes: not read)
//!    envoy_cluster_upstream_rq_time_bucket{le} (ms)                ─► latency_us buckets (×1000)
//!  istio: Istio's standard metrics, as the proxy that routed the request reports them
//!    sum by (__name__, instance, destination_version, response_code, le) ({
//!      __name__=~"istio_requests_total|istio_request_duration_milliseconds_bucket",
//!      reporter="source", destination_version=~"V1|V2", SEL})
//!    istio_requests_total{response_code="503"}                    ─► rq_5xx (class of the code); "504" also rq_timeout
//!    istio_request_duration_milliseconds_bucket{le} (ms)           ─► latency_us buckets (×1000)
//!  ──cluster_reads (pure)──► per instance: EndpointSample at CUMULATIVE_EPOCH ──ClusterCounts──► the stage window
//! ```
//!
//! Why raw cumulative counters and not `increase(…[stage])`: as for the
//! filter's series (see [`crate::evidence::prometheus`]), `increase`
//! extrapolates and is never exact; a raw cumulative value minus the
//! stage's baseline is, per instance, with restarts corrected by the reset
//! tracker.
//!
//! **Istio.** Its `reporter="source"` series are counted by the proxy that
//! sent the request (a client sidecar or a gateway: where the filter runs
//! and routes), per `destination_version` (the pod's `version` label, which
//! must then equal the rollout's version names). Codes that are not HTTP
//! status codes (`0`: no response, e.g. the client went away) are not
//! responses and are not counted. Its latency is the whole request's as
//! that proxy saw it (Envoy's `upstream_rq_time` is the upstream's); both
//! are Envoy histograms with the same bucket semantics. Istio's default
//! buckets (0.5, 1, 5, 10, 25, … ms) are as coarse as Envoy's defaults:
//! set finer ones (`sidecar.istio.io/statsHistogramBuckets`) for a latency
//! gate.

use std::collections::BTreeMap;

use canary_core::metrics::{Counter, Histogram};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CUMULATIVE_EPOCH;
use crate::evidence::admin::{bucket_series, counter_series, is_name};
use crate::evidence::merge::EndpointRead;
use crate::evidence::prometheus::{
    bins_of, count_of, label, le_of, promql_string, reads_from, sample_error, PromSample, ResponseError, INSTANCE_LABEL,
};

/// Under which names Prometheus holds the per-version status codes and
/// latency (`envoy.prometheus.cluster_metrics`, with `envoy.counts: cluster`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMetrics {
    /// Envoy's own `/stats/prometheus`: `envoy_cluster_upstream_rq_xx`,
    /// `envoy_cluster_upstream_rq`, `envoy_cluster_upstream_rq_time_bucket`,
    /// per `envoy_cluster_name` (one cluster per version, named after it).
    #[default]
    Envoy,
    /// Istio's standard metrics: `istio_requests_total` and
    /// `istio_request_duration_milliseconds_bucket`, per
    /// `destination_version`, `reporter="source"`.
    Istio,
}

impl ClusterMetrics {
    pub fn is_envoy(&self) -> bool {
        *self == ClusterMetrics::Envoy
    }

    /// The label naming the version.
    fn version_label(self) -> &'static str {
        match self {
            ClusterMetrics::Envoy => "envoy_cluster_name",
            ClusterMetrics::Istio => "destination_version",
        }
    }
}

const ENVOY_CLASSES: &str = "envoy_cluster_upstream_rq_xx";
const ENVOY_CODES: &str = "envoy_cluster_upstream_rq";
const ENVOY_TIME: &str = "envoy_cluster_upstream_rq_time_bucket";
const ISTIO_REQUESTS: &str = "istio_requests_total";
const ISTIO_DURATION: &str = "istio_request_duration_milliseconds_bucket";

/// The query (PromQL) for the cumulative per-version stats of `versions`
/// on the Envoys `selector` picks. Version names are `[A-Za-z0-9_-]`: no
/// regex escaping needed.
pub fn cluster_query(metrics: ClusterMetrics, versions: &[&str], selector: &str) -> String {
    let sel = selector.trim();
    let sel = if sel.is_empty() { String::new() } else { format!(", {sel}") };
    let versions = promql_string(&versions.join("|"));
    match metrics {
        ClusterMetrics::Envoy => format!(
            "sum by (__name__, {INSTANCE_LABEL}, envoy_cluster_name, envoy_response_code_class, envoy_response_code, le) \
             ({{__name__=~\"{ENVOY_CLASSES}|{ENVOY_CODES}|{ENVOY_TIME}\", envoy_cluster_name=~{versions}{sel}}})"
        ),
        ClusterMetrics::Istio => format!(
            "sum by (__name__, {INSTANCE_LABEL}, destination_version, response_code, le) \
             ({{__name__=~\"{ISTIO_REQUESTS}|{ISTIO_DURATION}\", reporter=\"source\", destination_version=~{versions}{sel}}})"
        ),
    }
}

/// The class counter of an HTTP status code (`"504"` → `rq_5xx`), `None`
/// for what is not one (`"0"`, garbage).
fn class_of_code(code: &str) -> Option<Counter> {
    let n: u16 = code.parse().ok().filter(|n| (100..600).contains(n))?;
    class_counter(n / 100)
}

fn class_counter(class: u16) -> Option<Counter> {
    Some(match class {
        1 => Counter::Rq1xx,
        2 => Counter::Rq2xx,
        3 => Counter::Rq3xx,
        4 => Counter::Rq4xx,
        5 => Counter::Rq5xx,
        _ => return None,
    })
}

/// One histogram's cumulative buckets by `le` (its bits): `(le, count)`.
type Cumulative = BTreeMap<u64, (f64, u64)>;

/// The per-instance cumulative samples of `rollout` at
/// [`CUMULATIVE_EPOCH`] (what [`ClusterCounts::apply`](super::ClusterCounts::apply)
/// takes): the fleet and uptimes from the `up` and uptime answers, as for the
/// filter's series ([`reads_from`]), and from `data` (the answer to
/// [`cluster_query`]) `rq_1xx`…`rq_5xx`, `rq_timeout` (504s) and
/// `latency_us` buckets (ms × 1000) of `versions`. Series of other versions
/// or instances `up` does not list are ignored; a malformed sample (no
/// version or instance label, a value that is not a count, buckets that are
/// not cumulative) fails the read. Pure.
pub fn cluster_reads(
    rollout: &str,
    versions: &[&str],
    metrics: ClusterMetrics,
    up: &[PromSample],
    uptime: &[PromSample],
    data: &[PromSample],
) -> Result<Vec<EndpointRead>, ResponseError> {
    let mut reads = reads_from(rollout, CUMULATIVE_EPOCH, up, uptime, &[], &[])?;
    // Per instance: counter series key → count (summed over other labels).
    let mut counts: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    // Cumulative buckets per (instance, version), summed over other labels (Istio's response codes).
    let mut buckets: BTreeMap<(&str, &str), Cumulative> = BTreeMap::new();
    for s in data {
        let name = label(s, "__name__")?;
        let (counters, histogram): (Vec<Counter>, bool) = match (metrics, name) {
            (ClusterMetrics::Envoy, ENVOY_CLASSES) => {
                let class = label(s, "envoy_response_code_class")?;
                let c =
                    class.parse().ok().and_then(class_counter).ok_or_else(|| {
                        sample_error(s, format!("`envoy_response_code_class` `{class}` is not 1 … 5"))
                    })?;
                (vec![c], false)
            }
            (ClusterMetrics::Envoy, ENVOY_CODES) => {
                if label(s, "envoy_response_code")? != "504" {
                    continue;
                }
                (vec![Counter::RqTimeout], false)
            }
            (ClusterMetrics::Envoy, ENVOY_TIME) | (ClusterMetrics::Istio, ISTIO_DURATION) => (vec![], true),
            (ClusterMetrics::Istio, ISTIO_REQUESTS) => {
                let code = label(s, "response_code")?;
                let Some(class) = class_of_code(code) else { continue };
                let mut c = vec![class];
                if code == "504" {
                    c.push(Counter::RqTimeout);
                }
                (c, false)
            }
            _ => continue,
        };
        let instance = label(s, INSTANCE_LABEL)?;
        let version = label(s, metrics.version_label())?;
        if !versions.contains(&version) || !is_name(version) {
            continue;
        }
        let n = count_of(s)?;
        if histogram {
            let le = le_of(s)?;
            let slot = buckets.entry((instance, version)).or_default().entry(le.to_bits()).or_insert((le, 0));
            slot.1 = slot.1.saturating_add(n);
        } else {
            for c in counters {
                let key = counter_series(rollout, CUMULATIVE_EPOCH, version, c);
                let slot = counts.entry(instance).or_default().entry(key).or_default();
                *slot = slot.saturating_add(n);
            }
        }
    }
    for read in &mut reads {
        let Ok(sample) = &mut read.outcome else { continue };
        let instance = read.endpoint.as_str();
        if let Some(by) = counts.remove(instance) {
            sample.series.extend(by);
        }
        for ((_, version), by) in buckets.range((instance, "")..).take_while(|((i, _), _)| *i == instance) {
            let name = format!("{instance} {version} latency");
            for (lower, width, n) in bins_of(&name, by.values().copied().collect())? {
                // Milliseconds in Prometheus, microseconds in the window.
                let key = bucket_series(
                    rollout,
                    CUMULATIVE_EPOCH,
                    version,
                    Histogram::LatencyUs,
                    lower * 1000.0,
                    width * 1000.0,
                );
                sample.series.insert(key, n);
            }
        }
    }
    Ok(reads)
}

#[cfg(test)]
mod tests;
