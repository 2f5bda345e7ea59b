//! The error_rate gate: the challenger's 5xx rate against the champion's +
//! `error_tolerance` percentage points (the comparison is [`super::rate`]'s).

use super::rate::{rate_descriptor, rate_gate};
use super::{Descriptor, Evidence, Gate, GateKind, GateResult, Judge, Stages};

pub(super) const GATE: Gate = Gate {
    field: "error_rate",
    results: &[DESCRIPTOR],
    stages: Stages::Live,
    configured: |s| s.error_rate.is_some(),
    remove: |s| s.error_rate = None,
    segments: |s| s.error_rate.as_ref().map(|g| &g.segments),
    rate_tolerance: |s| s.error_rate.as_ref().map(|g| g.error_tolerance),
    judge,
};

const DESCRIPTOR: Descriptor = rate_descriptor(GateKind::ErrorRate, "error_rate", "error rate");

fn judge(e: &Evidence<'_>, judge: Judge<'_>) -> Vec<GateResult> {
    let Some(g) = &e.spec.error_rate else { return vec![] };
    let (a, b) = (e.champion, e.challenger);
    vec![rate_gate(
        GateKind::ErrorRate,
        "5xx rate",
        (a.answered(), b.answered()),
        (a.errors(), b.errors()),
        g.error_tolerance,
        e.min_samples,
        judge,
    )]
}
