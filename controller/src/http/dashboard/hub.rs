//! The state-directory follower: the [`Hub`] reads the decision log as it
//! grows (only the new lines, [`Ingest`]), keeps the time series, and
//! publishes a [`Snapshot`] (the JSON the page draws) when anything changed.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::auth::*;
use super::routes::*;
use super::series::*;
use super::view::*;
use crate::context::ProcessContext;
use crate::control::{self, now_millis};
use crate::http::metrics::RolloutGauges;
use crate::store::Store;
use canary_judge::gates::{GateKind, Outcome};
use canary_judge::rollout::{Action, Decision, Millis};
use canary_judge::spec::RolloutSpec;

/// Points the page gets per series at most (neighbours are merged: a chart
/// is a few hundred pixels wide, and a longer interval is less noisy).
pub(super) const MAX_POINTS: usize = 150;
/// Points kept in memory before neighbours are merged in pairs.
pub(super) const KEEP_POINTS: usize = 4 * MAX_POINTS;
/// Stage changes and commands kept for the timeline.
pub(super) const TIMELINE: usize = 300;
/// How often the hub looks at the state directory without being woken.
pub(super) const POLL: Duration = Duration::from_millis(250);

/// One published snapshot: the JSON the page draws.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub json: String,
}

/// What the hub has read from the decision log so far.
#[derive(Debug, Default)]
pub(super) struct Ingest {
    /// Bytes of the log consumed (up to the last complete line).
    pub(super) offset: u64,
    pub(super) last_seq: u64,
    /// The first read is history: it does not count in the metrics.
    pub(super) loaded: bool,
    pub(super) points: Vec<Point>,
    /// The cumulative window of the last point: (epoch, at, per version).
    pub(super) base: Option<(u64, Millis, [Cumulative; 2])>,
    /// The same per segment of that window (of the same epoch as `base`).
    pub(super) segment_base: BTreeMap<String, [Cumulative; 2]>,
    /// When each recent epoch began (the decision that moved to it).
    pub(super) epoch_started: BTreeMap<u64, Millis>,
    pub(super) timeline: VecDeque<DecisionView>,
    pub(super) gates: Option<GatesView>,
    pub(super) pace: Option<Pace>,
    pub(super) last: Option<DecisionView>,
    pub(super) fingerprint: String,
    pub(super) version: u64,
}

impl Ingest {
    pub(super) fn add(&mut self, d: &Decision) {
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
                        // How the gate's values read (the dashboard renders from it).
                        v["format"] = serde_json::to_value(g.gate.descriptor()).ok()?;
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
        let same_epoch = matches!(&self.base, Some((e, _, _)) if *e == epoch);
        // Every segment of the window keeps its base; the judged ones (a gate
        // result names them) get a point.
        let segment_now: BTreeMap<String, [Cumulative; 2]> = w
            .champion
            .segments
            .keys()
            .chain(w.challenger.segments.keys())
            .map(|name| {
                let of = |v: &canary_judge::window::VersionWindow| {
                    v.segments.get(name).map(Cumulative::of_segment).unwrap_or_default()
                };
                (name.clone(), [of(&w.champion), of(&w.challenger)])
            })
            .collect();
        let judged: std::collections::BTreeSet<&str> = d.gates.iter().filter_map(|g| g.segment.as_deref()).collect();
        let segments: BTreeMap<String, SegmentPoint> = judged
            .into_iter()
            .map(|name| {
                let now = segment_now.get(name).cloned().unwrap_or_default();
                let delta = match self.segment_base.get(name).filter(|_| same_epoch) {
                    Some(base) => [now[0].minus(&base[0]), now[1].minus(&base[1])],
                    None => now,
                };
                let labels = d
                    .gates
                    .iter()
                    .find(|g| g.gate == GateKind::Labels && g.segment.as_deref() == Some(name))
                    .map_or([None, None], |g| [g.champion, g.challenger]);
                (name.to_string(), SegmentPoint { delta, labels })
            })
            .collect();
        if !same_epoch {
            self.segment_base.clear();
        }
        self.segment_base.extend(segment_now);
        // All traffic's results (a per-segment result names its segment).
        let gate = |k: GateKind| d.gates.iter().find(|g| g.gate == k && g.segment.is_none());
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
            segments,
        });
        self.base = Some((epoch, d.at, now));
        if self.points.len() > KEEP_POINTS {
            self.points = merge_pairs(std::mem::take(&mut self.points));
        }
    }
}

/// Follows the state directory and publishes snapshots.
pub struct Hub {
    pub(super) store: Store,
    pub(super) spec: RolloutSpec,
    pub(super) controls_enabled: bool,
    pub(super) wake: Notify,
    pub(super) tx: watch::Sender<Arc<Snapshot>>,
    pub(super) ingest: Mutex<Ingest>,
    /// The process' metrics (decisions, pages, controls) and pending alerts
    /// (the dashboard's commands alert too).
    pub(super) ctx: ProcessContext,
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
    pub(super) fn read_log(&self, ing: &mut Ingest) -> Result<(), String> {
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

    pub(super) fn reports_dir(&self) -> PathBuf {
        self.store.dir().join("reports")
    }

    pub(super) fn reports(&self) -> Vec<ReportLink> {
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
    pub(super) fn gauges(&self) -> Option<RolloutGauges> {
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

pub(super) fn action_name(a: Action) -> String {
    canary_judge::wire_name(&a)
}
