//! The controller's operations, shared by the daemon (`canary run`), the CLI
//! commands and the dashboard: one code path for every change.
//!
//! ```text
//!  tick:    read stats (no lock) ─► lock ─► reload state ─► RolloutState::step ─► commit ─► unlock ─► alerts
//!  command: lock ─► reload state ─► RolloutState::command ─► commit ─► unlock ─► alerts
//!  commit:  rollback: push 0 % first to every sink, then state, then log (nothing delays
//!                     the rollback; it counts as pushed when any sink took it; unsaved, it
//!                     stays pushed and is saved first at the next tick)
//!           other:    state first (a failed write changes nothing), then push to every sink;
//!                     a failed push puts the old state back and re-pushes it (the decision
//!                     did not happen), else the log (a failed append is repaired before the
//!                     next one)
//! ```
//!
//! Sinks that missed a configuration (a rollback some path could not take,
//! or the first push after a start) get it on the next tick, whatever the
//! phase; the daemon keeps ticking after the rollout ends until every sink
//! carries the final configuration. Each failed push is logged, counted
//! (`canary_sink_attempts_total`) and alerted once (`sink_failing`) until a
//! push succeeds again.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::alert::{Alert, Alerter};
use crate::context::ProcessContext;
use crate::sink::{EcdsFileSink, Need, SinkError, Sinks};
use crate::source::prometheus::{PrometheusSource, PrometheusSourceConfig};
use crate::source::{AdminSource, AdminSourceConfig, Source};
use crate::store::{Store, StoreError};
use canary_core::config::Counts;
use canary_judge::labels::{parse_jsonl, Intake, LabelRecord};
use canary_judge::rollout::{evidence, Action, Command, Decision, Millis, Phase, RolloutState, WindowSummary};
use canary_judge::spec::RolloutSpec;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Refused(#[from] canary_judge::rollout::CommandRefused),
    #[error("no rollout in {0}: start one with `canary run --spec FILE --state-dir DIR`")]
    NoRollout(String),
    #[error(
        "the spec differs from the one rollout `{0}` started with (gates are fixed when a rollout starts); \
         pass --accept-spec-change to record the change, or use a new --state-dir for a new rollout"
    )]
    SpecChanged(String),
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

pub fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A rollout's state directory with its spec, sink and alerter.
pub struct Controller {
    pub store: Store,
    pub spec: RolloutSpec,
    sinks: Sinks,
    alerter: Alerter,
    /// The process' metrics and pending alerts.
    ctx: ProcessContext,
    /// A `sink_failing` alert went out and no push has succeeded since.
    sink_alerted: bool,
    /// The epoch a `sink_drifted` alert went out for (once per epoch: a
    /// GitOps tool fighting the controller would otherwise alert every interval).
    drift_alerted: Option<u64>,
    /// A rollback pushed to the sinks whose state or log could not be
    /// written: saved again before anything else, and never undone by
    /// pushing the older state the disk still holds.
    unsaved_rollback: Option<(RolloutState, Decision)>,
    /// The source's reset tracker was loaded from the state directory
    /// (done once, at the first evaluation).
    tracker_loaded: bool,
    /// How long the last evaluation's stats read took.
    last_read: Option<Duration>,
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub rollout: String,
    pub phase: Phase,
    pub stage: usize,
    pub stages: usize,
    pub stage_name: String,
    pub weight_bp: u16,
    pub epoch: u64,
    pub champion: String,
    pub challenger: String,
    pub in_stage_ms: Option<u64>,
    pub time_left_ms: Option<u64>,
    /// Responses still needed per version before the gates are judged (in
    /// a shadow stage, the challenger's are shadow calls).
    pub requests_left: Option<(u64, u64)>,
    /// Whether the current stage is a shadow stage.
    pub shadow_stage: bool,
    /// Per-segment 5xx counts of the last decision's window, when the filter
    /// splits by segment.
    pub segments: Vec<SegmentStatus>,
    pub last_decision: Option<Decision>,
    pub daemon_pid: Option<u32>,
    pub state_dir: String,
}

impl Controller {
    /// Opens a state directory. With `spec`, starts the rollout if the
    /// directory holds none; if it holds one, the spec must be the same
    /// unless `accept_spec_change` (recorded in the decision log). Its
    /// metrics and alerts count in `ctx`, the process'.
    pub fn open(
        dir: &Path,
        spec: Option<RolloutSpec>,
        accept_spec_change: bool,
        ctx: &ProcessContext,
    ) -> Result<Controller> {
        let store = Store::open(dir)?;
        let _lock = store.lock()?;
        store.remove_stale_temp_files();
        let stored = store.load_spec()?;
        let spec = match (stored, spec) {
            (None, None) => return Err(ControlError::NoRollout(dir.display().to_string())),
            (Some(stored), None) => stored,
            (None, Some(given)) => {
                store.save_spec(&given)?;
                given
            }
            (Some(stored), Some(given)) if stored == given => stored,
            (Some(stored), Some(given)) => {
                if !accept_spec_change {
                    return Err(ControlError::SpecChanged(stored.rollout));
                }
                if stored.rollout != given.rollout {
                    return Err(ControlError::SpecChanged(stored.rollout));
                }
                store.save_spec(&given)?;
                given
            }
        };
        let sinks = Sinks::from_spec(&spec, ctx.metrics.clone());
        let alerter = Alerter::from_spec(&spec.alerts, ctx.alerts.clone());
        let c = Controller {
            store,
            spec,
            sinks,
            alerter,
            ctx: ctx.clone(),
            sink_alerted: false,
            drift_alerted: None,
            unsaved_rollback: None,
            tracker_loaded: false,
            last_read: None,
        };
        match c.store.load_state()? {
            Some(state) => c.store.repair_log(&state)?,
            // The first push is the first tick's (`ensure_pushed`): pushes
            // are async, opening is not.
            None => c.store.save_state(&RolloutState::start(&c.spec, now_millis()))?,
        }
        Ok(c)
    }

    /// Uses this Kubernetes client for the ConfigMap and WasmPlugin sinks
    /// (else one is made from the environment on first use).
    pub fn with_kube(mut self, client: kube::Client) -> Controller {
        self.sinks = Sinks::from_spec(&self.spec, self.ctx.metrics.clone()).with_kube(client);
        self
    }

    pub fn with_alerter(mut self, alerter: Alerter) -> Controller {
        self.alerter = alerter;
        self
    }

    pub fn alerter(&self) -> &Alerter {
        &self.alerter
    }

    /// The process' metrics and pending alerts this controller counts in.
    pub fn context(&self) -> &ProcessContext {
        &self.ctx
    }

    pub fn state(&self) -> Result<RolloutState> {
        self.store.load_state()?.ok_or_else(|| ControlError::NoRollout(self.store.dir().display().to_string()))
    }

    async fn push(&mut self, state: &RolloutState, need: Need) -> Result<()> {
        let started = std::time::Instant::now();
        let pushed = self.sinks.push(&state.filter_config(&self.spec), need).await;
        self.ctx.metrics.sink_push(started.elapsed(), pushed.is_ok());
        match &pushed {
            Ok(_) if self.sinks.missing(state.epoch).is_empty() => self.sink_alerted = false,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(epoch = state.epoch, "push failed: {e}");
                if !self.sink_alerted {
                    self.sink_alerted = true;
                    let target = state.target(&self.spec);
                    let alert =
                        Alert::sink_failing(&self.spec.rollout, &target, state.seq, &e.to_string(), now_millis());
                    self.alerter.spawn(alert);
                }
            }
        }
        pushed?;
        Ok(())
    }

    /// Sinks that do not carry the state's configuration (as far as this
    /// process knows: it has not written it there).
    pub fn missing_sinks(&self) -> Vec<String> {
        self.state().map(|s| self.sinks.missing(s.epoch)).unwrap_or_else(|_| self.sinks.names())
    }

    /// Makes sure every sink carries the state's configuration (after a
    /// restart, when an earlier push missed a sink, or when someone else
    /// changed a sink: alerted once per epoch, then written back).
    pub async fn ensure_pushed(&mut self) -> Result<()> {
        let state = self.state()?;
        self.deliver(&state).await
    }

    /// [`Controller::ensure_pushed`] for a state already read.
    async fn deliver(&mut self, state: &RolloutState) -> Result<()> {
        let drifted = self.sinks.verify(&state.filter_config(&self.spec)).await;
        if !drifted.is_empty() {
            tracing::warn!(epoch = state.epoch, "sinks changed outside the controller, writing back: {drifted:?}");
            if self.drift_alerted != Some(state.epoch) {
                self.drift_alerted = Some(state.epoch);
                let target = state.target(&self.spec);
                let alert = Alert::sink_drifted(&self.spec.rollout, &target, state.seq, &drifted, now_millis());
                self.alerter.spawn(alert);
            }
        }
        if !self.sinks.missing(state.epoch).is_empty() {
            self.push(state, Need::All).await?;
        }
        Ok(())
    }

    /// Persists a decision and its effects, in the order that loses nothing.
    async fn commit(&mut self, old: &RolloutState, new: &RolloutState, d: &Decision) -> Result<()> {
        let moved = new.epoch != old.epoch;
        if d.action == Action::Rollback {
            // Traffic first: a rollback must not wait for, or fail on, the
            // disk, and any working sink takes it.
            let pushed = self.push(new, Need::Any).await;
            let saved = self.store.save_state(new);
            let logged = self.store.append_decision(d);
            if saved.is_err() {
                self.unsaved_rollback = Some((new.clone(), d.clone()));
            }
            pushed?;
            saved?;
            logged?;
            return Ok(());
        }
        self.store.save_state(new)?;
        if moved {
            if let Err(e) = self.push(new, Need::All).await {
                // The move did not happen: the old state goes back, and the
                // sinks that took the new configuration get the old one.
                let restored = self.store.save_state(old);
                if let Err(again) = self.push(old, Need::All).await {
                    tracing::error!("the previous configuration could not be pushed back either: {again}");
                }
                restored?;
                return Err(e);
            }
        }
        self.store.append_decision(d)?;
        Ok(())
    }

    /// After a stage ends, writes every stage's report and the rollout's
    /// into `STATE_DIR/reports`; returns the Markdown summary of the stage
    /// that ended. A failed write is logged: it never blocks the rollout.
    fn stage_ended(&self, d: &Decision) -> Option<String> {
        if !matches!(d.action, Action::Advance | Action::Promote | Action::Rollback) {
            return None;
        }
        if let Err(e) = crate::store::reports::write_all(&self.store, &self.spec, None, now_millis()) {
            tracing::error!("stage report not written: {e}");
        }
        let state = self.store.load_state().ok().flatten()?;
        let log = self.store.decisions().ok()?;
        canary_judge::report::stage_report(&self.spec, &state, &log, d.from.epoch, now_millis())
            .map(|r| canary_judge::report::markdown(&r))
    }

    /// Writes the reports when a stage ended, and sends the decision's
    /// alerts in the background.
    fn alert(&self, d: &Decision) {
        let summary = self.stage_ended(d);
        for k in &d.alerts {
            self.alerter.spawn(Alert::from_decision(&self.spec.rollout, *k, d).with_report(summary.clone()));
        }
    }

    /// An operator's command. Works with or without the daemon running (they
    /// serialize on the state lock). Its alerts go out in the background
    /// (the dashboard answers at once, whatever the webhooks do); a caller
    /// about to exit (the CLI) waits for them with [`Alerter::drain`].
    pub async fn command(&mut self, command: Command, reason: &str) -> Result<Decision> {
        let _coming = self.alerter.pending().coming();
        let decision = {
            let _lock = self.store.lock()?;
            let old = self.state()?;
            self.store.repair_log(&old)?;
            let (new, d) = old.command(&self.spec, command, reason, now_millis())?;
            if let Err(e) = self.commit(&old, &new, &d).await {
                if self.unsaved_rollback.is_some() {
                    // Pushed though not saved: in effect, so people hear of it.
                    self.alert(&d);
                }
                return Err(e);
            }
            d
        };
        self.alert(&decision);
        Ok(decision)
    }

    /// One automatic evaluation. `None` when there was nothing to evaluate
    /// (paused, ended, or the state changed while the stats were read).
    pub async fn tick(&mut self, source: &mut Source) -> Result<Option<Decision>> {
        if self.unsaved_rollback.is_some() {
            return self.save_rollback().await;
        }
        let before = self.state()?;
        if before.phase != Phase::Running {
            // A rollback some sink missed, or a pause after a restart:
            // keep delivering; nothing to evaluate.
            if let Err(e) = self.deliver(&before).await {
                tracing::error!("sinks still missing the {} configuration: {e}", before.phase);
            }
            return Ok(None);
        }
        self.deliver(&before).await?;
        self.read_labels_file()?;
        if !self.tracker_loaded {
            // The tracker's own files; else one an older controller kept
            // inside the state (saved to files at the end of this tick).
            match self.store.load_tracker()?.or_else(|| before.source_tracker.clone()) {
                Some(t) => source.set_tracker(t),
                None => source.tracker_mut().must_save_all(),
            }
            // With `envoy.counts: cluster`, the stage's baselines: the
            // window stays whole across a controller restart.
            if let Some(counts) = source.cluster_counts_mut() {
                match self.store.load_cluster_counts()? {
                    Some(c) => *counts = c,
                    None => counts.tracker_mut().must_save_all(),
                }
            }
            self.tracker_loaded = true;
        }
        // Earlier epochs are never read again: keep the tracker small.
        source.tracker_mut().forget_epochs_before(&self.spec.rollout, before.epoch);
        let expected = EcdsFileSink::version_info(&before.filter_config(&self.spec));
        let read_started = std::time::Instant::now();
        let window = source.read(&self.spec.rollout, before.epoch, &expected).await;
        self.last_read = Some(read_started.elapsed());
        if let Ok(w) = &window {
            self.ctx.metrics.source_read(w, read_started.elapsed());
        }

        let decision = {
            let _lock = self.store.lock()?;
            let mut old = self.state()?;
            if old.epoch != before.epoch || old.phase != Phase::Running {
                return Ok(None);
            }
            // A log append that failed earlier (disk full) is made good
            // first: the log never gets a gap.
            let repaired = self.store.repair_log_if_behind(&old);
            // Saved apart, a few shards per interval (never whole into the state).
            old.source_tracker = None;
            if let Err(e) = self.store.save_tracker(source.tracker_mut()) {
                tracing::error!("reset tracker not saved (retried next interval): {e}");
            }
            if let Some(counts) = source.cluster_counts_mut() {
                if let Err(e) = self.store.save_cluster_counts(counts) {
                    tracing::error!("cluster count baselines not saved (retried next interval): {e}");
                }
            }
            let (new, d) = old.step(&self.spec, window.as_ref(), now_millis());
            if let Err(e) = repaired {
                // Nothing can be saved; a rollback goes out all the same.
                if d.action == Action::Rollback {
                    let pushed = self.push(&new, Need::Any).await;
                    self.unsaved_rollback = Some((new.clone(), d.clone()));
                    self.alert(&d);
                    pushed?;
                }
                return Err(e.into());
            }
            if let Err(e) = self.commit(&old, &new, &d).await {
                if self.unsaved_rollback.is_some() {
                    // In effect though not saved: people hear of it now.
                    self.alert(&d);
                }
                return Err(e);
            }
            d
        };
        self.alert(&decision);
        Ok(Some(decision))
    }

    /// Saves a rollback that is in effect but not on disk yet (the disk
    /// failed when it happened), with its log line; keeps 0 % pushed
    /// meanwhile. `None` if an operator's command changed the state since
    /// (theirs stands).
    async fn save_rollback(&mut self) -> Result<Option<Decision>> {
        let Some((new, d)) = self.unsaved_rollback.clone() else { return Ok(None) };
        if self.sinks.missing(new.epoch).len() == self.sinks.names().len() {
            self.push(&new, Need::Any).await?;
        }
        let _lock = self.store.lock()?;
        let on_disk = self.state()?;
        if on_disk.seq + 1 != new.seq {
            tracing::warn!("the state changed while rollback #{} waited to be saved: the newer state stands", d.seq);
            self.unsaved_rollback = None;
            return Ok(None);
        }
        // The log first catches up with the state on disk (its last
        // decision may be missing), then takes the rollback.
        self.store.repair_log(&on_disk)?;
        self.store.save_state(&new)?;
        self.store.repair_log(&new)?;
        self.unsaved_rollback = None;
        Ok(Some(d))
    }

    /// Adds labels (from `POST /labels`).
    pub fn add_labels(&self, records: &[LabelRecord]) -> Result<Intake> {
        add_labels(&self.store, &self.spec, records)
    }

    /// Reads what the labels JSONL file gained since the last read.
    fn read_labels_file(&self) -> Result<()> {
        let Some(path) = &self.spec.labels.jsonl else { return Ok(()) };
        let Ok(bytes) = std::fs::read(path) else { return Ok(()) };
        let _lock = self.store.lock()?;
        let mut state = self.state()?;
        let from = (state.labels_offset as usize).min(bytes.len());
        // Only whole lines: the writer may be mid-line.
        let Some(end) = bytes[from..].iter().rposition(|b| *b == b'\n').map(|i| from + i + 1) else { return Ok(()) };
        let (records, errors) = parse_jsonl(&String::from_utf8_lossy(&bytes[from..end]));
        for e in errors.iter().take(5) {
            tracing::warn!("labels file {}: {e}", path.display());
        }
        state.add_labels(&self.spec, &records);
        state.labels_offset = end as u64;
        self.store.save_state(&state)?;
        Ok(())
    }

    pub fn status(&self) -> Result<Status> {
        status(&self.store, &self.spec)
    }

    /// The stats source the spec names: Prometheus, or every Envoy's admin API.
    pub fn source(&self) -> Source {
        match &self.spec.envoy.prometheus {
            Some(p) => {
                let source = PrometheusSource::new(PrometheusSourceConfig {
                    url: p.url.clone(),
                    timeout: p.timeout,
                    selector: p.selector.clone(),
                });
                Source::Prometheus(match self.spec.envoy.counts {
                    Counts::Filter => source,
                    Counts::Cluster => source.with_cluster_counts(
                        vec![self.spec.champion.clone(), self.spec.challenger.clone()],
                        p.cluster_metrics,
                    ),
                })
            }
            None => {
                let source = AdminSource::new(AdminSourceConfig {
                    endpoints: self.spec.envoy.admin.clone(),
                    timeout: self.spec.envoy.timeout,
                    max_concurrency: 64,
                });
                Source::Admin(match self.spec.envoy.counts {
                    Counts::Filter => source,
                    Counts::Cluster => {
                        source.with_cluster_counts(vec![self.spec.champion.clone(), self.spec.challenger.clone()])
                    }
                })
            }
        }
    }

    /// How long the last evaluation's stats read took (for the scale bench).
    pub fn last_read(&self) -> Option<Duration> {
        self.last_read
    }

    pub fn interval(&self) -> Duration {
        self.spec.interval
    }
}

/// Adds labels to the state (under the lock).
pub fn add_labels(store: &Store, spec: &RolloutSpec, records: &[LabelRecord]) -> Result<Intake> {
    let _lock = store.lock()?;
    let mut state = store.load_state()?.ok_or_else(|| ControlError::NoRollout(store.dir().display().to_string()))?;
    let intake = state.add_labels(spec, records);
    if intake.accepted > 0 {
        store.save_state(&state)?;
    }
    Ok(intake)
}

/// One segment's 5xx evidence, per version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentStatus {
    pub segment: String,
    /// `(5xx, responses)` of the champion.
    pub champion: (u64, u64),
    /// `(5xx, responses)` of the challenger.
    pub challenger: (u64, u64),
}

/// Per-segment evidence of a window summary: every segment either version
/// saw, in name order.
pub fn segment_status(w: &WindowSummary) -> Vec<SegmentStatus> {
    let names: std::collections::BTreeSet<&String> =
        w.champion.segments.keys().chain(w.challenger.segments.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let counts = |v: &canary_judge::window::VersionWindow| {
                v.segments.get(name).map_or((0, 0), |s| (s.errors(), s.answered()))
            };
            SegmentStatus { segment: name.clone(), champion: counts(&w.champion), challenger: counts(&w.challenger) }
        })
        .collect()
}

/// The rollout's status as `canary status` shows it.
pub fn status(store: &Store, spec: &RolloutSpec) -> Result<Status> {
    let state = store.load_state()?.ok_or_else(|| ControlError::NoRollout(store.dir().display().to_string()))?;
    let target = state.target(spec);
    let stage = spec.stages.get(state.stage);
    let now = now_millis();
    let in_stage_ms = state.window_started_at.map(|t| now.saturating_sub(t));
    let time_left_ms = match (stage, in_stage_ms) {
        (Some(s), Some(e)) if !state.phase.is_final() => Some((s.min_duration.as_millis() as u64).saturating_sub(e)),
        _ => None,
    };
    let shadow_stage = state.in_shadow_stage(spec);
    let requests_left = match (stage, state.last_decision.as_ref().and_then(|d| d.window.as_ref())) {
        (Some(_), Some(w))
            if !state.phase.is_final() && state.last_decision.as_ref().map(|d| d.to.epoch) == Some(state.epoch) =>
        {
            let (a, b) = evidence(shadow_stage, w);
            // The spec's value, or the one derived from the gates when it is 0.
            let min = spec.min_requests(state.stage);
            Some((min.saturating_sub(a), min.saturating_sub(b)))
        }
        _ => None,
    };
    let segments = state.last_decision.as_ref().and_then(|d| d.window.as_ref()).map(segment_status).unwrap_or_default();
    Ok(Status {
        rollout: spec.rollout.clone(),
        phase: state.phase,
        stage: state.stage,
        stages: spec.stages.len(),
        stage_name: target.stage_name,
        weight_bp: target.weight.bp(),
        epoch: state.epoch,
        champion: spec.champion.clone(),
        challenger: spec.challenger.clone(),
        in_stage_ms,
        time_left_ms,
        requests_left,
        shadow_stage,
        segments,
        last_decision: state.last_decision,
        daemon_pid: store.daemon_pid(),
        state_dir: store.dir().display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use canary_core::metrics::Counter;

    use super::*;
    use canary_judge::window::{Coverage, VersionWindow};

    /// A spec with two file sinks: `envoy.ecds_dir` (broken: its parent is
    /// a regular file, so even root cannot write it) and a working one.
    fn two_sinks(tmp: &Path) -> (RolloutSpec, std::path::PathBuf) {
        std::fs::write(tmp.join("blocker"), "x").unwrap();
        let good = tmp.join("good");
        std::fs::create_dir(&good).unwrap();
        let text = format!(
            "rollout: r\nchampion: a\nchallenger: b\nstages: [{{weight_percent: 1}}, {{weight_percent: 100}}]\n\
             gates: {{error_rate: {{error_tolerance: 1}}}}\n\
             envoy:\n  admin: [\"http://127.0.0.1:1\"]\n  ecds_dir: {}\n  wasm: /x.wasm\n  sinks: [{{file: {{dir: {}}}}}]\n  \
             sink_retry: {{attempts: 2, backoff: 1ms, max_backoff: 1ms}}\n",
            tmp.join("blocker/ecds").display(),
            good.display()
        );
        (RolloutSpec::from_yaml(&text).unwrap(), good.join(crate::sink::ECDS_FILE_NAME))
    }

    fn pushed_epoch(file: &Path) -> u64 {
        crate::sink::ecds_holding(&std::fs::read_to_string(file).unwrap()).unwrap().1
    }

    #[tokio::test]
    async fn a_stage_change_a_sink_refuses_leaves_the_old_state_and_a_rollback_takes_any_working_sink() {
        let tmp = tempfile::tempdir().unwrap();
        let (spec, good) = two_sinks(tmp.path());
        let mut c = Controller::open(&tmp.path().join("state"), Some(spec), false, &ProcessContext::default()).unwrap();
        // The start's push: the good sink takes it, the broken one is named.
        let e = c.ensure_pushed().await.unwrap_err();
        assert!(e.to_string().contains("blocker/ecds"), "{e}");
        assert_eq!(pushed_epoch(&good), 1);
        let before = c.state().unwrap();

        let e = c.command(Command::Advance, "try").await.unwrap_err();
        assert!(e.to_string().contains("every sink must take a stage change"), "{e}");
        let after = c.state().unwrap();
        assert_eq!((after.stage, after.epoch, after.seq), (before.stage, before.epoch, before.seq), "state moved");
        assert!(c.store.decisions().unwrap().is_empty(), "a failed advance was logged");
        assert_eq!(pushed_epoch(&good), 1, "the good sink got the old configuration back");

        let d = c.command(Command::Rollback, "bad").await.unwrap();
        assert_eq!((d.action, d.to.weight.bp()), (Action::Rollback, 0));
        assert_eq!(pushed_epoch(&good), d.to.epoch);
        assert_eq!(c.state().unwrap().phase, Phase::RolledBack);
        assert_eq!(c.missing_sinks(), [format!("file {}", tmp.path().join("blocker/ecds").display())]);
    }

    #[test]
    fn segment_status_lists_every_segment_of_either_version() {
        let mut champion = VersionWindow::default();
        champion.segment_mut("pro").add_counter(Counter::Rq2xx, 99);
        champion.segment_mut("pro").add_counter(Counter::Rq5xx, 1);
        champion.segment_mut("other").add_counter(Counter::Rq2xx, 10);
        let mut challenger = VersionWindow::default();
        challenger.segment_mut("pro").add_counter(Counter::Rq5xx, 2);
        challenger.segment_mut("free").add_counter(Counter::Rq2xx, 5);
        let w = WindowSummary { champion, challenger, coverage: Coverage::default(), elapsed_ms: 0 };
        let got = segment_status(&w);
        let row = |segment: &str, champion, challenger| SegmentStatus { segment: segment.into(), champion, challenger };
        assert_eq!(got, vec![row("free", (0, 0), (0, 5)), row("other", (0, 10), (0, 0)), row("pro", (1, 100), (2, 2))]);
        let empty = WindowSummary {
            champion: VersionWindow::default(),
            challenger: VersionWindow::default(),
            coverage: Coverage::default(),
            elapsed_ms: 0,
        };
        assert!(segment_status(&empty).is_empty());
    }
}
