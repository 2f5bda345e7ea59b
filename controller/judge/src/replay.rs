//! `canary replay`: re-judges the evidence of every recorded decision
//! against another spec's gates (and, optionally, another method), and says
//! where the decisions would have differed. Pure: the recorded spec, state
//! and decision log in, the differences out.
//!
//! Each automatic decision in the log carries its window summary (both
//! versions' counters, histograms, prediction bins and shadow outcomes) and,
//! since the sequential gates, the label evidence the gates saw; for older
//! decisions the labels come from the state (the stage's labels as they are
//! now, which may be more than the decision saw — said in the notes).
//! Manual decisions and holds without evidence (no data, not applied,
//! paused) are not re-judged. Decisions are replayed in order, each stage
//! with its own spent looks, exactly as [`crate::rollout::RolloutState::step`]
//! judges: replaying a log against its own spec reproduces every decision.
//!
//! The other spec's gates are used, and its stages' minimums
//! (`min_requests`, `min_duration`) when its stages have the same weights
//! as the recorded ones (otherwise the recorded stages are kept, noted).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::gates::GateResult;
use crate::rollout::{self, Action, Decision, RolloutState};
use crate::spec::{GateMethod, RolloutSpec};

/// One decision the other gates would have made differently.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub seq: u64,
    pub at: u64,
    pub stage: String,
    pub recorded: Action,
    pub replayed: Action,
    pub recorded_reasons: Vec<String>,
    pub replayed_reasons: Vec<String>,
    /// The replayed gate results.
    pub gates: Vec<GateResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replay {
    /// The method the replay judged with.
    pub method: GateMethod,
    /// Decisions re-judged.
    pub judged: usize,
    /// Decisions without evidence to re-judge (manual, no data, not applied, paused).
    pub skipped: usize,
    pub differences: Vec<Difference>,
    /// The decision at which the replayed rollout would have ended (a
    /// replayed rollback or promotion the log does not have).
    pub ended_at: Option<u64>,
    /// Decisions after `ended_at`: not compared, the replayed rollout would
    /// not have been there to make them.
    pub after_end: usize,
    pub notes: Vec<String>,
}

/// The spec the replay judges with: the recorded one, with `other`'s gates
/// (and `method` when given), and `other`'s stages when they have the same
/// weights.
pub fn replay_spec(
    recorded: &RolloutSpec,
    other: &RolloutSpec,
    method: Option<GateMethod>,
) -> (RolloutSpec, Vec<String>) {
    let mut spec = recorded.clone();
    let mut notes = vec![];
    spec.gates = other.gates.clone();
    if let Some(m) = method {
        spec.gates.method = m;
    }
    let shape = |s: &RolloutSpec| -> Vec<(u16, bool)> {
        (0..s.stages.len()).map(|i| (s.stage_weight(i).bp(), s.is_shadow_stage(i))).collect()
    };
    if shape(recorded) == shape(other) {
        spec.stages = other.stages.clone();
    } else {
        notes.push(
            "the other spec's stages have other weights: the recorded stages (and their minimums) are kept".into(),
        );
    }
    (spec, notes)
}

/// Re-judges every decision of `log` (in order) with [`replay_spec`].
pub fn replay(
    recorded: &RolloutSpec,
    state: &RolloutState,
    log: &[Decision],
    other: &RolloutSpec,
    method: Option<GateMethod>,
) -> Replay {
    let (spec, mut notes) = replay_spec(recorded, other, method);
    let mut spent: BTreeMap<u64, Vec<GateResult>> = BTreeMap::new();
    let (mut judged, mut skipped, mut from_state) = (0, 0, 0);
    let mut differences = vec![];
    let (mut ended_at, mut after_end) = (None, 0);
    for d in log {
        let Some(w) = d.window.as_ref().filter(|_| !d.manual) else {
            skipped += 1;
            continue;
        };
        if ended_at.is_some() {
            after_end += 1;
            continue;
        }
        let stage = d.from.stage;
        if stage >= spec.stages.len() {
            skipped += 1;
            continue;
        }
        let labels = d.labels.clone().unwrap_or_else(|| {
            from_state += 1;
            state.labels.evidence(&d.from.stage_name, &recorded.champion, &recorded.challenger)
        });
        let looks = spent.entry(d.from.epoch).or_default();
        let context = crate::rollout::stage_context(&spec, stage);
        let segment = spec.filter.segment.as_ref();
        let results =
            crate::segments::evaluate(&spec.gates, segment, &w.champion, &w.challenger, &labels, context, looks);
        for r in results.iter().filter(|r| r.spends_look()) {
            looks.retain(|l| l.gate != r.gate || l.segment != r.segment);
            looks.push(r.clone());
        }
        let (action, reasons) = rollout::judge(&spec, stage, context.min_samples, &results, w);
        judged += 1;
        if action != d.action {
            if matches!(action, Action::Rollback | Action::Promote) {
                ended_at = Some(d.seq);
            }
            differences.push(Difference {
                seq: d.seq,
                at: d.at,
                stage: d.from.stage_name.clone(),
                recorded: d.action,
                replayed: action,
                recorded_reasons: d.reasons.clone(),
                replayed_reasons: reasons,
                gates: results,
            });
        }
    }
    if from_state > 0 {
        notes.push(format!(
            "{from_state} decisions were logged without their label evidence: the stage's labels in the state were used"
        ));
    }
    Replay { method: spec.gates.method, judged, skipped, differences, ended_at, after_end, notes }
}

/// The replay in words, one block per run of alike differences. Each
/// decision is re-judged on its own evidence, as if the rollout had got
/// there: after a replayed advance the later decisions of the stage differ
/// too. A replayed rollback or promotion ends the replayed rollout: later
/// decisions are not compared.
pub fn render(r: &Replay) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "replayed {} decisions with the {} method ({} without evidence skipped): {} would have differed\n",
        r.judged,
        r.method,
        r.skipped,
        r.differences.len()
    );
    if let Some(seq) = r.ended_at {
        let _ = writeln!(
            s,
            "note: the replayed rollout would have ended at #{seq}; the {} later decisions are not compared \
             (that rollout would not have been there to make them)",
            r.after_end
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    // A run of differences alike (same stage, same two actions) is shown by
    // its first decision, with the count and the last one.
    let mut i = 0;
    while let Some(d) = r.differences.get(i) {
        let alike = r.differences[i..]
            .iter()
            .take_while(|e| (&e.stage, e.recorded, e.replayed) == (&d.stage, d.recorded, d.replayed))
            .count();
        let (recorded, replayed) = (crate::wire_name(&d.recorded), crate::wire_name(&d.replayed));
        let _ = writeln!(s, "\n#{} stage {}: recorded {recorded}, replayed {replayed}", d.seq, d.stage);
        for reason in &d.recorded_reasons {
            let _ = writeln!(s, "  recorded: {reason}");
        }
        for reason in &d.replayed_reasons {
            let _ = writeln!(s, "  replayed: {reason}");
        }
        if alike > 1 {
            let last = &r.differences[i + alike - 1];
            let _ = writeln!(s, "  … and {} more decisions alike, to #{}", alike - 1, last.seq);
        }
        i += alike;
    }
    s
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::window::{VersionWindow, Window};

    const SPEC: &str = r#"
rollout: r
champion: v1
challenger: v2
interval: 1s
stages:
  - { weight_percent: 1, min_duration: 3s, min_requests: 100 }
  - { weight_percent: 20, min_duration: 3s, min_requests: 100 }
  - { weight_percent: 100 }
gates:
  method: threshold
  error_rate: { error_tolerance: 1 }
  labels: { min_degradation_tolerance: 0.05, min_labels: 100 }
envoy: { admin: ["http://a"], ecds_dir: /x, wasm: /y.wasm }
"#;

    fn window(epoch: u64, n: u64, challenger_errors: u64) -> Window {
        Window::of(
            epoch,
            1,
            [("v1", VersionWindow::served(n, n / 100)), ("v2", VersionWindow::served(n, challenger_errors))],
        )
    }

    /// Runs `windows` (epoch-relative: one per second) through the state
    /// machine, with 0/1 labels at `accuracy` for both versions.
    fn record(spec: &RolloutSpec, windows: &[(u64, u64)]) -> (RolloutState, Vec<Decision>) {
        let mut s = RolloutState::start(spec, 0);
        let mut log = vec![];
        for (i, (n, errors)) in windows.iter().enumerate() {
            if s.phase.is_final() {
                break;
            }
            let stage = spec.stage_name(s.stage);
            for v in ["v1", "v2"] {
                let stats = crate::labels::LabelStats {
                    n: *n,
                    sum: 0.9 * *n as f64,
                    sum_sq: 0.9 * *n as f64,
                    ..Default::default()
                };
                s.labels.by_stage.entry(stage.clone()).or_default().insert(v.into(), stats);
            }
            let (next, d) = s.step(spec, Ok(&window(s.epoch, *n, *errors)), (i as u64 + 1) * 1000);
            log.push(d);
            s = next;
        }
        (s, log)
    }

    #[test]
    fn replaying_a_log_against_its_own_spec_changes_nothing() {
        for method in ["threshold", "sequential"] {
            let spec =
                RolloutSpec::from_yaml(&SPEC.replace("method: threshold", &format!("method: {method}"))).unwrap();
            let windows: Vec<(u64, u64)> = (1..40).map(|i| (i * 300, i * 3)).collect();
            let (state, mut log) = record(&spec, &windows);
            assert!(log.len() > 5);
            // An operator's command is not re-judged.
            let (_, manual) = state.command(&spec, crate::rollout::Command::Rollback, "", 99_000).unwrap();
            log.push(manual);
            let r = replay(&spec, &state, &log, &spec, None);
            assert_eq!(r.differences, vec![], "{method}: {}", render(&r));
            assert_eq!((r.judged, r.skipped), (log.len() - 1, 1));
        }
    }

    #[test]
    fn sequential_gates_would_not_have_rolled_back_on_noise() {
        let spec = RolloutSpec::from_yaml(SPEC).unwrap();
        // 3 errors in 150 (2 %) against 1 in 150 (0.67 %) + 1 pp: the threshold rule rolls back.
        let (state, log) = record(&spec, &[(150, 3)]);
        assert_eq!(log[0].action, Action::Rollback, "{:?}", log[0].reasons);
        let other = RolloutSpec::from_yaml(&SPEC.replace("method: threshold", "method: sequential")).unwrap();
        let r = replay(&spec, &state, &log, &other, None);
        assert_eq!(r.method, GateMethod::Sequential);
        assert_eq!(r.differences.len(), 1, "{}", render(&r));
        let d = &r.differences[0];
        assert_eq!((d.seq, d.stage.as_str(), d.recorded, d.replayed), (1, "1pct", Action::Rollback, Action::Hold));
        assert!(d.replayed_reasons[0].contains("inconclusive: needs ~"), "{:?}", d.replayed_reasons);
        // --method overrides the other spec's method: the same spec replays the same.
        let same = replay(&spec, &state, &log, &other, Some(GateMethod::Threshold));
        assert_eq!(same.differences, vec![]);
        let text = render(&r);
        assert!(text.contains("#1 stage 1pct: recorded rollback, replayed hold"), "{text}");
    }

    #[test]
    fn decisions_after_a_replayed_rollback_are_not_counted_as_differences() {
        // Sequential gates hold a challenger with 2 % errors against 1 % + 1 pp
        // for a while; the threshold rule rolls it back at the first decision.
        let spec = RolloutSpec::from_yaml(&SPEC.replace("method: threshold", "method: sequential")).unwrap();
        let (state, log) = record(&spec, &[(150, 3), (160, 3), (170, 4), (180, 4), (190, 4)]);
        assert!(
            log.iter().all(|d| d.action == Action::Hold),
            "{:?}",
            log.iter().map(|d| &d.reasons).collect::<Vec<_>>()
        );
        let strict = RolloutSpec::from_yaml(SPEC).unwrap();
        let r = replay(&spec, &state, &log, &strict, None);
        assert_eq!(r.differences.len(), 1, "{}", render(&r));
        assert_eq!((r.differences[0].replayed, r.ended_at, r.after_end), (Action::Rollback, Some(1), 4));
        let text = render(&r);
        assert!(text.contains(": 1 would have differed"), "{text}");
        assert!(text.contains("would have ended at #1; the 4 later decisions are not compared"), "{text}");
    }

    #[test]
    fn alike_differences_in_a_row_are_shown_once_with_their_count() {
        let spec = RolloutSpec::from_yaml(SPEC).unwrap();
        // The same noisy decision three times (as if logged in a row).
        let (state, log) = record(&spec, &[(150, 3)]);
        let mut log = vec![log[0].clone(); 3];
        for (i, d) in log.iter_mut().enumerate() {
            d.seq = i as u64 + 1;
        }
        let other = RolloutSpec::from_yaml(&SPEC.replace("method: threshold", "method: sequential")).unwrap();
        let r = replay(&spec, &state, &log, &other, None);
        assert_eq!(r.differences.len(), 3);
        let text = render(&r);
        assert_eq!(text.matches("recorded rollback, replayed hold").count(), 1, "{text}");
        assert!(text.contains("… and 2 more decisions alike, to #3"), "{text}");
    }

    #[test]
    fn the_other_specs_minimums_apply_when_its_stages_match() {
        let spec = RolloutSpec::from_yaml(SPEC).unwrap();
        let (state, log) = record(&spec, &[(150, 0), (300, 0), (450, 0), (600, 0)]);
        assert_eq!(log.iter().filter(|d| d.action == Action::Advance).count(), 1);
        let slower = RolloutSpec::from_yaml(&SPEC.replace(
            "min_duration: 3s, min_requests: 100 }\n  - { weight_percent: 20",
            "min_duration: 30s, min_requests: 100 }\n  - { weight_percent: 20",
        ))
        .unwrap();
        let r = replay(&spec, &state, &log, &slower, None);
        let d = r.differences.iter().find(|d| d.recorded == Action::Advance).unwrap();
        assert_eq!(d.replayed, Action::Hold);
        assert!(d.replayed_reasons.iter().any(|r| r.contains("more in the stage")), "{:?}", d.replayed_reasons);
        let other_weights = RolloutSpec::from_yaml(&SPEC.replace("weight_percent: 20", "weight_percent: 10")).unwrap();
        let r = replay(&spec, &state, &log, &other_weights, None);
        assert!(r.notes[0].contains("recorded stages"), "{:?}", r.notes);
        assert_eq!(r.differences, vec![]);
    }
}
