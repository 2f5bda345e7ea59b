//! What a step decides: the rollout's [`Phase`], the [`Action`] taken, and
//! the [`Decision`] with its reasons, gates and window, as the log, alerts,
//! reports and the dashboard read it.

use serde::{Deserialize, Serialize};

use super::Millis;
use crate::gates::GateResult;
use crate::labels::StageLabels;
use crate::window::{Coverage, VersionWindow};
use canary_core::Weight;

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
