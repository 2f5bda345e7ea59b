//! Evidence from Envoy's admin API: parses one rollout epoch's per-version
//! counters and latency histograms out of a `/stats` answer, corrects them
//! for Envoy restarts, and merges every endpoint's into one [`Window`]. The
//! HTTP reads live in the controller's `source::admin`.
//!
//! ```text
//!  answer of GET /stats?format=json&usedonly&histogram_buckets=detailed&filter=<epoch E of rollout R, uptime, ECDS version>
//!      ──parse_stats (pure, bounded)──► EndpointSample (raw, cumulative since that Envoy started)
//!      ──ResetTracker::observe (pure)──► corrected series (never lower than before, even across restarts)
//!  sum over endpoints (merge_reads) ──► Window { versions, coverage }
//! ```
//!
//! What the real Envoy 1.40 answers (checked against it; a trimmed copy is in
//! the tests below): `{"stats": [{"name", "value"}…, {"histograms":
//! {"supported_percentiles", "details": [{"name", "totals", "intervals",
//! "percentiles"}]}}]}`. Counters are integers, the ECDS `version_text` a
//! string, `totals` the buckets (`{lower_bound, width, count}`) cumulative
//! since start. `intervals` only cover the last flush period and are never
//! used. With `usedonly`:
//! - `server.uptime` is there from start-up (value 0 until the first flush);
//! - the ECDS `version_text` is there once a version was applied (before
//!   that it is the empty string and hidden, which reads the same: nothing
//!   applied);
//! - counters never incremented are hidden (they read as 0);
//! - a histogram stays hidden until the first stats flush after its first
//!   sample (its totals would be empty anyway: histograms lag the counters by
//!   up to one flush interval).
//!
//! Every leaf of the filter's contract ([`canary_core::metrics`]) is read:
//! the per-version counters and `latency_us`, `pred.<bin>` counters,
//! `segment.<S>.<counter>` and `segment.<S>.latency_us`, `shadow.<stat>`
//! counters and `shadow.latency_us`. Bin and segment names follow the
//! filter's rules (1–64 of `[A-Za-z0-9_-]`), and at most [`MAX_BINS`] bins
//! and [`MAX_SEGMENTS`] segments per version are accepted: a configuration
//! cannot define more, so more means the answer is not the filter's.
//!
//! Restarts: see [`ResetTracker`](super::tracker::ResetTracker); many
//! endpoints into one window: [`merge_reads`](super::merge::merge_reads).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use canary_core::metrics::{metric_name, parse_metric_name, Counter, Histogram, Leaf, ShadowStat, Stat, PREFIX};
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Largest `/stats` answer accepted. One epoch of one rollout is a few KiB
/// (a full Envoy dump is ~40 KiB); anything near this is not our answer.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Largest counter or bucket value accepted: 2^53 (more requests than any
/// Envoy serves in centuries). Bigger values mean a broken or hostile
/// endpoint, and refusing them keeps every sum far from overflowing.
pub const MAX_COUNT: u64 = 1 << 53;

/// Most prediction bins accepted per version: the filter's limit on edges or
/// labels, plus `other` (or the top numeric bin) and `unparsed`.
pub const MAX_BINS: usize = canary_core::predict::MAX_BINS + 2;

/// Most segments accepted per version: the allowed values plus `other`.
pub const MAX_SEGMENTS: usize = canary_core::predict::MAX_SEGMENTS + 1;

/// Envoy's uptime gauge, in seconds.
pub const UPTIME_STAT: &str = "server.uptime";

/// The ECDS text readout holding the active configuration's `version_info`
/// (`<rollout>/<epoch>`, see [`crate::sink::EcdsFileSink::version_info`]).
pub const VERSION_TEXT_STAT: &str = "extension_config_discovery.http_filter.canary.version_text";

/// Why an answer could not be read as stats.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("answer is {bytes} bytes, over the {MAX_BODY_BYTES}-byte limit")]
    TooLarge { bytes: usize },
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no top-level `stats` array")]
    NoStats,
    #[error("histograms are not in the detailed format (no `details`; was histogram_buckets=detailed ignored?)")]
    NotDetailed,
    #[error("`{name}`: {problem}")]
    Stat { name: String, problem: String },
    #[error("`{0}` appears twice")]
    Duplicate(String),
    #[error("version `{version}` has more than {limit} {what}: not what the filter defines")]
    TooMany { version: String, what: &'static str, limit: usize },
}

/// Why an endpoint contributed nothing to a window.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not a usable admin URL: {0}")]
    BadUrl(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no complete answer within {0:?} (endpoint hanging or too slow)")]
    Timeout(Duration),
    #[error("HTTP {status} from /stats: {body}")]
    Status { status: u16, body: String },
    #[error("request failed: {0}")]
    Request(String),
    #[error("unparseable stats: {0}")]
    Parse(#[from] ParseError),
    /// Prometheus knows the endpoint, but its last scrape failed (`up` is 0).
    #[error("Prometheus' last scrape of it failed (up = 0)")]
    ScrapeFailed,
}

/// What one endpoint reported for one rollout epoch, as read: cumulative
/// since that Envoy started, before any restart correction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSample {
    pub rollout: String,
    pub epoch: u64,
    /// `server.uptime` in seconds, if the answer had it.
    pub uptime_s: Option<u64>,
    /// The active ECDS `version_info`, if a version was ever applied.
    pub active_version: Option<String>,
    /// Counter values and histogram bucket counts by series key
    /// ([`counter_series`], [`bucket_series`]); zero counts are left out.
    pub series: BTreeMap<String, u64>,
}

/// Series key of a counter: the filter's metric name.
pub fn counter_series(rollout: &str, epoch: u64, version: &str, counter: Counter) -> String {
    metric_name(rollout, epoch, version, counter)
}

/// Series key of one histogram bucket: `<metric name>@<lower bound>+<width>`.
/// Floats print in their shortest exact form, so a bound round-trips (Envoy
/// reports bounds such as `830.0000000000001`).
pub fn bucket_series(rollout: &str, epoch: u64, version: &str, histogram: Histogram, lower: f64, width: f64) -> String {
    leaf_bucket_series(rollout, epoch, version, histogram.into(), lower, width)
}

/// Series key of any leaf that is a counter (the metric name).
pub fn leaf_series(rollout: &str, epoch: u64, version: &str, leaf: Leaf<'_>) -> String {
    metric_name(rollout, epoch, version, leaf)
}

/// Series key of one bucket of any histogram leaf (`latency_us`,
/// `segment.<S>.latency_us`, `shadow.latency_us`).
pub fn leaf_bucket_series(rollout: &str, epoch: u64, version: &str, leaf: Leaf<'_>, lower: f64, width: f64) -> String {
    format!("{}@{lower}+{width}", metric_name(rollout, epoch, version, leaf))
}

/// Whether a leaf is a histogram (its series are buckets) or a counter.
pub(crate) fn is_histogram(leaf: Leaf<'_>) -> bool {
    match leaf {
        Leaf::Stat(stat) | Leaf::Segment(_, stat) => matches!(stat, Stat::Histogram(_)),
        Leaf::Pred(_) => false,
        Leaf::Shadow(stat) => stat.is_histogram(),
    }
}

/// Whether the names inside a leaf follow the filter's rules.
pub(crate) fn leaf_names_ok(leaf: Leaf<'_>) -> bool {
    match leaf {
        Leaf::Pred(bin) => is_name(bin),
        Leaf::Segment(segment, _) => is_name(segment),
        Leaf::Stat(_) | Leaf::Shadow(_) => true,
    }
}

/// Prefix of every series key of one rollout epoch.
pub fn epoch_scope(rollout: &str, epoch: u64) -> String {
    format!("{PREFIX}{rollout}.epoch.{epoch}.")
}

/// A series key split back: which version, and what it counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Series<'a> {
    pub(crate) version: &'a str,
    pub(crate) what: What<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum What<'a> {
    Counter(Counter),
    /// Responses in a prediction bin.
    Pred(&'a str),
    SegmentCounter(&'a str, Counter),
    ShadowCounter(ShadowStat),
    /// One bucket of one of the version's histograms.
    Bucket {
        of: HistogramOf<'a>,
        lower: f64,
        width: f64,
    },
}

/// Which of a version's histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HistogramOf<'a> {
    Latency,
    Segment(&'a str),
    Shadow,
}

pub(crate) fn decode_series(key: &str) -> Option<Series<'_>> {
    let (name, bucket) = match key.split_once('@') {
        Some((name, bucket)) => (name, Some(bucket)),
        None => (key, None),
    };
    let parsed = parse_metric_name(name)?;
    if !leaf_names_ok(parsed.leaf) {
        return None;
    }
    let what = match (parsed.leaf, bucket) {
        (Leaf::Stat(Stat::Counter(c)), None) => What::Counter(c),
        (Leaf::Pred(bin), None) => What::Pred(bin),
        (Leaf::Segment(segment, Stat::Counter(c)), None) => What::SegmentCounter(segment, c),
        (Leaf::Shadow(stat), None) if !stat.is_histogram() => What::ShadowCounter(stat),
        (leaf, Some(bucket)) if is_histogram(leaf) => {
            let of = match leaf {
                Leaf::Segment(segment, _) => HistogramOf::Segment(segment),
                Leaf::Shadow(_) => HistogramOf::Shadow,
                _ => HistogramOf::Latency,
            };
            let (lower, width) = bucket.split_once('+')?;
            let (lower, width) = (lower.parse::<f64>().ok()?, width.parse::<f64>().ok()?);
            if !(lower.is_finite() && width.is_finite() && lower >= 0.0 && width >= 0.0) {
                return None;
            }
            What::Bucket { of, lower, width }
        }
        _ => return None,
    };
    Some(Series { version: parsed.version, what })
}

/// The filter's own rule for rollout and version names: 1–64 of `[A-Za-z0-9_-]`.
pub(crate) fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses a `/stats?format=json&histogram_buckets=detailed` answer, keeping
/// epoch `epoch` of rollout `rollout`, the uptime and the ECDS version.
/// Pure, never panics, refuses bodies over [`MAX_BODY_BYTES`]. Entries it
/// does not know are ignored (other stats, future fields); the ones it needs
/// must have the right type.
pub fn parse_stats(body: &[u8], rollout: &str, epoch: u64) -> Result<EndpointSample, ParseError> {
    parse_answer(body, rollout, epoch, |name| {
        ours(name, rollout, epoch).map(|(version, leaf)| Pick { version, leaf, scale: 1.0 })
    })
}

/// A stat of the answer read as a leaf of a version; a histogram's bucket
/// bounds are multiplied by `scale` (Envoy's `upstream_rq_time` is in ms,
/// the window's latency in µs).
pub(crate) struct Pick<'a> {
    pub(crate) version: &'a str,
    pub(crate) leaf: Leaf<'a>,
    pub(crate) scale: f64,
}

/// [`parse_stats`] with the stats to keep chosen by `pick` (every kept stat
/// is stored under the series key of its `(version, leaf)` in `rollout`
/// epoch `epoch`).
pub(crate) fn parse_answer<F>(body: &[u8], rollout: &str, epoch: u64, pick: F) -> Result<EndpointSample, ParseError>
where
    F: for<'a> Fn(&'a str) -> Option<Pick<'a>>,
{
    if body.len() > MAX_BODY_BYTES {
        return Err(ParseError::TooLarge { bytes: body.len() });
    }
    // Typed and borrowed, values left raw until needed: no `Value` tree
    // per answer (a fleet's read parses thousands of these). serde_json
    // limits nesting (128 levels), so deep garbage cannot overflow the stack.
    let doc: Doc<'_> = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    let entries = doc.stats.ok_or(ParseError::NoStats)?;
    let mut sample = EndpointSample { rollout: rollout.to_string(), epoch, ..EndpointSample::default() };
    for entry in entries {
        // Not an object, or fields of other types: not a stat we read.
        let Ok(entry) = serde_json::from_str::<Entry<'_>>(entry.get()) else { continue };
        if let Some(histograms) = entry.histograms {
            parse_histograms(histograms, &mut sample, &pick)?;
            continue;
        }
        let Some(name) = entry.name.as_deref() else { continue };
        let value = entry.value;
        match name {
            UPTIME_STAT => {
                if sample.uptime_s.replace(count(name, value)?).is_some() {
                    return Err(ParseError::Duplicate(name.into()));
                }
            }
            VERSION_TEXT_STAT => {
                let text = value
                    .and_then(|v| serde_json::from_str::<Cow<'_, str>>(v.get()).ok())
                    .ok_or_else(|| bad(name, "value is not a string", value))?;
                if sample.active_version.replace(clip(&text, 256)).is_some() {
                    return Err(ParseError::Duplicate(name.into()));
                }
            }
            _ => {
                let Some(Pick { version, leaf, .. }) = pick(name) else { continue };
                if is_histogram(leaf) {
                    return Err(bad(name, "a histogram reported as a single value", value));
                }
                insert(&mut sample, leaf_series(rollout, epoch, version, leaf), name, count(name, value)?)?;
            }
        }
    }
    check_bounds(&sample)?;
    Ok(sample)
}

#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(borrow, default)]
    stats: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    histograms: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Histograms<'a> {
    #[serde(borrow, default)]
    details: Option<&'a RawValue>,
    #[serde(borrow, default)]
    computed_quantiles: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Detail<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    totals: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Bucket<'a> {
    #[serde(borrow, default)]
    lower_bound: Option<&'a RawValue>,
    #[serde(borrow, default)]
    width: Option<&'a RawValue>,
    #[serde(borrow, default)]
    count: Option<&'a RawValue>,
}

/// Refuses samples with more bins or segments per version than any
/// configuration defines (keeps windows and the decision log small whatever
/// an endpoint sends).
fn check_bounds(sample: &EndpointSample) -> Result<(), ParseError> {
    let mut bins: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut segments: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for key in sample.series.keys() {
        let Some(Series { version, what }) = decode_series(key) else { continue };
        let (set, name, limit, what) = match what {
            What::Pred(bin) => (bins.entry(version).or_default(), bin, MAX_BINS, "prediction bins"),
            What::SegmentCounter(segment, _) | What::Bucket { of: HistogramOf::Segment(segment), .. } => {
                (segments.entry(version).or_default(), segment, MAX_SEGMENTS, "segments")
            }
            _ => continue,
        };
        set.insert(name);
        if set.len() > limit {
            return Err(ParseError::TooMany { version: clip(version, 64), what, limit });
        }
    }
    Ok(())
}

fn parse_histograms<F>(histograms: &RawValue, sample: &mut EndpointSample, pick: &F) -> Result<(), ParseError>
where
    F: for<'a> Fn(&'a str) -> Option<Pick<'a>>,
{
    let Ok(histograms) = serde_json::from_str::<Histograms<'_>>(histograms.get()) else { return Ok(()) };
    let Some(details) = histograms.details else {
        // Other formats (summary quantiles, ...) cannot be merged across Envoys.
        return if histograms.computed_quantiles.is_some() { Err(ParseError::NotDetailed) } else { Ok(()) };
    };
    let details: Vec<&RawValue> = serde_json::from_str(details.get())
        .map_err(|_| bad("histograms", "`details` is not an array", Some(details)))?;
    for detail in details {
        let detail =
            serde_json::from_str::<Detail<'_>>(detail.get()).map_err(|_| bad("histograms", "unnamed", None))?;
        let name = &*detail.name;
        let Some(Pick { version, leaf, scale }) = pick(name) else { continue };
        if !is_histogram(leaf) {
            return Err(bad(name, "a counter reported as a histogram", None));
        }
        let totals: Vec<&RawValue> = detail
            .totals
            .and_then(|t| serde_json::from_str(t.get()).ok())
            .ok_or_else(|| bad(name, "no `totals` array", None))?;
        // The metric name once per histogram, not once per bucket (the
        // same keys as `leaf_bucket_series`).
        let base = leaf_series(&sample.rollout, sample.epoch, version, leaf);
        for bucket in totals {
            let b = serde_json::from_str::<Bucket<'_>>(bucket.get()).unwrap_or(Bucket {
                lower_bound: None,
                width: None,
                count: None,
            });
            let lower = bound(name, "lower_bound", b.lower_bound)? * scale;
            let width = bound(name, "width", b.width)? * scale;
            let n = count(name, b.count)?;
            let mut key = String::with_capacity(base.len() + 24);
            key.push_str(&base);
            let _ = write!(key, "@{lower}+{width}");
            insert(sample, key, name, n)?;
        }
    }
    Ok(())
}

/// `(version, leaf)` when `name` is one of the filter's metrics for this
/// epoch, with names inside the filter's rules.
fn ours<'a>(name: &'a str, rollout: &str, epoch: u64) -> Option<(&'a str, Leaf<'a>)> {
    let key = parse_metric_name(name)?;
    (key.rollout == rollout && key.epoch == epoch && is_name(key.version) && leaf_names_ok(key.leaf))
        .then_some((key.version, key.leaf))
}

fn insert(sample: &mut EndpointSample, key: String, name: &str, value: u64) -> Result<(), ParseError> {
    if sample.series.contains_key(&key) {
        return Err(ParseError::Duplicate(clip(name, 160)));
    }
    if value > 0 {
        sample.series.insert(key, value);
    }
    Ok(())
}

fn count(name: &str, value: Option<&RawValue>) -> Result<u64, ParseError> {
    match value.and_then(|v| serde_json::from_str::<u64>(v.get()).ok()) {
        Some(n) if n <= MAX_COUNT => Ok(n),
        Some(_) => Err(bad(name, "value over 2^53, not a plausible count", value)),
        None => Err(bad(name, "value is not a non-negative integer", value)),
    }
}

fn bound(name: &str, field: &str, value: Option<&RawValue>) -> Result<f64, ParseError> {
    match value.and_then(|v| serde_json::from_str::<f64>(v.get()).ok()) {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(bad(name, &format!("bucket `{field}` is not a non-negative number"), value)),
    }
}

fn bad(name: &str, problem: &str, value: Option<&RawValue>) -> ParseError {
    let mut problem = problem.to_string();
    if let Some(v) = value {
        let _ = write!(problem, " (got {})", clip(v.get(), 60));
    }
    ParseError::Stat { name: clip(name, 160), problem }
}

/// At most `max` bytes of `s` (on a char boundary), so error texts stay short
/// whatever an endpoint sends.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::evidence::merge::{merge_reads, EndpointRead};
    use crate::evidence::tracker::ResetTracker;

    /// A real answer of Envoy 1.40 to [`stats_query`] for rollout `x` epoch
    /// 1 (trimmed: fewer buckets and percentiles), after 20 requests to
    /// backends that were down (hence 5xx).
    pub(crate) const REAL: &str = r#"{"stats":[
{"name":"extension_config_discovery.http_filter.canary.version_text","value":"x/1"},
{"name":"server.uptime","value":15},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.rq_5xx","value":13},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.rq_total","value":13},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.rq_5xx","value":7},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.rq_total","value":7},
{"histograms":{"supported_percentiles":[0,25,50,75,90,95,99,99.5,99.9,100],"details":[
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.latency_us",
 "totals":[{"lower_bound":120,"width":10,"count":6},{"lower_bound":130,"width":10,"count":3},{"lower_bound":140,"width":10,"count":1},{"lower_bound":150,"width":10,"count":1},{"lower_bound":240,"width":10,"count":1},{"lower_bound":1000,"width":100,"count":1}],
 "intervals":[{"lower_bound":120,"width":10,"count":6}],
 "percentiles":[{"cumulative":121.42857142857143,"interval":121.42857142857143},{"cumulative":1050,"interval":1050}]},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.latency_us",
 "totals":[{"lower_bound":120,"width":10,"count":2},{"lower_bound":130,"width":10,"count":2},{"lower_bound":140,"width":10,"count":1},{"lower_bound":150,"width":10,"count":1},{"lower_bound":220.00000000000003,"width":10,"count":1}],
 "intervals":[],
 "percentiles":[{"cumulative":123.33333333333333,"interval":null}]}]}}]}"#;

    fn body(stats: &str) -> Vec<u8> {
        format!(r#"{{"stats":[{stats}]}}"#).into_bytes()
    }

    #[test]
    fn a_real_envoy_answer_parses_into_counters_buckets_uptime_and_version() {
        let s = parse_stats(REAL.as_bytes(), "x", 1).unwrap();
        assert_eq!(s.uptime_s, Some(15));
        assert_eq!(s.active_version.as_deref(), Some("x/1"));
        assert_eq!(s.series[&counter_series("x", 1, "v1", Counter::RqTotal)], 13);
        assert_eq!(s.series[&counter_series("x", 1, "v2", Counter::Rq5xx)], 7);
        assert_eq!(s.series.get(&counter_series("x", 1, "v1", Counter::Rq2xx)), None);
        let odd = bucket_series("x", 1, "v2", Histogram::LatencyUs, 220.00000000000003, 10.0);
        assert_eq!(s.series[&odd], 1);
        // 2 + 2 counters, 6 + 5 buckets.
        assert_eq!(s.series.len(), 15);

        let w = merge_reads(
            "x",
            1,
            "x/1",
            &[EndpointRead { endpoint: "a".into(), outcome: Ok(s) }],
            &mut Default::default(),
        );
        let v1 = w.version("v1");
        assert_eq!((v1.requests, v1.responses[4]), (13, 13));
        assert_eq!(v1.latency_us.count(), 13);
        // Totals, not intervals: v2's intervals are empty.
        assert_eq!(w.version("v2").latency_us.count(), 7);
        assert_eq!(w.version("v2").latency_us.buckets().last().map(|b| b.lower), Some(220.00000000000003));
        assert_eq!((w.coverage.answered, w.coverage.applied), (1, 1));
    }

    #[test]
    fn other_rollouts_epochs_and_stats_are_ignored() {
        let s = parse_stats(REAL.as_bytes(), "x", 2).unwrap();
        assert!(s.series.is_empty());
        assert_eq!(s.uptime_s, Some(15));
        let s = parse_stats(REAL.as_bytes(), "y", 1).unwrap();
        assert!(s.series.is_empty());
        let s = parse_stats(
            &body(
                r#"{"name":"cluster.v1.upstream_rq_2xx","value":"not a number"},
                   {"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.bogus","value":[]},
                   {"name":"wasmcustom.canary.rollout.x.epoch.1.version.v$.rq_total","value":3},
                   {"unknown":1}, 5, "text", null"#,
            ),
            "x",
            1,
        )
        .unwrap();
        assert_eq!(s, EndpointSample { rollout: "x".into(), epoch: 1, ..Default::default() });
    }

    #[test]
    fn an_empty_stats_list_is_an_answer_with_nothing_applied() {
        let s = parse_stats(br#"{"stats":[]}"#, "x", 1).unwrap();
        assert_eq!((s.uptime_s, s.active_version, s.series.len()), (None, None, 0));
    }

    #[test]
    fn garbage_and_empty_bodies_are_errors() {
        for bad in [
            &b""[..],
            b"   ",
            b"null",
            b"[]",
            b"{}",
            b"<html>503</html>",
            b"{\"stats\":{}}",
            b"\xff\xfe",
            b"{\"stats\":[",
        ] {
            assert!(parse_stats(bad, "x", 1).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(100_000);
        assert!(matches!(parse_stats(deep.as_bytes(), "x", 1), Err(ParseError::Json(_))));
    }

    #[test]
    fn wrong_types_on_needed_stats_are_errors_that_name_the_stat() {
        let total = "wasmcustom.canary.rollout.x.epoch.1.version.v1.rq_total";
        let cases = [
            format!(r#"{{"name":"{total}","value":"12"}}"#),
            format!(r#"{{"name":"{total}","value":-1}}"#),
            format!(r#"{{"name":"{total}","value":1.5}}"#),
            format!(r#"{{"name":"{total}"}}"#),
            r#"{"name":"server.uptime","value":"10"}"#.to_string(),
            r#"{"name":"extension_config_discovery.http_filter.canary.version_text","value":3}"#.to_string(),
            r#"{"histograms":{"details":[{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.latency_us","totals":[{"lower_bound":"a","width":1,"count":1}]}]}}"#.to_string(),
            r#"{"histograms":{"details":[{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.latency_us","totals":[{"lower_bound":-5,"width":1,"count":1}]}]}}"#.to_string(),
            r#"{"histograms":{"details":[{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.latency_us","totals":[{"lower_bound":5,"width":1,"count":0.5}]}]}}"#.to_string(),
            r#"{"histograms":{"details":[{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.latency_us"}]}}"#.to_string(),
            r#"{"histograms":{"details":{}}}"#.to_string(),
            r#"{"histograms":{"details":[{"totals":[]}]}}"#.to_string(),
            r#"{"histograms":{"computed_quantiles":[]}}"#.to_string(),
            r#"{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.latency_us","value":3}"#.to_string(),
        ];
        for case in cases {
            let err = parse_stats(&body(&case), "x", 1).expect_err(&case);
            assert!(!err.to_string().is_empty());
        }
        let err = parse_stats(&body(&format!(r#"{{"name":"{total}","value":"12"}}"#)), "x", 1).unwrap_err();
        assert_eq!(err.to_string(), format!("`{total}`: value is not a non-negative integer (got \"12\")"));
    }

    #[test]
    fn huge_numbers_are_refused_not_wrapped() {
        let total = "wasmcustom.canary.rollout.x.epoch.1.version.v1.rq_total";
        for n in ["18446744073709551615", "18446744073709551616", "1e300", "9007199254740993"] {
            let err = parse_stats(&body(&format!(r#"{{"name":"{total}","value":{n}}}"#)), "x", 1);
            assert!(err.is_err(), "{n} accepted");
        }
        let ok = parse_stats(&body(&format!(r#"{{"name":"{total}","value":9007199254740992}}"#)), "x", 1).unwrap();
        assert_eq!(ok.series.values().next(), Some(&MAX_COUNT));
        let err = parse_stats(&body(r#"{"name":"server.uptime","value":1e400}"#), "x", 1);
        assert!(err.is_err());
    }

    #[test]
    fn duplicates_are_refused() {
        let total = r#"{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.rq_total","value":1}"#;
        assert!(matches!(parse_stats(&body(&format!("{total},{total}")), "x", 1), Err(ParseError::Duplicate(_))));
        let up = r#"{"name":"server.uptime","value":1}"#;
        assert!(matches!(parse_stats(&body(&format!("{up},{up}")), "x", 1), Err(ParseError::Duplicate(_))));
    }

    #[test]
    fn bodies_over_the_limit_are_refused_before_parsing() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse_stats(&big, "x", 1), Err(ParseError::TooLarge { bytes: MAX_BODY_BYTES + 1 }));
    }

    #[test]
    fn long_values_in_errors_are_clipped() {
        let long = "é".repeat(5000);
        let err = parse_stats(&body(&format!(r#"{{"name":"server.uptime","value":"{long}"}}"#)), "x", 1).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
        assert_eq!(clip("ééé", 3), "é…");
    }

    #[test]
    fn series_keys_round_trip() {
        let k = bucket_series("r", 3, "v2", Histogram::LatencyUs, 830.0000000000001, 10.0);
        assert_eq!(k, "canary.rollout.r.epoch.3.version.v2.latency_us@830.0000000000001+10");
        assert_eq!(
            decode_series(&k),
            Some(Series {
                version: "v2",
                what: What::Bucket { of: HistogramOf::Latency, lower: 830.0000000000001, width: 10.0 }
            })
        );
        let k = counter_series("r", 3, "v2", Counter::RqTimeout);
        assert_eq!(decode_series(&k), Some(Series { version: "v2", what: What::Counter(Counter::RqTimeout) }));
        let k = leaf_series("r", 3, "v2", Leaf::Pred("b3"));
        assert_eq!(decode_series(&k), Some(Series { version: "v2", what: What::Pred("b3") }));
        let k = leaf_series("r", 3, "v2", Leaf::Segment("pro", Stat::Counter(Counter::Rq5xx)));
        assert_eq!(
            decode_series(&k),
            Some(Series { version: "v2", what: What::SegmentCounter("pro", Counter::Rq5xx) })
        );
        let k = leaf_series("r", 3, "v2", Leaf::Shadow(ShadowStat::Agree));
        assert_eq!(decode_series(&k), Some(Series { version: "v2", what: What::ShadowCounter(ShadowStat::Agree) }));
        let k = leaf_bucket_series("r", 3, "v2", Leaf::Segment("pro", Histogram::LatencyUs.into()), 5.0, 1.0);
        assert_eq!(k, "canary.rollout.r.epoch.3.version.v2.segment.pro.latency_us@5+1");
        assert_eq!(
            decode_series(&k),
            Some(Series {
                version: "v2",
                what: What::Bucket { of: HistogramOf::Segment("pro"), lower: 5.0, width: 1.0 }
            })
        );
        let k = leaf_bucket_series("r", 3, "v2", Leaf::Shadow(ShadowStat::LatencyUs), 7.0, 1.0);
        assert_eq!(
            decode_series(&k),
            Some(Series { version: "v2", what: What::Bucket { of: HistogramOf::Shadow, lower: 7.0, width: 1.0 } })
        );
        for junk in [
            "",
            "@",
            "canary.rollout.r.epoch.3.version.v2.rq_total@1+1",
            "x.latency_us@1+1",
            "canary.rollout.r.epoch.3.version.v2.latency_us@nan+1",
            "canary.rollout.r.epoch.3.version.v2.latency_us@1",
            "canary.rollout.r.epoch.3.version.v2.pred.b0@1+1",
            "canary.rollout.r.epoch.3.version.v2.shadow.agree@1+1",
            "canary.rollout.r.epoch.3.version.v2.shadow.latency_us",
            "canary.rollout.r.epoch.3.version.v2.segment.pro.latency_us",
            "canary.rollout.r.epoch.3.version.v2.segment.pro.rq_total@1+1",
            "canary.rollout.r.epoch.3.version.v2.pred.b\u{e9}",
        ] {
            assert_eq!(decode_series(junk), None, "{junk}");
        }
    }

    /// An answer with every kind of leaf: predictions, segments (counters and
    /// latency) and shadow stats (counters and latency), in Envoy's shapes.
    const EXTRAS: &str = r#"{"stats":[
{"name":"extension_config_discovery.http_filter.canary.version_text","value":"x/1"},
{"name":"server.uptime","value":30},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.rq_total","value":100},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.rq_2xx","value":100},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.pred.b0","value":40},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.pred.b1","value":55},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.pred.unparsed","value":5},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.segment.pro.rq_total","value":30},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.segment.pro.rq_2xx","value":30},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.segment.other.rq_total","value":70},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.segment.other.rq_2xx","value":69},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.segment.other.rq_5xx","value":1},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.shadow.rq_total","value":90},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.shadow.agree","value":80},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.shadow.disagree","value":6},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.shadow.failed","value":2},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.shadow.incomplete","value":2},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.shadow.rq_5xx","value":1},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.shadow.skipped","value":3},
{"histograms":{"supported_percentiles":[0,50,99,100],"details":[
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.latency_us",
 "totals":[{"lower_bound":100,"width":10,"count":100}],"intervals":[],"percentiles":[]},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.segment.pro.latency_us",
 "totals":[{"lower_bound":100,"width":10,"count":30}],"intervals":[],"percentiles":[]},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.segment.other.latency_us",
 "totals":[{"lower_bound":100,"width":10,"count":70}],"intervals":[],"percentiles":[]},
{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v2.shadow.latency_us",
 "totals":[{"lower_bound":2000,"width":100,"count":85},{"lower_bound":5000,"width":100,"count":3}],"intervals":[],"percentiles":[]}]}}]}"#;

    #[test]
    fn predictions_segments_and_shadow_stats_are_read_into_the_window() {
        let a = parse_stats(EXTRAS.as_bytes(), "x", 1).unwrap();
        assert_eq!(a.series.get("canary.rollout.x.epoch.1.version.v1.pred.b1"), Some(&55));
        assert_eq!(a.series.get("canary.rollout.x.epoch.1.version.v2.shadow.latency_us@5000+100"), Some(&3));
        // Two Envoys with the same counts: every field doubles.
        let reads = [
            EndpointRead { endpoint: "a".into(), outcome: Ok(a.clone()) },
            EndpointRead { endpoint: "b".into(), outcome: Ok(a) },
        ];
        let w = merge_reads("x", 1, "x/1", &reads, &mut ResetTracker::default());
        let v1 = w.version("v1");
        assert_eq!(v1.predictions, [("b0".to_string(), 80), ("b1".into(), 110), ("unparsed".into(), 10)].into());
        assert_eq!((v1.parsed_predictions(), v1.unparsed_predictions()), (190, 10));
        assert_eq!(v1.segments.keys().collect::<Vec<_>>(), ["other", "pro"]);
        let other = &v1.segments["other"];
        assert_eq!((other.requests, other.answered(), other.errors()), (140, 140, 2));
        assert_eq!((other.latency_us.count(), v1.segments["pro"].latency_us.count()), (140, 60));
        assert_eq!(v1.latency_us.count(), 200);
        assert!(v1.shadow.is_empty(), "the champion gets no shadow calls");
        let s = w.version("v2").shadow;
        assert_eq!(
            (s.requests, s.agree, s.disagree, s.failed, s.incomplete, s.rq_5xx, s.skipped),
            (180, 160, 12, 4, 4, 2, 6)
        );
        assert_eq!(s.latency_us.count(), 176);
        assert_eq!(s.latency_us.quantile(0.5), Some(2000.0 + 100.0 * 88.0 / 170.0));
        assert_eq!(w.version("v2").requests, 0, "shadow calls are not user requests");
    }

    #[test]
    fn new_leaves_of_the_wrong_kind_or_with_bad_names_are_refused_or_ignored() {
        let name = |leaf: &str| format!("wasmcustom.canary.rollout.x.epoch.1.version.v1.{leaf}");
        for histogram in ["shadow.latency_us", "segment.pro.latency_us"] {
            let err = parse_stats(&body(&format!(r#"{{"name":"{}","value":3}}"#, name(histogram))), "x", 1);
            assert!(matches!(err, Err(ParseError::Stat { .. })), "{histogram}: {err:?}");
        }
        for counter in ["pred.b0", "shadow.agree", "segment.pro.rq_total"] {
            let detail = format!(r#"{{"histograms":{{"details":[{{"name":"{}","totals":[]}}]}}}}"#, name(counter));
            assert!(parse_stats(&body(&detail), "x", 1).is_err(), "{counter}");
        }
        // Names the filter would never make are not ours: ignored, like any foreign stat.
        for foreign in ["pred.b~0", "segment.a+b.rq_total", "shadow.bogus", "pred", "segment.pro"] {
            let sample = parse_stats(&body(&format!(r#"{{"name":"{}","value":3}}"#, name(foreign))), "x", 1).unwrap();
            assert!(sample.series.is_empty(), "{foreign}: {:?}", sample.series);
        }
    }

    #[test]
    fn more_bins_or_segments_than_a_configuration_can_define_are_refused() {
        let entries = |leaf: &dyn Fn(usize) -> String, n: usize| {
            (0..n)
                .map(|i| {
                    format!(r#"{{"name":"wasmcustom.canary.rollout.x.epoch.1.version.v1.{}","value":1}}"#, leaf(i))
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let bins = |i: usize| format!("pred.b{i}");
        assert!(parse_stats(&body(&entries(&bins, MAX_BINS)), "x", 1).is_ok());
        let err = parse_stats(&body(&entries(&bins, MAX_BINS + 1)), "x", 1).unwrap_err();
        assert_eq!(err, ParseError::TooMany { version: "v1".into(), what: "prediction bins", limit: MAX_BINS });
        let segments = |i: usize| format!("segment.s{i}.rq_total");
        assert!(parse_stats(&body(&entries(&segments, MAX_SEGMENTS)), "x", 1).is_ok());
        let err = parse_stats(&body(&entries(&segments, MAX_SEGMENTS + 1)), "x", 1).unwrap_err();
        assert!(err.to_string().contains("more than 33 segments"), "{err}");
    }
}
