//! Health gates: champion vs challenger over the same window. Pure: numbers
//! in, one [`GateResult`] per configured gate out, each with its inputs,
//! values, threshold, margin and (sequential method) the intervals, look and
//! confidence behind the verdict, so every decision can say why.
//!
//! | gate | tolerance: the challenger is acceptable when |
//! | --- | --- |
//! | error_rate | challenger 5xx rate ≤ champion's + `error_tolerance` points |
//! | latency | challenger p99 ≤ champion p99 × `latency_tolerance_multiplier` |
//! | prediction | PSI(challenger ‖ champion) < `max_psi` over the prediction bins ([`crate::psi`]) |
//! | timeouts | challenger 504 rate ≤ champion's + `timeout_tolerance` points |
//! | labels | challenger mean outcome ≥ champion's − `min_degradation_tolerance` |
//! | shadow (3 results) | agreement ≥ `min_agreement`; shadow error rate ≤ champion's + `error_tolerance` points; shadow p99 ≤ champion p99 × `latency_tolerance_multiplier` |
//!
//! **Two methods** (`gates.method`). `threshold` compares the point
//! estimates with the tolerances at every evaluation: pass or fail. It is
//! the naive rule — with small samples noise alone fails good challengers
//! and passes bad ones, and looking every interval multiplies both errors —
//! kept for comparison and `canary replay`.
//!
//! `sequential` (the default) judges intervals, three-valued: **fail** when
//! the interval lies wholly on the wrong side of the tolerance, **pass**
//! when it lies wholly on the right side, **inconclusive** otherwise (the
//! stage holds, and the result says about how many more samples a decision
//! needs, for 80 % power). Intervals: Newcombe for the difference of two
//! rates, distribution-free order statistics for latency quantiles (one per
//! version, compared as two one-sided bounds), Welch for the difference of
//! label means, Wilson for shadow agreement, and a normal approximation of
//! PSI's sampling distribution (see [`prediction_gate`]).
//!
//! **Repeated looks.** The controller evaluates every interval; testing at a
//! fixed level each time would let noise win eventually. A gate therefore
//! decides only at *looks* ([`LookSchedule`]): look 1 when the smaller
//! version's sample reaches the stage's minimum (`min_requests`; `min_labels`
//! for labels; the larger of `min_requests` and `min_predictions` for PSI),
//! look k + 1 when it has grown by `look_growth`. Look k spends
//! `alpha · 6 / (π² k²)` per side (these sum to `alpha` over all looks), so
//! per gate and stage the chance of ever failing a challenger within
//! tolerance, and of ever passing one outside it, stays below `alpha`.
//! **Each look is spent once**: the first evaluation that reaches look k
//! judges it; later evaluations at the same look carry that verdict
//! ([`GateResult::carried`]) until the sample reaches look k + 1 — the state
//! machine keeps the spent verdicts of the current stage and passes them in.
//!
//! In a shadow stage the challenger serves no user, so the gates over its
//! live traffic (error_rate, latency, timeouts, labels) are not judged; the
//! shadow gate is, on the copies it answered. The prediction gate is judged
//! wherever both versions have enough parsed predictions; in a shadow stage
//! (where the challenger's predictions are only compared, not binned) its
//! lack of data never blocks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::anytime::{self, RateProcess};
use crate::labels::LabelStats;
use crate::psi;
use crate::spec::{GateMethod, GatesSpec, NoDataPolicy};
use crate::stats::{self, Interval, LookSchedule};
use crate::window::{MergedHistogram as Histogram, VersionWindow};

/// Power the "needed" estimates aim for: the chance that the look they
/// point to decides, if the observed difference is the true one.
pub const POWER: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// Sequential method: the interval straddles the tolerance; more data
    /// will tell (the stage holds).
    Inconclusive,
    /// Not enough data to even compute (no sample, or below the first look).
    NoData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    ErrorRate,
    Latency,
    Prediction,
    Timeouts,
    /// The challenger's 4xx rate against the champion's (off by default).
    ClientErrors,
    Labels,
    /// Shadow stage: agreement of the shadow's predictions with the champion's.
    ShadowAgreement,
    /// Shadow stage: the shadow's 5xx and failures against the champion's 5xx.
    ShadowErrorRate,
    /// Shadow stage: the shadow's latency quantile against the champion's.
    ShadowLatency,
}

impl GateKind {
    /// The gate's stable id in logs, alerts and reports (never Rust's
    /// `Debug` form, so renaming a variant cannot change the log format).
    pub fn id(self) -> &'static str {
        match self {
            GateKind::ErrorRate => "error_rate",
            GateKind::Latency => "latency",
            GateKind::Prediction => "prediction",
            GateKind::Timeouts => "timeouts",
            GateKind::ClientErrors => "client_errors",
            GateKind::Labels => "labels",
            GateKind::ShadowAgreement => "shadow_agreement",
            GateKind::ShadowErrorRate => "shadow_error_rate",
            GateKind::ShadowLatency => "shadow_latency",
        }
    }
}

/// One gate's verdict and its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: GateKind,
    pub outcome: Outcome,
    /// Whether this outcome stops the stage from advancing (a pass never
    /// does; inconclusive always does; no data does unless the spec says to
    /// ignore it).
    pub blocks: bool,
    /// Sample sizes the values come from (responses, or labels).
    pub champion_n: u64,
    pub challenger_n: u64,
    pub champion: Option<f64>,
    pub challenger: Option<f64>,
    /// The limit the challenger's value is held to.
    pub threshold: Option<f64>,
    /// Room left before failing, in the value's units (negative: failing).
    pub margin: Option<f64>,
    /// The verdict in words.
    pub detail: String,
    /// Further numbers behind the verdict, by name (e.g. the PSI gate's
    /// unparsed shares and per-bin terms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, f64>,
    /// Sequential method: the champion's interval (latency quantile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_interval: Option<Interval>,
    /// Sequential method: the challenger's interval (latency quantile,
    /// shadow agreement, bias-corrected PSI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenger_interval: Option<Interval>,
    /// Challenger − champion (rates, label means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference: Option<f64>,
    /// Sequential method: the interval of the difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference_interval: Option<Interval>,
    /// Sequential method: the look the verdict was reached at (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub look: Option<u32>,
    /// Sequential method: two-sided confidence of the intervals at that look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Inconclusive: about how many more samples per version (of the
    /// smaller one) a verdict likely needs (80 % power, at the look that
    /// sample size reaches). `None` when it cannot be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needed: Option<u64>,
    /// The verdict of a look already spent earlier in the stage, carried
    /// until the sample reaches the next look (its numbers are that look's).
    #[serde(default, skip_serializing_if = "is_false")]
    pub carried: bool,
    /// Anytime method, rate-like gates: the challenger's e-process so far
    /// (carried from evaluation to evaluation within the stage's window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<RateProcess>,
    /// The segment this result judges alone (`None`: all traffic); see
    /// [`crate::segments`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl GateResult {
    fn base(gate: GateKind, outcome: Outcome, n: (u64, u64), detail: String) -> GateResult {
        GateResult {
            gate,
            outcome,
            blocks: outcome != Outcome::Pass,
            champion_n: n.0,
            challenger_n: n.1,
            champion: None,
            challenger: None,
            threshold: None,
            margin: None,
            detail,
            notes: BTreeMap::new(),
            champion_interval: None,
            challenger_interval: None,
            difference: None,
            difference_interval: None,
            look: None,
            confidence: None,
            needed: None,
            carried: false,
            process: None,
            segment: None,
        }
    }

    pub(crate) fn no_data(
        gate: GateKind,
        champion_n: u64,
        challenger_n: u64,
        policy: NoDataPolicy,
        detail: String,
    ) -> GateResult {
        GateResult {
            blocks: policy == NoDataPolicy::Hold,
            ..GateResult::base(gate, Outcome::NoData, (champion_n, challenger_n), detail)
        }
    }

    /// Threshold method, "lower is better": pass iff challenger ≤ threshold.
    fn at_most(gate: GateKind, n: (u64, u64), values: (f64, f64), threshold: f64, detail: String) -> GateResult {
        let margin = threshold - values.1;
        let outcome = if margin >= 0.0 { Outcome::Pass } else { Outcome::Fail };
        GateResult {
            champion: Some(values.0),
            challenger: Some(values.1),
            threshold: Some(threshold),
            margin: Some(margin),
            ..GateResult::base(gate, outcome, n, detail)
        }
    }

    /// Threshold method, "higher is better": pass iff value ≥ threshold.
    fn at_least(
        gate: GateKind,
        n: (u64, u64),
        values: (Option<f64>, f64),
        threshold: f64,
        detail: String,
    ) -> GateResult {
        let margin = values.1 - threshold;
        let outcome = if margin >= 0.0 { Outcome::Pass } else { Outcome::Fail };
        GateResult {
            champion: values.0,
            challenger: Some(values.1),
            threshold: Some(threshold),
            margin: Some(margin),
            ..GateResult::base(gate, outcome, n, detail)
        }
    }

    fn with_notes(mut self, notes: impl IntoIterator<Item = (String, f64)>) -> GateResult {
        self.notes.extend(notes);
        self
    }

    /// Whether this result spent a look (a sequential verdict reached now),
    /// or carries an anytime e-process the next evaluation continues.
    pub fn spends_look(&self) -> bool {
        (self.look.is_some() && !self.carried && self.outcome != Outcome::NoData) || self.process.is_some()
    }
}

/// The stage being judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageContext {
    /// Least samples per version for a gate to judge (the stage's
    /// `min_requests`, at least 1): latency samples, parsed predictions,
    /// shadow comparisons. With the sequential method, also the sample size
    /// of the first look.
    pub min_samples: u64,
    /// A shadow stage: the challenger serves no user, its shadow answers are judged.
    pub shadow: bool,
    /// The stage advances only on gates that passed (`proven`); otherwise
    /// (`no_harm`) an inconclusive gate does not hold it.
    pub proven: bool,
    /// A shadow stage: the copies' timeout in µs (failed copies count as
    /// at least this slow); 0 when unknown.
    pub shadow_timeout_us: u64,
    /// The stage's share of the rollout's harm budget
    /// ([`anytime::harm_share`]): a gate rolls back at level α × this share
    /// in this stage (the rate gates also keep the earlier stages' harm
    /// evidence), so false rollbacks stay ≤ α over all the stages.
    pub harm_share: f64,
}

impl StageContext {
    pub fn live(min_samples: u64) -> StageContext {
        StageContext { min_samples, shadow: false, proven: true, shadow_timeout_us: 0, harm_share: 1.0 }
    }

    pub fn shadow(min_samples: u64) -> StageContext {
        StageContext { min_samples, shadow: true, proven: true, shadow_timeout_us: 0, harm_share: 1.0 }
    }
}

/// Label outcomes of the stage, per version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelEvidence {
    pub champion: LabelStats,
    pub challenger: LabelStats,
}

fn pct(x: f64) -> String {
    format!("{:.3}%", x * 100.0)
}

/// An e-value as people read it: three decimals near the threshold, powers
/// of ten once the evidence is overwhelming (no-harm evidence grows
/// geometrically and reached 2e16 in a one-minute rollout).
fn evalue(x: f64) -> String {
    if x < 1e4 {
        format!("{x:.3}")
    } else {
        format!("{x:.1e}")
    }
}

/// Percentage points with a sign.
fn pp(x: f64) -> String {
    format!("{:+.3}", x * 100.0)
}

/// How a gate judges: the method, the look schedule, and the verdicts of
/// looks already spent in this stage.
#[derive(Clone, Copy)]
struct Judge<'a> {
    method: GateMethod,
    schedule: LookSchedule,
    spent: &'a [GateResult],
    /// The stage's share of the harm budget ([`StageContext::harm_share`]).
    harm_share: f64,
}

impl Judge<'_> {
    /// Intervals rather than point estimates (both the look-based and the
    /// anytime method; gates without an anytime form use looks).
    fn sequential(&self) -> bool {
        self.method != GateMethod::Threshold
    }

    fn anytime(&self) -> bool {
        self.method == GateMethod::Anytime
    }

    /// The e-process `gate` carried from the previous evaluation of the stage.
    fn process(&self, gate: GateKind) -> RateProcess {
        self.spent
            .iter()
            .rev()
            .find(|r| r.gate == gate)
            .and_then(|r| r.process.clone())
            .unwrap_or_else(|| RateProcess::for_stage(self.harm_share))
    }

    /// The spent verdict of `gate` at look `k` or later, if any: carried
    /// (a look's verdict is reached once, by the first evaluation at it).
    fn carried(&self, gate: GateKind, k: u32, now: (u64, u64), n0: u64) -> Option<GateResult> {
        let spent = self.spent.iter().rev().find(|r| r.gate == gate && r.look.is_some_and(|l| l >= k))?;
        let look = spent.look.unwrap_or(k);
        let mut r = spent.clone();
        r.carried = true;
        r.blocks = r.outcome != Outcome::Pass;
        r.detail = format!(
            "{} [verdict of look {look}, carried: the next look is at {} per version, now {} and {}]",
            spent.detail,
            self.schedule.look_at(look + 1, n0),
            now.0,
            now.1
        );
        Some(r)
    }
}

/// About how many more samples (of the smaller version) a verdict likely
/// needs: the first later look at which, if the sample grew to that look's
/// size with the shares, rates and spread seen now (`decides(t, level)`:
/// everything scaled by `t`), the interval at level `z_look + z_power`
/// would lie wholly on one side — the usual power calculation (`POWER`),
/// done with the gate's own interval so that small counts (0 errors) are
/// handled as the verdict handles them. `z_at(k)` is the normal quantile
/// the bound of look k uses.
fn needed(
    n_min: u64,
    n0: u64,
    k: u32,
    schedule: &LookSchedule,
    z_at: impl Fn(u32) -> f64,
    decides: impl Fn(f64, f64) -> bool,
) -> Option<u64> {
    if n_min == 0 {
        return None;
    }
    let zp = stats::z(POWER);
    (k + 1..k + 80).find_map(|look| {
        let at = schedule.look_at(look, n0);
        if at <= n_min {
            return None;
        }
        let level = 2.0 * stats::normal_cdf(z_at(look) + zp) - 1.0;
        decides(at as f64 / n_min as f64, level).then(|| at - n_min)
    })
}

/// `x · t`, rounded, as a count.
fn scaled(x: u64, t: f64) -> u64 {
    (x as f64 * t).round() as u64
}

/// The interval-vs-tolerance verdict: fail when wholly on the bad side,
/// pass when wholly on the good side (`bad_above`: higher is worse).
fn verdict(i: Interval, limit: f64, bad_above: bool) -> Outcome {
    let (fail, pass) = if bad_above { (i.low > limit, i.high <= limit) } else { (i.high < limit, i.low >= limit) };
    if fail {
        Outcome::Fail
    } else if pass {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    }
}

/// The words after a sequential verdict.
fn verdict_words(outcome: Outcome, needed: Option<u64>, what: &str) -> String {
    match outcome {
        Outcome::Fail => "worse than the tolerance allows".into(),
        Outcome::Pass => "within the tolerance".into(),
        _ => match needed {
            Some(n) => format!("inconclusive: needs ~{n} more {what} per version"),
            None => "inconclusive: more data needed".into(),
        },
    }
}

/// Evaluates every gate configured for the stage. `stage.min_samples` is
/// the least number of samples per version for a sampled gate to judge
/// (latency samples, parsed predictions, shadow comparisons; histograms
/// refresh at Envoy's stats flush, so they can lag the counters), and the
/// first look of the sequential method. `spent`: the sequential verdicts
/// already reached in this stage (see the module docs); empty for threshold.
pub fn evaluate(
    spec: &GatesSpec,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    labels: &LabelEvidence,
    stage: StageContext,
    spent: &[GateResult],
) -> Vec<GateResult> {
    let judge = Judge { method: spec.method, schedule: spec.schedule(), spent, harm_share: stage.harm_share };
    let min_samples = stage.min_samples.max(1);
    let mut out = vec![];
    if stage.shadow {
        if let Some(g) = &spec.prediction {
            // The challenger's predictions are compared, not binned, in a
            // shadow stage: without bins PSI waits for the first live stage.
            out.push(prediction_gate(g, champion, challenger, min_samples, NoDataPolicy::Ignore, judge));
        }
        if let Some(g) = &spec.shadow {
            out.extend(shadow_gates(g, champion, challenger, min_samples, stage.shadow_timeout_us, judge));
        }
        return out;
    }
    let n = (champion.answered(), challenger.answered());
    if let Some(g) = &spec.error_rate {
        out.push(rate_gate(
            GateKind::ErrorRate,
            "5xx rate",
            n,
            (champion.errors(), challenger.errors()),
            g.error_tolerance,
            min_samples,
            judge,
        ));
    }
    if let Some(g) = &spec.latency {
        out.push(latency_gate(
            GateKind::Latency,
            "challenger",
            (&champion.latency_us, &challenger.latency_us),
            g.quantile,
            g.latency_tolerance_multiplier,
            min_samples,
            judge,
        ));
    }
    if let Some(g) = &spec.prediction {
        out.push(prediction_gate(g, champion, challenger, min_samples, g.on_no_data, judge));
    }
    if let Some(g) = &spec.timeouts {
        out.push(rate_gate(
            GateKind::Timeouts,
            "timeout rate",
            n,
            (champion.timeouts, challenger.timeouts),
            g.timeout_tolerance,
            min_samples,
            judge,
        ));
    }
    if let Some(g) = &spec.client_errors {
        out.push(rate_gate(
            GateKind::ClientErrors,
            "4xx rate",
            n,
            (champion.client_errors(), challenger.client_errors()),
            g.client_error_tolerance,
            min_samples,
            judge,
        ));
    }
    if let Some(g) = &spec.labels {
        out.push(label_gate(g, labels, judge));
    }
    if !stage.proven {
        // no_harm: only a failure or missing data holds the stage.
        for r in out.iter_mut().filter(|r| r.outcome == Outcome::Inconclusive) {
            r.blocks = false;
        }
    }
    out
}

/// Challenger − champion rate ≤ `tolerance_pp` points. Threshold: the point
/// estimates, judged from one response each. Sequential: the Newcombe
/// interval of the difference at the look's confidence, from the first look
/// (`n0` responses each).
fn rate_gate(
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
fn rate_verdict(
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
const PROJECTIONS: [f64; 10] = [1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0];

/// Anytime method for a "higher is worse" rate (see [`crate::anytime`]):
/// the champion's `(events, trials)` and the challenger's, tolerance `tol`
/// as a rate. Fail when the harm e-value reaches 2/α, pass when the
/// no-harm one does, inconclusive otherwise, with the growth of the
/// challenger's sample at which, the rates staying as seen, one would.
fn anytime_rate(
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
            PROJECTIONS.iter().find_map(|&t| {
                let w = process.projected(t).verdict(alpha);
                (w.harm || w.fine).then(|| (n2 * (t - 1.0)).ceil() as u64)
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
    notes.insert("e_harm".to_string(), v.log_e_harm.exp());
    notes.insert("e_no_harm".to_string(), v.log_e_fine.exp());
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

/// Challenger quantile ≤ champion's × `multiplier`. Threshold: the point
/// quantiles. Sequential: a distribution-free order-statistic interval per
/// version, each at confidence `1 − alpha_k` (so each one-sided bound errs
/// with probability `alpha_k / 2`, and a verdict, which needs both bounds,
/// with at most `alpha_k`): fail when the challenger's low end is above the
/// champion's high end × multiplier, pass when its high end is at most the
/// champion's low end × multiplier.
fn latency_gate(
    kind: GateKind,
    who: &str,
    h: (&Histogram, &Histogram),
    q: f64,
    multiplier: f64,
    min_samples: u64,
    judge: Judge<'_>,
) -> GateResult {
    let hn = (h.0.count(), h.1.count());
    if judge.anytime() {
        return anytime_latency(kind, who, h, q, multiplier, judge);
    }
    let (a, b) = match (h.0.quantile(q), h.1.quantile(q)) {
        (Some(a), Some(b)) if hn.0 >= min_samples && hn.1 >= min_samples => (a, b),
        _ => {
            return GateResult::no_data(
                kind,
                hn.0,
                hn.1,
                NoDataPolicy::Hold,
                format!(
                    "{} champion and {} {who} latency samples of {min_samples} each (histograms refresh at Envoy's stats flush)",
                    hn.0, hn.1
                ),
            )
        }
    };
    let limit = a * multiplier;
    let head = format!(
        "p{}: {who} {:.1} ms vs champion {:.1} ms × {multiplier} = {:.1} ms",
        q * 100.0,
        b / 1000.0,
        a / 1000.0,
        limit / 1000.0
    );
    if !judge.sequential() {
        return GateResult::at_most(kind, hn, (a, b), limit, head);
    }
    let small = hn.0.min(hn.1);
    let k = judge.schedule.look(small, min_samples);
    if let Some(r) = judge.carried(kind, k, hn, min_samples) {
        return r;
    }
    let per_version = 1.0 - judge.schedule.alpha_at(k);
    let (Some(ia), Some(ib)) =
        (stats::quantile_interval(h.0, q, per_version), stats::quantile_interval(h.1, q, per_version))
    else {
        return GateResult::no_data(kind, hn.0, hn.1, NoDataPolicy::Hold, head);
    };
    let outcome = if ib.low > ia.high * multiplier {
        Outcome::Fail
    } else if ib.high <= ia.low * multiplier {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    };
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            let z_at = |l| stats::z_two_sided(1.0 - judge.schedule.alpha_at(l));
            needed(small, min_samples, k, &judge.schedule, z_at, |t, level| {
                let bounds = (
                    stats::quantile_interval_scaled(h.0, q, level, t),
                    stats::quantile_interval_scaled(h.1, q, level, t),
                );
                bounds
                    .0
                    .zip(bounds.1)
                    .is_some_and(|(ia, ib)| ib.low > ia.high * multiplier || ib.high <= ia.low * multiplier)
            })
        })
        .flatten();
    let ms = |x: f64| format!("{:.1}", x / 1000.0);
    let detail = format!(
        "{head}; {:.2}% intervals: {who} [{}, {}] ms, champion [{}, {}] ms, at look {k}: {}",
        per_version * 100.0,
        ms(ib.low),
        ms(ib.high),
        ms(ia.low),
        ms(ia.high),
        verdict_words(outcome, need, "latency samples")
    );
    GateResult {
        champion: Some(a),
        challenger: Some(b),
        threshold: Some(limit),
        margin: Some(limit - b),
        champion_interval: Some(ia),
        challenger_interval: Some(ib),
        look: Some(k),
        confidence: Some(per_version),
        needed: need,
        ..GateResult::base(kind, outcome, hn, detail)
    }
}

/// Anytime method for latency: per version, bounds of the quantile valid
/// at every sample size ([`anytime::quantile_bounds`], each version's
/// sequence at α/2, so each verdict errs with probability ≤ α), read at
/// the histogram's bucket edges (conservative). Fail when the challenger's
/// lower bound exceeds the champion's upper bound × multiplier; pass when
/// the challenger's upper bound is at most the champion's lower bound ×
/// multiplier. No upper bound (too few samples for this quantile, or the
/// rank lies beyond the last finite bucket) can never pass.
fn anytime_latency(
    kind: GateKind,
    who: &str,
    h: (&Histogram, &Histogram),
    q: f64,
    multiplier: f64,
    judge: Judge<'_>,
) -> GateResult {
    let hn = (h.0.count(), h.1.count());
    let alpha = judge.schedule.alpha / 2.0;
    // Rolling back spends the stage's share of α, passing the whole α (a
    // pass is final only in the promoting stage).
    let alpha_fail = alpha * anytime::clamp_share(judge.harm_share);
    if hn.0 == 0 || hn.1 == 0 {
        return GateResult::no_data(
            kind,
            hn.0,
            hn.1,
            NoDataPolicy::Hold,
            format!("{} champion and {} {who} latency samples (histograms refresh at Envoy's stats flush)", hn.0, hn.1),
        );
    }
    let decide = |t: f64| {
        let (a, b) = (anytime::quantile_bounds(h.0, q, alpha, t), anytime::quantile_bounds(h.1, q, alpha, t));
        let (af, bf) = if alpha_fail < alpha {
            (anytime::quantile_bounds(h.0, q, alpha_fail, t), anytime::quantile_bounds(h.1, q, alpha_fail, t))
        } else {
            (a, b)
        };
        let fail = af.1.is_some_and(|a_high| bf.0 > a_high * multiplier);
        let pass = b.1.is_some_and(|b_high| b_high <= a.0 * multiplier);
        (a, b, fail, pass)
    };
    let (ca, cb, fail, pass) = decide(1.0);
    let outcome = if fail {
        Outcome::Fail
    } else if pass {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    };
    let small = hn.0.min(hn.1);
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            PROJECTIONS.iter().find_map(|&t| {
                let (_, _, f, p) = decide(t);
                (f || p).then(|| (small as f64 * (t - 1.0)).ceil() as u64)
            })
        })
        .flatten();
    let ms = |x: Option<f64>| x.map_or("none yet".to_string(), |x| format!("{:.1} ms", x / 1000.0));
    let (a, b) = (h.0.quantile(q).unwrap_or(0.0), h.1.quantile(q).unwrap_or(0.0));
    let no_upper = if cb.1.is_none() {
        format!(
            "; no upper bound for the {who}'s p{} yet (needs ≥ {} samples and the rank below the last finite bucket)",
            q * 100.0,
            anytime::samples_for_upper_bound(q, alpha)
        )
    } else {
        String::new()
    };
    let detail = format!(
        "p{}: {who} {:.1} ms vs champion {:.1} ms × {multiplier}; {:.1}% sequences at bucket edges: {who} [{}, {}], champion [{}, {}]{no_upper}: {}",
        q * 100.0,
        b / 1000.0,
        a / 1000.0,
        (1.0 - alpha) * 100.0,
        ms(Some(cb.0)),
        ms(cb.1),
        ms(Some(ca.0)),
        ms(ca.1),
        verdict_words(outcome, need, "latency samples")
    );
    // No upper bound: no interval (JSON has no infinity); the detail says why.
    let interval = |x: (f64, Option<f64>)| x.1.map(|high| Interval { low: x.0, high });
    GateResult {
        champion: Some(a),
        challenger: Some(b),
        threshold: Some(a * multiplier),
        margin: Some(a * multiplier - b),
        champion_interval: interval(ca),
        challenger_interval: interval(cb),
        confidence: Some(1.0 - alpha),
        needed: need,
        ..GateResult::base(kind, outcome, hn, detail)
    }
}

/// Challenger mean ≥ champion's − `min_degradation_tolerance`, once both
/// have `min_labels`. Sequential: Welch's interval of the difference
/// (challenger − champion): fail when its high end is below −tolerance,
/// pass when its low end is at least −tolerance; looks from `min_labels`.
fn label_gate(g: &crate::spec::LabelGate, labels: &LabelEvidence, judge: Judge<'_>) -> GateResult {
    let (a, b) = (labels.champion, labels.challenger);
    let n = (a.n, b.n);
    let (ma, mb) = match (a.mean(), b.mean()) {
        (Some(ma), Some(mb)) if a.n >= g.min_labels && b.n >= g.min_labels => (ma, mb),
        _ => {
            return GateResult::no_data(
                GateKind::Labels,
                a.n,
                b.n,
                NoDataPolicy::Hold,
                format!("waiting for labels: {} champion, {} challenger of {} each", a.n, b.n, g.min_labels),
            )
        }
    };
    let tol = g.min_degradation_tolerance;
    // Higher is better: express as "challenger shortfall ≤ tolerance".
    let threshold = ma - tol;
    let head = format!("label metric: challenger {mb:.4} vs champion {ma:.4} − {tol} = {threshold:.4}");
    if judge.anytime() && a.within_unit() && b.within_unit() {
        // Outcomes in [0, 1] (0/1 labels above all): the shortfall 1 − x is
        // a "higher is worse" rate, judged like the error rate.
        let shortfall = |l: LabelStats| (l.n as f64 - l.sum, l.n as f64);
        let mut r = anytime_rate(GateKind::Labels, (shortfall(a), shortfall(b)), tol, &tol.to_string(), judge, head);
        r.champion = Some(ma);
        r.challenger = Some(mb);
        r.threshold = Some(threshold);
        r.margin = Some(mb - threshold);
        r.difference = Some(mb - ma);
        r.difference_interval = r.difference_interval.map(|i| Interval { low: -i.high, high: -i.low });
        return r;
    }
    if !judge.sequential() {
        let mut r = GateResult::at_least(GateKind::Labels, n, (Some(ma), mb), threshold, head);
        r.difference = Some(mb - ma);
        return r;
    }
    let n0 = g.min_labels.max(1);
    let small = a.n.min(b.n);
    let k = judge.schedule.look(small, n0);
    if let Some(r) = judge.carried(GateKind::Labels, k, n, n0) {
        return r;
    }
    let confidence = judge.schedule.confidence_at(k);
    let d = mb - ma;
    let Some(di) = stats::welch_diff(a.n, a.sum, a.sum_sq, b.n, b.sum, b.sum_sq, confidence) else {
        return GateResult::no_data(GateKind::Labels, a.n, b.n, NoDataPolicy::Hold, head);
    };
    let outcome = verdict(di, -tol, false);
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            let z_at = |l| stats::z_two_sided(judge.schedule.confidence_at(l));
            needed(small, n0, k, &judge.schedule, z_at, |t, level| {
                let (n1, n2) = (scaled(a.n, t), scaled(b.n, t));
                let (f1, f2) = (n1 as f64 / a.n as f64, n2 as f64 / b.n as f64);
                stats::welch_diff(n1, a.sum * f1, a.sum_sq * f1, n2, b.sum * f2, b.sum_sq * f2, level)
                    .is_some_and(|i| verdict(i, -tol, false) != Outcome::Inconclusive)
            })
        })
        .flatten();
    let detail = format!(
        "{head}: difference {d:+.4}, {:.2}% interval [{:+.4}, {:+.4}] vs −{tol} at look {k}: {}",
        confidence * 100.0,
        di.low,
        di.high,
        verdict_words(outcome, need, "labels")
    );
    GateResult {
        champion: Some(ma),
        challenger: Some(mb),
        threshold: Some(threshold),
        margin: Some(mb - threshold),
        difference: Some(d),
        difference_interval: Some(di),
        look: Some(k),
        confidence: Some(confidence),
        needed: need,
        ..GateResult::base(GateKind::Labels, outcome, n, detail)
    }
}

/// PSI(challenger ‖ champion) < `max_psi`, once both versions have `min`
/// parsed predictions (and the gate's own `min_predictions`). The value is
/// reported as the challenger's, the champion's being 0 by definition; the
/// unparsed shares and per-bin terms go to `notes`.
///
/// Sequential: with `c = 1/N + 1/M` and `ν = bins − 1`, the PSI of two
/// samples is approximately `c` times a non-central χ²(ν, λ = PSI/c): its
/// mean is the true PSI plus the **noise floor** `ν·c` (what two samples of
/// one distribution give), its variance `2ν·c² + 4·PSI·c`. The gate
/// inverts that distribution's tails ([`psi::psi_bounds`]; a normal band
/// undercovered in the skewed small-sample tail): fail when the low end is
/// above `max_psi` (spending the stage's share of `alpha_k`), pass when the
/// high end, from the unsmoothed PSI, is below; inconclusive otherwise. The
/// error rates are measured in [`crate::psi_calibration`].
fn prediction_gate(
    g: &crate::spec::PredictionGate,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    min: u64,
    on_no_data: NoDataPolicy,
    judge: Judge<'_>,
) -> GateResult {
    let need = min.max(g.min_predictions);
    let n = (champion.parsed_predictions(), challenger.parsed_predictions());
    let unparsed = (champion.unparsed_predictions(), challenger.unparsed_predictions());
    let p = match psi::psi(&champion.predictions, &challenger.predictions) {
        Some(p) if n.0 >= need && n.1 >= need => p,
        _ => {
            return GateResult::no_data(
                GateKind::Prediction,
                n.0,
                n.1,
                on_no_data,
                format!(
                    "{} champion and {} challenger parsed predictions of {need} each ({} and {} unparsed)",
                    n.0, n.1, unparsed.0, unparsed.1
                ),
            )
        }
    };
    let share = |x: Option<f64>| x.map_or("-".to_string(), pct);
    let head = format!(
        "PSI {:.4} over {} bins vs max {} (must stay below); unparsed: champion {}, challenger {}",
        p.value,
        p.bins.len(),
        g.max_psi,
        share(p.champion_unparsed_share()),
        share(p.challenger_unparsed_share())
    );
    let mut notes: BTreeMap<String, f64> = BTreeMap::new();
    if let Some(x) = p.champion_unparsed_share() {
        notes.insert("champion_unparsed_share".into(), x);
    }
    if let Some(x) = p.challenger_unparsed_share() {
        notes.insert("challenger_unparsed_share".into(), x);
    }
    for t in &p.bins {
        notes.insert(format!("term.{}", t.bin), t.term);
    }
    let values = GateResult {
        champion: Some(0.0),
        challenger: Some(p.value),
        threshold: Some(g.max_psi),
        margin: Some(g.max_psi - p.value),
        notes,
        ..GateResult::base(GateKind::Prediction, Outcome::Pass, n, String::new())
    };
    if !judge.sequential() {
        // PSI at the limit fails: the limit is the first value that is too much.
        let outcome = if p.value < g.max_psi { Outcome::Pass } else { Outcome::Fail };
        return GateResult { outcome, blocks: outcome != Outcome::Pass, detail: head, ..values };
    }
    let small = n.0.min(n.1);
    let k = judge.schedule.look(small, need.max(1));
    if let Some(r) = judge.carried(GateKind::Prediction, k, n, need.max(1)) {
        return r;
    }
    let confidence = judge.schedule.confidence_at(k);
    let nu = (p.bins.len().max(2) - 1) as f64;
    let c = 1.0 / n.0 as f64 + 1.0 / n.1 as f64;
    let noise = nu * c;
    let centre = p.value - noise;
    // The fail side spends the stage's share of the harm budget.
    let spend = judge.schedule.alpha_at(k);
    let interval = psi::psi_bounds(
        (p.value, p.raw()),
        p.bins.len(),
        n.0,
        n.1,
        spend * anytime::clamp_share(judge.harm_share),
        spend,
    );
    let outcome = if interval.low > g.max_psi {
        Outcome::Fail
    } else if interval.high < g.max_psi {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    };
    let need_more = (outcome == Outcome::Inconclusive)
        .then(|| {
            let z_at = |l| stats::z_two_sided(judge.schedule.confidence_at(l));
            // The noise floor shrinks with the samples; the shift measured above it stays.
            let shift = centre.max(0.0);
            needed(small, need.max(1), k, &judge.schedule, z_at, |t, level| {
                let c = c / t;
                let band = stats::z_two_sided(level) * (2.0 * nu * c * c + 4.0 * g.max_psi * c).sqrt();
                shift - band > g.max_psi || shift + band < g.max_psi
            })
        })
        .flatten();
    let detail = format!(
        "{head}; noise floor {noise:.4}, {:.2}% interval [{:.4}, {:.4}] at look {k}: {}",
        confidence * 100.0,
        interval.low,
        interval.high,
        verdict_words(outcome, need_more, "predictions")
    );
    let mut r = GateResult {
        outcome,
        blocks: outcome != Outcome::Pass,
        detail,
        challenger_interval: Some(interval),
        look: Some(k),
        confidence: Some(confidence),
        needed: need_more,
        ..values
    };
    r.notes.insert("noise_floor".into(), noise);
    r
}

/// The shadow stage's three checks, each its own result so every one keeps
/// its evidence: agreement, error rate, latency.
fn shadow_gates(
    g: &crate::spec::ShadowGate,
    champion: &VersionWindow,
    challenger: &VersionWindow,
    min: u64,
    shadow_timeout_us: u64,
    judge: Judge<'_>,
) -> Vec<GateResult> {
    let s = &challenger.shadow;
    let counts = [
        ("sent", s.requests),
        ("failed", s.failed),
        ("rq_5xx", s.rq_5xx),
        ("agree", s.agree),
        ("disagree", s.disagree),
        ("incomplete", s.incomplete),
        ("skipped", s.skipped),
    ]
    .map(|(k, v)| (k.to_string(), v as f64));
    let mut out = vec![];

    let compared = s.compared();
    out.push(
        match s.agreement() {
            Some(a) if compared >= min => agreement_gate(g, s.agree, compared, a, min, judge),
            _ => GateResult::no_data(
                GateKind::ShadowAgreement,
                0,
                compared,
                NoDataPolicy::Hold,
                format!(
                    "{compared} shadow predictions compared of {min} ({} incomplete, {} failed, {} skipped)",
                    s.incomplete, s.failed, s.skipped
                ),
            ),
        }
        .with_notes(counts.clone()),
    );

    let n = (champion.answered(), s.requests.max(s.errors()));
    let head = |a: f64, b: f64| {
        format!(
            "shadow errors {} ({} 5xx + {} failed of {} sent) vs champion 5xx {} ({}/{})",
            pct(b),
            s.rq_5xx,
            s.failed,
            n.1,
            pct(a),
            champion.errors(),
            n.0
        )
    };
    let events = (champion.errors(), s.errors().min(n.1));
    out.push(rate_verdict(GateKind::ShadowErrorRate, n, events, g.error_tolerance, min, judge, head));

    // Copies that got no answer (timed out, refused, reset) took at least
    // the timeout: they enter the latency evidence censored there, in an
    // open bucket, so they can fail the gate and never help it pass.
    let mut shadow_latency = s.latency_us.clone();
    if s.failed > 0 && shadow_timeout_us > 0 {
        shadow_latency.add(shadow_timeout_us as f64, crate::window::OPEN_WIDTH, s.failed);
    }
    out.push(latency_gate(
        GateKind::ShadowLatency,
        "shadow",
        (&champion.latency_us, &shadow_latency),
        g.quantile,
        g.latency_tolerance_multiplier,
        min,
        judge,
    ));
    out
}

/// agreement ≥ `min_agreement`. Sequential: the Wilson interval of the
/// agreement at the look's confidence; fail when its high end is below the
/// minimum, pass when its low end is at least the minimum.
fn agreement_gate(
    g: &crate::spec::ShadowGate,
    agree: u64,
    compared: u64,
    a: f64,
    min: u64,
    judge: Judge<'_>,
) -> GateResult {
    let head =
        format!("shadow agreement {} ({agree} of {compared} compared) vs minimum {}", pct(a), pct(g.min_agreement));
    if !judge.sequential() {
        return GateResult::at_least(GateKind::ShadowAgreement, (0, compared), (None, a), g.min_agreement, head);
    }
    if judge.anytime() {
        let alpha = judge.schedule.alpha;
        let i = anytime::mean_cs(agree as f64, compared as f64, alpha);
        let outcome = verdict(i, g.min_agreement, false);
        let detail = format!(
            "{head}; {:.0}% confidence sequence [{}, {}]: {}",
            (1.0 - alpha) * 100.0,
            pct(i.low),
            pct(i.high),
            verdict_words(outcome, None, "comparisons")
        );
        return GateResult {
            challenger: Some(a),
            threshold: Some(g.min_agreement),
            margin: Some(a - g.min_agreement),
            challenger_interval: Some(i),
            confidence: Some(1.0 - alpha),
            ..GateResult::base(GateKind::ShadowAgreement, outcome, (0, compared), detail)
        };
    }
    let k = judge.schedule.look(compared, min);
    if let Some(r) = judge.carried(GateKind::ShadowAgreement, k, (0, compared), min) {
        return r;
    }
    let confidence = judge.schedule.confidence_at(k);
    let Some(i) = stats::wilson(agree, compared, confidence) else {
        return GateResult::no_data(GateKind::ShadowAgreement, 0, compared, NoDataPolicy::Hold, head);
    };
    let outcome = verdict(i, g.min_agreement, false);
    let need = (outcome == Outcome::Inconclusive)
        .then(|| {
            let z_at = |l| stats::z_two_sided(judge.schedule.confidence_at(l));
            needed(compared, min, k, &judge.schedule, z_at, |t, level| {
                stats::wilson(scaled(agree, t), scaled(compared, t), level)
                    .is_some_and(|i| verdict(i, g.min_agreement, false) != Outcome::Inconclusive)
            })
        })
        .flatten();
    let detail = format!(
        "{head}; {:.2}% interval [{}, {}] at look {k}: {}",
        confidence * 100.0,
        pct(i.low),
        pct(i.high),
        verdict_words(outcome, need, "comparisons")
    );
    GateResult {
        challenger: Some(a),
        threshold: Some(g.min_agreement),
        margin: Some(a - g.min_agreement),
        challenger_interval: Some(i),
        look: Some(k),
        confidence: Some(confidence),
        needed: need,
        ..GateResult::base(GateKind::ShadowAgreement, outcome, (0, compared), detail)
    }
}

#[cfg(test)]
mod tests {
    use canary_core::metrics::Counter;

    use canary_core::metrics::ShadowStat;

    use super::*;
    use crate::spec::{ErrorRateGate, GateMethod, LabelGate, LatencyGate, PredictionGate, ShadowGate, TimeoutGate};

    #[test]
    fn e_values_read_as_decimals_near_the_threshold_and_powers_of_ten_beyond() {
        assert_eq!(evalue(0.5), "0.500");
        assert_eq!(evalue(62.5), "62.500");
        assert_eq!(evalue(21_403_307_422_086_432.0), "2.1e16");
        assert_eq!(crate::report::unreadable_numbers(&evalue(5.7e15)), Vec::<String>::new());
    }

    fn window(ok: u64, errors: u64, timeouts: u64, latency_ms: f64) -> VersionWindow {
        let mut w = VersionWindow::default();
        w.add_responses(ok + errors, errors);
        w.add_counter(Counter::RqTimeout, timeouts);
        w.latency_us.add(latency_ms * 1000.0, latency_ms * 10.0, ok + errors);
        w
    }

    /// Every gate, judged by the threshold rule (point estimates).
    fn all_gates() -> GatesSpec {
        GatesSpec {
            method: GateMethod::Threshold,
            error_rate: Some(ErrorRateGate { error_tolerance: 1.0, segments: Default::default() }),
            latency: Some(LatencyGate {
                latency_tolerance_multiplier: 1.5,
                quantile: 0.99,
                segments: Default::default(),
            }),
            prediction: Some(PredictionGate { max_psi: 0.2, on_no_data: NoDataPolicy::Ignore, min_predictions: 0 }),
            timeouts: Some(TimeoutGate { timeout_tolerance: 0.5, segments: Default::default() }),
            labels: Some(LabelGate { min_degradation_tolerance: 0.02, min_labels: 10, segments: Default::default() }),
            ..GatesSpec::default()
        }
    }

    fn outcome(results: &[GateResult], gate: GateKind) -> (Outcome, bool) {
        let r = results.iter().find(|r| r.gate == gate).unwrap();
        (r.outcome, r.blocks)
    }

    fn labels(a: (u64, f64), b: (u64, f64)) -> LabelEvidence {
        let stats = |(n, mean): (u64, f64)| LabelStats { n, sum: mean * n as f64, sum_sq: 0.0, ..Default::default() };
        LabelEvidence { champion: stats(a), challenger: stats(b) }
    }

    /// The 4xx gate (issue 14's "add a gate" exercise): off unless the spec
    /// names it; then judged like the 5xx gate, on the 4xx class, by every
    /// method.
    #[test]
    fn the_client_error_gate_is_off_by_default_and_judges_the_4xx_rate() {
        let with_4xx = |ok: u64, client: u64| {
            let mut w = window(ok, 0, 0, 10.0);
            w.add_counter(Counter::Rq4xx, client);
            w
        };
        let (a, b) = (with_4xx(9_900, 100), with_4xx(9_600, 400));
        let plain = evaluate(&all_gates(), &a, &b, &LabelEvidence::default(), StageContext::live(1), &[]);
        assert!(plain.iter().all(|r| r.gate != GateKind::ClientErrors), "off by default");
        let spec = GatesSpec {
            client_errors: Some(crate::spec::ClientErrorGate { client_error_tolerance: 1.0 }),
            ..all_gates()
        };
        let r = evaluate(&spec, &a, &b, &LabelEvidence::default(), StageContext::live(1), &[]);
        let g = r.iter().find(|r| r.gate == GateKind::ClientErrors).unwrap();
        assert_eq!(g.outcome, Outcome::Fail, "4 % vs 1 % + 1 point: {}", g.detail);
        assert!(
            g.detail.starts_with("4xx rate: challenger 4.000% (400/10000) vs champion 1.000% (100/10000)"),
            "{}",
            g.detail
        );
        let r = evaluate(&spec, &a, &with_4xx(9_850, 150), &LabelEvidence::default(), StageContext::live(1), &[]);
        assert_eq!(outcome(&r, GateKind::ClientErrors).0, Outcome::Pass);
        // The anytime engine, two looks: rolled back on the 4xx rate alone.
        let anytime = GatesSpec { method: GateMethod::Anytime, ..spec.clone() };
        let first = evaluate(
            &anytime,
            &with_4xx(4_950, 50),
            &with_4xx(4_800, 200),
            &LabelEvidence::default(),
            StageContext::live(1),
            &[],
        );
        let spent: Vec<GateResult> = first.into_iter().filter(|r| r.spends_look()).collect();
        let r = evaluate(&anytime, &a, &b, &LabelEvidence::default(), StageContext::live(1), &spent);
        assert_eq!(outcome(&r, GateKind::ClientErrors).0, Outcome::Fail);
        let refused = crate::spec::RolloutSpec::from_yaml(
            "rollout: r\nchampion: v1\nchallenger: v2\nstages: [{ weight_percent: 10 }, { weight_percent: 100 }]\n\
             gates: { client_errors: { client_error_tolerance: -1 } }\nenvoy: { admin: [\"http://a\"], ecds_dir: /x, wasm: /y }\n",
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(refused.contains("gates.client_errors.client_error_tolerance"), "{refused}");
    }

    #[test]
    fn a_healthy_challenger_passes_every_gate_with_data() {
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 1, 100.0),
            &window(995, 5, 0, 110.0),
            &labels((50, 0.9), (50, 0.89)),
            StageContext::live(1),
            &[],
        );
        assert_eq!(outcome(&r, GateKind::ErrorRate), (Outcome::Pass, false));
        assert_eq!(outcome(&r, GateKind::Latency), (Outcome::Pass, false));
        assert_eq!(outcome(&r, GateKind::Timeouts), (Outcome::Pass, false));
        assert_eq!(outcome(&r, GateKind::Labels), (Outcome::Pass, false));
        // No prediction counters yet, and this spec says not to block on that.
        assert_eq!(outcome(&r, GateKind::Prediction), (Outcome::NoData, false));
    }

    #[test]
    fn each_gate_fails_on_its_own_fault() {
        let g = all_gates();
        let base = window(990, 10, 0, 100.0);
        let ok_labels = labels((50, 0.9), (50, 0.9));
        let r = evaluate(&g, &base, &window(970, 30, 0, 100.0), &ok_labels, StageContext::live(1), &[]);
        assert_eq!(outcome(&r, GateKind::ErrorRate).0, Outcome::Fail, "3% vs 1% + 1pp");
        let r = evaluate(&g, &base, &window(990, 10, 0, 300.0), &ok_labels, StageContext::live(1), &[]);
        assert_eq!(outcome(&r, GateKind::Latency).0, Outcome::Fail, "3x p99");
        let r = evaluate(&g, &base, &window(990, 10, 10, 100.0), &ok_labels, StageContext::live(1), &[]);
        assert_eq!(outcome(&r, GateKind::Timeouts).0, Outcome::Fail, "1% timeouts vs 0 + 0.5pp");
        let r = evaluate(&g, &base, &base, &labels((50, 0.9), (50, 0.85)), StageContext::live(1), &[]);
        assert_eq!(outcome(&r, GateKind::Labels).0, Outcome::Fail, "0.85 < 0.9 - 0.02");
    }

    #[test]
    fn margins_and_thresholds_are_reported() {
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 0, 100.0),
            &window(980, 20, 0, 100.0),
            &LabelEvidence::default(),
            StageContext::live(1),
            &[],
        );
        let e = r.iter().find(|r| r.gate == GateKind::ErrorRate).unwrap();
        assert_eq!((e.champion_n, e.challenger_n), (1000, 1000));
        assert!((e.threshold.unwrap() - 0.02).abs() < 1e-12);
        assert!(e.margin.unwrap().abs() < 1e-12, "exactly at the limit passes: {e:?}");
        assert_eq!(e.outcome, Outcome::Pass);
        assert!(e.detail.contains("20/1000"), "{}", e.detail);
    }

    #[test]
    fn missing_data_never_passes() {
        let g = all_gates();
        let empty = VersionWindow::default();
        let r =
            evaluate(&g, &window(100, 0, 0, 10.0), &empty, &labels((50, 0.9), (3, 1.0)), StageContext::live(1), &[]);
        for gate in [GateKind::ErrorRate, GateKind::Latency, GateKind::Timeouts, GateKind::Labels] {
            assert_eq!(outcome(&r, gate), (Outcome::NoData, true), "{gate:?}");
        }
    }

    #[test]
    fn latency_waits_for_enough_samples() {
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 0, 100.0),
            &window(99, 1, 0, 300.0),
            &LabelEvidence::default(),
            StageContext::live(200),
            &[],
        );
        assert_eq!(outcome(&r, GateKind::Latency), (Outcome::NoData, true));
        let r = evaluate(
            &all_gates(),
            &window(990, 10, 0, 100.0),
            &window(199, 1, 0, 300.0),
            &LabelEvidence::default(),
            StageContext::live(200),
            &[],
        );
        assert_eq!(outcome(&r, GateKind::Latency).0, Outcome::Fail);
    }

    fn with_predictions(mut w: VersionWindow, bins: &[(&str, u64)]) -> VersionWindow {
        for (bin, n) in bins {
            w.add_prediction(bin, *n);
        }
        w
    }

    fn psi_gate(max_psi: f64, on_no_data: NoDataPolicy, min_predictions: u64) -> GatesSpec {
        GatesSpec {
            method: GateMethod::Threshold,
            prediction: Some(PredictionGate { max_psi, on_no_data, min_predictions }),
            ..GatesSpec::default()
        }
    }

    fn only(results: &[GateResult], gate: GateKind) -> GateResult {
        results.iter().find(|r| r.gate == gate).cloned().unwrap()
    }

    const QUARTERS: [(&str, u64); 4] = [("b0", 24), ("b1", 24), ("b2", 24), ("b3", 24)];
    /// PSI against QUARTERS = 0.233803 (see psi::tests for the arithmetic).
    const SHIFTED: [(&str, u64); 4] = [("b0", 9), ("b1", 24), ("b2", 24), ("b3", 41)];

    #[test]
    fn the_psi_gate_fails_at_or_above_max_psi_and_passes_below() {
        let base = window(100, 0, 0, 10.0);
        let a = with_predictions(base.clone(), &QUARTERS);
        let b = with_predictions(base.clone(), &SHIFTED);
        let r = only(
            &evaluate(
                &psi_gate(0.2, NoDataPolicy::Hold, 0),
                &a,
                &b,
                &LabelEvidence::default(),
                StageContext::live(50),
                &[],
            ),
            GateKind::Prediction,
        );
        assert_eq!((r.outcome, r.blocks), (Outcome::Fail, true));
        assert!((r.challenger.unwrap() - 0.233803).abs() < 1e-6, "{r:?}");
        assert_eq!((r.champion, r.threshold, r.champion_n, r.challenger_n), (Some(0.0), Some(0.2), 96, 98));
        assert!((r.margin.unwrap() + 0.033803).abs() < 1e-6);
        assert!(r.detail.starts_with("PSI 0.2338 over 4 bins vs max 0.2"), "{}", r.detail);
        assert!((r.notes["term.b0"] - 0.149976).abs() < 1e-6, "{:?}", r.notes);

        let r = only(
            &evaluate(
                &psi_gate(0.25, NoDataPolicy::Hold, 0),
                &a,
                &b,
                &LabelEvidence::default(),
                StageContext::live(50),
                &[],
            ),
            GateKind::Prediction,
        );
        assert_eq!((r.outcome, r.blocks), (Outcome::Pass, false));
        // Exactly at the limit fails: PSI must stay below max_psi.
        let exact = psi::psi(&a.predictions, &b.predictions).unwrap().value;
        let r = only(
            &evaluate(
                &psi_gate(exact, NoDataPolicy::Hold, 0),
                &a,
                &b,
                &LabelEvidence::default(),
                StageContext::live(1),
                &[],
            ),
            GateKind::Prediction,
        );
        assert_eq!(r.outcome, Outcome::Fail);
    }

    #[test]
    fn the_psi_gate_needs_enough_parsed_predictions_on_both_sides() {
        let base = window(100, 0, 0, 10.0);
        let a = with_predictions(base.clone(), &QUARTERS);
        // 98 parsed + 500 unparsed: only parsed ones count towards the minimum.
        let b = with_predictions(base.clone(), &[("b0", 9), ("b1", 24), ("b2", 24), ("b3", 41), ("unparsed", 500)]);
        for (min_samples, min_predictions, judged) in [(96, 0, true), (97, 0, false), (10, 97, false), (10, 96, true)] {
            for policy in [NoDataPolicy::Hold, NoDataPolicy::Ignore] {
                let r = only(
                    &evaluate(
                        &psi_gate(0.2, policy, min_predictions),
                        &a,
                        &b,
                        &LabelEvidence::default(),
                        StageContext::live(min_samples),
                        &[],
                    ),
                    GateKind::Prediction,
                );
                if judged {
                    assert_eq!(r.outcome, Outcome::Fail, "{min_samples}/{min_predictions}");
                    assert!((r.notes["challenger_unparsed_share"] - 500.0 / 598.0).abs() < 1e-12, "{:?}", r.notes);
                    assert!(r.detail.contains("challenger 83.612%"), "{}", r.detail);
                } else {
                    assert_eq!((r.outcome, r.blocks), (Outcome::NoData, policy == NoDataPolicy::Hold));
                    assert!(r.detail.contains("96 champion and 98 challenger parsed predictions"), "{}", r.detail);
                    assert!(r.detail.contains("(0 and 500 unparsed)"), "{}", r.detail);
                }
            }
        }
        // Only unparsed predictions: no distribution at all.
        let c = with_predictions(base, &[("unparsed", 500)]);
        let r = only(
            &evaluate(
                &psi_gate(0.2, NoDataPolicy::Hold, 0),
                &a,
                &c,
                &LabelEvidence::default(),
                StageContext::live(1),
                &[],
            ),
            GateKind::Prediction,
        );
        assert_eq!((r.outcome, r.blocks), (Outcome::NoData, true));
    }

    fn shadow_spec() -> GatesSpec {
        GatesSpec {
            shadow: Some(ShadowGate {
                min_agreement: 0.9,
                error_tolerance: 1.0,
                latency_tolerance_multiplier: 1.5,
                quantile: 0.99,
            }),
            ..all_gates()
        }
    }

    /// A challenger that served nobody, with shadow outcomes.
    fn shadow_window(sent: u64, agree: u64, disagree: u64, rq_5xx: u64, failed: u64, latency_ms: f64) -> VersionWindow {
        let mut w = VersionWindow::default();
        for (stat, n) in [
            (ShadowStat::RqTotal, sent),
            (ShadowStat::Agree, agree),
            (ShadowStat::Disagree, disagree),
            (ShadowStat::Rq5xx, rq_5xx),
            (ShadowStat::Failed, failed),
        ] {
            w.shadow.add_counter(stat, n);
        }
        w.shadow.latency_us.add(latency_ms * 1000.0, latency_ms * 10.0, sent.saturating_sub(failed));
        w
    }

    #[test]
    fn a_shadow_stage_is_judged_on_shadow_answers_only() {
        let champion = with_predictions(window(1000, 10, 0, 100.0), &QUARTERS);
        let challenger = shadow_window(1000, 950, 50, 5, 0, 120.0);
        let r =
            evaluate(&shadow_spec(), &champion, &challenger, &LabelEvidence::default(), StageContext::shadow(100), &[]);
        let gates: Vec<GateKind> = r.iter().map(|g| g.gate).collect();
        assert_eq!(
            gates,
            [GateKind::Prediction, GateKind::ShadowAgreement, GateKind::ShadowErrorRate, GateKind::ShadowLatency],
            "live-traffic gates are not judged: the challenger served nobody"
        );
        assert_eq!(outcome(&r, GateKind::Prediction), (Outcome::NoData, false), "never blocks a shadow stage");
        let a = only(&r, GateKind::ShadowAgreement);
        assert_eq!(
            (a.outcome, a.challenger, a.threshold, a.challenger_n),
            (Outcome::Pass, Some(0.95), Some(0.9), 1000)
        );
        assert!((a.margin.unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(a.notes["disagree"], 50.0);
        let e = only(&r, GateKind::ShadowErrorRate);
        // 5 / 1000 = 0.5 % vs 10 / 1010 = 0.99 % + 1 pp.
        assert_eq!((e.outcome, e.challenger), (Outcome::Pass, Some(0.005)));
        assert!((e.threshold.unwrap() - (10.0 / 1010.0 + 0.01)).abs() < 1e-12);
        let l = only(&r, GateKind::ShadowLatency);
        assert_eq!(l.outcome, Outcome::Pass, "{}", l.detail);
        // Same gates in a live stage: the shadow gate is not judged there.
        let live =
            evaluate(&shadow_spec(), &champion, &champion, &LabelEvidence::default(), StageContext::live(1), &[]);
        assert!(live.iter().all(|g| !matches!(
            g.gate,
            GateKind::ShadowAgreement | GateKind::ShadowErrorRate | GateKind::ShadowLatency
        )));
    }

    #[test]
    fn each_shadow_check_fails_on_its_own_fault() {
        let champion = window(1000, 10, 0, 100.0);
        let judge = |w: &VersionWindow| {
            evaluate(&shadow_spec(), &champion, w, &LabelEvidence::default(), StageContext::shadow(100), &[])
        };
        // 70 % agreement.
        let r = judge(&shadow_window(1000, 700, 300, 0, 0, 100.0));
        assert_eq!(outcome(&r, GateKind::ShadowAgreement), (Outcome::Fail, true));
        assert_eq!(outcome(&r, GateKind::ShadowErrorRate).0, Outcome::Pass);
        // 3 % 5xx + failures (10 + 20 of 1000) vs 0.99 % + 1 pp.
        let r = judge(&shadow_window(1000, 970, 0, 10, 20, 100.0));
        assert_eq!(outcome(&r, GateKind::ShadowErrorRate), (Outcome::Fail, true));
        assert_eq!(outcome(&r, GateKind::ShadowAgreement).0, Outcome::Pass);
        // Every copy timed out: 100 % errors, nothing to compare.
        let r = judge(&shadow_window(1000, 0, 0, 0, 1000, 100.0));
        assert_eq!(outcome(&r, GateKind::ShadowErrorRate).0, Outcome::Fail);
        assert_eq!(outcome(&r, GateKind::ShadowAgreement), (Outcome::NoData, true));
        // Three times slower.
        let r = judge(&shadow_window(1000, 1000, 0, 0, 0, 300.0));
        assert_eq!(outcome(&r, GateKind::ShadowLatency), (Outcome::Fail, true));
    }

    #[test]
    fn shadow_checks_wait_for_enough_comparisons_and_samples() {
        let champion = window(1000, 0, 0, 100.0);
        let r = evaluate(
            &shadow_spec(),
            &champion,
            &shadow_window(50, 30, 20, 0, 0, 100.0),
            &LabelEvidence::default(),
            StageContext::shadow(100),
            &[],
        );
        assert_eq!(outcome(&r, GateKind::ShadowAgreement), (Outcome::NoData, true), "60 % of 50 is not judged yet");
        assert_eq!(outcome(&r, GateKind::ShadowLatency), (Outcome::NoData, true));
        assert_eq!(
            outcome(&r, GateKind::ShadowErrorRate).0,
            Outcome::Pass,
            "rates need one call, like the live rate gates"
        );
        let r = evaluate(
            &shadow_spec(),
            &champion,
            &VersionWindow::default(),
            &LabelEvidence::default(),
            StageContext::shadow(100),
            &[],
        );
        assert!(
            r.iter()
                .filter(|g| g.gate != GateKind::Prediction)
                .all(|g| (g.outcome, g.blocks) == (Outcome::NoData, true)),
            "{r:?}"
        );
    }

    /// The same gates, judged sequentially (the default method).
    fn sequential() -> GatesSpec {
        GatesSpec {
            method: GateMethod::Sequential,
            labels: Some(LabelGate { min_degradation_tolerance: 0.02, min_labels: 1000, segments: Default::default() }),
            ..all_gates()
        }
    }

    /// `n` responses with `errors` 5xx and log-normal-ish latency around
    /// `latency_ms` (spread over ten buckets, 10 % apart).
    fn spread(n: u64, errors: u64, latency_ms: f64) -> VersionWindow {
        let mut w = window(n - errors, errors, 0, latency_ms);
        w.latency_us = Histogram::default();
        let weights = [1u64, 3, 8, 15, 23, 23, 15, 8, 3, 1];
        let total: u64 = weights.iter().sum();
        let mut left = n;
        for (i, wt) in weights.iter().enumerate() {
            let c = if i == weights.len() - 1 { left } else { n * wt / total };
            left -= c;
            let lower = latency_ms * 1000.0 * 1.1f64.powi(i as i32 - 5);
            w.latency_us.add(lower, lower * 0.1, c);
        }
        w
    }

    #[test]
    fn sequential_rates_fail_pass_or_say_how_many_more_they_need() {
        let g = sequential();
        let champion = spread(100_000, 1000, 10.0);
        let judge = |challenger: &VersionWindow| {
            only(
                &evaluate(&g, &champion, challenger, &LabelEvidence::default(), StageContext::live(1000), &[]),
                GateKind::ErrorRate,
            )
        };
        // Look 1 at 1000 responses: 93.9 % intervals (alpha_1 = 0.05 · 6 / π² per side).
        let bad = judge(&spread(1000, 50, 10.0));
        assert_eq!((bad.outcome, bad.look), (Outcome::Fail, Some(1)), "{}", bad.detail);
        assert!((bad.confidence.unwrap() - (1.0 - 2.0 * 0.05 * 6.0 / std::f64::consts::PI.powi(2))).abs() < 1e-12);
        let i = bad.difference_interval.unwrap();
        assert!(i.low > 0.01 && i.contains(0.04), "{i:?}");
        assert!(bad.detail.starts_with("5xx rate: challenger 5.000% (50/1000) vs champion 1.000% (1000/100000)"));
        let good = judge(&spread(1000, 10, 10.0));
        assert_eq!((good.outcome, good.blocks, good.needed), (Outcome::Pass, false, None), "{}", good.detail);
        assert!(good.difference_interval.unwrap().high <= 0.01);
        // 1.8 % vs 1 % + 1 pp: the interval straddles the tolerance.
        let unsure = judge(&spread(1000, 18, 10.0));
        assert_eq!((unsure.outcome, unsure.blocks), (Outcome::Inconclusive, true), "{}", unsure.detail);
        let more = unsure.needed.unwrap();
        assert!(unsure.detail.ends_with(&format!("inconclusive: needs ~{more} more responses per version")));
        // 0.2 pp from the tolerance with a standard error of 0.42 pp at 1000: a look k
        // decides with 80 % power once (z_k + 0.84) · se ≤ 0.2 pp, i.e. at about
        // 130 times the sample: look 13 (1000 · 1.5¹², z_13 = 3.57).
        assert_eq!(more, 129_747 - 1000);
        // Below the first look there is no verdict at all.
        let early = judge(&spread(999, 50, 10.0));
        assert_eq!((early.outcome, early.blocks), (Outcome::NoData, true));
    }

    #[test]
    fn a_spent_look_is_carried_until_the_next_look() {
        let g = sequential();
        let champion = spread(100_000, 1000, 10.0);
        let run = |challenger: &VersionWindow, spent: &[GateResult]| {
            only(
                &evaluate(&g, &champion, challenger, &LabelEvidence::default(), StageContext::live(1000), spent),
                GateKind::ErrorRate,
            )
        };
        let first = run(&spread(1000, 18, 10.0), &[]);
        assert!(first.spends_look());
        // 1400 < 1500: still look 1. Even with a clear fault the spent verdict stands until look 2.
        let carried = run(&spread(1400, 100, 10.0), std::slice::from_ref(&first));
        assert_eq!((carried.outcome, carried.look, carried.carried), (Outcome::Inconclusive, Some(1), true));
        assert_eq!(carried.challenger_n, 1000, "the numbers of the look that decided");
        assert!(carried.detail.contains("next look is at 1500 per version, now 100000 and 1400"), "{}", carried.detail);
        assert!(!carried.spends_look());
        let next = run(&spread(1500, 100, 10.0), std::slice::from_ref(&first));
        assert_eq!((next.outcome, next.look, next.carried), (Outcome::Fail, Some(2), false));
    }

    #[test]
    fn sequential_latency_compares_order_statistic_bounds() {
        let g = sequential();
        let champion = spread(100_000, 0, 10.0);
        let judge = |challenger: &VersionWindow| {
            only(
                &evaluate(&g, &champion, challenger, &LabelEvidence::default(), StageContext::live(1000), &[]),
                GateKind::Latency,
            )
        };
        let slow = judge(&spread(2000, 0, 30.0));
        assert_eq!(slow.outcome, Outcome::Fail, "{}", slow.detail);
        let (a, b) = (slow.champion_interval.unwrap(), slow.challenger_interval.unwrap());
        assert!(b.low > a.high * 1.5 && a.contains(slow.champion.unwrap()) && b.contains(slow.challenger.unwrap()));
        assert!(slow.detail.starts_with("p99: challenger"), "{}", slow.detail);
        // Each version's interval is at 1 − alpha_k (two one-sided bounds).
        assert!((slow.confidence.unwrap() - (1.0 - g.schedule().alpha_at(2))).abs() < 1e-12);
        let same = judge(&spread(2000, 0, 10.0));
        assert_eq!(same.outcome, Outcome::Pass, "{}", same.detail);
        // Exactly 1.5× with 1.5× allowed: no sample size can tell.
        let close = judge(&spread(2000, 0, 15.0));
        assert_eq!((close.outcome, close.needed), (Outcome::Inconclusive, None), "{}", close.detail);
        assert!(close.detail.ends_with("inconclusive: more data needed"), "{}", close.detail);
        // 1.4×: within, but 300 samples cannot show it yet.
        let few = only(
            &evaluate(&g, &champion, &spread(300, 0, 14.0), &LabelEvidence::default(), StageContext::live(300), &[]),
            GateKind::Latency,
        );
        assert_eq!(few.outcome, Outcome::Inconclusive, "{}", few.detail);
        assert!(few.needed.is_some_and(|n| n > 0), "{few:?}");
    }

    #[test]
    fn sequential_labels_judge_the_welch_interval_of_the_difference() {
        let g = sequential();
        let w = spread(1000, 0, 10.0);
        // 0/1 outcomes: sum_sq = sum.
        let stats =
            |n: u64, mean: f64| LabelStats { n, sum: mean * n as f64, sum_sq: mean * n as f64, ..Default::default() };
        let judge = |a: LabelStats, b: LabelStats| {
            only(
                &evaluate(&g, &w, &w, &LabelEvidence { champion: a, challenger: b }, StageContext::live(1), &[]),
                GateKind::Labels,
            )
        };
        let worse = judge(stats(2000, 0.9), stats(2000, 0.8));
        assert_eq!((worse.outcome, worse.look), (Outcome::Fail, Some(2)), "{}", worse.detail);
        assert!(worse.difference_interval.unwrap().high < -0.02);
        let same = judge(stats(6000, 0.9), stats(6000, 0.9));
        assert_eq!(same.outcome, Outcome::Pass, "{}", same.detail);
        assert!(same.difference_interval.unwrap().low >= -0.02);
        let unsure = judge(stats(1000, 0.9), stats(1000, 0.89));
        assert_eq!(unsure.outcome, Outcome::Inconclusive, "{}", unsure.detail);
        assert!(unsure.needed.unwrap() > 1000, "{unsure:?}");
        assert_eq!(judge(stats(999, 0.9), stats(5000, 0.5)).outcome, Outcome::NoData, "min_labels is 1000");
    }

    #[test]
    fn sequential_psi_allows_for_the_noise_floor_and_the_sampling_spread() {
        let base = window(100, 0, 0, 10.0);
        let g = GatesSpec { method: GateMethod::Sequential, ..psi_gate(0.2, NoDataPolicy::Hold, 0) };
        let judge = |a: &[(&str, u64)], b: &[(&str, u64)], min: u64| {
            let (a, b) = (with_predictions(base.clone(), a), with_predictions(base.clone(), b));
            only(&evaluate(&g, &a, &b, &LabelEvidence::default(), StageContext::live(min), &[]), GateKind::Prediction)
        };
        // PSI 0.234 from 96 and 98 predictions: above 0.2, but well within the noise.
        let small = judge(&QUARTERS, &SHIFTED, 50);
        assert_eq!(small.outcome, Outcome::Inconclusive, "{}", small.detail);
        assert!((small.notes["noise_floor"] - 3.0 * (1.0 / 96.0 + 1.0 / 98.0)).abs() < 1e-12);
        // The same shares from 100 times as many, at look 1: the spread at the boundary
        // is ≈ 0.013 and the noise floor 0.0006, so 0.234 is clearly above 0.2.
        let x100 = |bins: &[(&'static str, u64)]| bins.iter().map(|(b, n)| (*b, n * 100)).collect::<Vec<_>>();
        let big = judge(&x100(&QUARTERS), &x100(&SHIFTED), 9000);
        assert_eq!(big.outcome, Outcome::Fail, "{}", big.detail);
        assert!(big.challenger_interval.unwrap().low > 0.2);
        let same = judge(&x100(&QUARTERS), &x100(&QUARTERS), 9000);
        assert_eq!(same.outcome, Outcome::Pass, "{}", same.detail);
        assert!(same.challenger_interval.unwrap().high < 0.2);
    }

    #[test]
    fn sequential_shadow_agreement_uses_a_wilson_interval() {
        let champion = window(1000, 0, 0, 100.0);
        let g = GatesSpec { method: GateMethod::Sequential, ..shadow_spec() };
        let judge = |w: &VersionWindow| {
            only(
                &evaluate(&g, &champion, w, &LabelEvidence::default(), StageContext::shadow(100), &[]),
                GateKind::ShadowAgreement,
            )
        };
        assert_eq!(judge(&shadow_window(200, 140, 60, 0, 0, 100.0)).outcome, Outcome::Fail);
        assert_eq!(judge(&shadow_window(1000, 990, 10, 0, 0, 100.0)).outcome, Outcome::Pass);
        let unsure = judge(&shadow_window(100, 91, 9, 0, 0, 100.0));
        assert_eq!(unsure.outcome, Outcome::Inconclusive, "{}", unsure.detail);
        assert!(unsure.challenger_interval.unwrap().contains(0.9));
    }
}
