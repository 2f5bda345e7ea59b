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

use serde::{Deserialize, Serialize};

use crate::evidence::tracker::ResetTracker;
use crate::evidence::SourceError;
use crate::gates::{GateResult, Outcome, StageContext};
use crate::labels::{LabelBook, StageLabels};
use crate::spec::{AdvanceWhen, GateMethod, RolloutSpec, TerminalOutcome};
use crate::window::{responses_since, Coverage, VersionWindow, Window};
use canary_core::{FilterConfig, Weight};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    Promoted,
    RolledBack,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled back",
        })
    }
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack)
    }
}

impl Action {
    /// The action as a verb, for reasons.
    pub fn word(self) -> &'static str {
        match self {
            Action::Advance => "advance",
            Action::Promote => "promote",
            Action::Hold => "hold",
            Action::Rollback => "roll back",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// To the next stage.
    Advance,
    /// To 100 %: the challenger is the new champion.
    Promote,
    Hold,
    /// To 0 % at once.
    Rollback,
    Pause,
    Resume,
}

/// Something people must be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Rollback,
    /// The stats could not be read `alerts.source_failures` times in a row.
    SourceFailing,
    /// Not every Envoy applied the configuration within `envoy.apply_timeout`.
    NotApplied,
    /// A push to a sink failed after its retries (not raised by decisions:
    /// the controller sends it when a push fails).
    SinkFailing,
    /// A sink no longer held the configuration the controller wrote there
    /// (a GitOps sync or a hand edit put something else back); it was
    /// written again. Sent by the controller, not by decisions.
    SinkDrifted,
    /// The guardrails found the champion itself failing (an incident).
    Incident,
    /// A stage reached its `max_duration` undecided (terminal rule
    /// `hold_and_alert`).
    StageOverdue,
}

/// Where traffic stands: the configuration the filter should have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub stage: usize,
    pub stage_name: String,
    pub weight: Weight,
    pub epoch: u64,
}

/// What the evidence said, per version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    pub champion: VersionWindow,
    pub challenger: VersionWindow,
    pub coverage: Coverage,
    /// Milliseconds since the window started.
    pub elapsed_ms: u64,
}

/// One evaluation's outcome and everything that led to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Position in the decision log, from 1, without gaps.
    pub seq: u64,
    pub at: Millis,
    pub action: Action,
    /// Made by an operator (CLI), not by the gates.
    pub manual: bool,
    /// Where traffic was when deciding.
    pub from: Target,
    /// Where traffic goes now (same as `from` for a hold).
    pub to: Target,
    /// Why, in words; never empty.
    pub reasons: Vec<String>,
    pub gates: Vec<GateResult>,
    pub window: Option<WindowSummary>,
    pub alerts: Vec<AlertKind>,
    /// The stage's label evidence the gates saw, all traffic's and each
    /// segment's (what `canary replay` re-judges; absent in logs written
    /// before it was recorded, without `segments` before labels carried
    /// segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<StageLabels>,
}

/// A stage change, kept in the state's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at: Millis,
    pub seq: u64,
    pub action: Action,
    pub manual: bool,
    pub from_stage: String,
    pub to_stage: String,
    pub weight: Weight,
    pub epoch: u64,
}

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

/// The evidence counted against a stage's `min_requests`: the champion's
/// responses, and the challenger's responses, or in a shadow stage the
/// shadow calls sent to it. Calls sent, not calls answered: a challenger that
/// times out on every copy must reach the gates (and fail them), not hold
/// the stage forever. Copies that could not be sent at all are not counted:
/// that is a configuration problem, not the challenger's, and the hold
/// reason says how many failed.
pub fn evidence(shadow_stage: bool, w: &WindowSummary) -> (u64, u64) {
    let challenger = if shadow_stage { w.challenger.shadow.requests } else { w.challenger.answered() };
    (w.champion.answered(), challenger)
}

/// The move that leaves stage `stage` forward: advance, or promote when the
/// next stage is the last (100 %).
pub fn forward(spec: &RolloutSpec, stage: usize) -> Action {
    if stage + 2 >= spec.stages.len() {
        Action::Promote
    } else {
        Action::Advance
    }
}

/// What the evidence of a window says for stage `stage`, once the data is
/// there and applied: pure, shared by [`RolloutState::step`] and `canary
/// replay`. In this order: too few responses for the stage's
/// `min_requests` → hold (saying how many more); any gate failed →
/// rollback; a gate that blocks (inconclusive, or without data under
/// `on_no_data: hold`) or `min_duration` not over → hold, with the gates'
/// reasons (an inconclusive gate says about how many more samples it
/// needs); otherwise advance, or promote when the next stage is the last.
/// `min_requests` is the stage's ([`RolloutSpec::min_requests`], derived
/// from the gates when the spec leaves it 0), as the caller's
/// [`stage_context`] already computed it.
pub fn judge(
    spec: &RolloutSpec,
    stage: usize,
    min_requests: u64,
    results: &[GateResult],
    summary: &WindowSummary,
) -> (Action, Vec<String>) {
    let Some(s) = spec.stages.get(stage) else {
        return (Action::Hold, vec![format!("no stage {stage} in the spec")]);
    };
    let shadow = spec.is_shadow_stage(stage);
    let short = |have: u64| min_requests.saturating_sub(have);
    let (have_a, have_b) = evidence(shadow, summary);
    let (need_a, need_b) = (short(have_a), short(have_b));
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .map(|r| format!("{} gate failed: {}", r.gate.id(), r.detail))
        .collect();
    // Anytime gates hold their error rates from the first response: a
    // failure rolls back at once. The look-based methods judge only from
    // the stage's minimum.
    if spec.gates.method == GateMethod::Anytime && !failed.is_empty() {
        return (Action::Rollback, failed);
    }
    if need_a > 0 || need_b > 0 {
        let reason = if shadow {
            let c = &summary.challenger.shadow;
            format!(
                "too few to judge: need {need_a} more responses from the champion and {need_b} more shadow calls to the challenger (minimum {} each; {} copies failed, {} skipped)",
                min_requests, c.failed, c.skipped
            )
        } else {
            format!(
                "too few responses to advance: need {need_a} more from the champion and {need_b} more from the challenger (minimum {} each)",
                min_requests
            )
        };
        return (Action::Hold, vec![reason]);
    }

    if !failed.is_empty() {
        return (Action::Rollback, failed);
    }

    let mut waiting: Vec<String> =
        results.iter().filter(|r| r.blocks).map(|r| format!("{}: {}", r.gate.id(), r.detail)).collect();
    let min_ms = s.min_duration.as_millis() as u64;
    if summary.elapsed_ms < min_ms {
        waiting.push(format!(
            "{:.1} s more in the stage (minimum {})",
            (min_ms - summary.elapsed_ms) as f64 / 1000.0,
            humantime::format_duration(s.min_duration)
        ));
    }
    if !waiting.is_empty() {
        return (Action::Hold, waiting);
    }
    let seconds = summary.elapsed_ms as f64 / 1000.0;
    let verdict = match spec.advance_when(stage) {
        AdvanceWhen::Proven => "every gate passed",
        AdvanceWhen::NoHarm if results.iter().all(|r| r.outcome == Outcome::Pass) => "every gate passed",
        AdvanceWhen::NoHarm => "no harm found (advance_when: no_harm; every gate has data, none failed)",
    };
    let reason = if shadow {
        format!("{verdict} over {seconds:.1} s with {have_a} champion responses and {have_b} shadow calls")
    } else {
        format!("{verdict} over {seconds:.1} s with {have_a} champion and {have_b} challenger responses")
    };
    (forward(spec, stage), vec![reason])
}

/// How the gates see stage `stage`: its sample minimum and policy.
pub fn stage_context(spec: &RolloutSpec, stage: usize) -> StageContext {
    StageContext {
        min_samples: spec.min_requests(stage),
        shadow: spec.is_shadow_stage(stage),
        proven: spec.advance_when(stage) == AdvanceWhen::Proven,
        shadow_timeout_us: u64::from(spec.shadow_config().timeout_ms) * 1000,
        harm_share: spec.harm_share(stage),
    }
}

/// The guardrails on the responses since `mark` (cumulative counts now):
/// `Some(Some(why))` an incident, `Some(None)` healthy, `None` too few
/// champion responses to tell (the previous judgement stands).
fn guardrails(spec: &RolloutSpec, mark: Option<&GuardMark>, now: &GuardMark) -> Option<Option<String>> {
    let g = &spec.gates.guardrails;
    let champion = responses_since(&now.champion, mark.map_or(&[0; 5], |m| &m.champion));
    let challenger = responses_since(&now.challenger, mark.map_or(&[0; 5], |m| &m.challenger));
    let n: u64 = champion.iter().sum();
    if n < g.min_responses.max(1) {
        return None;
    }
    let share = champion[4] as f64 / n as f64 * 100.0;
    if champion[1] == 0 && challenger[1] == 0 {
        return Some(Some(format!(
            "no 2xx from either version since the previous evaluation ({n} champion and {} challenger responses)",
            challenger.iter().sum::<u64>()
        )));
    }
    if share > g.max_error_percent {
        return Some(Some(format!(
            "the champion answered {share:.1}% 5xx ({} of {n}) since the previous evaluation, above the {}% guardrail",
            champion[4], g.max_error_percent
        )));
    }
    Some(None)
}

/// What a window's coverage allows, under `envoy.max_missing_share`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoverageCheck {
    /// Judge on the Envoys that answered; `partial` says which are missing
    /// (empty when every Envoy answered and applied).
    Enough { partial: Option<String> },
    /// Too many Envoys have not applied the epoch yet (counting those that
    /// did not answer): hold until they do.
    NotApplied { waiting: usize },
    /// Too many Envoys failed, or none was found: no data.
    NoData(String),
}

/// Most failed endpoints named in a reason (the rest are counted).
const NAMED_FAILURES: usize = 10;

/// The partial-failure rule, pure: with `max_missing_share` = s, a window
/// is judged when at most a share s of its Envoys failed to answer (and at
/// least one answered), and at most a share s have not applied the epoch
/// (failed ones count as not applied). s = 0 means every Envoy must answer
/// and have applied: any failure is no data.
pub fn check_coverage(c: &Coverage, max_missing_share: f64) -> CoverageCheck {
    if c.endpoints == 0 {
        return CoverageCheck::NoData("no Envoy to read (none configured, or none found by the source)".into());
    }
    let share = |n: usize| n as f64 / c.endpoints as f64;
    let failed = c.failures.len();
    let named = || name_some(c.failures.iter().map(|f| format!("{}: {}", f.endpoint, f.error)), failed);
    if failed > 0 && (c.answered == 0 || share(failed) > max_missing_share) {
        let limit = if max_missing_share > 0.0 {
            format!(" (more than envoy.max_missing_share {max_missing_share})")
        } else {
            String::new()
        };
        return CoverageCheck::NoData(format!("{failed} of {} Envoys failed{limit}: {}", c.endpoints, named()));
    }
    let waiting = c.endpoints.saturating_sub(c.applied);
    if waiting > 0 && share(waiting) > max_missing_share {
        return CoverageCheck::NotApplied { waiting };
    }
    let partial = (waiting > 0).then(|| {
        let mut text =
            format!("judged on {} of {} Envoys (envoy.max_missing_share {max_missing_share})", c.applied, c.endpoints);
        if failed > 0 {
            text.push_str(&format!("; {failed} failed: {}", named()));
        }
        if waiting > failed {
            text.push_str(&format!("; {} not yet on this epoch", waiting - failed));
        }
        text
    });
    let departed = (!c.departed.is_empty()).then(|| {
        let n = c.departed.len();
        let envoys = if n == 1 { "Envoy" } else { "Envoys" };
        let names = name_some(c.departed.iter().cloned(), n);
        format!("kept the last counts of {n} {envoys} no longer in the fleet: {names}")
    });
    let partial = match (partial, departed) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    CoverageCheck::Enough { partial }
}

/// The first [`NAMED_FAILURES`] of `total` items, then how many more.
fn name_some(items: impl Iterator<Item = String>, total: usize) -> String {
    let mut list: Vec<String> = items.take(NAMED_FAILURES).collect();
    if total > NAMED_FAILURES {
        list.push(format!("and {} more", total - NAMED_FAILURES));
    }
    list.join("; ")
}

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
    pub fn stage_labels(&self, spec: &RolloutSpec) -> StageLabels {
        self.labels.evidence(&spec.stage_name(self.stage), &spec.champion, &spec.challenger)
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
                        next.window_base =
                            Some(WindowBase { at: now, champion: champion.clone(), challenger: challenger.clone() });
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

#[cfg(test)]
mod tests {

    use super::*;
    use crate::window::EndpointFailure;

    const SPEC: &str = r#"
rollout: r
champion: v1
challenger: v2
interval: 1s
stages:
  - { weight_percent: 1, min_duration: 10s, min_requests: 100 }
  - { weight_percent: 20, min_duration: 10s, min_requests: 100 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 1 }
envoy: { admin: ["http://a", "http://b"], ecds_dir: /x, wasm: /y.wasm, apply_timeout: 5s }
alerts: { source_failures: 2 }
"#;

    fn spec() -> RolloutSpec {
        RolloutSpec::from_yaml(SPEC).unwrap()
    }

    /// A source that answered nothing at all.
    fn refused() -> SourceError {
        let reason = "connection refused".into();
        SourceError::Prometheus(crate::evidence::prometheus::QueryError::Connect { query: "up", reason })
    }

    /// A window for `epoch` with `n` responses per version and the given 5xx counts.
    fn window(epoch: u64, n: u64, champion_errors: u64, challenger_errors: u64) -> Window {
        Window::of(
            epoch,
            2,
            [("v1", VersionWindow::served(n, champion_errors)), ("v2", VersionWindow::served(n, challenger_errors))],
        )
    }

    #[test]
    fn labels_naming_a_segment_are_judged_in_it_and_a_segment_worse_by_its_labels_rolls_back() {
        use crate::gates::GateKind;
        use crate::labels::LabelRecord;
        let text = SPEC
            .replace(
                "  error_rate: { error_tolerance: 1 }",
                "  error_rate: { error_tolerance: 1 }\n  labels: { min_degradation_tolerance: 0.05, min_labels: 100, segments: [ent] }\n  segment_min_responses: 200",
            )
            .replace("envoy:", "filter:\n  segment: { header: x-tier, values: [free, ent] }\nenvoy:");
        let spec = RolloutSpec::from_yaml(&text).unwrap();
        let tiers = spec.filter.segment.clone().unwrap();
        let batch = |version: &str, segment: &str, n: u64, correct: u64| -> Vec<LabelRecord> {
            (0..n)
                .map(|i| LabelRecord {
                    version: version.into(),
                    stage: "1pct".into(),
                    rollout: None,
                    correct: Some(i < correct),
                    value: None,
                    segment: Some(segment.into()),
                })
                .collect()
        };
        // Per evaluation, each version gets 5 000 labels in `free` (97 % correct)
        // and 500 in `ent`: 97 % for the champion, 70 % for the challenger.
        let mut s = RolloutState::start(&spec, 0);
        let mut last = None;
        for step in 1..=3u64 {
            for (v, ent_correct) in [("v1", 485), ("v2", 350)] {
                s.labels.add("r", &batch(v, "free", 5_000, 4_850), |_, _| true, Some(&tiers));
                s.labels.add("r", &batch(v, "ent", 500, ent_correct), |_, _| true, Some(&tiers));
            }
            let (next, d) = s.step(&spec, Ok(&window(s.epoch, 200 * step, 0, 0)), step * 1000);
            s = next;
            last = Some(d);
            if s.phase.is_final() {
                break;
            }
        }
        let d = last.unwrap();
        assert_eq!(d.action, Action::Rollback, "{:?}", d.reasons);
        assert!(
            d.reasons.iter().any(|r| r.starts_with("labels gate failed: segment `ent`: label metric")),
            "{:?}",
            d.reasons
        );
        let of = |segment: Option<&str>| {
            d.gates.iter().find(|g| g.gate == GateKind::Labels && g.segment.as_deref() == segment).unwrap()
        };
        assert_eq!(of(Some("ent")).outcome, Outcome::Fail);
        assert_ne!(of(None).outcome, Outcome::Fail, "all traffic loses 2.5 points, within 5: {}", of(None).detail);
        // The decision records the segment's label evidence beside all traffic's.
        let recorded = d.labels.as_ref().unwrap();
        let ent = recorded.segments["ent"];
        assert_eq!(
            (ent.champion.n, ent.challenger.n),
            (recorded.totals.champion.n / 11, recorded.totals.challenger.n / 11)
        );
        assert!(!recorded.segments.contains_key("other"));
    }

    #[test]
    fn healthy_rollout_advances_through_every_stage_to_promotion() {
        let spec = spec();
        let mut s = RolloutState::start(&spec, 0);
        let mut t = 0;
        let mut actions = vec![];
        while !s.phase.is_final() {
            t += 1000;
            // 0 errors in 400 more per second and version: proven within 1 pp
            // after a few looks.
            let (next, d) = s.step(&spec, Ok(&window(s.epoch, 2 * t / 5, 0, 0)), t);
            assert!(!d.reasons.is_empty());
            if d.action != Action::Hold {
                actions.push((d.action, d.to.weight.bp(), d.to.epoch));
            }
            s = next;
            assert!(t < 100_000, "never finished");
        }
        assert_eq!(actions, vec![(Action::Advance, 2000, 2), (Action::Promote, 10_000, 3)]);
        assert_eq!(s.phase, Phase::Promoted);
        assert_eq!(s.seq as usize, s.history.last().unwrap().seq as usize);
    }

    #[test]
    fn an_advance_pools_the_no_harm_evidence_into_the_next_stage() {
        let spec = spec();
        let mut s = RolloutState::start(&spec, 0);
        let mut t = 0;
        let carried = loop {
            t += 1000;
            let (next, d) = s.step(&spec, Ok(&window(s.epoch, 2 * t / 5, 0, 0)), t);
            if d.action == Action::Advance {
                let before = d.gates[0].process.clone().unwrap();
                break (before, next);
            }
            s = next;
            assert!(t < 100_000, "never advanced");
        };
        let (before, s) = carried;
        let p = s.looks[0].process.as_ref().unwrap();
        assert_eq!((p.n, p.n1, p.pooled_stages), (0.0, 0.0, 1), "{p:?}");
        assert_eq!(p.fine, before.fine, "the no-harm evidence goes on");
        // The harm test is a mixture over stage starts: the earlier term
        // (started at the first stage's share) goes on, the new stage adds
        // its share (two judged stages: ½ each).
        let share = crate::anytime::harm_share(1, spec.stages.len() - 1);
        assert_eq!(share, 0.5);
        for k in 0..3 {
            let want = before.harm[k].exp() + share;
            assert!((p.harm[k].exp() - want).abs() < 1e-12, "{k}: {} vs {want}", p.harm[k].exp());
        }
        assert_eq!(p.prior_champion, (before.s1, before.n1));
        // The next stage's first look is scored (anchored at the earlier
        // stage's rate) and says the evidence is pooled.
        let (_, d) = s.step(&spec, Ok(&window(s.epoch, 400, 0, 0)), t + 1000);
        let g = &d.gates[0];
        assert!(g.detail.contains("(pooled with the stage before)"), "{}", g.detail);
        assert!(g.process.as_ref().unwrap().fine[0] > before.fine[0], "{g:?}");
    }

    #[test]
    fn minimum_duration_is_counted_from_when_every_envoy_applied() {
        let spec = spec();
        let s = RolloutState::start(&spec, 0);
        let mut w = window(1, 2000, 0, 0);
        w.coverage.applied = 1;
        let (s, d) = s.step(&spec, Ok(&w), 60_000);
        assert_eq!(d.action, Action::Hold);
        assert!(d.reasons[0].contains("waiting for 1 of 2 Envoys"), "{:?}", d.reasons);
        assert_eq!(d.alerts, vec![AlertKind::NotApplied], "60 s > apply_timeout 5 s");
        let (s, d) = s.step(&spec, Ok(&window(1, 2000, 0, 0)), 61_000);
        assert_eq!(d.action, Action::Hold, "window just started");
        assert_eq!(s.window_started_at, Some(61_000));
        let (_, d) = s.step(&spec, Ok(&window(1, 2000, 0, 0)), 71_000);
        assert_eq!(d.action, Action::Advance);
    }

    #[test]
    fn an_inconclusive_gate_holds_saying_how_many_more_then_passes_at_a_later_look() {
        let spec = RolloutSpec::from_yaml(&SPEC.replace("gates:\n", "gates:\n  method: sequential\n")).unwrap();
        let s = RolloutState::start(&spec, 0);
        // 2 errors in 300 each (0.67 %): the 1 pp tolerance is inside the interval.
        let (s, d) = s.step(&spec, Ok(&window(1, 300, 2, 2)), 20_000);
        assert_eq!(d.action, Action::Hold, "{:?}", d.reasons);
        let g = &d.gates[0];
        assert_eq!((g.outcome, g.look, g.carried), (Outcome::Inconclusive, Some(3), false));
        let more = g.needed.unwrap();
        assert!(d.reasons[0].contains(&format!("needs ~{more} more responses per version")), "{:?}", d.reasons);
        assert!(more > 300 && more < 20_000, "{more}");
        assert_eq!(s.looks.len(), 1, "look 3 is spent");
        // Same look (300 → 320, look 3 until 338): the verdict is carried, not judged again.
        let (s, d) = s.step(&spec, Ok(&window(1, 320, 2, 2)), 21_000);
        let g = &d.gates[0];
        assert_eq!((g.outcome, g.look, g.carried, g.challenger_n), (Outcome::Inconclusive, Some(3), true, 300));
        assert!(g.detail.contains("carried"), "{}", g.detail);
        // Much later, plenty of data: a fresh look passes and the stage advances.
        let (s, d) = s.step(&spec, Ok(&window(1, 300 + more * 2, 2, 2)), 40_000);
        assert_eq!(d.action, Action::Advance, "{:?}", d.reasons);
        let g = &d.gates[0];
        assert!(g.look.unwrap() > 3 && !g.carried && g.outcome == Outcome::Pass, "{g:?}");
        assert!(s.looks.is_empty(), "a new stage starts with no spent look");
        let labels = d.labels.unwrap();
        assert_eq!(labels.totals.champion.n, 0, "the label evidence is recorded with the decision");
    }

    #[test]
    fn failing_gate_rolls_back_at_once_and_alerts() {
        let spec = spec();
        let s = RolloutState::start(&spec, 0);
        // 20 % errors vs 0 % (100, then 200 responses each): rolls back
        // before the minimum duration and before min_requests.
        let (s, d) = s.step(&spec, Ok(&window(1, 100, 0, 20)), 500);
        assert_eq!(d.action, Action::Hold, "the first look learns the champion's rate: {:?}", d.reasons);
        let (s, d) = s.step(&spec, Ok(&window(1, 200, 0, 40)), 1000);
        assert_eq!(d.action, Action::Rollback, "{:?}", d.reasons);
        assert_eq!(d.alerts, vec![AlertKind::Rollback]);
        assert_eq!((d.to.weight, d.to.epoch, d.to.stage_name.as_str()), (Weight::ZERO, 2, ROLLED_BACK_STAGE));
        assert_eq!(s.phase, Phase::RolledBack);
        assert!(d.reasons[0].contains("error_rate gate failed"), "{:?}", d.reasons);
        assert_eq!(s.filter_config(&spec).challenger_weight_bp, Weight::ZERO);
        // Nothing moves it afterwards.
        let (_, d) = s.step(&spec, Ok(&window(2, 500, 0, 0)), 2000);
        assert_eq!(d.action, Action::Hold);
    }

    #[test]
    fn too_few_requests_holds_and_says_how_many_more() {
        let spec = spec();
        let s = RolloutState::start(&spec, 0);
        let (_, d) = s.step(&spec, Ok(&window(1, 40, 0, 0)), 60_000);
        assert_eq!(d.action, Action::Hold, "no error in 40 requests is not enough to advance");
        assert!(d.reasons[0].contains("need 60 more from the champion and 60 more"), "{:?}", d.reasons);
    }

    #[test]
    fn missing_or_partial_data_never_advances_and_alerts_once() {
        let spec = spec();
        let mut s = RolloutState::start(&spec, 0);
        let mut partial = window(1, 500, 0, 0);
        partial.coverage.failures.push(EndpointFailure { endpoint: "http://b".into(), error: "timed out".into() });
        let mut alerts = vec![];
        for (i, w) in
            [Err(refused()), Ok(partial.clone()), Err(refused()), Ok(window(7, 500, 0, 0))].into_iter().enumerate()
        {
            let (next, d) = s.step(&spec, w.as_ref(), 100_000 + i as u64 * 1000);
            assert_eq!(d.action, Action::Hold, "{:?}", d.reasons);
            assert!(d.reasons[0].starts_with("no data"), "{:?}", d.reasons);
            alerts.extend(d.alerts);
            s = next;
        }
        assert_eq!(alerts, vec![AlertKind::SourceFailing], "alert when the count reaches 2, once");
        assert_eq!(s.source_failures, 4);
        let (s, _) = s.step(&spec, Ok(&window(1, 500, 0, 0)), 200_000);
        assert_eq!(s.source_failures, 0);
    }

    #[test]
    fn paused_rollout_does_not_progress_but_still_rolls_back_unless_frozen() {
        let spec = spec();
        let s = RolloutState::start(&spec, 0);
        let (s, d) = s.command(&spec, Command::Pause, "looking", 1).unwrap();
        assert_eq!((d.action, d.manual, s.phase), (Action::Pause, true, Phase::Paused));
        let (s, d) = s.step(&spec, Ok(&window(1, 500, 0, 0)), 100_000);
        assert_eq!(d.action, Action::Hold);
        let (s, d) = s.step(&spec, Ok(&window(1, 1500, 0, 0)), 120_000);
        assert_eq!(d.action, Action::Hold);
        assert!(d.reasons[0].starts_with("paused by an operator: would advance"), "{:?}", d.reasons);
        // The safety net stays on: a failing gate rolls back while paused.
        let (rolled, d) = s.step(&spec, Ok(&window(1, 2000, 0, 50)), 120_001);
        assert_eq!((d.action, d.alerts.clone()), (Action::Rollback, vec![AlertKind::Rollback]), "{:?}", d.reasons);
        assert_eq!(rolled.phase, Phase::RolledBack);
        // Frozen: nothing automatic at all, until resumed.
        let (s, d) = s.command(&spec, Command::Freeze, "incident review", 2).unwrap();
        assert_eq!((d.action, s.phase, s.frozen), (Action::Pause, Phase::Paused, true));
        let (s, d) = s.step(&spec, Ok(&window(1, 2000, 0, 50)), 120_002);
        assert_eq!(d.action, Action::Hold, "frozen: not even a rollback by the gates");
        assert!(s.command(&spec, Command::Pause, "", 3).is_err());
        let (s, _) = s.command(&spec, Command::Resume, "", 4).unwrap();
        assert_eq!((s.phase, s.frozen), (Phase::Running, false));
    }

    #[test]
    fn manual_advance_and_rollback_act_at_once() {
        let spec = spec();
        let s = RolloutState::start(&spec, 0);
        let (s, d) = s.command(&spec, Command::Advance, "", 1).unwrap();
        assert_eq!((d.action, d.to.weight.bp(), d.to.epoch), (Action::Advance, 2000, 2));
        let (s, d) = s.command(&spec, Command::Advance, "", 2).unwrap();
        assert_eq!((d.action, s.phase), (Action::Promote, Phase::Promoted));
        assert!(s.command(&spec, Command::Advance, "", 3).is_err());
        let (s, d) = s.command(&spec, Command::Rollback, "bad reviews", 4).unwrap();
        assert_eq!((d.action, d.to.weight, s.phase), (Action::Rollback, Weight::ZERO, Phase::RolledBack));
        assert_eq!(d.reasons, vec!["operator: bad reviews".to_string()]);
        let err = s.command(&spec, Command::Rollback, "", 5).unwrap_err();
        assert_eq!(err.to_string(), "cannot rollback: the rollout is rolled back");
        assert_eq!(s.history.len(), 3);
        assert_eq!(s.seq, 3);
    }

    #[test]
    fn stale_epoch_is_no_data() {
        let spec = spec();
        let s = RolloutState::start(&spec, 0);
        let (_, d) = s.step(&spec, Ok(&window(9, 500, 0, 0)), 1000);
        assert_eq!(d.action, Action::Hold);
        assert!(d.reasons[0].contains("epoch 9, not 1"), "{:?}", d.reasons);
    }

    const SHADOW_SPEC: &str = r#"
rollout: r
champion: v1
challenger: v2
interval: 1s
stages:
  - { shadow: true, min_duration: 10s, min_requests: 100 }
  - { weight_percent: 10, min_duration: 10s, min_requests: 100 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 1 }
  prediction: { max_psi: 0.2 }
  shadow: { min_agreement: 0.9, error_tolerance: 1, latency_tolerance_multiplier: 2 }
envoy: { admin: ["http://a"], ecds_dir: /x, wasm: /y.wasm }
filter:
  prediction: { from: { header: x-prediction }, bins: { numeric: [0.25, 0.5, 0.75] } }
"#;

    /// A shadow-stage window: the champion served `n`, the challenger got
    /// `sent` copies of which `agree` agreed (the rest disagreed).
    fn shadow_window(epoch: u64, n: u64, sent: u64, agree: u64) -> Window {
        use canary_core::metrics::ShadowStat;
        let mut w = window(epoch, n, 0, 0);
        for vw in w.versions.values_mut() {
            vw.latency_us.add(10_000.0, 100.0, n);
        }
        let c = w.versions.get_mut("v2").unwrap();
        *c = VersionWindow::default();
        c.shadow.add_counter(ShadowStat::RqTotal, sent);
        c.shadow.add_counter(ShadowStat::Agree, agree);
        c.shadow.add_counter(ShadowStat::Disagree, sent - agree);
        c.shadow.latency_us.add(12_000.0, 100.0, sent);
        w.coverage.endpoints = 1;
        w.coverage.applied = 1;
        w.coverage.answered = 1;
        w
    }

    #[test]
    fn a_shadow_stage_counts_shadow_calls_advances_on_agreement_and_stops_the_copies() {
        let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
        let s = RolloutState::start(&spec, 0);
        assert!(s.in_shadow_stage(&spec));
        let c = s.filter_config(&spec);
        assert_eq!((c.challenger_weight_bp, c.stage.as_str()), (Weight::ZERO, "shadow"));
        assert_eq!(c.shadow.as_ref().map(|s| s.cluster.as_str()), Some("v2"));
        assert!(c.prediction.is_some());

        // 500 champion responses but only 60 copies sent: hold, counting shadow calls.
        let (s, d) = s.step(&spec, Ok(&shadow_window(1, 500, 60, 60)), 1_000);
        assert_eq!(d.action, Action::Hold);
        assert!(
            d.reasons[0].contains("need 0 more responses from the champion and 40 more shadow calls"),
            "{:?}",
            d.reasons
        );
        // Enough, all agreeing, but too early.
        let (s, d) = s.step(&spec, Ok(&shadow_window(1, 500, 200, 195)), 2_000);
        assert_eq!(d.action, Action::Hold);
        assert!(d.reasons.iter().any(|r| r.contains("more in the stage")), "{:?}", d.reasons);
        let (s, d) = s.step(&spec, Ok(&shadow_window(1, 5000, 2000, 1950)), 12_000);
        assert_eq!(d.action, Action::Advance, "{:?}", d.reasons);
        assert!(d.reasons[0].contains("5000 champion responses and 2000 shadow calls"), "{:?}", d.reasons);
        let kinds: Vec<_> = d.gates.iter().map(|g| g.gate).collect();
        assert!(
            kinds.contains(&crate::gates::GateKind::ShadowAgreement)
                && !kinds.contains(&crate::gates::GateKind::ErrorRate)
        );
        // The next stage serves users and sends no copies.
        assert!(!s.in_shadow_stage(&spec));
        let c = s.filter_config(&spec);
        assert_eq!((c.challenger_weight_bp.bp(), c.shadow.is_none(), c.prediction.is_some()), (1000, true, true));
    }

    #[test]
    fn disagreement_in_the_shadow_stage_rolls_back_and_the_copies_stop() {
        let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
        let s = RolloutState::start(&spec, 0);
        let (s, d) = s.step(&spec, Ok(&shadow_window(1, 500, 200, 140)), 1_000);
        assert_eq!(d.action, Action::Rollback);
        assert!(d.reasons[0].contains("shadow_agreement gate failed: shadow agreement 70.000%"), "{:?}", d.reasons);
        assert_eq!(s.phase, Phase::RolledBack);
        assert!(!s.in_shadow_stage(&spec));
        assert_eq!(s.filter_config(&spec).shadow, None, "a rollback stops the copies too");
    }

    #[test]
    fn a_shifted_prediction_distribution_rolls_back_a_live_stage() {
        let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
        let (s, _) = RolloutState::start(&spec, 0).command(&spec, Command::Advance, "", 1).unwrap();
        let mut w = window(2, 1000, 0, 0);
        for (version, bins) in [("v1", [250, 250, 250, 250]), ("v2", [40, 250, 250, 460])] {
            for (i, n) in bins.into_iter().enumerate() {
                w.versions.get_mut(version).unwrap().add_prediction(&format!("b{i}"), n);
            }
        }
        w.coverage.endpoints = 1;
        w.coverage.applied = 1;
        let (s, d) = s.step(&spec, Ok(&w), 2_000);
        assert_eq!(d.action, Action::Rollback, "{:?}", d.reasons);
        assert!(d.reasons[0].starts_with("prediction gate failed: PSI 0.5"), "{:?}", d.reasons);
        let psi = d.gates.iter().find(|g| g.gate == crate::gates::GateKind::Prediction).unwrap().challenger.unwrap();
        // Shares (0.04, 0.25, 0.25, 0.46) vs quarters: 0.21·ln(6.25) + 0.21·ln(1.84) ≈ 0.3848 + 0.1281 = 0.513,
        // a little less after smoothing.
        assert!((psi - 0.51).abs() < 0.01, "{psi}");
        assert_eq!(s.phase, Phase::RolledBack);
        // The summary carries the bins for the record.
        assert_eq!(d.window.unwrap().challenger.predictions["b3"], 460);
    }
    fn coverage(endpoints: usize, failed: usize, applied: usize) -> Coverage {
        Coverage {
            endpoints,
            answered: endpoints - failed,
            applied,
            failures: (0..failed)
                .map(|i| EndpointFailure { endpoint: format!("http://e{i}"), error: "timed out".into() })
                .collect(),
            resets: vec![],
            departed: vec![],
        }
    }

    #[test]
    fn the_missing_share_rule_judges_on_the_answered_envoys_only_within_the_share() {
        use CoverageCheck::*;
        let enough = |c: &Coverage, s| matches!(check_coverage(c, s), Enough { .. });
        // (endpoints, failed, applied, share) → judged?
        let cases = [
            ((2, 0, 2, 0.0), true),
            ((2, 1, 1, 0.0), false), // today's rule: any failure is no data
            ((500, 2, 498, 0.0), false),
            ((500, 2, 498, 0.01), true), // 0.4 % ≤ 1 %
            ((500, 5, 495, 0.01), true), // exactly the share
            ((500, 6, 494, 0.01), false),
            ((500, 2, 490, 0.01), false), // 10 not applied (2 failed + 8 late) > 5
            ((500, 0, 497, 0.01), true),
            ((1, 1, 0, 0.9), false), // nobody answered
            ((0, 0, 0, 0.5), false), // no Envoy at all
        ];
        for ((endpoints, failed, applied, share), want) in cases {
            let c = coverage(endpoints, failed, applied);
            assert_eq!(
                enough(&c, share),
                want,
                "{endpoints} endpoints, {failed} failed, {applied} applied, share {share}"
            );
        }
        assert_eq!(check_coverage(&coverage(2, 0, 2,), 0.0), Enough { partial: None });
        let mut gone = coverage(2, 0, 2);
        gone.departed = vec!["10.0.0.7:15000".into()];
        let Enough { partial: Some(why) } = check_coverage(&gone, 0.0) else { panic!() };
        assert_eq!(why, "kept the last counts of 1 Envoy no longer in the fleet: 10.0.0.7:15000");
        assert_eq!(check_coverage(&coverage(500, 0, 490,), 0.01), NotApplied { waiting: 10 });
        assert!(
            matches!(check_coverage(&coverage(500, 6, 494), 0.01), NoData(why) if why.contains("6 of 500 Envoys failed (more than envoy.max_missing_share 0.01)"))
        );
        let Enough { partial: Some(why) } = check_coverage(&coverage(500, 2, 497), 0.01) else { panic!() };
        assert_eq!(why, "judged on 497 of 500 Envoys (envoy.max_missing_share 0.01); 2 failed: http://e0: timed out; http://e1: timed out; 1 not yet on this epoch");
        let NoData(why) = check_coverage(&coverage(100, 30, 70), 0.0) else { panic!() };
        assert!(why.ends_with("and 20 more"), "{why}");
    }

    #[test]
    fn a_decision_on_partial_data_names_the_missing_envoys() {
        let mut spec = spec();
        spec.envoy.max_missing_share = 0.5;
        let s = RolloutState::start(&spec, 0);
        let mut w = window(1, 2000, 0, 0);
        w.coverage = coverage(2, 1, 1);
        let (s, d) = s.step(&spec, Ok(&w), 1000);
        assert_eq!(d.action, Action::Hold, "{:?}", d.reasons);
        assert!(!d.reasons[0].starts_with("no data"), "{:?}", d.reasons);
        assert!(d.reasons.last().unwrap().contains("judged on 1 of 2 Envoys"), "{:?}", d.reasons);
        assert!(d.reasons.last().unwrap().contains("http://e0: timed out"), "{:?}", d.reasons);
        // A failing gate on the answered half still rolls back.
        let mut w = window(1, 4000, 0, 400);
        w.coverage = coverage(2, 1, 1);
        let (_, d) = s.step(&spec, Ok(&w), 2000);
        assert_eq!(d.action, Action::Rollback);
    }
}
