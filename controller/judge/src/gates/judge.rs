//! How a gate judges, shared by every gate: the stage being judged
//! ([`StageContext`]), the method and looks ([`Judge`]), the power
//! calculation behind "needs ~N more", the interval-vs-tolerance verdict,
//! and the wording of numbers in a result's detail.

use serde::{Deserialize, Serialize};

use super::{GateKind, GateResult, Outcome};
use crate::anytime::RateProcess;
use crate::labels::LabelStats;
use crate::spec::GateMethod;
use crate::stats::{self, Interval, LookSchedule};

/// Power the "needed" estimates aim for: the chance that the look they
/// point to decides, if the observed difference is the true one.
pub const POWER: f64 = 0.8;

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

pub(super) fn pct(x: f64) -> String {
    format!("{:.3}%", x * 100.0)
}

/// An e-value as people read it: three decimals near the threshold, powers
/// of ten once the evidence is overwhelming (no-harm evidence grows
/// geometrically and reached 2e16 in a one-minute rollout).
pub(super) fn evalue(x: f64) -> String {
    if x < 1e4 {
        format!("{x:.3}")
    } else {
        format!("{x:.1e}")
    }
}

/// Percentage points with a sign.
pub(super) fn pp(x: f64) -> String {
    format!("{:+.3}", x * 100.0)
}

/// How a gate judges: the method, the look schedule, and the verdicts of
/// looks already spent in this stage.
#[derive(Clone, Copy)]
pub(crate) struct Judge<'a> {
    pub(crate) method: GateMethod,
    pub(crate) schedule: LookSchedule,
    pub(crate) spent: &'a [GateResult],
    /// The stage's share of the harm budget ([`StageContext::harm_share`]).
    pub(crate) harm_share: f64,
}

impl Judge<'_> {
    /// Intervals rather than point estimates (both the look-based and the
    /// anytime method; gates without an anytime form use looks).
    pub(super) fn sequential(&self) -> bool {
        self.method != GateMethod::Threshold
    }

    pub(super) fn anytime(&self) -> bool {
        self.method == GateMethod::Anytime
    }

    /// The e-process `gate` carried from the previous evaluation of the stage.
    pub(super) fn process(&self, gate: GateKind) -> RateProcess {
        self.spent
            .iter()
            .rev()
            .find(|r| r.gate == gate)
            .and_then(|r| r.process.clone())
            .unwrap_or_else(|| RateProcess::for_stage(self.harm_share))
    }

    /// The spent verdict of `gate` at look `k` or later, if any: carried
    /// (a look's verdict is reached once, by the first evaluation at it).
    pub(super) fn carried(&self, gate: GateKind, k: u32, now: (u64, u64), n0: u64) -> Option<GateResult> {
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
pub(super) fn needed(
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
pub(super) fn scaled(x: u64, t: f64) -> u64 {
    (x as f64 * t).round() as u64
}

/// The interval-vs-tolerance verdict: fail when wholly on the bad side,
/// pass when wholly on the good side (`bad_above`: higher is worse).
pub(super) fn verdict(i: Interval, limit: f64, bad_above: bool) -> Outcome {
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
pub(super) fn verdict_words(outcome: Outcome, needed: Option<u64>, what: &str) -> String {
    match outcome {
        Outcome::Fail => "worse than the tolerance allows".into(),
        Outcome::Pass => "within the tolerance".into(),
        _ => match needed {
            Some(n) => format!("inconclusive: needs ~{n} more {what} per version"),
            None => "inconclusive: more data needed".into(),
        },
    }
}
