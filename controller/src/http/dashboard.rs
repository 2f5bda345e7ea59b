//! The daemon's dashboard: a page at `/`, the JSON behind it, live updates by
//! server-sent events, the stage reports, the controller's own metrics and
//! the operator's controls.
//!
//! ```text
//!  GET  /                      the page (HTML, JS and CSS compiled into the binary)
//!  GET  /assets/dashboard.{js,css}
//!  GET  /api/state             the snapshot the page draws (JSON)
//!  GET  /api/events            the same snapshot, pushed on every change (text/event-stream)
//!  POST /api/{pause,resume,advance,rollback}   Authorization: Bearer <token>
//!  GET  /reports/ , /reports/NAME              STATE_DIR/reports, read-only
//!  GET  /metrics               Prometheus text format
//! ```
//!
//! The [`Hub`] follows the state directory: it reads the decision log as it
//! grows (only the new lines), keeps a compact time series per version
//! (interval deltas of the epoch's cumulative window), and publishes a new
//! snapshot when anything changed. The daemon wakes it after every
//! evaluation and every command, so a decision reaches the page within
//! milliseconds; it also looks every 250 ms for changes made by the CLI.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use crate::context::ProcessContext;
use crate::control::{self, now_millis, ControlError, Controller};
use crate::http::metrics::{Metrics, RolloutGauges};
use crate::store::Store;
use canary_judge::gates::{GateKind, Outcome};
use canary_judge::rollout::{Action, Command, Decision, Millis};
use canary_judge::spec::RolloutSpec;
use canary_judge::window::{MergedHistogram, VersionWindow};

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard/dashboard.css");

/// Points the page gets per series at most (neighbours are merged: a chart
/// is a few hundred pixels wide, and a longer interval is less noisy).
const MAX_POINTS: usize = 150;
/// Points kept in memory before neighbours are merged in pairs.
const KEEP_POINTS: usize = 4 * MAX_POINTS;
/// Stage changes and commands kept for the timeline.
const TIMELINE: usize = 300;
/// How often the hub looks at the state directory without being woken.
const POLL: Duration = Duration::from_millis(250);

/// The operator token, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// `None` for an empty secret (surrounding whitespace does not count).
    pub fn new(secret: &str) -> Option<Token> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Token(Sha256::digest(secret.as_bytes()).into()))
    }

    /// Compares digests without an early exit: the time taken does not
    /// depend on how much of the token was right.
    pub fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = self.0.iter().zip(d.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// The token from `--token-file` (first), else `CANARY_TOKEN`; `None`
    /// when neither is set. Never prints the token.
    pub fn load(file: Option<&Path>, env: Option<String>) -> anyhow::Result<Option<Token>> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        eprintln!(
                            "warning: the token file {} is readable by other users (chmod 600 it)",
                            path.display()
                        );
                    }
                }
            }
            return Token::new(&text)
                .map(Some)
                .ok_or_else(|| anyhow::anyhow!("the token file {} is empty", path.display()));
        }
        match env {
            Some(v) => Token::new(&v).map(Some).ok_or_else(|| anyhow::anyhow!("CANARY_TOKEN is set but empty")),
            None => Ok(None),
        }
    }
}

/// What the page is told about the controls.
const CONTROLS_DISABLED: &str = "controls are disabled: no operator token is configured. Start `canary run` with \
     --token-file PATH (a file holding the token) or the environment variable CANARY_TOKEN to enable them; \
     the CLI (canary pause|resume|advance|rollback) works either way";

/// One published snapshot: the JSON the page draws.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub json: String,
}

/// Cumulative counts of one version in an epoch's window.
#[derive(Debug, Clone, Default)]
struct Cumulative {
    answered: u64,
    errors: u64,
    latency_us: MergedHistogram,
}

impl Cumulative {
    fn of(w: &VersionWindow) -> Cumulative {
        Cumulative { answered: w.answered(), errors: w.errors(), latency_us: w.latency_us.clone() }
    }

    /// `self - earlier`, bucket by bucket (never negative).
    fn minus(&self, earlier: &Cumulative) -> Cumulative {
        let before: HashMap<u64, u64> = earlier.latency_us.buckets().map(|b| (b.lower.to_bits(), b.count)).collect();
        let mut latency_us = MergedHistogram::default();
        for b in self.latency_us.buckets() {
            let old = before.get(&b.lower.to_bits()).copied().unwrap_or(0);
            latency_us.add(b.lower, b.width, b.count.saturating_sub(old));
        }
        Cumulative {
            answered: self.answered.saturating_sub(earlier.answered),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_us,
        }
    }

    fn merge(&mut self, other: &Cumulative) {
        self.answered = self.answered.saturating_add(other.answered);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency_us.merge(&other.latency_us);
    }
}

/// What one evaluation added, per version, and the gate values it saw.
#[derive(Debug, Clone)]
struct Point {
    at: Millis,
    epoch: u64,
    weight_bp: u16,
    /// Time the deltas cover (unknown for the first point of the first epoch).
    span_ms: Option<u64>,
    delta: [Cumulative; 2],
    psi: Option<f64>,
    labels: [Option<f64>; 2],
    agreement: Option<f64>,
}

impl Point {
    fn merge(&mut self, later: &Point) {
        self.at = later.at;
        self.span_ms = match (self.span_ms, later.span_ms) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        for (a, b) in self.delta.iter_mut().zip(later.delta.iter()) {
            a.merge(b);
        }
        self.weight_bp = later.weight_bp;
        self.psi = later.psi;
        self.labels = later.labels;
        self.agreement = later.agreement;
    }
}

/// A decision as the timeline shows it.
#[derive(Debug, Clone, Serialize)]
struct DecisionView {
    seq: u64,
    at: Millis,
    action: Action,
    manual: bool,
    from_stage: String,
    to_stage: String,
    from_weight_bp: u16,
    to_weight_bp: u16,
    epoch: u64,
    reasons: Vec<String>,
}

impl DecisionView {
    fn of(d: &Decision) -> DecisionView {
        DecisionView {
            seq: d.seq,
            at: d.at,
            action: d.action,
            manual: d.manual,
            from_stage: d.from.stage_name.clone(),
            to_stage: d.to.stage_name.clone(),
            from_weight_bp: d.from.weight.bp(),
            to_weight_bp: d.to.weight.bp(),
            epoch: d.to.epoch,
            reasons: d.reasons.clone(),
        }
    }
}

/// The gates of the latest decision that judged any.
#[derive(Debug, Clone, Serialize)]
struct GatesView {
    seq: u64,
    at: Millis,
    epoch: u64,
    stage_name: String,
    /// Each gate's result as logged (value, threshold, margin, outcome,
    /// detail, and whatever later versions add), with its `forest`: the
    /// estimate, interval and limit in the units shown (as in the reports).
    results: Vec<serde_json::Value>,
}

/// What the current traffic says about the time still to go.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Pace {
    epoch: u64,
    /// Responses per second, champion and challenger, over the stage so far.
    per_s: [f64; 2],
    /// The largest number of further samples per version an inconclusive
    /// gate of the stage says it needs.
    needed: u64,
}

/// What the hub has read from the decision log so far.
#[derive(Debug, Default)]
struct Ingest {
    /// Bytes of the log consumed (up to the last complete line).
    offset: u64,
    last_seq: u64,
    /// The first read is history: it does not count in the metrics.
    loaded: bool,
    points: Vec<Point>,
    /// The cumulative window of the last point: (epoch, at, per version).
    base: Option<(u64, Millis, [Cumulative; 2])>,
    /// When each recent epoch began (the decision that moved to it).
    epoch_started: BTreeMap<u64, Millis>,
    timeline: VecDeque<DecisionView>,
    gates: Option<GatesView>,
    pace: Option<Pace>,
    last: Option<DecisionView>,
    fingerprint: String,
    version: u64,
}

impl Ingest {
    fn add(&mut self, d: &Decision) {
        if d.from.epoch != d.to.epoch {
            self.epoch_started.insert(d.to.epoch, d.at);
            while self.epoch_started.len() > 8 {
                self.epoch_started.pop_first();
            }
        }
        if d.action != Action::Hold {
            self.timeline.push_back(DecisionView::of(d));
            while self.timeline.len() > TIMELINE {
                self.timeline.pop_front();
            }
        }
        self.last = Some(DecisionView::of(d));
        if !d.gates.is_empty() {
            self.gates = Some(GatesView {
                seq: d.seq,
                at: d.at,
                epoch: d.from.epoch,
                stage_name: d.from.stage_name.clone(),
                results: d
                    .gates
                    .iter()
                    .filter_map(|g| {
                        let mut v = serde_json::to_value(g).ok()?;
                        v["forest"] = serde_json::to_value(canary_judge::report::forest(g)).ok()?;
                        Some(v)
                    })
                    .collect(),
            });
        }
        let Some(w) = &d.window else { return };
        let secs = w.elapsed_ms as f64 / 1000.0;
        if secs > 0.0 {
            self.pace = Some(Pace {
                epoch: d.from.epoch,
                per_s: [w.champion.answered() as f64 / secs, w.challenger.answered() as f64 / secs],
                needed: d
                    .gates
                    .iter()
                    .filter(|g| g.outcome == Outcome::Inconclusive)
                    .filter_map(|g| g.needed)
                    .max()
                    .unwrap_or(0),
            });
        }
        let epoch = d.from.epoch;
        let now = [Cumulative::of(&w.champion), Cumulative::of(&w.challenger)];
        let (delta, span_ms) = match &self.base {
            Some((e, at, base)) if *e == epoch => {
                ([now[0].minus(&base[0]), now[1].minus(&base[1])], Some(d.at.saturating_sub(*at)))
            }
            _ => (now.clone(), self.epoch_started.get(&epoch).map(|s| d.at.saturating_sub(*s))),
        };
        let gate = |k: GateKind| d.gates.iter().find(|g| g.gate == k);
        let shadow = &w.challenger.shadow;
        let compared = shadow.agree + shadow.disagree;
        let agreement = gate(GateKind::ShadowAgreement)
            .and_then(|g| g.challenger)
            .or_else(|| (compared > 0).then(|| shadow.agree as f64 / compared as f64));
        let labels = gate(GateKind::Labels).map_or([None, None], |g| [g.champion, g.challenger]);
        self.points.push(Point {
            at: d.at,
            epoch,
            weight_bp: d.from.weight.bp(),
            span_ms,
            delta,
            psi: gate(GateKind::Prediction).and_then(|g| g.challenger),
            labels,
            agreement,
        });
        self.base = Some((epoch, d.at, now));
        if self.points.len() > KEEP_POINTS {
            self.points = merge_pairs(std::mem::take(&mut self.points));
        }
    }
}

/// Expected milliseconds until the current stage can end and until the
/// rollout is promoted, if the traffic keeps its current pace: the stage
/// needs its minimum duration, its minimum responses per version, and the
/// further samples its inconclusive gates say they need (of the smaller
/// version); each later judged stage needs its minimum duration and
/// responses at the same total traffic split by its weight. A lower bound
/// when gates of later stages come out inconclusive. `None` without traffic.
fn expected_remaining(
    spec: &RolloutSpec,
    stage: usize,
    time_left_ms: Option<u64>,
    requests_left: Option<(u64, u64)>,
    pace: Pace,
) -> Option<(u64, u64)> {
    let [champion, challenger] = pace.per_s;
    if champion <= 0.0 || challenger <= 0.0 {
        return None;
    }
    let secs = |n: u64, per_s: f64| n as f64 / per_s;
    let (left_a, left_b) = requests_left.unwrap_or((0, 0));
    let this = [
        time_left_ms.unwrap_or(0) as f64 / 1000.0,
        secs(left_a, champion),
        secs(left_b, challenger),
        secs(pace.needed, champion.min(challenger)),
    ]
    .into_iter()
    .fold(0.0, f64::max);
    let total = champion + challenger;
    // The last stage (100 %) is the promotion itself: nothing to wait for.
    let later: f64 = (stage + 1..spec.stages.len().saturating_sub(1))
        .map(|i| {
            let share = f64::from(spec.stage_weight(i).bp()) / 10_000.0;
            let slower = (total * share).min(total * (1.0 - share)).max(f64::MIN_POSITIVE);
            let s = &spec.stages[i];
            s.min_duration.as_secs_f64().max(secs(spec.min_requests(i), slower))
        })
        .sum();
    Some(((this * 1000.0) as u64, ((this + later) * 1000.0) as u64))
}

/// Halves the points by merging neighbours of the same epoch.
fn merge_pairs(points: Vec<Point>) -> Vec<Point> {
    let mut out: Vec<Point> = Vec::with_capacity(points.len() / 2 + 1);
    let mut pending: Option<Point> = None;
    for p in points {
        match pending.take() {
            Some(mut a) if a.epoch == p.epoch => {
                a.merge(&p);
                out.push(a);
            }
            Some(a) => {
                out.push(a);
                pending = Some(p);
            }
            None => pending = Some(p),
        }
    }
    out.extend(pending);
    out
}

/// One version's series, aligned with [`Series::t`].
#[derive(Debug, Default, Serialize)]
struct VersionSeries {
    /// Responses per second.
    rps: Vec<Option<f64>>,
    /// 5xx share of the responses in the interval (0..1).
    error_rate: Vec<Option<f64>>,
    p50_ms: Vec<Option<f64>>,
    p99_ms: Vec<Option<f64>>,
    /// Responses in the interval.
    n: Vec<u64>,
    /// Mean label outcome in the stage so far (the label gate's value).
    label: Vec<Option<f64>>,
}

/// The time series the page charts. Each point covers the interval since
/// the one before; PSI, labels and agreement are the stage's values so far
/// (what the gates judged).
#[derive(Debug, Default, Serialize)]
struct Series {
    t: Vec<Millis>,
    weight_bp: Vec<u16>,
    epoch: Vec<u64>,
    champion: VersionSeries,
    challenger: VersionSeries,
    psi: Vec<Option<f64>>,
    agreement: Vec<Option<f64>>,
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn series(points: &[Point]) -> Series {
    let mut s = Series::default();
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return s };
    let per_point = (last.at.saturating_sub(first.at) / MAX_POINTS as u64).max(1);
    let mut groups: Vec<Point> = vec![];
    let mut group_start = 0;
    for p in points {
        match groups.last_mut() {
            Some(g) if g.epoch == p.epoch && p.at.saturating_sub(group_start) < per_point => g.merge(p),
            _ => {
                group_start = p.at;
                groups.push(p.clone());
            }
        }
    }
    for g in &groups {
        s.t.push(g.at);
        s.weight_bp.push(g.weight_bp);
        s.epoch.push(g.epoch);
        for (v, d) in [(&mut s.champion, &g.delta[0]), (&mut s.challenger, &g.delta[1])] {
            v.rps.push(g.span_ms.filter(|ms| *ms > 0).map(|ms| round(d.answered as f64 * 1000.0 / ms as f64, 2)));
            v.error_rate.push((d.answered > 0).then(|| round(d.errors as f64 / d.answered as f64, 6)));
            v.p50_ms.push(d.latency_us.quantile(0.5).map(|us| round(us / 1000.0, 3)));
            v.p99_ms.push(d.latency_us.quantile(0.99).map(|us| round(us / 1000.0, 3)));
            v.n.push(d.answered);
        }
        s.champion.label.push(g.labels[0]);
        s.challenger.label.push(g.labels[1]);
        s.psi.push(g.psi);
        s.agreement.push(g.agreement);
    }
    s
}

/// A stage as the page lists it.
#[derive(Debug, Serialize)]
struct StageView {
    name: String,
    weight_bp: u16,
    min_duration_ms: u64,
    min_requests: u64,
    shadow: bool,
}

#[derive(Debug, Serialize)]
struct ReportLink {
    name: String,
    url: String,
    bytes: u64,
    modified: Millis,
}

#[derive(Debug, Serialize)]
struct Controls {
    enabled: bool,
    message: String,
}

/// The whole snapshot.
#[derive(Debug, Serialize)]
struct View<'a> {
    version: u64,
    generated_at: Millis,
    rollout: &'a str,
    champion: &'a str,
    challenger: &'a str,
    phase: String,
    stage: usize,
    stage_name: String,
    weight_bp: u16,
    epoch: u64,
    interval_ms: u64,
    stages: Vec<StageView>,
    in_stage_ms: Option<u64>,
    time_left_ms: Option<u64>,
    requests_left: Option<(u64, u64)>,
    /// Expected time until the stage can end, and until the rollout is
    /// promoted, at the current traffic (see [`expected_remaining`]).
    eta_stage_ms: Option<u64>,
    eta_ms: Option<u64>,
    shadow_stage: bool,
    daemon_pid: Option<u32>,
    last_decision: Option<&'a DecisionView>,
    gates: Option<&'a GatesView>,
    timeline: Vec<&'a DecisionView>,
    series: Series,
    reports: Vec<ReportLink>,
    controls: Controls,
    error: Option<String>,
}

/// Follows the state directory and publishes snapshots.
pub struct Hub {
    store: Store,
    spec: RolloutSpec,
    controls_enabled: bool,
    wake: Notify,
    tx: watch::Sender<Arc<Snapshot>>,
    ingest: Mutex<Ingest>,
    /// The process' metrics (decisions, pages, controls) and pending alerts
    /// (the dashboard's commands alert too).
    ctx: ProcessContext,
}

impl Hub {
    pub fn new(store: Store, spec: RolloutSpec, controls_enabled: bool, ctx: ProcessContext) -> Arc<Hub> {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let hub =
            Arc::new(Hub { store, spec, controls_enabled, wake: Notify::new(), tx, ingest: Mutex::default(), ctx });
        hub.refresh();
        hub
    }

    /// Asks for a refresh now (after a decision or a command).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Refreshes on every wake-up, and every [`POLL`] otherwise.
    pub async fn run(self: Arc<Hub>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            self.refresh();
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Reads the log's new lines; publishes a snapshot if anything changed.
    pub fn refresh(&self) {
        let mut ing = self.ingest.lock().unwrap_or_else(|e| e.into_inner());
        let error = self.read_log(&mut ing).err();
        let status = control::status(&self.store, &self.spec);
        let reports = self.reports();
        let fingerprint = match &status {
            Ok(s) => format!(
                "{}|{}|{}|{}|{}|{:?}|{:?}|{:?}",
                ing.last_seq,
                s.phase,
                s.epoch,
                s.stage,
                s.in_stage_ms.is_some(),
                s.daemon_pid,
                reports.iter().map(|r| (&r.name, r.bytes, r.modified)).collect::<Vec<_>>(),
                error
            ),
            Err(e) => format!("error {e}"),
        };
        if fingerprint == ing.fingerprint {
            return;
        }
        ing.fingerprint = fingerprint;
        ing.version += 1;
        let spec = &self.spec;
        let controls = Controls {
            enabled: self.controls_enabled,
            message: if self.controls_enabled {
                "enter the operator token to pause, resume, advance or roll back".into()
            } else {
                CONTROLS_DISABLED.into()
            },
        };
        let stages = (0..spec.stages.len())
            .map(|i| StageView {
                name: spec.stage_name(i),
                weight_bp: spec.stage_weight(i).bp(),
                min_duration_ms: spec.stages[i].min_duration.as_millis() as u64,
                min_requests: spec.min_requests(i),
                shadow: spec.is_shadow_stage(i),
            })
            .collect();
        let (phase, stage, stage_name, weight_bp, epoch) = match &status {
            Ok(s) => (s.phase.to_string().replace(' ', "_"), s.stage, s.stage_name.clone(), s.weight_bp, s.epoch),
            Err(_) => ("unknown".into(), 0, String::new(), 0, 0),
        };
        let s = status.as_ref().ok();
        let running = phase == "running" || phase == "paused";
        let eta = s
            .zip(ing.pace.filter(|p| p.epoch == epoch))
            .filter(|_| running)
            .and_then(|(s, pace)| expected_remaining(spec, s.stage, s.time_left_ms, s.requests_left, pace));
        let view = View {
            version: ing.version,
            generated_at: now_millis(),
            rollout: &spec.rollout,
            champion: &spec.champion,
            challenger: &spec.challenger,
            phase,
            stage,
            stage_name,
            weight_bp,
            epoch,
            interval_ms: spec.interval.as_millis() as u64,
            stages,
            in_stage_ms: s.and_then(|s| s.in_stage_ms),
            time_left_ms: s.and_then(|s| s.time_left_ms),
            requests_left: s.and_then(|s| s.requests_left),
            eta_stage_ms: eta.map(|e| e.0),
            eta_ms: eta.map(|e| e.1),
            shadow_stage: s.is_some_and(|s| s.shadow_stage),
            daemon_pid: s.and_then(|s| s.daemon_pid),
            last_decision: ing.last.as_ref(),
            gates: ing.gates.as_ref(),
            timeline: ing.timeline.iter().rev().collect(),
            series: series(&ing.points),
            reports,
            controls,
            error: status.as_ref().err().map(|e| e.to_string()).or(error),
        };
        let json = serde_json::to_string(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        let version = ing.version;
        drop(ing);
        self.tx.send_replace(Arc::new(Snapshot { version, json }));
    }

    /// Consumes the log's complete new lines.
    fn read_log(&self, ing: &mut Ingest) -> Result<(), String> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.store.log_path();
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No history: every decision from now on counts.
                ing.loaded = true;
                return Ok(());
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len < ing.offset {
            // Rewritten (a repaired log): start again.
            let version = ing.version;
            *ing = Ingest { version, ..Ingest::default() };
        }
        file.seek(SeekFrom::Start(ing.offset)).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        file.take(len - ing.offset).read_to_end(&mut buf).map_err(|e| e.to_string())?;
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            ing.loaded = true;
            return Ok(());
        };
        let counting = ing.loaded;
        for line in buf[..end].split(|b| *b == b'\n') {
            let Ok(d) = crate::store::log_line::from_line(line) else { continue };
            if d.seq <= ing.last_seq {
                continue;
            }
            ing.last_seq = d.seq;
            if counting {
                self.ctx.metrics.decision(&action_name(d.action), d.manual);
            }
            ing.add(&d);
        }
        ing.offset += end as u64 + 1;
        ing.loaded = true;
        Ok(())
    }

    fn reports_dir(&self) -> PathBuf {
        self.store.dir().join("reports")
    }

    fn reports(&self) -> Vec<ReportLink> {
        let Ok(entries) = std::fs::read_dir(self.reports_dir()) else { return vec![] };
        let mut out: Vec<ReportLink> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let meta = e.metadata().ok()?;
                (safe_name(&name) && meta.is_file()).then(|| ReportLink {
                    url: format!("/reports/{name}"),
                    bytes: meta.len(),
                    modified: meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as u64),
                    name,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The rollout's gauges for `/metrics`.
    fn gauges(&self) -> Option<RolloutGauges> {
        let s = control::status(&self.store, &self.spec).ok()?;
        Some(RolloutGauges {
            rollout: s.rollout,
            champion: s.champion,
            challenger: s.challenger,
            phase: s.phase.to_string().replace(' ', "_"),
            stage: s.stage,
            stage_name: s.stage_name,
            weight_bp: s.weight_bp,
            epoch: s.epoch,
            last_seq: s.last_decision.map_or(0, |d| d.seq),
            time_left_ms: s.time_left_ms,
        })
    }
}

fn action_name(a: Action) -> String {
    canary_judge::wire_name(&a)
}

/// A plain file name: no path, no hidden file.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// What the routes share.
pub struct App {
    pub hub: Arc<Hub>,
    token: Option<Token>,
}

/// The dashboard's routes (the daemon merges them with its own).
pub fn router(hub: Arc<Hub>, token: Option<Token>) -> Router {
    let app = Arc::new(App { hub, token });
    Router::new()
        .route("/", get(index))
        .route("/assets/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/assets/dashboard.css", get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }))
        .route("/api/state", get(state_json))
        .route("/api/events", get(events))
        .route("/api/{command}", post(control_command))
        .route("/reports", get(reports_index))
        .route("/reports/", get(reports_index))
        .route("/reports/{name}", get(report_file))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Everything on the page comes from this server; nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    let mut r = asset("text/html; charset=utf-8", INDEX_HTML);
    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

async fn state_json(State(app): State<Arc<App>>) -> Response {
    let snap = app.hub.current();
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], snap.json.clone())
        .into_response()
}

/// Counts a live page for as long as its stream exists.
struct ClientGuard(Arc<Metrics>);

impl ClientGuard {
    fn new(metrics: Arc<Metrics>) -> ClientGuard {
        metrics.sse_client(true);
        ClientGuard(metrics)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.sse_client(false);
    }
}

async fn events(State(app): State<Arc<App>>) -> impl IntoResponse {
    let rx = app.hub.subscribe();
    let stream = futures::stream::unfold(
        (rx, true, ClientGuard::new(app.hub.ctx.metrics.clone())),
        |(mut rx, first, guard)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let snap = rx.borrow_and_update().clone();
            let event = Event::default().event("state").id(snap.version.to_string()).data(snap.json.as_str());
            Some((Ok::<Event, Infallible>(event), (rx, false, guard)))
        },
    );
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
}

fn text(code: StatusCode, message: String) -> Response {
    crate::http::daemon::error(code, message)
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[derive(serde::Deserialize, Default)]
struct ControlBody {
    #[serde(default)]
    reason: String,
}

async fn control_command(
    State(app): State<Arc<App>>,
    UrlPath(command): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(cmd) = Command::from_name(&command) else {
        return text(StatusCode::NOT_FOUND, format!("no such endpoint: POST /api/{command}"));
    };
    let Some(token) = &app.token else {
        app.hub.ctx.metrics.control_request(&command, "disabled");
        return text(StatusCode::FORBIDDEN, CONTROLS_DISABLED.into());
    };
    if !bearer(&headers).is_some_and(|t| token.matches(t)) {
        app.hub.ctx.metrics.control_request(&command, "unauthorized");
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong operator token: send `Authorization: Bearer <token>`".into(),
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"canary\""));
        return r;
    }
    let body: ControlBody = if body.iter().all(u8::is_ascii_whitespace) {
        ControlBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("expected {{\"reason\": \"...\"}}: {e}")),
        }
    };
    let reason: String = body.reason.trim().chars().take(500).collect();
    let reason =
        if reason.is_empty() { "from the dashboard".to_string() } else { format!("{reason} (from the dashboard)") };
    // The CLI's code path: open the state directory, lock, command, commit, alert.
    let dir = app.hub.store.dir().to_path_buf();
    let result = async {
        let mut c = Controller::open(&dir, None, false, &app.hub.ctx)?;
        c.command(cmd, &reason).await
    }
    .await;
    app.hub.wake();
    match result {
        Ok(d) => {
            app.hub.ctx.metrics.control_request(&command, "ok");
            (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], Json(DecisionView::of(&d))).into_response()
        }
        Err(e @ ControlError::Refused(_)) => {
            app.hub.ctx.metrics.control_request(&command, "refused");
            text(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => {
            app.hub.ctx.metrics.control_request(&command, "error");
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn reports_index(State(app): State<Arc<App>>) -> Response {
    let items: String = app
        .hub
        .reports()
        .iter()
        .map(|r| {
            format!("<li><a href=\"{0}\">{1}</a> ({2} bytes)</li>", html_escape(&r.url), html_escape(&r.name), r.bytes)
        })
        .collect();
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>reports — {0}</title><h1>Reports of {0}</h1><ul>{1}</ul><p><a href=\"/\">dashboard</a></p>",
        html_escape(&app.hub.spec.rollout),
        if items.is_empty() { "<li>none yet: a report is written when a stage ends</li>".to_string() } else { items }
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn report_file(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Response {
    let not_found = || text(StatusCode::NOT_FOUND, format!("no report named {name}"));
    if !safe_name(&name) {
        return not_found();
    }
    let path = app.hub.reports_dir().join(&name);
    // A regular file directly in the folder: no symlink out of it.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {}
        _ => return not_found(),
    }
    let Ok(bytes) = tokio::fs::read(&path).await else { return not_found() };
    let content_type = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("md") => "text/markdown; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "text/plain; charset=utf-8",
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        bytes,
    )
        .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.hub.ctx.metrics.render(app.hub.gauges().as_ref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], text)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_remaining_time_follows_the_minimums_what_the_gates_need_and_the_traffic() {
        let spec = RolloutSpec::from_yaml(
            "rollout: r\nchampion: v1\nchallenger: v2\nstages:\n  - { weight_percent: 1, min_duration: 10m, min_requests: 100 }\n  \
             - { weight_percent: 5, min_duration: 1h, min_requests: 1000 }\n  - { weight_percent: 50, min_duration: 1m, min_requests: 6000 }\n  \
             - { weight_percent: 100 }\ngates: { error_rate: { error_tolerance: 1 } }\nenvoy: { admin: [\"http://a\"], ecds_dir: /x, wasm: /y }\n",
        )
        .unwrap();
        // 100 responses a second, 1 % of them on the challenger.
        let pace = Pace { epoch: 1, per_s: [99.0, 1.0], needed: 0 };
        // This stage: 10 min left on its clock, 50 challenger responses to go (50 s).
        // Then 5 %: an hour (1000 responses take 200 s); 50 %: 6000 at 50 a second is 2 min.
        assert_eq!(expected_remaining(&spec, 0, Some(600_000), Some((0, 50)), pace), Some((600_000, 4_320_000)));
        // An inconclusive gate needing 2000 more per version: 2000 s at the challenger's pace.
        let needy = Pace { needed: 2000, ..pace };
        assert_eq!(expected_remaining(&spec, 0, Some(600_000), Some((0, 0)), needy), Some((2_000_000, 5_720_000)));
        // The last judged stage: nothing after it but the promotion.
        assert_eq!(expected_remaining(&spec, 2, Some(0), Some((0, 0)), pace), Some((0, 0)));
        // No challenger traffic: nothing can be told.
        assert_eq!(expected_remaining(&spec, 0, None, None, Pace { per_s: [10.0, 0.0], ..pace }), None);
    }

    #[test]
    fn tokens_match_only_themselves_and_never_print() {
        let t = Token::new(" s3cret\n").unwrap();
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cre"));
        assert!(!t.matches("s3cret "));
        assert!(!t.matches(""));
        assert!(Token::new("  \n").is_none());
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn bearer_is_read_case_insensitively() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn report_names_cannot_leave_the_folder() {
        assert!(safe_name("stage-1-1pct-epoch1.html"));
        for bad in ["", "..", "../state.json", ".hidden", "a/b", "a\\b", "%2e%2e"] {
            assert!(!safe_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_hub_follows_the_log_and_counts_only_new_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = RolloutSpec::from_yaml(
            "rollout: hubtest\nchampion: v1\nchallenger: v2\nstages: [{ weight_percent: 10 }, { weight_percent: 100 }]\n\
             gates: { error_rate: { error_tolerance: 1 } }\nenvoy: { admin: [\"http://a\"], ecds_dir: /x, wasm: /y }\n",
        )
        .unwrap();
        let s0 = canary_judge::rollout::RolloutState::start(&spec, 1_000);
        store.save_state(&s0).unwrap();
        let hub = Hub::new(store.clone(), spec.clone(), false, ProcessContext::default());
        let first = hub.current();
        let view: serde_json::Value = serde_json::from_str(&first.json).unwrap();
        assert_eq!((view["phase"].as_str(), view["weight_bp"].as_u64()), (Some("running"), Some(1000)));
        assert_eq!(view["controls"]["enabled"], false);
        assert!(view["controls"]["message"].as_str().unwrap().contains("--token-file"));

        let count = || {
            let text = hub.ctx.metrics.render(None);
            text.lines()
                .find(|l| l.starts_with("canary_decisions_total{action=\"pause\",manual=\"true\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let before = count();
        let (s1, d1) = s0.command(&spec, Command::Pause, "test", 2_000).unwrap();
        store.save_state(&s1).unwrap();
        store.append_decision(&d1).unwrap();
        hub.refresh();
        let snap = hub.current();
        assert!(snap.version > first.version);
        let view: serde_json::Value = serde_json::from_str(&snap.json).unwrap();
        assert_eq!(view["phase"], "paused");
        assert_eq!(view["last_decision"]["seq"], 1);
        assert_eq!(view["timeline"][0]["action"], "pause");
        assert!(count() >= before + 1.0, "the first decision of a new log counts");
        // Nothing new: nothing published.
        hub.refresh();
        assert_eq!(hub.current().version, snap.version);
    }

    fn cumulative(answered: u64, errors: u64, latencies: &[(f64, u64)]) -> Cumulative {
        let mut h = MergedHistogram::default();
        for (lower, n) in latencies {
            h.add(*lower, lower / 10.0, *n);
        }
        Cumulative { answered, errors, latency_us: h }
    }

    #[test]
    fn deltas_of_cumulative_windows_give_interval_rates_and_quantiles() {
        let a = cumulative(100, 1, &[(1000.0, 100)]);
        let b = cumulative(300, 21, &[(1000.0, 100), (50_000.0, 200)]);
        let d = b.minus(&a);
        assert_eq!((d.answered, d.errors), (200, 20));
        // Only the new requests: all in the 50 ms bucket.
        assert!(d.latency_us.quantile(0.5).unwrap() >= 50_000.0);
        let p = |at, delta: Cumulative| Point {
            at,
            epoch: 1,
            weight_bp: 100,
            span_ms: Some(1000),
            delta: [delta.clone(), delta],
            psi: None,
            labels: [None, None],
            agreement: None,
        };
        let s = series(&[p(1000, a), p(2000, d)]);
        assert_eq!(s.champion.rps, vec![Some(100.0), Some(200.0)]);
        assert_eq!(s.challenger.error_rate, vec![Some(0.01), Some(0.1)]);
        let merged = merge_pairs(vec![p(1000, cumulative(10, 1, &[])), p(2000, cumulative(30, 0, &[]))]);
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].delta[0].answered, merged[0].span_ms, merged[0].at), (40, Some(2000), 2000));
    }
}
