//! Evidence from Prometheus: the queries for one rollout epoch's per-version
//! counters, histogram buckets, prediction bins, segments and shadow stats
//! (Prometheus scrapes the Envoys' `/stats/prometheus`), and the pure reading
//! of their answers into the same per-endpoint samples as the admin API's,
//! hence the same [`Window`](crate::window::Window). The HTTP queries live in the controller's
//! `source::prometheus`.
//!
//! ```text
//!  4 instant queries (concurrently, one timeout for the read), all limited by the spec's selector:
//!    up{SEL}                                   the fleet: one Envoy per `instance`; up = 0 is a failed endpoint
//!    envoy_server_uptime{SEL}                  restarts (as the admin source reads server.uptime)
//!    envoy_..._canary_version_text{SEL}        the active ECDS version (`text_value` label): "applied"
//!    sum by (__name__, instance, canary_version, canary_bin, canary_segment, le)
//!        ({__name__=~"canary_rollout_epoch_version_.+", canary_rollout="R", canary_epoch="E", SEL})
//!  ──parse_vector (pure, strict)──► per instance: EndpointSample (same series keys as the admin source)
//!  ──merge_reads + ResetTracker (shared with the admin source)──► Window
//! ```
//!
//! The names: Envoy's `stats_config.stats_tags` (see `envoy/sidecar.yaml`)
//! turn `wasmcustom.canary.rollout.R.epoch.E.version.V.rq_total` into
//! `canary_rollout_epoch_version_rq_total{canary_rollout="R", canary_epoch="E",
//! canary_version="V"}`, `…pred.b0` into `…_pred{canary_bin="b0"}` and
//! `…segment.S.rq_5xx` into `…_segment_rq_5xx{canary_segment="S"}`. The ECDS
//! version is a text readout, exported only with `?text_readouts` on the
//! scrape.
//!
//! Histograms: Envoy exports cumulative `le` buckets computed from its own
//! log-linear bins, counting a bin under `le` when the bin's lower edge is
//! `<= le`. So bucket `le = L` holds the values in `[L, next L)`, and with
//! bounds on Envoy's bin edges (`envoy/sidecar.yaml`) the merged histogram
//! equals the admin source's bin for bin.
//!
//! Why raw per-epoch counters (summed by Prometheus per instance, and across
//! instances here) rather than `sum(increase(…[stage]))`: `increase`
//! extrapolates to the range's ends and ignores what a counter held at its
//! first scrape, so it is never exact (errors of a few percent over short
//! stages); the filter's counters are born with their epoch, so their raw
//! value *is* the window, and a restarted Envoy is corrected exactly as the
//! admin source does (per `instance`, same [`ResetTracker`](super::tracker::ResetTracker)). The price is
//! one answer row per Envoy and series instead of per series.
//!
//! Missing data never counts as healthy: Prometheus unreachable, slow, or
//! answering anything but a well-formed vector fails the whole read (the
//! rollout holds and alerts); an Envoy whose last scrape failed is a failed
//! endpoint in the coverage; no Envoy at all is no data.

use std::collections::BTreeMap;
use std::time::Duration;

use canary_core::metrics::{parse_metric_name, PREFIX};
use serde::Deserialize;
use serde_json::Value;

use super::admin::{
    clip, is_histogram, is_name, leaf_bucket_series, leaf_names_ok, EndpointSample, ReadError, MAX_BINS, MAX_COUNT,
    MAX_SEGMENTS,
};
use super::merge::EndpointRead;

/// Largest query answer accepted (a fleet of thousands of Envoys with fine
/// latency buckets stays well below it).
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Prometheus name of the filter's metrics once Envoy's stats tags took the
/// rollout, epoch and version out of them.
pub const METRIC_PREFIX: &str = "canary_rollout_epoch_version_";

/// Envoy's uptime gauge in Prometheus.
pub const UPTIME_METRIC: &str = "envoy_server_uptime";

/// The ECDS `version_text` readout in Prometheus (value 0, the text in `text_value`).
pub const VERSION_TEXT_METRIC: &str = "envoy_extension_config_discovery_http_filter_canary_version_text";

/// The label that tells Envoys apart.
pub const INSTANCE_LABEL: &str = "instance";

/// Why a query answer is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("answer is {bytes} bytes, over the {MAX_BODY_BYTES}-byte limit")]
    TooLarge { bytes: usize },
    #[error("not JSON: {0}")]
    Json(String),
    #[error("Prometheus refused the query: {error_type}: {error}")]
    Refused { error_type: String, error: String },
    #[error("`status` is `{0}`, expected `success`")]
    Status(String),
    #[error("result type is `{0}`, expected `vector` (an instant query)")]
    NotVector(String),
    #[error("not a query answer: {0}")]
    Shape(String),
    #[error("series {series}: {problem}")]
    Sample { series: String, problem: String },
    #[error("series {0} appears twice")]
    Duplicate(String),
    #[error("instance `{instance}`, version `{version}` has more than {limit} {what}: not what the filter defines")]
    TooMany { instance: String, version: String, what: &'static str, limit: usize },
}

/// Why a read produced no window.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("not a usable Prometheus URL: {0}")]
    BadUrl(String),
    #[error("Prometheus query `{query}` failed: cannot connect: {reason}")]
    Connect { query: &'static str, reason: String },
    #[error("Prometheus gave no complete answer within {0:?} (down, overloaded or too slow)")]
    Timeout(Duration),
    #[error("Prometheus query `{query}`: HTTP {status}: {body}")]
    Status { query: &'static str, status: u16, body: String },
    #[error("Prometheus query `{query}` failed: {reason}")]
    Request { query: &'static str, reason: String },
    #[error("Prometheus query `{query}`: {error}")]
    Response {
        query: &'static str,
        #[source]
        error: ResponseError,
    },
}

/// One sample of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<RawSample>,
}

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    /// `[unix seconds, "value"]`.
    value: (f64, String),
}

/// Parses an `/api/v1/query` answer that must be an instant vector. Pure,
/// never panics; label values must be strings and sample values numbers
/// written as strings (Prometheus' format), `NaN` and infinities included.
pub fn parse_vector(body: &[u8]) -> Result<Vec<PromSample>, ResponseError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ResponseError::TooLarge { bytes: body.len() });
    }
    let doc: Value = serde_json::from_slice(body).map_err(|e| ResponseError::Json(clip(&e.to_string(), 200)))?;
    let answer: Answer = serde_json::from_value(doc).map_err(|e| ResponseError::Shape(clip(&e.to_string(), 200)))?;
    if answer.status == "error" {
        return Err(ResponseError::Refused {
            error_type: clip(answer.error_type.as_deref().unwrap_or("?"), 60),
            error: clip(answer.error.as_deref().unwrap_or(""), 300),
        });
    }
    if answer.status != "success" {
        return Err(ResponseError::Status(clip(&answer.status, 60)));
    }
    let data = answer.data.ok_or_else(|| ResponseError::Shape("`data` missing".into()))?;
    if data.result_type != "vector" {
        return Err(ResponseError::NotVector(clip(&data.result_type, 60)));
    }
    data.result
        .into_iter()
        .map(|s| {
            let value = match s.value.1.as_str() {
                "+Inf" | "Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                text => text.parse::<f64>().map_err(|_| ResponseError::Sample {
                    series: describe(&s.metric),
                    problem: format!("value `{}` is not a number", clip(text, 40)),
                })?,
            };
            Ok(PromSample { labels: s.metric, value })
        })
        .collect()
}

/// `name{a="b",…}`, short, for error texts.
fn describe(labels: &BTreeMap<String, String>) -> String {
    let name = labels.get("__name__").map_or("", String::as_str);
    let rest: Vec<String> =
        labels.iter().filter(|(k, _)| k.as_str() != "__name__").map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    clip(&format!("{name}{{{}}}", rest.join(",")), 200)
}

pub(crate) fn sample_error(s: &PromSample, problem: impl Into<String>) -> ResponseError {
    ResponseError::Sample { series: describe(&s.labels), problem: problem.into() }
}

pub(crate) fn label<'a>(s: &'a PromSample, name: &str) -> Result<&'a str, ResponseError> {
    s.labels.get(name).map(String::as_str).ok_or_else(|| sample_error(s, format!("no `{name}` label")))
}

/// A count: a whole number within 0..=2^53.
pub(crate) fn count_of(s: &PromSample) -> Result<u64, ResponseError> {
    let v = s.value;
    if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= MAX_COUNT as f64) {
        return Err(sample_error(s, format!("value {v} is not a count (a whole number within 0..=2^53)")));
    }
    Ok(v as u64)
}

/// The four queries of one read (PromQL), for rollout `rollout`, epoch
/// `epoch` and the Envoys `selector` picks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queries {
    pub up: String,
    pub uptime: String,
    pub version: String,
    pub data: String,
}

/// PromQL string literal (double-quoted, escaped).
pub(crate) fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn queries(rollout: &str, epoch: u64, selector: &str) -> Queries {
    let sel = selector.trim();
    let with = |inner: &str| if sel.is_empty() { format!("{{{inner}}}") } else { format!("{{{inner}, {sel}}}") };
    let plain = |name: &str| if sel.is_empty() { name.to_string() } else { format!("{name}{{{sel}}}") };
    let data = format!(
        "sum by (__name__, {INSTANCE_LABEL}, canary_version, canary_bin, canary_segment, le) ({})",
        with(&format!(
            "__name__=~\"{METRIC_PREFIX}.+\", __name__!~\".+_(sum|count)\", canary_rollout={}, canary_epoch=\"{epoch}\"",
            promql_string(rollout)
        ))
    );
    Queries { up: plain("up"), uptime: plain(UPTIME_METRIC), version: plain(VERSION_TEXT_METRIC), data }
}

/// What the four answers say, per instance: the reads [`merge_reads`](super::merge::merge_reads)
/// takes. The fleet is the instances `up` lists; an instance with `up = 0`
/// is a failed endpoint; data of instances `up` does not list is ignored.
/// Pure.
pub fn reads_from(
    rollout: &str,
    epoch: u64,
    up: &[PromSample],
    uptime: &[PromSample],
    version: &[PromSample],
    data: &[PromSample],
) -> Result<Vec<EndpointRead>, ResponseError> {
    let mut fleet: BTreeMap<String, bool> = BTreeMap::new();
    for s in up {
        let instance = label(s, INSTANCE_LABEL)?;
        let ok = if s.value == 1.0 {
            true
        } else if s.value == 0.0 {
            false
        } else {
            return Err(sample_error(s, format!("`up` is {}, expected 0 or 1", s.value)));
        };
        // The same Envoy scraped by two jobs: it is up if either scrape worked.
        let slot = fleet.entry(instance.to_string()).or_insert(false);
        *slot |= ok;
    }
    let mut samples: BTreeMap<&str, EndpointSample> = fleet
        .iter()
        .filter(|(_, ok)| **ok)
        .map(|(i, _)| (i.as_str(), EndpointSample { rollout: rollout.into(), epoch, ..EndpointSample::default() }))
        .collect();
    for s in uptime {
        if let Some(sample) = samples.get_mut(label(s, INSTANCE_LABEL)?) {
            let v = count_of(s)?;
            // Two jobs scraping one Envoy: the older process can only be the lower uptime.
            sample.uptime_s = Some(sample.uptime_s.map_or(v, |u| u.min(v)));
        }
    }
    for s in version {
        if let Some(sample) = samples.get_mut(label(s, INSTANCE_LABEL)?) {
            let text = label(s, "text_value")?;
            if !text.is_empty() {
                sample.active_version = Some(clip(text, 256));
            }
        }
    }
    // Histogram buckets per (instance, metric): (le, cumulative count).
    let mut cumulative: BTreeMap<(&str, String), Vec<(f64, u64)>> = BTreeMap::new();
    for s in data {
        let instance = label(s, INSTANCE_LABEL)?;
        let Some(sample) = samples.get_mut(instance) else { continue };
        let name = label(s, "__name__")?;
        let Some(suffix) = name.strip_prefix(METRIC_PREFIX) else { continue };
        let version = label(s, "canary_version")?;
        let (leaf, bucket) = match suffix.strip_suffix("_bucket") {
            Some(leaf) => (leaf, true),
            None => (suffix, false),
        };
        if leaf.ends_with("_sum") || leaf.ends_with("_count") || suffix.ends_with("_sum") || suffix.ends_with("_count")
        {
            continue;
        }
        // Back to the filter's dotted name, checked by the filter's own parser.
        let dotted = if leaf == "pred" {
            format!("pred.{}", label(s, "canary_bin")?)
        } else if let Some(stat) = leaf.strip_prefix("segment_") {
            format!("segment.{}.{stat}", label(s, "canary_segment")?)
        } else if let Some(stat) = leaf.strip_prefix("shadow_") {
            format!("shadow.{stat}")
        } else {
            leaf.to_string()
        };
        let full = format!("{PREFIX}{rollout}.epoch.{epoch}.version.{version}.{dotted}");
        let Some(key) = parse_metric_name(&full) else { continue };
        if key.rollout != rollout || key.epoch != epoch || !is_name(key.version) || !leaf_names_ok(key.leaf) {
            continue;
        }
        if is_histogram(key.leaf) != bucket {
            return Err(sample_error(s, "a histogram without `_bucket`, or a counter with it"));
        }
        let n = count_of(s)?;
        if bucket {
            let le = le_of(s)?;
            cumulative.entry((instance, full)).or_default().push((le, n));
        } else if sample.series.insert(full, n).is_some() {
            return Err(ResponseError::Duplicate(describe(&s.labels)));
        }
    }
    for ((instance, name), buckets) in cumulative {
        let Some(sample) = samples.get_mut(instance) else { continue };
        let key = parse_metric_name(&name).ok_or_else(|| ResponseError::Shape(clip(&name, 160)))?;
        for (lower, width, n) in bins_of(&name, buckets)? {
            let series = leaf_bucket_series(rollout, epoch, key.version, key.leaf, lower, width);
            sample.series.insert(series, n);
        }
    }
    for (instance, sample) in &samples {
        check_bounds(instance, sample)?;
    }
    let mut reads: Vec<EndpointRead> = fleet
        .keys()
        .map(|instance| EndpointRead {
            endpoint: instance.clone(),
            outcome: samples.remove(instance.as_str()).ok_or(ReadError::ScrapeFailed),
        })
        .collect();
    reads.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    Ok(reads)
}

/// The `le` of a bucket sample: a non-negative number or `+Inf`.
pub(crate) fn le_of(s: &PromSample) -> Result<f64, ResponseError> {
    match label(s, "le")? {
        "+Inf" => Ok(f64::INFINITY),
        text => text
            .parse::<f64>()
            .ok()
            .filter(|le| le.is_finite() && *le >= 0.0)
            .ok_or_else(|| sample_error(s, "`le` is not a non-negative number or +Inf")),
    }
}

/// One histogram's cumulative `le` buckets (any order) as Envoy's bins,
/// `(lower, width, count)`, empty ones left out. Envoy exports cumulative
/// buckets computed from its own log-linear bins, counting a bin under `le`
/// when the bin's lower edge is `<= le`: bucket `le = L` holds `[L, next L)`;
/// the first holds `[0, next L)`; `+Inf` is read as the last bound. `name`
/// names the histogram in errors.
pub(crate) fn bins_of(name: &str, mut buckets: Vec<(f64, u64)>) -> Result<Vec<(f64, f64, u64)>, ResponseError> {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(ResponseError::Duplicate(clip(&format!("{name} (an `le` twice)"), 200)));
    }
    let mut out = Vec::new();
    let mut below = 0u64;
    for (i, &(le, cum)) in buckets.iter().enumerate() {
        let Some(n) = cum.checked_sub(below) else {
            return Err(ResponseError::Sample {
                series: clip(name, 160),
                problem: format!("bucket counts are not cumulative (le {le}: {cum} < {below})"),
            });
        };
        below = cum;
        if n == 0 {
            continue;
        }
        let next = buckets.get(i + 1).map(|b| b.0).filter(|x| x.is_finite());
        let prev = if i > 0 { Some(buckets[i - 1].0) } else { None };
        let (lower, width) = match (prev, le.is_finite(), next) {
            (None, true, Some(next)) => (0.0, next),
            (None, true, None) => (0.0, le),
            (_, true, Some(next)) => (le, next - le),
            (Some(prev), true, None) => (le, le - prev),
            // +Inf: beyond the last bound; read as the last bound.
            (Some(prev), false, _) => (prev, 0.0),
            (None, false, _) => (0.0, 0.0),
        };
        out.push((lower, width, n));
    }
    Ok(out)
}

/// As the admin source: no more bins or segments per version than any
/// configuration defines.
fn check_bounds(instance: &str, sample: &EndpointSample) -> Result<(), ResponseError> {
    use canary_core::metrics::Leaf;
    let mut seen: BTreeMap<(&str, &'static str), std::collections::BTreeSet<&str>> = BTreeMap::new();
    for key in sample.series.keys() {
        let name = key.split('@').next().unwrap_or(key);
        let Some(m) = parse_metric_name(name) else { continue };
        let (what, item, limit) = match m.leaf {
            Leaf::Pred(bin) => ("prediction bins", bin, MAX_BINS),
            Leaf::Segment(segment, _) => ("segments", segment, MAX_SEGMENTS),
            _ => continue,
        };
        let set = seen.entry((m.version, what)).or_default();
        set.insert(item);
        if set.len() > limit {
            return Err(ResponseError::TooMany {
                instance: clip(instance, 100),
                version: clip(m.version, 64),
                what,
                limit,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use canary_core::metrics::{Counter, Histogram};

    use super::*;
    use crate::evidence::admin::{bucket_series, counter_series};
    use crate::evidence::merge::merge_reads;
    use crate::evidence::tracker::ResetTracker;

    fn vector(samples: &[(&[(&str, &str)], &str)]) -> Vec<u8> {
        let result: Vec<Value> = samples
            .iter()
            .map(|(labels, v)| {
                let metric: serde_json::Map<String, Value> =
                    labels.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect();
                serde_json::json!({"metric": metric, "value": [1795317764.809, v]})
            })
            .collect();
        serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}})
            .to_string()
            .into_bytes()
    }

    fn parsed(samples: &[(&[(&str, &str)], &str)]) -> Vec<PromSample> {
        parse_vector(&vector(samples)).unwrap()
    }

    const A: &str = "10.0.0.1:9901";
    const B: &str = "10.0.0.2:9901";

    fn bucket<'a>(instance: &'a str, version: &'a str, le: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("__name__", "canary_rollout_epoch_version_latency_us_bucket"),
            ("instance", instance),
            ("canary_version", version),
            ("le", le),
        ]
    }

    #[test]
    fn answers_become_per_instance_samples_with_the_admin_sources_series() {
        let up =
            parsed(&[(&[("__name__", "up"), ("instance", A)], "1"), (&[("__name__", "up"), ("instance", B)], "0")]);
        let uptime = parsed(&[(&[("instance", A)], "120")]);
        let version = parsed(&[(&[("instance", A), ("text_value", "r/3")], "0")]);
        let b1 = bucket(A, "v1", "1000.001");
        let b2 = bucket(A, "v1", "1100.001");
        let b3 = bucket(A, "v1", "1200.001");
        let b4 = bucket(A, "v1", "+Inf");
        let total = [("__name__", "canary_rollout_epoch_version_rq_total"), ("instance", A), ("canary_version", "v1")];
        let pred = [
            ("__name__", "canary_rollout_epoch_version_pred"),
            ("instance", A),
            ("canary_version", "v1"),
            ("canary_bin", "b0"),
        ];
        let seg = [
            ("__name__", "canary_rollout_epoch_version_segment_rq_5xx"),
            ("instance", A),
            ("canary_version", "v1"),
            ("canary_segment", "pro"),
        ];
        let shadow =
            [("__name__", "canary_rollout_epoch_version_shadow_agree"), ("instance", A), ("canary_version", "v2")];
        let other = [
            ("__name__", "canary_rollout_epoch_version_rq_total"),
            ("instance", "9.9.9.9:1"),
            ("canary_version", "v1"),
        ];
        let data = parsed(&[
            (&b1, "3"),
            (&b2, "7"),
            (&b3, "7"),
            (&b4, "8"),
            (&total, "8"),
            (&pred, "5"),
            (&seg, "1"),
            (&shadow, "4"),
            (&other, "1000"),
        ]);
        let reads = reads_from("r", 3, &up, &uptime, &version, &data).unwrap();
        assert_eq!(reads.len(), 2, "the fleet is what `up` lists");
        assert_eq!(reads[1].outcome, Err(ReadError::ScrapeFailed));
        let a = reads[0].outcome.as_ref().unwrap();
        assert_eq!((a.uptime_s, a.active_version.as_deref()), (Some(120), Some("r/3")));
        let want: BTreeMap<String, u64> = [
            (counter_series("r", 3, "v1", Counter::RqTotal), 8),
            ("canary.rollout.r.epoch.3.version.v1.pred.b0".to_string(), 5),
            ("canary.rollout.r.epoch.3.version.v1.segment.pro.rq_5xx".to_string(), 1),
            ("canary.rollout.r.epoch.3.version.v2.shadow.agree".to_string(), 4),
            (bucket_series("r", 3, "v1", Histogram::LatencyUs, 0.0, 1100.001), 3),
            (bucket_series("r", 3, "v1", Histogram::LatencyUs, 1100.001, 100.0), 4),
            (bucket_series("r", 3, "v1", Histogram::LatencyUs, 1200.001, 0.0), 1),
        ]
        .into_iter()
        .collect();
        let mut got = a.series.clone();
        // Float noise of the width (1200.001 - 1100.001) aside, the keys are the admin source's.
        let noisy = bucket_series("r", 3, "v1", Histogram::LatencyUs, 1100.001, 1200.001 - 1100.001);
        if let Some(v) = got.remove(&noisy) {
            got.insert(bucket_series("r", 3, "v1", Histogram::LatencyUs, 1100.001, 100.0), v);
        }
        assert_eq!(got, want);
        let w = merge_reads("r", 3, "r/3", &reads, &mut ResetTracker::default());
        assert_eq!((w.coverage.endpoints, w.coverage.answered, w.coverage.applied), (2, 1, 1));
        assert_eq!(w.coverage.failures[0].error, "Prometheus' last scrape of it failed (up = 0)");
        assert_eq!(w.version("v1").latency_us.count(), 8);
        assert_eq!(w.version("v1").requests, 8);
    }

    #[test]
    fn the_queries_select_the_epoch_and_the_fleet() {
        let q = queries("recs-v2", 7, r#"job="canary""#);
        assert_eq!(q.up, r#"up{job="canary"}"#);
        assert_eq!(q.uptime, r#"envoy_server_uptime{job="canary"}"#);
        assert!(q.data.starts_with("sum by (__name__, instance, canary_version, canary_bin, canary_segment, le) ({"));
        assert!(q.data.contains(r#"canary_rollout="recs-v2", canary_epoch="7", job="canary"}"#), "{}", q.data);
        assert!(queries(r#"a"b"#, 1, "x=\"y\"").data.contains(r#"canary_rollout="a\"b""#));
    }

    #[test]
    fn malformed_answers_are_refused_with_the_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not JSON"),
            (b"<html>", "not JSON"),
            (
                br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
                "refused the query: bad_data: parse error",
            ),
            (br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#, "expected `vector`"),
            (br#"{"status":"success"}"#, "`data` missing"),
            (
                br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#,
                "is not a number",
            ),
            (
                br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":1},"value":[1,"1"]}]}}"#,
                "not a query answer",
            ),
            (
                br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}"#,
                "not a query answer",
            ),
            (br#"{"status":"partial"}"#, "`status` is `partial`"),
        ];
        for (body, want) in cases {
            let err = parse_vector(body).unwrap_err().to_string();
            assert!(err.contains(want), "{}: {err}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn implausible_samples_fail_the_read() {
        let up = parsed(&[(&[("instance", A)], "1")]);
        let total = [("__name__", "canary_rollout_epoch_version_rq_total"), ("instance", A), ("canary_version", "v1")];
        for bad in ["-1", "1.5", "NaN", "+Inf", "1e300"] {
            let data = parsed(&[(&total, bad)]);
            let err = reads_from("r", 1, &up, &[], &[], &data).unwrap_err();
            assert!(err.to_string().contains("is not a count"), "{bad}: {err}");
        }
        let data = parsed(&[(&total, "1"), (&total, "2")]);
        assert!(matches!(reads_from("r", 1, &up, &[], &[], &data), Err(ResponseError::Duplicate(_))));
        let (lo, hi) = (bucket(A, "v1", "100"), bucket(A, "v1", "200"));
        let data = parsed(&[(&lo, "5"), (&hi, "4")]);
        let err = reads_from("r", 1, &up, &[], &[], &data).unwrap_err();
        assert!(err.to_string().contains("not cumulative"), "{err}");
        let no_le =
            [("__name__", "canary_rollout_epoch_version_latency_us_bucket"), ("instance", A), ("canary_version", "v1")];
        assert!(reads_from("r", 1, &up, &[], &[], &parsed(&[(&no_le, "1")])).is_err());
        let bad_up = parsed(&[(&[("instance", A)], "0.5")]);
        assert!(reads_from("r", 1, &bad_up, &[], &[], &[]).is_err());
        let no_instance = parsed(&[(&[("job", "x")], "1")]);
        assert!(reads_from("r", 1, &no_instance, &[], &[], &[])
            .unwrap_err()
            .to_string()
            .contains("no `instance` label"));
    }

    #[test]
    fn more_bins_than_a_configuration_can_define_are_refused() {
        let up = parsed(&[(&[("instance", A)], "1")]);
        let bins: Vec<String> = (0..=MAX_BINS).map(|i| format!("b{i}")).collect();
        let labels: Vec<Vec<(&str, &str)>> = bins
            .iter()
            .map(|b| {
                vec![
                    ("__name__", "canary_rollout_epoch_version_pred"),
                    ("instance", A),
                    ("canary_version", "v1"),
                    ("canary_bin", b.as_str()),
                ]
            })
            .collect();
        let samples: Vec<(&[(&str, &str)], &str)> = labels.iter().map(|l| (l.as_slice(), "1")).collect();
        let err = reads_from("r", 1, &up, &[], &[], &parsed(&samples)).unwrap_err();
        assert!(matches!(err, ResponseError::TooMany { what: "prediction bins", .. }), "{err}");
    }
}
