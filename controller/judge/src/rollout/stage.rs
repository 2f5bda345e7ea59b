//! How one stage's evidence is judged: its minimums, its gates' results
//! and `min_duration` ([`judge`]), the guardrails, and the
//! [`StageContext`] the gates see.

use super::{Action, GuardMark, WindowSummary};
use crate::gates::{GateResult, Outcome, StageContext};
use crate::spec::{AdvanceWhen, GateMethod, RolloutSpec};
use crate::window::responses_since;

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
pub(super) fn guardrails(spec: &RolloutSpec, mark: Option<&GuardMark>, now: &GuardMark) -> Option<Option<String>> {
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
