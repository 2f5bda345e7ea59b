//! The controller's own metrics, served by the daemon at `GET /metrics` in
//! the Prometheus text exposition format (version 0.0.4):
//!
//! ```text
//! # HELP canary_evaluations_total Evaluations that judged a window and logged a decision.
//! # TYPE canary_evaluations_total counter
//! canary_evaluations_total 42
//! ```
//!
//! Counters live for the process (they start at 0 when the daemon starts,
//! which Prometheus' `rate()` handles): one [`Metrics`] made at start, held
//! by the [`crate::context::ProcessContext`] every part of the process is
//! given; gauges describing the rollout are
//! read from the state directory at scrape time. Every name is listed in
//! [`Metrics::render`] and in the README.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use canary_judge::window::Window;

/// Upper bounds (seconds) of the ECDS push latency buckets: a temp file,
/// fsync and rename, normally well under 10 ms.
const PUSH_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Upper bounds (seconds) of the stats read latency buckets (one admin
/// request per Envoy, bounded by `envoy.timeout`).
const READ_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A cumulative histogram with fixed bucket bounds.
#[derive(Debug)]
pub struct SecondsHistogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramInner>,
}

#[derive(Debug, Default, Clone)]
struct HistogramInner {
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl SecondsHistogram {
    pub fn new(bounds: &'static [f64]) -> SecondsHistogram {
        let inner = HistogramInner { counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 };
        SecondsHistogram { bounds, inner: Mutex::new(inner) }
    }

    pub fn observe(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        h.counts[i] += 1;
        h.sum += value;
        h.count += 1;
    }

    fn snapshot(&self) -> HistogramInner {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Counters keyed by their label values.
#[derive(Debug, Default)]
struct Family(Mutex<BTreeMap<Vec<(&'static str, String)>, u64>>);

impl Family {
    fn inc(&self, labels: Vec<(&'static str, String)>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(labels).or_default() += 1;
    }

    fn snapshot(&self) -> Vec<(Vec<(&'static str, String)>, u64)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Counters and histograms the controller updates as it works.
#[derive(Debug)]
pub struct Metrics {
    evaluations: AtomicU64,
    evaluation_errors: AtomicU64,
    evaluation_overruns: AtomicU64,
    decisions: Family,
    source_reads: AtomicU64,
    source_errors: Family,
    source_read_seconds: SecondsHistogram,
    sink_pushes: Family,
    sink_push_seconds: SecondsHistogram,
    sink_attempts: Family,
    sink_drifts: Family,
    control_requests: Family,
    sse_clients: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            evaluations: AtomicU64::new(0),
            evaluation_errors: AtomicU64::new(0),
            evaluation_overruns: AtomicU64::new(0),
            decisions: Family::default(),
            source_reads: AtomicU64::new(0),
            source_errors: Family::default(),
            source_read_seconds: SecondsHistogram::new(READ_BUCKETS),
            sink_pushes: Family::default(),
            sink_push_seconds: SecondsHistogram::new(PUSH_BUCKETS),
            sink_attempts: Family::default(),
            sink_drifts: Family::default(),
            control_requests: Family::default(),
            sse_clients: AtomicU64::new(0),
        }
    }
}

/// The rollout's position, read from the state directory at scrape time.
#[derive(Debug, Clone, Default)]
pub struct RolloutGauges {
    pub rollout: String,
    pub champion: String,
    pub challenger: String,
    pub phase: String,
    /// 0-based index into the spec's stages.
    pub stage: usize,
    pub stage_name: String,
    pub weight_bp: u16,
    pub epoch: u64,
    pub last_seq: u64,
    pub time_left_ms: Option<u64>,
}

/// Phases, for the `canary_phase` state set (one is 1, the others 0).
pub const PHASES: &[&str] = &["running", "paused", "promoted", "rolled_back"];

impl Metrics {
    /// An evaluation that logged a decision (`Some`) or failed (`Err`).
    pub fn evaluation(&self, ok: bool) {
        if ok {
            self.evaluations.fetch_add(1, Ordering::Relaxed);
        } else {
            self.evaluation_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An evaluation that took longer than the interval (the next one
    /// starts late: the interval is stretched, not kept).
    pub fn evaluation_overrun(&self) {
        self.evaluation_overruns.fetch_add(1, Ordering::Relaxed);
    }

    /// A decision appended to the log (by the daemon, the dashboard or the CLI).
    pub fn decision(&self, action: &str, manual: bool) {
        self.decisions.inc(vec![("action", action.to_string()), ("manual", manual.to_string())]);
    }

    /// One read of every Envoy's stats: its duration and the endpoints that failed.
    pub fn source_read(&self, window: &Window, took: Duration) {
        self.source_reads.fetch_add(1, Ordering::Relaxed);
        self.source_read_seconds.observe(took.as_secs_f64());
        for f in &window.coverage.failures {
            self.source_errors.inc(vec![("endpoint", f.endpoint.clone())]);
        }
    }

    /// One write of the ECDS file.
    pub fn sink_push(&self, took: Duration, ok: bool) {
        self.sink_pushes.inc(vec![("result", if ok { "ok" } else { "error" }.to_string())]);
        self.sink_push_seconds.observe(took.as_secs_f64());
    }

    /// One attempt to write a configuration to one sink (a push retries).
    pub fn sink_attempt(&self, sink: &str, ok: bool) {
        self.sink_attempts
            .inc(vec![("sink", sink.to_string()), ("result", if ok { "ok" } else { "error" }.to_string())]);
    }

    /// A sink found holding something other than what the controller wrote.
    pub fn sink_drift(&self, sink: &str) {
        self.sink_drifts.inc(vec![("sink", sink.to_string())]);
    }

    /// A request to a dashboard control endpoint and how it ended
    /// (`ok`, `unauthorized`, `disabled`, `refused`, `error`).
    pub fn control_request(&self, command: &str, result: &str) {
        self.control_requests.inc(vec![("command", command.to_string()), ("result", result.to_string())]);
    }

    pub fn sse_client(&self, connected: bool) {
        if connected {
            self.sse_clients.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = self.sse_clients.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        }
    }

    /// The text exposition (format 0.0.4) of every metric, with the
    /// rollout's gauges when the state could be read.
    pub fn render(&self, rollout: Option<&RolloutGauges>) -> String {
        let mut out = String::new();
        let w = &mut out;
        one(
            w,
            "canary_evaluations_total",
            "counter",
            "Evaluations that judged the stats and logged a decision.",
            self.evaluations.load(Ordering::Relaxed) as f64,
        );
        one(
            w,
            "canary_evaluation_errors_total",
            "counter",
            "Evaluations that failed (state unchanged).",
            self.evaluation_errors.load(Ordering::Relaxed) as f64,
        );
        one(
            w,
            "canary_evaluation_overruns_total",
            "counter",
            "Evaluations that took longer than the interval (the next one started late).",
            self.evaluation_overruns.load(Ordering::Relaxed) as f64,
        );
        family(
            w,
            "canary_decisions_total",
            "Decisions appended to the decision log since the daemon started, by action and by whether an operator made them.",
            &self.decisions,
        );
        one(
            w,
            "canary_source_reads_total",
            "counter",
            "Reads of every Envoy's admin stats.",
            self.source_reads.load(Ordering::Relaxed) as f64,
        );
        family(
            w,
            "canary_source_errors_total",
            "Envoy admin endpoints that failed a read (unreachable, timeout, garbage), by endpoint.",
            &self.source_errors,
        );
        histogram(
            w,
            "canary_source_read_duration_seconds",
            "Time to read every Envoy's stats once.",
            &self.source_read_seconds,
        );
        family(
            w,
            "canary_sink_pushes_total",
            "Filter configurations pushed to the sinks, by result.",
            &self.sink_pushes,
        );
        histogram(
            w,
            "canary_sink_push_duration_seconds",
            "Time to push a configuration to every sink, retries included.",
            &self.sink_push_seconds,
        );
        family(
            w,
            "canary_sink_attempts_total",
            "Attempts to write a configuration to one sink (file, ConfigMap, WasmPlugin), by sink and result.",
            &self.sink_attempts,
        );
        family(
            w,
            "canary_sink_drifts_total",
            "Times a sink was found changed outside the controller (and written back), by sink.",
            &self.sink_drifts,
        );
        family(
            w,
            "canary_control_requests_total",
            "Requests to the dashboard's control endpoints, by command and result.",
            &self.control_requests,
        );
        one(
            w,
            "canary_dashboard_clients",
            "gauge",
            "Dashboard pages connected for live updates.",
            self.sse_clients.load(Ordering::Relaxed) as f64,
        );
        if let Some(r) = rollout {
            let info = [
                ("rollout", r.rollout.clone()),
                ("champion", r.champion.clone()),
                ("challenger", r.challenger.clone()),
            ];
            header(w, "canary_rollout_info", "gauge", "The rollout this daemon runs (always 1).");
            sample(w, "canary_rollout_info", &info, 1.0);
            header(w, "canary_phase", "gauge", "The rollout's phase: 1 for the current one, 0 for the others.");
            for p in PHASES {
                sample(w, "canary_phase", &[("phase", p.to_string())], if *p == r.phase { 1.0 } else { 0.0 });
            }
            header(w, "canary_stage", "gauge", "Index of the current stage in the spec (0 = first).");
            sample(w, "canary_stage", &[("stage", r.stage_name.clone())], r.stage as f64);
            one(
                w,
                "canary_challenger_weight_ratio",
                "gauge",
                "The challenger's share of traffic (0..1).",
                f64::from(r.weight_bp) / 10_000.0,
            );
            one(w, "canary_epoch", "gauge", "Epoch of the filter configuration the rollout is at.", r.epoch as f64);
            one(
                w,
                "canary_last_decision_seq",
                "gauge",
                "Sequence number of the last decision in the log.",
                r.last_seq as f64,
            );
            if let Some(ms) = r.time_left_ms {
                one(
                    w,
                    "canary_stage_time_left_seconds",
                    "gauge",
                    "Time left before the stage's minimum duration is over.",
                    ms as f64 / 1000.0,
                );
            }
        }
        out
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

/// A metric with one unlabelled sample.
fn one(w: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    header(w, name, kind, help);
    sample(w, name, &[], value);
}

/// A counter with one sample per label set.
fn family(w: &mut String, name: &str, help: &str, f: &Family) {
    header(w, name, "counter", help);
    for (labels, n) in f.snapshot() {
        sample(w, name, &labels, n as f64);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn sample(w: &mut String, name: &str, labels: &[(&str, String)], value: f64) {
    w.push_str(name);
    if !labels.is_empty() {
        w.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                w.push(',');
            }
            let _ = write!(w, "{k}=\"{}\"", escape_label(v));
        }
        w.push('}');
    }
    let _ = writeln!(w, " {}", number(value));
}

fn histogram(w: &mut String, name: &str, help: &str, h: &SecondsHistogram) {
    header(w, name, "histogram", help);
    let s = h.snapshot();
    let mut cumulative = 0u64;
    let bucket = format!("{name}_bucket");
    for (i, n) in s.counts.iter().enumerate() {
        cumulative += n;
        let le = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
        sample(w, &bucket, &[("le", number(le))], cumulative as f64);
    }
    sample(w, &format!("{name}_sum"), &[], s.sum);
    sample(w, &format!("{name}_count"), &[], s.count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_judge::window::{Coverage, EndpointFailure};

    #[test]
    fn the_text_format_has_help_type_and_cumulative_buckets() {
        let m = Metrics::default();
        m.evaluation(true);
        m.evaluation(true);
        m.evaluation(false);
        m.decision("advance", false);
        m.decision("pause", true);
        m.decision("hold", false);
        m.decision("hold", false);
        m.sink_push(Duration::from_micros(700), true);
        m.sink_push(Duration::from_millis(3), true);
        m.sink_push(Duration::from_secs(9), false);
        m.sink_drift("configmap mesh/canary");
        let w = Window {
            coverage: Coverage {
                endpoints: 1,
                answered: 0,
                applied: 0,
                failures: vec![EndpointFailure { endpoint: "http://a\"b".into(), error: "x".into() }],
                resets: vec![],
                departed: vec![],
            },
            ..Window::default()
        };
        m.source_read(&w, Duration::from_millis(2));
        let g = RolloutGauges {
            rollout: "r".into(),
            phase: "paused".into(),
            stage: 1,
            stage_name: "5pct".into(),
            weight_bp: 500,
            epoch: 3,
            ..Default::default()
        };
        let text = m.render(Some(&g));
        for line in [
            "# TYPE canary_evaluations_total counter",
            "canary_evaluations_total 2",
            "canary_evaluation_errors_total 1",
            "canary_decisions_total{action=\"hold\",manual=\"false\"} 2",
            "canary_decisions_total{action=\"pause\",manual=\"true\"} 1",
            "canary_source_errors_total{endpoint=\"http://a\\\"b\"} 1",
            "canary_sink_pushes_total{result=\"ok\"} 2",
            "canary_sink_pushes_total{result=\"error\"} 1",
            "canary_sink_push_duration_seconds_bucket{le=\"0.0005\"} 0",
            "canary_sink_push_duration_seconds_bucket{le=\"0.001\"} 1",
            "canary_sink_push_duration_seconds_bucket{le=\"0.005\"} 2",
            "canary_sink_push_duration_seconds_bucket{le=\"2.5\"} 2",
            "canary_sink_push_duration_seconds_bucket{le=\"+Inf\"} 3",
            "canary_sink_push_duration_seconds_count 3",
            "canary_sink_drifts_total{sink=\"configmap mesh/canary\"} 1",
            "canary_phase{phase=\"paused\"} 1",
            "canary_phase{phase=\"running\"} 0",
            "canary_challenger_weight_ratio 0.05",
            "canary_stage{stage=\"5pct\"} 1",
            "canary_epoch 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        // Every sample belongs to the family declared just before it.
        let mut family = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or_default().to_string();
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap_or_default();
                assert!(
                    name == family
                        || name
                            .strip_prefix(family.as_str())
                            .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s)),
                    "{name} under {family}"
                );
            }
        }
    }
}
