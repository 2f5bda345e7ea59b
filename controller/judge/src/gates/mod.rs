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
//!
//! **Layout: one file per gate.** [`GATES`] is the registry: each gate's
//! file (`error_rate.rs`, `latency.rs`, `prediction.rs`, `timeouts.rs`,
//! `client_errors.rs`, `labels.rs`, `shadow.rs`) holds its evaluation and
//! its [`Descriptor`]s (id, title, how its values read), and [`evaluate`],
//! the spec's validation, segments, the reports and the dashboard iterate
//! the registry. Shared pieces: `result.rs` (what a gate says), `judge.rs`
//! (the stage, the method and looks, the verdict and its words), `rate.rs`
//! (the rate comparison of the rate gates). Adding a gate over data the
//! windows already hold: its file, its entry in [`GATES`] and a [`GateKind`]
//! variant here, and its config type in [`crate::spec`].

use serde::{Deserialize, Serialize};

use crate::spec::{GatesSpec, SegmentSelection};
use crate::window::VersionWindow;

mod client_errors;
mod error_rate;
mod judge;
mod labels;
mod latency;
mod prediction;
mod rate;
mod result;
mod shadow;
#[cfg(test)]
mod tests;
mod timeouts;

pub(crate) use judge::Judge;
pub use judge::{LabelEvidence, StageContext, POWER};
pub use result::{GateResult, Outcome};

/// Every gate, in the order [`evaluate`] lists their results (and reports
/// and messages name them).
pub(crate) const GATES: [&Gate; 7] = [
    &error_rate::GATE,
    &latency::GATE,
    &prediction::GATE,
    &timeouts::GATE,
    &client_errors::GATE,
    &labels::GATE,
    &shadow::GATE,
];

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
        self.descriptor().id
    }

    /// How this kind's results read: id, title, units (from its gate's file).
    pub fn descriptor(self) -> &'static Descriptor {
        // Every kind is in the registry (a test checks); the fallback keeps
        // this total without a panic.
        descriptors().find(|d| d.kind == self).unwrap_or(&UNLISTED)
    }

    /// Where results of this kind are listed among a stage's results.
    pub fn rank(self) -> usize {
        descriptors().position(|d| d.kind == self).unwrap_or(usize::MAX)
    }
}

/// What a kind missing from the registry would read as (never, by test).
const UNLISTED: Descriptor = Descriptor {
    kind: GateKind::ErrorRate,
    id: "unlisted",
    title: "unlisted",
    scale: 1.0,
    unit: "",
    digits: Digits::Significant(4),
    difference: false,
    reference: false,
};

/// Every result kind's descriptor, in registry order.
pub fn descriptors() -> impl Iterator<Item = &'static Descriptor> {
    GATES.into_iter().flat_map(|g| g.results)
}

/// How the values of one kind of result read for people: the report and
/// the dashboard render from it (the dashboard receives it with every
/// result, as `format`), so a new gate needs no rendering code.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Descriptor {
    #[serde(skip)]
    pub kind: GateKind,
    /// The stable id ([`GateKind::id`]).
    pub id: &'static str,
    /// The name shown.
    pub title: &'static str,
    /// The factor from the gate's own units (shares, microseconds) to the
    /// unit shown.
    pub scale: f64,
    /// The unit shown after a value: `%`, ` ms` or nothing.
    pub unit: &'static str,
    /// How many digits a value shows on the dashboard.
    pub digits: Digits,
    /// Judged on challenger − champion (rates, label means) rather than on
    /// the challenger's value.
    pub difference: bool,
    /// The champion is the reference and has no value of its own (PSI).
    pub reference: bool,
}

/// Digits of a value as shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Digits {
    Significant(u8),
    Decimals(u8),
}

/// When a gate is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stages {
    /// Live stages: the challenger serves users.
    Live,
    /// The shadow stage only.
    Shadow,
    /// Both.
    Both,
}

/// What a gate is judged on.
pub(crate) struct Evidence<'a> {
    pub(crate) spec: &'a GatesSpec,
    pub(crate) champion: &'a VersionWindow,
    pub(crate) challenger: &'a VersionWindow,
    pub(crate) labels: &'a LabelEvidence,
    pub(crate) stage: StageContext,
    /// `stage.min_samples`, at least 1.
    pub(crate) min_samples: u64,
}

/// One gate of the registry: a field of the spec's `gates`, and how it is judged.
pub(crate) struct Gate {
    /// Its field in the spec (`gates.<field>`).
    pub(crate) field: &'static str,
    /// The results it writes, in order (the first is the gate's own kind).
    pub(crate) results: &'static [Descriptor],
    pub(crate) stages: Stages,
    /// Whether the spec configures it.
    pub(crate) configured: fn(&GatesSpec) -> bool,
    /// Removes it from a spec.
    pub(crate) remove: fn(&mut GatesSpec),
    /// Its segments (`None`: the gate cannot judge a segment, or is not configured).
    pub(crate) segments: fn(&GatesSpec) -> Option<&SegmentSelection>,
    /// A rate gate's tolerance in percentage points, if configured: the
    /// derived `min_requests` is the sample that detects it
    /// ([`crate::spec::RolloutSpec::min_requests`]).
    pub(crate) rate_tolerance: fn(&GatesSpec) -> Option<f64>,
    /// Its results, if configured (none otherwise).
    pub(crate) judge: fn(&Evidence<'_>, Judge<'_>) -> Vec<GateResult>,
}

impl Gate {
    /// The gate's own result kind.
    pub(crate) fn kind(&self) -> GateKind {
        self.results[0].kind
    }

    /// Whether it judges live traffic.
    pub(crate) fn live(&self) -> bool {
        self.stages != Stages::Shadow
    }
}

/// No segments (for gates that cannot judge one).
pub(crate) fn no_segments(_: &GatesSpec) -> Option<&SegmentSelection> {
    None
}

/// The registry's live gates' fields as a list in words: `a, b or c`.
pub(crate) fn live_fields() -> String {
    let names: Vec<&str> = GATES.iter().filter(|g| g.live()).map(|g| g.field).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
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
    let evidence = Evidence { spec, champion, challenger, labels, stage, min_samples: stage.min_samples.max(1) };
    let wanted = if stage.shadow { [Stages::Shadow, Stages::Both] } else { [Stages::Live, Stages::Both] };
    let mut out: Vec<GateResult> =
        GATES.iter().filter(|g| wanted.contains(&g.stages)).flat_map(|g| (g.judge)(&evidence, judge)).collect();
    if !stage.shadow && !stage.proven {
        // no_harm: only a failure or missing data holds the stage.
        for r in out.iter_mut().filter(|r| r.outcome == Outcome::Inconclusive) {
            r.blocks = false;
        }
    }
    out
}
