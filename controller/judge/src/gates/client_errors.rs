//! The client_errors gate (off by default): the challenger's 4xx rate
//! against the champion's + `client_error_tolerance` percentage points (a
//! challenger that rejects valid input is as bad for users as one that
//! fails; the comparison is [`super::rate`]'s).

use super::rate::{rate_descriptor, rate_gate};
use super::{Descriptor, Evidence, Gate, GateKind, GateResult, Judge, Stages};

pub(super) const GATE: Gate = Gate {
    field: "client_errors",
    results: &[DESCRIPTOR],
    stages: Stages::Live,
    configured: |s| s.client_errors.is_some(),
    remove: |s| s.client_errors = None,
    segments: super::no_segments,
    rate_tolerance: |s| s.client_errors.as_ref().map(|g| g.client_error_tolerance),
    judge,
};

const DESCRIPTOR: Descriptor = rate_descriptor(GateKind::ClientErrors, "client_errors", "client errors");

fn judge(e: &Evidence<'_>, judge: Judge<'_>) -> Vec<GateResult> {
    let Some(g) = &e.spec.client_errors else { return vec![] };
    let (a, b) = (e.champion, e.challenger);
    vec![rate_gate(
        GateKind::ClientErrors,
        "4xx rate",
        (a.answered(), b.answered()),
        (a.client_errors(), b.client_errors()),
        g.client_error_tolerance,
        e.min_samples,
        judge,
    )]
}
