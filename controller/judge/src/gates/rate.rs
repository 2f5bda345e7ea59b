//! The rate comparison several gates share (error_rate, timeouts,
//! client_errors, and the shadow gate's error rate): challenger − champion
//! rate against a tolerance in percentage points, by each method.

use std::collections::BTreeMap;

use super::judge::{evalue, needed, pct, pp, scaled, verdict, verdict_words, Judge};
use super::{Descriptor, Digits, GateKind, GateResult, Outcome};
use crate::anytime;
use crate::spec::NoDataPolicy;
use crate::stats;

/// The descriptor every rate gate shares: a share of responses shown in %,
/// judged on challenger − champion.
pub(super) const fn rate_descriptor(kind: GateKind, id: &'static str, title: &'static str) -> Descriptor {
    Descriptor {
        kind,
        id,
        title,
        scale: 100.0,
        unit: "%",
        digits: Digits::Significant(3),
        difference: true,
        reference: false,
    }
}

/// Challenger − champion rate ≤ `tolerance_pp` points. Threshold: the point
/// estimates, judged from one response each. Sequential: the Newcombe
/// interval of the difference at the look's confidence, from the first look
/// (`n0` responses each).
pub(super) fn rate_gate(
    kind: GateKind,
    what: &str,
    n: (u64, u64),
    events: (u64, u64),
    tolerance_pp: f64,
    n0: u64,
    judge: Judge<'_>,
) -> GateResult {
    let head = |a: f64, b: f64| {
        format!("{what}: challenger {} ({}/{}) vs champion {} ({}/{})", pct(b), events.1, n.1, pct(a), events.0, n.0)
    };
    rate_verdict(kind, n, events, tolerance_pp, n0, judge, head)
}

/// The rate comparison shared by the live rate gates and the shadow error
/// rate; `head` words the two rates.
pub(super) fn rate_verdict(
    kind: GateKind,
    n: (u64, u64),
    events: (u64, u64),
    tolerance_pp: f64,
    n0: u64,
    judge: Judge<'_>,
    head: impl Fn(f64, f64) -> String,
) -> GateResult {
    if n.0 == 0 || n.1 == 0 {
        return GateResult::no_data(
            kind,
            n.0,
            n.1,
            NoDataPolicy::Hold,
            format!("no responses yet ({} champion, {} challenger)", n.0, n.1),
        );
    }
    let (a, b) = (events.0 as f64 / n.0 as f64, events.1 as f64 / n.1 as f64);
    let tol = tolerance_pp / 100.0;
    let limit = a + tol;
    if judge.anytime() {
        let what = format!("{tolerance_pp} pp");
        let counts = ((events.0 as f64, n.0 as f64), (events.1 as f64, n.1 as f64));
        return anytime_rate(kind, counts, tol, &what, judge, head(a, b));
    }
    if !judge.sequential() {
        let mut r =
            GateResult::at_most(kind, n, (a, b), limit, format!("{} + {tolerance_pp} pp = {}", head(a, b), pct(limit)));
        r.difference = Some(b - a);
        return r;
    }
    let small = n.0.min(n.1);
    let k = judge.schedule.look(small, n0);
    if k == 0 {
        return GateResult::no_data(
            kind,
            n.0,
            n.1,
            NoDataPolicy::Hold,
            format!("{}: the first look is at {n0} responses each", head(a, b)),
        );
    }
    if let Some(r) = judge.carried(kind, k, n, n0) {
        return r;
    }
    let confidence = judge.schedule.confidence_at(k);
    let Some(di) = stats::newcombe_diff(events.0, n.0, events.1, n.1, confidence) else {
        return GateResult::no_data(kind, n.0, n.1, NoDataPolicy::Hold, "no interval".into());
    };
    let d = b - a;
    let outcome = verdict(di, tol, true);
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            let z_at = |l| stats::z_two_sided(judge.schedule.confidence_at(l));
            needed(small, n0, k, &judge.schedule, z_at, |t, level| {
                let (x1, n1, x2, n2) = (scaled(events.0, t), scaled(n.0, t), scaled(events.1, t), scaled(n.1, t));
                stats::newcombe_diff(x1, n1, x2, n2, level)
                    .is_some_and(|i| verdict(i, tol, true) != Outcome::Inconclusive)
            })
        })
        .flatten();
    let detail = format!(
        "{}: difference {} pp, {:.2}% interval [{}, {}] pp vs tolerance +{tolerance_pp} pp at look {k}: {}",
        head(a, b),
        pp(d),
        confidence * 100.0,
        pp(di.low),
        pp(di.high),
        verdict_words(outcome, need, "responses")
    );
    GateResult {
        champion: Some(a),
        challenger: Some(b),
        threshold: Some(limit),
        margin: Some(limit - b),
        difference: Some(d),
        difference_interval: Some(di),
        look: Some(k),
        confidence: Some(confidence),
        needed: need,
        ..GateResult::base(kind, outcome, n, detail)
    }
}

/// Growth factors of the sample at which "needs ~N more" is projected.
const PROJECTIONS: [f64; 13] = [1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0, 144.0, 233.0, 377.0];

/// "Needs ~N more" for an anytime test: the samples beyond the `n` seen
/// at the first growth factor `t` of [`PROJECTIONS`] for which
/// `decides(t)` (the test on the sample grown `t`-fold, the estimates
/// kept) reaches a verdict; `None` if none does.
pub(super) fn projected_need(n: f64, decides: impl Fn(f64) -> bool) -> Option<u64> {
    PROJECTIONS.iter().find_map(|&t| decides(t).then(|| (n * (t - 1.0)).ceil() as u64))
}

/// Anytime method for a "higher is worse" rate (see [`crate::anytime`]):
/// the champion's `(events, trials)` and the challenger's, tolerance `tol`
/// as a rate. Fail when the harm e-value reaches 2/α, pass when the
/// no-harm one does, inconclusive otherwise, with the growth of the
/// challenger's sample at which, the rates staying as seen, one would.
pub(super) fn anytime_rate(
    kind: GateKind,
    counts: ((f64, f64), (f64, f64)),
    tol: f64,
    tolerance: &str,
    judge: Judge<'_>,
    head: String,
) -> GateResult {
    let ((s1, n1), (s2, n2)) = counts;
    let alpha = judge.schedule.alpha;
    let mut process = judge.process(kind);
    process.update((s1, n1), (s2, n2), tol, alpha);
    let v = process.verdict(alpha);
    let outcome = if v.harm {
        Outcome::Fail
    } else if v.fine {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    };
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            projected_need(n2, |t| {
                let w = process.projected(t).verdict(alpha);
                w.harm || w.fine
            })
        })
        .flatten();
    let di = process.difference(alpha);
    let level = anytime::threshold(alpha);
    let pooled = match process.pooled_stages {
        0 => String::new(),
        1 => " (pooled with the stage before)".to_string(),
        k => format!(" (pooled with the {k} stages before)"),
    };
    let detail = format!(
        "{head}: harm e-value {} and no-harm e-value {}{pooled} (either decides at {level:.0}); difference {}, {:.0}% sequence [{}, {}] pp vs tolerance +{tolerance}: {}",
        evalue(v.log_e_harm.exp()),
        evalue(v.log_e_fine.exp()),
        pp(s2 / n2 - s1 / n1),
        (1.0 - alpha) * 100.0,
        pp(di.low),
        pp(di.high),
        verdict_words(outcome, need, "responses")
    );
    let (a, b) = (s1 / n1, s2 / n2);
    let mut notes = BTreeMap::new();
    // Clamped: an e-value beyond f64 would be written as null.
    notes.insert("e_harm".to_string(), v.log_e_harm.exp().min(f64::MAX));
    notes.insert("e_no_harm".to_string(), v.log_e_fine.exp().min(f64::MAX));
    GateResult {
        champion: Some(a),
        challenger: Some(b),
        threshold: Some(a + tol),
        margin: Some(a + tol - b),
        difference: Some(b - a),
        difference_interval: Some(di),
        confidence: Some(1.0 - alpha),
        needed: need,
        notes,
        process: Some(process),
        ..GateResult::base(kind, outcome, (n1 as u64, n2 as u64), detail)
    }
}
