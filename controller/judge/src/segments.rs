//! Per-segment gates: a gate with `segments` also judges each segment of
//! the traffic (a value of `filter.segment.header`, or `other`) alone —
//! the segment's challenger against the *same segment's* champion, with
//! the rollout's engine (the gate functions of [`crate::gates`], unchanged,
//! fed the segment's windows). A challenger that is fine on average but
//! hurts one segment fails that segment's result, which rolls back like
//! any failed gate, its reason naming the segment and its figures.
//!
//! **Family-wise error: a Bonferroni split, fixed in advance.** A gate
//! with segments tests a family of 1 + K hypotheses (all traffic and its K
//! segments). Its `alpha` is split: `alpha / 2` for all traffic and
//! `alpha / (2K)` for each segment, so the chance that any of the family
//! wrongly fails a challenger within tolerance (or wrongly passes one
//! outside it) stays below `alpha`, by the union bound. The union bound
//! needs no independence and holds at any stopping time because each test
//! does: the anytime engine's e-processes and confidence sequences are
//! valid at every evaluation (Ville's inequality), and the look-based
//! engine spends each test's alpha over its looks. Holm's step-down would
//! be more powerful for one fixed sample, but it re-ranks the p-values at
//! each look and a test rejected at one look may not be rejected at the
//! next; with continuous monitoring its guarantee needs a sequential
//! closed-testing construction, so the fixed split is used. K is known
//! from the spec (the listed segments, or the filter's values and `other`
//! for `all`), so the split never depends on the data. Gates without
//! segments keep their full `alpha`, as before.
//!
//! **Too small.** A segment with fewer than `gates.segment_min_responses`
//! responses from either version is not judged: reported as "not enough
//! data", holding the stage only under `on_segment_too_small: block`.
//!
//! **Labels.** The labels gate judges a segment on the labels that named it
//! ([`crate::labels::LabelRecord::segment`]): the same split of alpha, and
//! the same rule with the segment's label counts in place of responses (the
//! segment's first look is at `segment_min_responses` labels per version,
//! as the other gates' is at that many responses).
//!
//! **State.** Segment results are [`GateResult`]s with `segment` set; the
//! state machine keeps their spent looks and e-processes beside the totals'
//! (one per gate and segment), and hands each segment back only its own.

use crate::gates::{self, GateKind, GateResult, LabelEvidence, Outcome, StageContext};
use crate::labels::StageLabels;
use crate::spec::{GatesSpec, NoDataPolicy, SegmentTooSmall};
use crate::window::{SegmentWindow, VersionWindow};
use canary_core::predict::SegmentConfig;

/// The gates of `spec` that judge segments, each with its segments' names
/// (in registry order). A gate can judge a segment when the filter counts
/// its evidence per segment (responses, timeouts, latency; labels may name
/// their segment; predictions are not split): its registry entry then has
/// `segments`.
pub fn families(spec: &GatesSpec, filter: Option<&SegmentConfig>) -> Vec<(GateKind, Vec<String>)> {
    gates::GATES
        .iter()
        .filter_map(|g| {
            let names = (g.segments)(spec)?.names(filter);
            (!names.is_empty()).then_some((g.kind(), names))
        })
        .collect()
}

/// `spec` with only the gates `keep` says to keep (every gate of the
/// registry, by its own kind).
fn only(spec: &GatesSpec, keep: impl Fn(GateKind) -> bool) -> GatesSpec {
    let mut out = spec.clone();
    for g in gates::GATES.iter().filter(|g| !keep(g.kind())) {
        (g.remove)(&mut out);
    }
    out
}

/// A segment's counters as a version window (what the gate functions read).
pub fn as_version(s: &SegmentWindow) -> VersionWindow {
    VersionWindow {
        requests: s.requests,
        unkeyed: s.unkeyed,
        responses: s.responses,
        timeouts: s.timeouts,
        latency_us: s.latency_us.clone(),
        ..Default::default()
    }
}

fn prefix(name: &str) -> String {
    format!("segment `{name}`: ")
}

/// Every gate of the stage, as [`gates::evaluate`] judges them, then one
/// result per gate with segments and segment (see the module docs).
/// `spent`: the results of earlier evaluations the state machine kept,
/// totals' and segments' alike. `stage_labels`: the stage's label evidence, all
/// traffic's and each segment's.
pub fn evaluate(
    spec: &GatesSpec,
    filter: Option<&SegmentConfig>,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    stage_labels: &StageLabels,
    stage: StageContext,
    spent: &[GateResult],
) -> Vec<GateResult> {
    let totals_spent: Vec<GateResult> = spent.iter().filter(|r| r.segment.is_none()).cloned().collect();
    let families = families(spec, filter);
    let labels = &stage_labels.totals;
    if families.is_empty() || stage.shadow {
        // In a shadow stage the challenger serves no user: no segment to judge.
        return gates::evaluate(spec, champion, challenger, labels, stage, &totals_spent);
    }
    let split = |k: GateKind| families.iter().any(|(f, _)| *f == k);
    let plain = only(spec, |k| !split(k));
    let halved = GatesSpec { alpha: spec.alpha / 2.0, ..only(spec, split) };
    let mut out = gates::evaluate(&plain, champion, challenger, labels, stage, &totals_spent);
    out.extend(gates::evaluate(&halved, champion, challenger, labels, stage, &totals_spent));
    out.sort_by_key(|r| r.gate.rank());
    for (kind, names) in &families {
        let alpha = spec.alpha / (2.0 * names.len() as f64);
        let one = GatesSpec { alpha, ..only(spec, |k| k == *kind) };
        for name in names {
            let evidence = Evidence { windows: (champion, challenger), labels: stage_labels.segment(name) };
            out.push(segment(&one, *kind, name, &evidence, stage, spent));
        }
    }
    out
}

/// What a segment is judged on: the versions' windows (the segment's
/// counters are in them) and the segment's label evidence.
struct Evidence<'a> {
    windows: (&'a VersionWindow, &'a VersionWindow),
    labels: LabelEvidence,
}

/// One gate's verdict on one segment, at the segment's share of alpha.
fn segment(
    spec: &GatesSpec,
    kind: GateKind,
    name: &str,
    evidence: &Evidence<'_>,
    stage: StageContext,
    spent: &[GateResult],
) -> GateResult {
    let empty = SegmentWindow::default();
    let a = evidence.windows.0.segments.get(name).unwrap_or(&empty);
    let b = evidence.windows.1.segments.get(name).unwrap_or(&empty);
    let labels = kind == GateKind::Labels;
    let (n, what) = if labels {
        ((evidence.labels.champion.n, evidence.labels.challenger.n), "labels")
    } else {
        ((a.answered(), b.answered()), "responses")
    };
    let head = prefix(name);
    let min = spec.segment_min_responses.max(1);
    let mut r = if n.0.min(n.1) < min {
        let policy = match spec.on_segment_too_small {
            SegmentTooSmall::Block => NoDataPolicy::Hold,
            SegmentTooSmall::Ignore => NoDataPolicy::Ignore,
        };
        let detail = format!(
            "not enough data: {} champion and {} challenger {what} (judged from {min} each; on_segment_too_small: {})",
            n.0,
            n.1,
            if policy == NoDataPolicy::Hold { "block" } else { "ignore" }
        );
        GateResult::no_data(kind, n.0, n.1, policy, detail)
    } else {
        // The segment's own spent looks and e-process, as the gate wrote them.
        let own: Vec<GateResult> = spent
            .iter()
            .filter(|r| r.gate == kind && r.segment.as_deref() == Some(name))
            .map(|r| {
                let mut r = r.clone();
                r.segment = None;
                r.detail = r.detail.strip_prefix(&head).map(str::to_string).unwrap_or(r.detail);
                r
            })
            .collect();
        let context = StageContext { min_samples: min, ..stage };
        let results = if labels {
            // The segment's labels, from its first look at `min` per version.
            let mut one = spec.clone();
            if let Some(g) = one.labels.as_mut() {
                g.min_labels = min;
            }
            let none = VersionWindow::default();
            gates::evaluate(&one, &none, &none, &evidence.labels, context, &own)
        } else {
            gates::evaluate(spec, &as_version(a), &as_version(b), &LabelEvidence::default(), context, &own)
        };
        match results.into_iter().find(|r| r.gate == kind) {
            Some(r) => r,
            None => GateResult::no_data(kind, n.0, n.1, NoDataPolicy::Hold, "not judged".into()),
        }
    };
    r.detail = format!("{head}{}", r.detail);
    if r.outcome == Outcome::Fail {
        r.detail.push_str(&format!(" (at this segment's share of alpha, {:.3}%)", spec.alpha * 100.0));
    }
    r.segment = Some(name.to_string());
    r
}

/// The index in `results` of the segment result most worth a reader's
/// eye: the first failed one, else the one with the least room left
/// before its limit (relative to the limit, so gates in different units
/// compare).
pub fn worst(results: &[GateResult]) -> Option<usize> {
    let segmented = || results.iter().enumerate().filter(|(_, r)| r.segment.is_some());
    if let Some((i, _)) = segmented().find(|(_, r)| r.outcome == Outcome::Fail) {
        return Some(i);
    }
    let room = |r: &GateResult| match (r.margin, r.threshold) {
        (Some(m), Some(t)) if t.abs() > 0.0 => Some(m / t.abs()),
        (Some(m), _) => Some(m),
        _ => None,
    };
    segmented().filter_map(|(i, r)| room(r).map(|x| (i, x))).min_by(|a, b| a.1.total_cmp(&b.1)).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::LabelStats;
    use crate::spec::{ErrorRateGate, GateMethod, LabelGate, SegmentSelection};

    fn filter() -> SegmentConfig {
        SegmentConfig { header: "x-tier".into(), values: vec!["free".into(), "ent".into()] }
    }

    fn spec(segments: SegmentSelection) -> GatesSpec {
        GatesSpec {
            method: GateMethod::Anytime,
            error_rate: Some(ErrorRateGate { error_tolerance: 1.0, segments }),
            segment_min_responses: 200,
            ..GatesSpec::default()
        }
    }

    /// A version with `(segment, responses, 5xx)` per segment; its totals
    /// are their sums.
    fn window(segments: &[(&str, u64, u64)]) -> VersionWindow {
        let mut w = VersionWindow::default();
        for &(name, n, errors) in segments {
            let s = w.segment_mut(name);
            s.responses = [0, n - errors, 0, 0, errors];
            s.requests = n;
            w.responses[1] += n - errors;
            w.responses[4] += errors;
            w.requests += n;
        }
        w
    }

    fn judge(g: &GatesSpec, a: &VersionWindow, b: &VersionWindow, spent: &[GateResult]) -> Vec<GateResult> {
        let f = filter();
        evaluate(g, Some(&f), a, b, &StageLabels::default(), StageContext::live(100), spent)
    }

    /// The results of a second look at `a` and `b` after a first at half
    /// their counts (the anytime engine learns the champion's rate from a
    /// look before it scores one).
    fn two_looks(g: &GatesSpec, a: &[(&str, u64, u64)], b: &[(&str, u64, u64)]) -> Vec<GateResult> {
        let (ha, hb): (Vec<_>, Vec<_>) = (
            a.iter().map(|&(s, n, e)| (s, n / 2, e / 2)).collect(),
            b.iter().map(|&(s, n, e)| (s, n / 2, e / 2)).collect(),
        );
        let first = judge(g, &window(&ha), &window(&hb), &[]);
        let spent: Vec<GateResult> = first.into_iter().filter(|r| r.spends_look()).collect();
        judge(g, &window(a), &window(b), &spent)
    }

    fn of<'a>(results: &'a [GateResult], segment: Option<&str>) -> &'a GateResult {
        results.iter().find(|r| r.segment.as_deref() == segment).unwrap()
    }

    #[test]
    fn a_challenger_harmful_in_one_segment_fails_that_segment_while_the_total_is_within_tolerance() {
        // 0.3 % 5xx everywhere for the champion; the challenger 6 % in `ent`
        // (1 in 11 responses): the total difference is about 0.52 points,
        // within the 1-point tolerance, the segment's 5.7 points are not.
        let a = [("free", 20_000, 60), ("ent", 2_000, 6), ("other", 0, 0)];
        let b = [("free", 20_000, 60), ("ent", 2_000, 120), ("other", 0, 0)];
        let r = two_looks(&spec(SegmentSelection::All), &a, &b);
        assert_eq!(r.len(), 4, "totals, then free, ent, other: {r:#?}");
        let total = of(&r, None);
        assert_ne!(total.outcome, Outcome::Fail, "{}", total.detail);
        assert!(total.difference.unwrap() < 0.01);
        let ent = of(&r, Some("ent"));
        assert_eq!(ent.outcome, Outcome::Fail, "{}", ent.detail);
        assert!(ent
            .detail
            .starts_with("segment `ent`: 5xx rate: challenger 6.000% (120/2000) vs champion 0.300% (6/2000)"));
        assert!(ent.detail.contains("share of alpha, 0.833%"), "0.05 / (2 × 3): {}", ent.detail);
        assert_ne!(of(&r, Some("free")).outcome, Outcome::Fail);
        // `other` saw nothing: not enough data, and (ignore) it does not block.
        let other = of(&r, Some("other"));
        assert_eq!((other.outcome, other.blocks), (Outcome::NoData, false), "{}", other.detail);
        assert!(other.detail.contains("not enough data: 0 champion and 0 challenger responses (judged from 200 each"));
        let failed: Vec<_> = r.iter().filter(|r| r.outcome == Outcome::Fail).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(r[worst(&r).unwrap()].segment.as_deref(), Some("ent"));
        // Without a failure, the least room left: `ent` again (1.3 % vs 0.3 % + 1 point).
        let c = [("free", 20_000, 60), ("ent", 2_000, 26), ("other", 0, 0)];
        let r = two_looks(&spec(SegmentSelection::All), &a, &c);
        assert!(r.iter().all(|x| x.outcome != Outcome::Fail));
        assert_eq!(r[worst(&r).unwrap()].segment.as_deref(), Some("ent"));
        assert_eq!(worst(&r[..1]), None, "no segment result");
    }

    #[test]
    fn an_identical_challenger_passes_every_segment_with_enough_data() {
        let counts = [("free", 40_000, 120), ("ent", 8_000, 24), ("other", 4_000, 12)];
        let r = two_looks(&spec(SegmentSelection::All), &counts, &counts);
        let a = window(&counts);
        for x in &r {
            assert_eq!(x.outcome, Outcome::Pass, "{:?}: {}", x.segment, x.detail);
        }
        // A listed selection judges only those.
        let listed = judge(&spec(SegmentSelection::Only(vec!["ent".into()])), &a, &a.clone(), &[]);
        assert_eq!(listed.iter().map(|r| r.segment.clone()).collect::<Vec<_>>(), [None, Some("ent".to_string())]);
    }

    #[test]
    fn a_small_segment_blocks_only_when_told_to() {
        let a = window(&[("free", 5_000, 15), ("ent", 50, 0)]);
        let ignore = judge(&spec(SegmentSelection::Only(vec!["ent".into()])), &a, &a.clone(), &[]);
        let ent = of(&ignore, Some("ent"));
        assert_eq!((ent.outcome, ent.blocks), (Outcome::NoData, false));
        let g = GatesSpec { on_segment_too_small: SegmentTooSmall::Block, ..spec(SegmentSelection::All) };
        let block = judge(&g, &a, &a.clone(), &[]);
        assert_eq!((of(&block, Some("ent")).outcome, of(&block, Some("ent")).blocks), (Outcome::NoData, true));
    }

    #[test]
    fn totals_keep_their_alpha_without_segments_and_take_half_with_them() {
        let a = window(&[("free", 3_000, 9), ("ent", 3_000, 9)]);
        let b = window(&[("free", 3_000, 30), ("ent", 3_000, 12)]);
        let context = StageContext::live(100);
        let none = spec(SegmentSelection::None);
        let plain = gates::evaluate(&none, &a, &b, &LabelEvidence::default(), context, &[]);
        assert_eq!(judge(&none, &a, &b, &[]), plain, "no segment: exactly today's gates");
        let halved = GatesSpec { alpha: 0.025, ..none.clone() };
        let expected = gates::evaluate(&halved, &a, &b, &LabelEvidence::default(), context, &[]);
        let with = judge(&spec(SegmentSelection::All), &a, &b, &[]);
        assert_eq!(of(&with, None), &expected[0]);
        assert_eq!(families(&spec(SegmentSelection::All), Some(&filter()))[0].1, ["free", "ent", "other"]);
    }

    #[test]
    fn each_segment_carries_its_own_process_from_look_to_look() {
        let g = spec(SegmentSelection::All);
        let a1 = window(&[("free", 1_000, 3), ("ent", 1_000, 3)]);
        let b1 = window(&[("free", 1_000, 3), ("ent", 1_000, 20)]);
        let first = judge(&g, &a1, &b1, &[]);
        let spent: Vec<GateResult> = first.iter().filter(|r| r.spends_look()).cloned().collect();
        assert_eq!(spent.len(), 3, "totals, free and ent each carry an e-process");
        let a2 = window(&[("free", 2_000, 6), ("ent", 2_000, 6)]);
        let b2 = window(&[("free", 2_000, 6), ("ent", 2_000, 40)]);
        let second = judge(&g, &a2, &b2, &spent);
        let fresh = judge(&g, &a2, &b2, &[]);
        for seg in ["free", "ent"] {
            let (carried, new) = (of(&second, Some(seg)), of(&fresh, Some(seg)));
            let p = carried.process.as_ref().unwrap();
            assert_eq!((p.n, p.s), (2_000.0, if seg == "ent" { 40.0 } else { 6.0 }));
            assert_ne!(carried.process, new.process, "{seg}: the first look's batch is folded in separately");
            assert!(!carried.detail.contains("segment `ent`: segment"), "{}", carried.detail);
        }
        // A segment's process is never the totals' or another segment's.
        assert_ne!(of(&second, Some("ent")).process, of(&second, Some("free")).process);
    }

    fn label_spec(segments: SegmentSelection) -> GatesSpec {
        GatesSpec {
            method: GateMethod::Anytime,
            labels: Some(LabelGate { min_degradation_tolerance: 0.05, min_labels: 100, segments }),
            segment_min_responses: 200,
            ..GatesSpec::default()
        }
    }

    /// A segment's 0/1 labels: `(segment, (champion labels, correct), (challenger labels, correct))`.
    type SegmentLabels<'a> = (&'a str, (u64, u64), (u64, u64));

    /// 0/1 labels, [`SegmentLabels`] per segment;
    /// all traffic's are their sums.
    fn stage_labels(segments: &[SegmentLabels]) -> StageLabels {
        let stats = |(n, k): (u64, u64)| LabelStats {
            n,
            sum: k as f64,
            sum_sq: k as f64,
            min: (n > 0).then_some(0.0),
            max: (n > 0).then_some(1.0),
            ..Default::default()
        };
        let mut out = StageLabels::default();
        let (mut a, mut b) = ((0, 0), (0, 0));
        for &(name, x, y) in segments {
            out.segments.insert(name.into(), LabelEvidence { champion: stats(x), challenger: stats(y) });
            (a, b) = ((a.0 + x.0, a.1 + x.1), (b.0 + y.0, b.1 + y.1));
        }
        out.totals = LabelEvidence { champion: stats(a), challenger: stats(b) };
        out
    }

    /// Two evaluations of the labels, the first at half the counts.
    fn label_looks(g: &GatesSpec, segments: &[SegmentLabels]) -> Vec<GateResult> {
        let half: Vec<_> = segments.iter().map(|&(s, x, y)| (s, (x.0 / 2, x.1 / 2), (y.0 / 2, y.1 / 2))).collect();
        let (f, none) = (filter(), VersionWindow::default());
        let context = StageContext::live(100);
        let first = evaluate(g, Some(&f), &none, &none, &stage_labels(&half), context, &[]);
        let spent: Vec<GateResult> = first.into_iter().filter(|r| r.spends_look()).collect();
        evaluate(g, Some(&f), &none, &none, &stage_labels(segments), context, &spent)
    }

    #[test]
    fn labels_worse_in_one_segment_only_fail_that_segment_while_all_traffic_is_within_tolerance() {
        // 97 % correct everywhere for the champion; the challenger 80 % in
        // `ent`: all traffic loses 1.5 points (tolerance 5), `ent` 17.
        let labels = [("free", (20_000, 19_400), (20_000, 19_400)), ("ent", (2_000, 1_940), (2_000, 1_600))];
        let r = label_looks(&label_spec(SegmentSelection::All), &labels);
        assert_eq!(r.len(), 4, "totals, then free, ent, other: {r:#?}");
        assert!(r.iter().all(|x| x.gate == GateKind::Labels));
        let total = of(&r, None);
        assert_ne!(total.outcome, Outcome::Fail, "{}", total.detail);
        let ent = of(&r, Some("ent"));
        assert_eq!(ent.outcome, Outcome::Fail, "{}", ent.detail);
        assert!(
            ent.detail.starts_with("segment `ent`: label metric: challenger 0.8000 vs champion 0.9700"),
            "{}",
            ent.detail
        );
        assert!(ent.detail.contains("share of alpha, 0.833%"), "0.05 / (2 × 3): {}", ent.detail);
        assert_eq!((ent.champion_n, ent.challenger_n), (2_000, 2_000));
        assert_ne!(of(&r, Some("free")).outcome, Outcome::Fail);
        // No label named `other`: not enough data, counted in labels.
        let other = of(&r, Some("other"));
        assert_eq!((other.outcome, other.blocks), (Outcome::NoData, false), "{}", other.detail);
        assert!(
            other.detail.contains("not enough data: 0 champion and 0 challenger labels (judged from 200 each"),
            "{}",
            other.detail
        );
        assert_eq!(r.iter().filter(|r| r.outcome == Outcome::Fail).count(), 1);
        assert_eq!(r[worst(&r).unwrap()].segment.as_deref(), Some("ent"));
        // The same figures without `segments`: all traffic alone, and it does not fail.
        let plain = label_looks(&label_spec(SegmentSelection::None), &labels);
        assert_eq!(plain.len(), 1);
        assert_ne!(plain[0].outcome, Outcome::Fail, "{}", plain[0].detail);
    }

    #[test]
    fn identical_labels_pass_every_segment_and_small_ones_follow_on_segment_too_small() {
        let same = [
            ("free", (40_000, 38_800), (40_000, 38_800)),
            ("ent", (8_000, 7_760), (8_000, 7_760)),
            ("other", (4_000, 3_880), (4_000, 3_880)),
        ];
        for x in label_looks(&label_spec(SegmentSelection::All), &same) {
            assert_eq!(x.outcome, Outcome::Pass, "{:?}: {}", x.segment, x.detail);
        }
        // 150 labels in `ent` (< 200): not judged; it holds the stage only under `block`.
        let small = [("free", (40_000, 38_800), (40_000, 38_800)), ("ent", (150, 150), (150, 100))];
        let ignore = label_looks(&label_spec(SegmentSelection::Only(vec!["ent".into()])), &small);
        let ent = of(&ignore, Some("ent"));
        assert_eq!((ent.outcome, ent.blocks), (Outcome::NoData, false), "{}", ent.detail);
        let g = GatesSpec { on_segment_too_small: SegmentTooSmall::Block, ..label_spec(SegmentSelection::All) };
        let block = label_looks(&g, &small);
        assert_eq!((of(&block, Some("ent")).outcome, of(&block, Some("ent")).blocks), (Outcome::NoData, true));
    }

    #[test]
    fn the_labels_family_splits_alpha_like_the_others() {
        let labels = stage_labels(&[("free", (3_000, 2_900), (3_000, 2_850)), ("ent", (3_000, 2_900), (3_000, 2_880))]);
        let (f, none, context) = (filter(), VersionWindow::default(), StageContext::live(100));
        let none_spec = label_spec(SegmentSelection::None);
        let plain = gates::evaluate(&none_spec, &none, &none, &labels.totals, context, &[]);
        assert_eq!(
            evaluate(&none_spec, Some(&f), &none, &none, &labels, context, &[]),
            plain,
            "no segment: today's gate"
        );
        let halved = GatesSpec { alpha: 0.025, ..none_spec };
        let expected = gates::evaluate(&halved, &none, &none, &labels.totals, context, &[]);
        let with = evaluate(&label_spec(SegmentSelection::All), Some(&f), &none, &none, &labels, context, &[]);
        assert_eq!(of(&with, None), &expected[0]);
        let families = families(&label_spec(SegmentSelection::All), Some(&f));
        assert_eq!(families, [(GateKind::Labels, vec!["free".to_string(), "ent".into(), "other".into()])]);
        // A segment's label evidence is the segment's own: `free`'s result reads 2850/3000.
        let free = of(&with, Some("free"));
        assert_eq!((free.champion_n, free.challenger), (3_000, Some(0.95)));
    }

    #[test]
    fn each_gate_appears_once_per_segment_and_the_totals_in_registry_order() {
        use crate::spec::{ClientErrorGate, TimeoutGate};
        let g = GatesSpec {
            timeouts: Some(TimeoutGate { timeout_tolerance: 1.0, segments: SegmentSelection::None }),
            client_errors: Some(ClientErrorGate { client_error_tolerance: 1.0 }),
            ..spec(SegmentSelection::All)
        };
        let a = window(&[("free", 3_000, 9), ("ent", 3_000, 9)]);
        let r = judge(&g, &a, &a.clone(), &[]);
        let mut seen = std::collections::BTreeSet::new();
        for x in &r {
            assert!(seen.insert((x.gate.id(), x.segment.clone())), "{} {:?} twice", x.gate.id(), x.segment);
        }
        let totals: Vec<&str> = r.iter().filter(|x| x.segment.is_none()).map(|x| x.gate.id()).collect();
        assert_eq!(totals, ["error_rate", "timeouts", "client_errors"]);
    }
}
