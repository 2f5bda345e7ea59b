//! The view model: what the page is sent (the snapshot's JSON), decisions,
//! gates, stages, report links and controls as the page shows them.

use serde::Serialize;

use super::series::*;
use canary_judge::rollout::{Action, Decision, Millis};

/// A decision as the timeline shows it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct DecisionView {
    pub(super) seq: u64,
    pub(super) at: Millis,
    pub(super) action: Action,
    pub(super) manual: bool,
    pub(super) from_stage: String,
    pub(super) to_stage: String,
    pub(super) from_weight_bp: u16,
    pub(super) to_weight_bp: u16,
    pub(super) epoch: u64,
    pub(super) reasons: Vec<String>,
}

impl DecisionView {
    pub(super) fn of(d: &Decision) -> DecisionView {
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
pub(super) struct GatesView {
    pub(super) seq: u64,
    pub(super) at: Millis,
    pub(super) epoch: u64,
    pub(super) stage_name: String,
    /// Each gate's result as logged (value, threshold, margin, outcome,
    /// detail, and whatever later versions add), with its `forest`: the
    /// estimate, interval and limit in the units shown (as in the reports),
    /// and its `format`: the gate's descriptor (title, scale, unit, digits),
    /// which the page renders its values from.
    pub(super) results: Vec<serde_json::Value>,
}

/// A stage as the page lists it.
#[derive(Debug, Serialize)]
pub(super) struct StageView {
    pub(super) name: String,
    pub(super) weight_bp: u16,
    pub(super) min_duration_ms: u64,
    pub(super) min_requests: u64,
    pub(super) shadow: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct ReportLink {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) bytes: u64,
    pub(super) modified: Millis,
}

#[derive(Debug, Serialize)]
pub(super) struct Controls {
    pub(super) enabled: bool,
    pub(super) message: String,
}

/// The whole snapshot.
#[derive(Debug, Serialize)]
pub(super) struct View<'a> {
    pub(super) version: u64,
    pub(super) generated_at: Millis,
    pub(super) rollout: &'a str,
    pub(super) champion: &'a str,
    pub(super) challenger: &'a str,
    pub(super) phase: String,
    pub(super) stage: usize,
    pub(super) stage_name: String,
    pub(super) weight_bp: u16,
    pub(super) epoch: u64,
    pub(super) interval_ms: u64,
    pub(super) stages: Vec<StageView>,
    pub(super) in_stage_ms: Option<u64>,
    pub(super) time_left_ms: Option<u64>,
    pub(super) requests_left: Option<(u64, u64)>,
    /// Expected time until the stage can end, and until the rollout is
    /// promoted, at the current traffic (see [`expected_remaining`]).
    pub(super) eta_stage_ms: Option<u64>,
    pub(super) eta_ms: Option<u64>,
    pub(super) shadow_stage: bool,
    pub(super) daemon_pid: Option<u32>,
    pub(super) last_decision: Option<&'a DecisionView>,
    pub(super) gates: Option<&'a GatesView>,
    pub(super) timeline: Vec<&'a DecisionView>,
    pub(super) series: Series,
    pub(super) reports: Vec<ReportLink>,
    pub(super) controls: Controls,
    pub(super) error: Option<String>,
}
