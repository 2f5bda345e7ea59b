//! The timeouts gate: the challenger's 504 rate against the champion's +
//! `timeout_tolerance` percentage points (the comparison is [`super::rate`]'s).

use super::rate::{rate_descriptor, rate_gate};
use super::{Descriptor, Evidence, Gate, GateKind, GateResult, Judge, Stages};

pub(super) const GATE: Gate = Gate {
    field: "timeouts",
    results: &[DESCRIPTOR],
    stages: Stages::Live,
    configured: |s| s.timeouts.is_some(),
    remove: |s| s.timeouts = None,
    segments: |s| s.timeouts.as_ref().map(|g| &g.segments),
    rate_tolerance: |s| s.timeouts.as_ref().map(|g| g.timeout_tolerance),
    judge,
};

const DESCRIPTOR: Descriptor = rate_descriptor(GateKind::Timeouts, "timeouts", "timeouts");

fn judge(e: &Evidence<'_>, judge: Judge<'_>) -> Vec<GateResult> {
    let Some(g) = &e.spec.timeouts else { return vec![] };
    let (a, b) = (e.champion, e.challenger);
    vec![rate_gate(
        GateKind::Timeouts,
        "timeout rate",
        (a.answered(), b.answered()),
        (a.timeouts, b.timeouts),
        g.timeout_tolerance,
        e.min_samples,
        judge,
    )]
}
