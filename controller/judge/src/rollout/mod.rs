//! The rollout state machine. Pure and synchronous: (state, evidence, now) →
//! (new state, decision). No I/O and no clock; the daemon and the CLI wrap it.
//!
//! ```text
//!            advance (gates pass, minimums met)       promote (next is 100 %)
//!   stage 0 ─────────────► stage 1 ─► … ─► stage n-2 ──────────────────────► Promoted
//!      │  ▲ hold (no data, too few requests, too early, gate without data)
//!      │  └─┘
//!      └──────────── any gate fails, or operator ─────────────────────────► RolledBack (0 %)
//!   Running ◄──pause/resume──► Paused (no progression; failing gates still roll back)
//!                              Paused + frozen (`pause --freeze`: no automatic change at all)
//! ```
//!
//! With the anytime method a stage rolls back as soon as a gate fails,
//! whatever its sample (the gates' error rates hold from the first
//! response); it advances only with `min_requests` responses per version,
//! after `min_duration`, and on what its `advance_when` asks: `no_harm` (no
//! gate failed, every gate has data) or `proven` (every gate passed). With
//! the older methods gates are judged from `min_requests` on. Its window
//! starts when every Envoy has applied the stage's configuration.
//!
//! **Guardrails.** Before any gate, the responses since the previous
//! evaluation are checked against absolute limits (`gates.guardrails`): the
//! champion's 5xx share above `max_error_percent`, or no 2xx at all, is an
//! **incident** — the fleet is failing, so relative gates mean nothing
//! (two equally broken versions compare equal). The stage holds and alerts
//! once; when the incident is over the stage's window starts again from
//! that moment, without the incident's responses, and the rollout goes on
//! by itself.
//!
//! **Terminal rule.** A stage still holding at its `max_duration` applies
//! `on_max_duration`: hold and alert once (default), roll back, or advance
//! (never over a failed gate, missing data or an incident).
//!
//! A shadow stage (the first, at 0 %) counts the challenger's evidence in
//! shadow calls sent to it instead of responses to users, and is judged by
//! the shadow gate (see [`crate::gates`]). Its configuration is the only one
//! with the filter's `shadow` part: advancing, rolling back or promoting
//! stops the copies.
//!
//! Files: this one the state and [`RolloutState::step`] (and operator
//! commands); `decision.rs` what a step decides (phase, action, decision,
//! transition); `stage.rs` how one stage's evidence is judged (minimums,
//! gates, guardrails, the stage's [`StageContext`]); `coverage.rs` whether
//! enough Envoys answered to judge at all.

use serde::{Deserialize, Serialize};

use crate::evidence::tracker::ResetTracker;
use crate::evidence::SourceError;
use crate::gates::{GateResult, Outcome};
use crate::labels::{Intake, LabelBook, LabelRecord, StageLabels};
use crate::spec::{RolloutSpec, TerminalOutcome};
use crate::window::{VersionWindow, Window};
use canary_core::{FilterConfig, Weight};

mod coverage;
mod decision;
mod stage;
#[cfg(test)]
mod tests;

pub use coverage::{check_coverage, CoverageCheck};
pub use decision::{Action, AlertKind, Decision, Phase, Target, Transition, WindowSummary};
use stage::guardrails;
pub use stage::{evidence, forward, judge, stage_context};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The rollout's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub rollout: String,
    pub phase: Phase,
    /// Index into the spec's stages.
    pub stage: usize,
    /// Epoch of the configuration for this stage (raised on every change).
    pub epoch: u64,
    pub stage_entered_at: Millis,
    /// When every Envoy had applied this stage's configuration.
    pub window_started_at: Option<Millis>,
    /// Sequence number of the last decision.
    pub seq: u64,
    pub last_decision: Option<Decision>,
    pub history: Vec<Transition>,
    pub labels: LabelBook,
    /// Bytes of the labels JSONL file already read.
    #[serde(default)]
    pub labels_offset: u64,
    /// Consecutive evaluations without usable stats.
    pub source_failures: u32,
    #[serde(default)]
    pub not_applied_alerted: bool,
    /// Per-endpoint counter bookkeeping of the stats source (resets), as
    /// older controllers saved it inside the state. Read, never written:
    /// the controller moves it into the tracker's own shard files (see
    /// [`ResetTracker`]) at its first evaluation, and the state it saves
    /// from then on is without it.
    #[serde(default, deserialize_with = "ResetTracker::deserialize_saved", skip_serializing)]
    pub source_tracker: Option<ResetTracker>,
    /// The sequential verdicts reached in this stage, one per gate: the
    /// latest look each gate spent (see [`crate::gates`]). A look is judged
    /// once; until the next, its verdict is carried. Cleared on every move.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub looks: Vec<GateResult>,
    /// Paused with `--freeze`: not even a failing gate rolls back.
    #[serde(default, skip_serializing_if = "is_false")]
    pub frozen: bool,
    /// The incident under way, if any (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<Incident>,
    /// Cumulative responses at the guardrails' last judgement in this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_mark: Option<GuardMark>,
    /// Where the stage's window restarted after an incident: the
    /// cumulative windows then, subtracted from every later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_base: Option<WindowBase>,
    /// The terminal rule's alert was sent for this stage.
    #[serde(default, skip_serializing_if = "is_false")]
    pub overdue_alerted: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An incident found by the guardrails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub since: Millis,
    pub reason: String,
}

/// Both versions' cumulative responses by class at a guardrail judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardMark {
    pub champion: [u64; 5],
    pub challenger: [u64; 5],
}

/// The cumulative windows a stage's window restarted from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowBase {
    pub at: Millis,
    pub champion: VersionWindow,
    pub challenger: VersionWindow,
    /// The stage's labels then (absent in state written before labels
    /// restarted with the window: none subtracted).
    #[serde(default)]
    pub labels: StageLabels,
}

/// A manual command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    /// Pause and stop the safety net too: no rollback by the gates.
    Freeze,
    Resume,
    Advance,
    Rollback,
}

impl Command {
    /// Every command, in the order help texts list them.
    pub const ALL: [Command; 5] =
        [Command::Pause, Command::Freeze, Command::Resume, Command::Advance, Command::Rollback];

    /// The command's word: in annotations, the daemon's API, the CLI and logs.
    pub fn name(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Freeze => "freeze",
            Command::Resume => "resume",
            Command::Advance => "advance",
            Command::Rollback => "rollback",
        }
    }

    /// The command a word names, if any.
    pub fn from_name(word: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.name() == word)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command}: the rollout is {phase}")]
pub struct CommandRefused {
    pub command: String,
    pub phase: String,
}

/// Name of the stage the filter reports after a rollback.
pub const ROLLED_BACK_STAGE: &str = "rolled-back";

impl RolloutState {
    pub fn start(spec: &RolloutSpec, now: Millis) -> RolloutState {
        RolloutState {
            rollout: spec.rollout.clone(),
            phase: Phase::Running,
            stage: 0,
            epoch: 1,
            stage_entered_at: now,
            window_started_at: None,
            seq: 0,
            last_decision: None,
            history: vec![],
            labels: LabelBook::default(),
            labels_offset: 0,
            source_failures: 0,
            not_applied_alerted: false,
            source_tracker: None,
            looks: vec![],
            frozen: false,
            incident: None,
            guard_mark: None,
            window_base: None,
            overdue_alerted: false,
        }
    }

    /// Where traffic should be now.
    pub fn target(&self, spec: &RolloutSpec) -> Target {
        if self.phase == Phase::RolledBack {
            return Target {
                stage: self.stage,
                stage_name: ROLLED_BACK_STAGE.into(),
                weight: Weight::ZERO,
                epoch: self.epoch,
            };
        }
        Target {
            stage: self.stage,
            stage_name: spec.stage_name(self.stage),
            weight: spec.stage_weight(self.stage),
            epoch: self.epoch,
        }
    }

    /// The filter configuration for [`RolloutState::target`].
    pub fn filter_config(&self, spec: &RolloutSpec) -> FilterConfig {
        let t = self.target(spec);
        spec.filter_config(&t.stage_name, t.weight, t.epoch, self.in_shadow_stage(spec))
    }

    /// Whether traffic is in a shadow stage now (never once the rollout ended).
    pub fn in_shadow_stage(&self, spec: &RolloutSpec) -> bool {
        !self.phase.is_final() && spec.is_shadow_stage(self.stage)
    }

    /// Labels of the current stage, per version: all traffic's, and each
    /// segment's the labels named.
    /// The current stage's label evidence, since its window (re)started.
    pub fn stage_labels(&self, spec: &RolloutSpec) -> StageLabels {
        let all = self.labels.evidence(&spec.stage_name(self.stage), &spec.champion, &spec.challenger);
        match &self.window_base {
            Some(base) => all.since(&base.labels),
            None => all,
        }
    }

    /// Adds label records of this rollout: refuses other rollouts', unknown
    /// stages and versions, records without an outcome; leaves out those
    /// served before the current stage's window restarted after an
    /// incident (their responses are left out too).
    pub fn add_labels(&mut self, spec: &RolloutSpec, records: &[LabelRecord]) -> Intake {
        let known = |stage: &str, version: &str| {
            (version == spec.champion || version == spec.challenger)
                && (0..spec.stages.len()).any(|i| spec.stage_name(i) == stage)
        };
        let current = spec.stage_name(self.stage);
        let restart = self.window_base.as_ref().map(|b| (current.as_str(), b.at));
        self.labels.add_since(&spec.rollout, records, known, spec.filter.segment.as_ref(), restart)
    }

    fn moved(&mut self, spec: &RolloutSpec, action: Action, manual: bool, now: Millis) -> Target {
        let from = spec.stage_name(self.stage);
        match action {
            Action::Advance => self.stage += 1,
            Action::Promote => {
                self.stage = spec.stages.len() - 1;
                self.phase = Phase::Promoted;
            }
            Action::Rollback => self.phase = Phase::RolledBack,
            _ => {}
        }
        self.epoch += 1;
        self.stage_entered_at = now;
        self.window_started_at = None;
        self.not_applied_alerted = false;
        // Forward, the anytime gates' no-harm evidence is pooled into the
        // next stage (see `RateProcess::into_next_stage`); the look-based
        // methods' spent looks are the stage's own.
        self.looks = match action {
            Action::Advance => self
                .looks
                .iter()
                .filter_map(|l| {
                    let process = l.process.as_ref()?.into_next_stage(spec.harm_share(self.stage));
                    Some(GateResult { process: Some(process), ..l.clone() })
                })
                .collect(),
            _ => vec![],
        };
        self.incident = None;
        self.guard_mark = None;
        self.window_base = None;
        self.overdue_alerted = false;
        let to = self.target(spec);
        self.history.push(Transition {
            at: now,
            seq: self.seq + 1,
            action,
            manual,
            from_stage: from,
            to_stage: to.stage_name.clone(),
            weight: to.weight,
            epoch: to.epoch,
        });
        to
    }

    /// The move that leaves the current stage forward.
    fn forward(&self, spec: &RolloutSpec) -> Action {
        forward(spec, self.stage)
    }

    /// Keeps the verdicts of the looks `results` spent (one per gate, and
    /// per gate and segment).
    fn spend_looks(&mut self, results: &[GateResult]) {
        for r in results.iter().filter(|r| r.spends_look()) {
            self.looks.retain(|l| l.gate != r.gate || l.segment != r.segment);
            self.looks.push(r.clone());
        }
    }

    fn finish(
        mut self,
        action: Action,
        manual: bool,
        now: Millis,
        spec: &RolloutSpec,
        parts: (Vec<String>, Vec<GateResult>, Option<WindowSummary>, Vec<AlertKind>),
    ) -> (RolloutState, Decision) {
        let from = self.target(spec);
        let to = match action {
            Action::Advance | Action::Promote | Action::Rollback => self.moved(spec, action, manual, now),
            _ => from.clone(),
        };
        self.seq += 1;
        let (reasons, gates, window, alerts) = parts;
        let decision =
            Decision { seq: self.seq, at: now, action, manual, from, to, reasons, gates, window, alerts, labels: None };
        self.last_decision = Some(decision.clone());
        (self, decision)
    }

    /// One automatic evaluation. `window` is the stats source's answer for
    /// this state's epoch, or why there is none.
    pub fn step(
        &self,
        spec: &RolloutSpec,
        window: Result<&Window, &SourceError>,
        now: Millis,
    ) -> (RolloutState, Decision) {
        let mut next = self.clone();
        let hold = |next: RolloutState, reasons: Vec<String>, gates, summary, alerts| {
            next.finish(Action::Hold, false, now, spec, (reasons, gates, summary, alerts))
        };
        match self.phase {
            Phase::Promoted | Phase::RolledBack => {
                return hold(next, vec![format!("the rollout has ended: {}", self.phase)], vec![], None, vec![]);
            }
            Phase::Paused if self.frozen => {
                return hold(
                    next,
                    vec!["frozen by an operator: no automatic change at all".into()],
                    vec![],
                    None,
                    vec![],
                )
            }
            Phase::Paused | Phase::Running => {}
        }

        let source_failed = |mut next: RolloutState, why: String| {
            next.source_failures += 1;
            let alerts = if next.source_failures == spec.alerts.source_failures.max(1) {
                vec![AlertKind::SourceFailing]
            } else {
                vec![]
            };
            let reason = format!(
                "no data ({} in a row): {why}; a stage never advances on data it could not read",
                next.source_failures
            );
            hold(next, vec![reason], vec![], None, alerts)
        };
        let window = match window {
            Err(why) => return source_failed(next, why.to_string()),
            Ok(w) if w.epoch != self.epoch => {
                return source_failed(next, format!("stats are for epoch {}, not {}", w.epoch, self.epoch))
            }
            Ok(w) => w,
        };
        let coverage = match check_coverage(&window.coverage, spec.envoy.max_missing_share) {
            CoverageCheck::NoData(why) => return source_failed(next, why),
            CoverageCheck::NotApplied { waiting } => {
                next.source_failures = 0;
                let c = &window.coverage;
                let late = now.saturating_sub(self.stage_entered_at) > spec.envoy.apply_timeout.as_millis() as u64;
                let mut alerts = vec![];
                if late && !next.not_applied_alerted {
                    next.not_applied_alerted = true;
                    alerts.push(AlertKind::NotApplied);
                }
                let reason = format!(
                    "waiting for {waiting} of {} Envoys to apply epoch {}{}",
                    c.endpoints,
                    self.epoch,
                    if late {
                        format!(" (more than {} since the push)", humantime::format_duration(spec.envoy.apply_timeout))
                    } else {
                        String::new()
                    }
                );
                return hold(next, vec![reason], vec![], None, alerts);
            }
            CoverageCheck::Enough { partial } => partial,
        };
        next.source_failures = 0;
        let c = &window.coverage;
        next.window_started_at.get_or_insert(now);

        let mut champion = window.version(&spec.champion);
        let mut challenger = window.version(&spec.challenger);
        let mut notes: Vec<String> = coverage.into_iter().collect();
        if spec.gates.guardrails.enabled {
            let mark = GuardMark { champion: champion.responses, challenger: challenger.responses };
            match guardrails(spec, next.guard_mark.as_ref(), &mark) {
                Some(Some(why)) => {
                    next.guard_mark = Some(mark);
                    let mut alerts = vec![];
                    if next.incident.is_none() {
                        next.incident = Some(Incident { since: now, reason: why.clone() });
                        alerts.push(AlertKind::Incident);
                    }
                    let reason = format!(
                        "incident (guardrails): {why}; holding, and the stage's window will start again without it once it is over"
                    );
                    return hold(next, vec![reason], vec![], None, alerts);
                }
                Some(None) => {
                    next.guard_mark = Some(mark);
                    if let Some(incident) = next.incident.take() {
                        let excluded = (
                            champion
                                .answered()
                                .saturating_sub(next.window_base.as_ref().map_or(0, |b| b.champion.answered())),
                            challenger
                                .answered()
                                .saturating_sub(next.window_base.as_ref().map_or(0, |b| b.challenger.answered())),
                        );
                        notes.push(format!(
                            "the incident of {:.1} s is over ({}); the stage's window starts again now, excluding {} champion and {} challenger responses",
                            now.saturating_sub(incident.since) as f64 / 1000.0,
                            incident.reason,
                            excluded.0,
                            excluded.1
                        ));
                        let labels =
                            next.labels.evidence(&spec.stage_name(next.stage), &spec.champion, &spec.challenger);
                        let dropped =
                            labels.since(&next.window_base.as_ref().map(|b| b.labels.clone()).unwrap_or_default());
                        notes.push(format!(
                            "{} champion and {} challenger labels are left out with them (and later ones served before now)",
                            dropped.totals.champion.n, dropped.totals.challenger.n
                        ));
                        next.window_base = Some(WindowBase {
                            at: now,
                            champion: champion.clone(),
                            challenger: challenger.clone(),
                            labels,
                        });
                        next.window_started_at = Some(now);
                        next.looks.clear();
                    }
                }
                None if next.incident.is_some() => {
                    let why = next.incident.as_ref().map(|i| i.reason.clone()).unwrap_or_default();
                    let reason = format!("incident (guardrails) not over yet: {why}; too few responses since to tell");
                    return hold(next, vec![reason], vec![], None, vec![]);
                }
                None => {}
            }
        }
        if let Some(base) = &next.window_base {
            champion = champion.since(&base.champion);
            challenger = challenger.since(&base.challenger);
            if let Some(n) = next.labels.excluded.get(&spec.stage_name(next.stage)) {
                notes.push(format!("{n} labels of requests served before the window restarted were left out"));
            }
        }
        let elapsed_ms = now.saturating_sub(next.window_started_at.unwrap_or(now));

        let context = stage_context(spec, self.stage);
        let labels = self.stage_labels(spec);
        let results = crate::segments::evaluate(
            &spec.gates,
            spec.filter.segment.as_ref(),
            &champion,
            &challenger,
            &labels,
            context,
            &next.looks,
        );
        next.spend_looks(&results);
        let summary = WindowSummary { champion, challenger, coverage: c.clone(), elapsed_ms };
        let (mut action, mut reasons) = judge(spec, self.stage, context.min_samples, &results, &summary);
        let mut alerts = vec![];
        if action == Action::Hold
            && now.saturating_sub(self.stage_entered_at) >= spec.max_duration(self.stage).as_millis() as u64
        {
            let rule = spec.stages[self.stage].on_max_duration;
            let over = format!(
                "the stage reached its max_duration ({}) undecided",
                humantime::format_duration(spec.max_duration(self.stage))
            );
            let complete = results.iter().all(|r| r.outcome != Outcome::NoData || !r.blocks);
            match rule {
                TerminalOutcome::Rollback if self.phase == Phase::Running => {
                    action = Action::Rollback;
                    reasons.insert(0, format!("{over}: on_max_duration rollback"));
                }
                TerminalOutcome::Advance if self.phase == Phase::Running && complete => {
                    action = self.forward(spec);
                    reasons.insert(0, format!("{over}: on_max_duration advance (no gate failed, every gate has data)"));
                }
                _ => {
                    reasons.push(format!("{over}: holding for a person to advance or roll back (on_max_duration)"));
                    if !next.overdue_alerted {
                        next.overdue_alerted = true;
                        alerts.push(AlertKind::StageOverdue);
                    }
                }
            }
        }
        if self.phase == Phase::Paused && action != Action::Rollback && action != Action::Hold {
            reasons.insert(0, format!("paused by an operator: would {}", action.word()));
            action = Action::Hold;
        } else if self.phase == Phase::Paused && action == Action::Hold {
            reasons.insert(0, "paused by an operator (the gates still judge: a failure rolls back)".into());
        }
        if action == Action::Rollback {
            alerts.push(AlertKind::Rollback);
        }
        reasons.extend(notes);
        let (mut next, mut decision) = next.finish(action, false, now, spec, (reasons, results, Some(summary), alerts));
        // The label evidence the gates saw, for the record (and replay).
        decision.labels = Some(labels);
        next.last_decision = Some(decision.clone());
        (next, decision)
    }

    /// An operator's command.
    pub fn command(
        &self,
        spec: &RolloutSpec,
        command: Command,
        reason: &str,
        now: Millis,
    ) -> Result<(RolloutState, Decision), CommandRefused> {
        let refuse = || CommandRefused { command: command.name().to_string(), phase: self.phase.to_string() };
        let mut next = self.clone();
        let why = if reason.is_empty() { "no reason given".to_string() } else { reason.to_string() };
        let action = match (command, self.phase) {
            (Command::Pause, Phase::Running) => {
                next.phase = Phase::Paused;
                Action::Pause
            }
            (Command::Freeze, Phase::Running | Phase::Paused) => {
                next.phase = Phase::Paused;
                next.frozen = true;
                Action::Pause
            }
            (Command::Resume, Phase::Paused) => {
                next.phase = Phase::Running;
                next.frozen = false;
                Action::Resume
            }
            (Command::Advance, Phase::Running | Phase::Paused) => self.forward(spec),
            (Command::Rollback, Phase::Running | Phase::Paused | Phase::Promoted) => Action::Rollback,
            _ => return Err(refuse()),
        };
        let alerts = if action == Action::Rollback { vec![AlertKind::Rollback] } else { vec![] };
        let reasons = vec![format!("operator: {why}")];
        Ok(next.finish(action, true, now, spec, (reasons, vec![], None, alerts)))
    }
}
