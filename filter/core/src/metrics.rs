//! Names of the counters the filter publishes through Envoy stats: the
//! second half of the contract with the controller.
//!
//! `canary.rollout.<rollout>.epoch.<epoch>.version.<version>.<leaf>`, where
//! the leaf is one of
//!
//! | leaf | kind | counts |
//! | --- | --- | --- |
//! | `rq_total`, `rq_unkeyed`, `rq_1xx`..`rq_5xx`, `rq_timeout` | counter | see [`Counter`] |
//! | `latency_us` | histogram | see [`Histogram`] |
//! | `pred.<bin>` | counter | responses whose prediction fell in the bin (`b0`..`bN` for numeric edges, the label or `other` for categories, `unparsed`) |
//! | `segment.<segment>.<counter>` / `segment.<segment>.latency_us` | counter / histogram | the same, for requests of one segment (an allowed value of the segment header, or `other`) |
//! | `shadow.<shadow stat>` | counter / histogram | shadow copies sent to this version, see [`ShadowStat`] |
//!
//! The epoch is the configuration's, so every request is counted under the
//! configuration that routed it: a stage's window is the sum of its epoch's
//! counters, and requests from before and after a change never mix. In Envoy's
//! `/stats` the names carry Envoy's `wasmcustom.` prefix.

use std::cell::Cell;
use std::fmt::Write;

/// One per-version counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Requests routed to the version.
    RqTotal,
    /// Of those, requests that carried no user key.
    RqUnkeyed,
    /// Responses by status class.
    Rq1xx,
    Rq2xx,
    Rq3xx,
    Rq4xx,
    Rq5xx,
    /// Of the 5xx, the 504s: upstream timeouts (Envoy answers 504 when the
    /// route timeout fires).
    RqTimeout,
}

/// One per-version histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Histogram {
    /// Microseconds from the request headers to the response headers, as the
    /// filter sees them (includes the upstream's time to first byte).
    LatencyUs,
}

impl Histogram {
    pub const ALL: [Histogram; 1] = [Histogram::LatencyUs];

    pub fn name(self) -> &'static str {
        match self {
            Histogram::LatencyUs => "latency_us",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Histogram> {
        Histogram::ALL.into_iter().find(|h| h.name() == name)
    }
}

/// A counter or a histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stat {
    Counter(Counter),
    Histogram(Histogram),
}

impl Stat {
    pub fn name(self) -> &'static str {
        match self {
            Stat::Counter(c) => c.name(),
            Stat::Histogram(h) => h.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Stat> {
        Counter::from_name(name).map(Stat::Counter).or_else(|| Histogram::from_name(name).map(Stat::Histogram))
    }
}

impl From<Counter> for Stat {
    fn from(c: Counter) -> Stat {
        Stat::Counter(c)
    }
}

impl From<Histogram> for Stat {
    fn from(h: Histogram) -> Stat {
        Stat::Histogram(h)
    }
}

impl Counter {
    pub const ALL: [Counter; 8] = [
        Counter::RqTotal,
        Counter::RqUnkeyed,
        Counter::Rq1xx,
        Counter::Rq2xx,
        Counter::Rq3xx,
        Counter::Rq4xx,
        Counter::Rq5xx,
        Counter::RqTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::RqTotal => "rq_total",
            Counter::RqUnkeyed => "rq_unkeyed",
            Counter::Rq1xx => "rq_1xx",
            Counter::Rq2xx => "rq_2xx",
            Counter::Rq3xx => "rq_3xx",
            Counter::Rq4xx => "rq_4xx",
            Counter::Rq5xx => "rq_5xx",
            Counter::RqTimeout => "rq_timeout",
        }
    }

    /// Position in per-counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Counter> {
        Counter::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The class counter for an HTTP status; `None` outside 100..=599.
    pub fn for_status(status: u16) -> Option<Counter> {
        Some(match status {
            100..=199 => Counter::Rq1xx,
            200..=299 => Counter::Rq2xx,
            300..=399 => Counter::Rq3xx,
            400..=499 => Counter::Rq4xx,
            500..=599 => Counter::Rq5xx,
            _ => return None,
        })
    }
}

/// Outcomes of shadow calls (copies of champion-served requests sent to the
/// challenger; the user never waits for them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShadowStat {
    /// Shadow calls sent.
    RqTotal,
    /// Of those answered, answered with a 5xx.
    Rq5xx,
    /// No answer: timeout, reset, or the call could not be made.
    Failed,
    /// Both predictions parsed and equal (same bin / same label).
    Agree,
    /// Both predictions parsed and different.
    Disagree,
    /// Answered, but a prediction was missing or unparsed, or the user's
    /// response never completed.
    Incomplete,
    /// Sampled but not sent: the request body was over the limit, or too many
    /// calls were in flight.
    Skipped,
    /// Histogram: microseconds from sending to the shadow's response.
    LatencyUs,
}

impl ShadowStat {
    pub const ALL: [ShadowStat; 8] = [
        ShadowStat::RqTotal,
        ShadowStat::Rq5xx,
        ShadowStat::Failed,
        ShadowStat::Agree,
        ShadowStat::Disagree,
        ShadowStat::Incomplete,
        ShadowStat::Skipped,
        ShadowStat::LatencyUs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ShadowStat::RqTotal => "rq_total",
            ShadowStat::Rq5xx => "rq_5xx",
            ShadowStat::Failed => "failed",
            ShadowStat::Agree => "agree",
            ShadowStat::Disagree => "disagree",
            ShadowStat::Incomplete => "incomplete",
            ShadowStat::Skipped => "skipped",
            ShadowStat::LatencyUs => "latency_us",
        }
    }

    pub fn is_histogram(self) -> bool {
        self == ShadowStat::LatencyUs
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<ShadowStat> {
        ShadowStat::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a metric counts, below `version.<version>.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leaf<'a> {
    Stat(Stat),
    /// `pred.<bin>`
    Pred(&'a str),
    /// `segment.<segment>.<stat>`
    Segment(&'a str, Stat),
    /// `shadow.<stat>`
    Shadow(ShadowStat),
}

impl From<Counter> for Leaf<'_> {
    fn from(c: Counter) -> Self {
        Leaf::Stat(Stat::Counter(c))
    }
}

impl From<Histogram> for Leaf<'_> {
    fn from(h: Histogram) -> Self {
        Leaf::Stat(Stat::Histogram(h))
    }
}

impl From<Stat> for Leaf<'_> {
    fn from(s: Stat) -> Self {
        Leaf::Stat(s)
    }
}

/// Prefix of every metric this filter defines.
pub const PREFIX: &str = "canary.rollout.";

/// Full metric name as defined by the filter (without Envoy's `wasmcustom.`).
pub fn metric_name<'a>(rollout: &str, epoch: u64, version: &str, leaf: impl Into<Leaf<'a>>) -> String {
    let mut s = String::with_capacity(80);
    let _ = write!(s, "{PREFIX}{rollout}.epoch.{epoch}.version.{version}.");
    match leaf.into() {
        Leaf::Stat(stat) => s.push_str(stat.name()),
        Leaf::Pred(bin) => {
            let _ = write!(s, "pred.{bin}");
        }
        Leaf::Segment(segment, stat) => {
            let _ = write!(s, "segment.{segment}.{}", stat.name());
        }
        Leaf::Shadow(stat) => {
            let _ = write!(s, "shadow.{}", stat.name());
        }
    }
    s
}

/// Prefix of every metric of one rollout, as Envoy's `/stats` shows it.
pub fn rollout_prefix_in_envoy(rollout: &str) -> String {
    format!("wasmcustom.{PREFIX}{rollout}.")
}

/// A counter name split back into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricKey<'a> {
    pub rollout: &'a str,
    pub epoch: u64,
    pub version: &'a str,
    pub leaf: Leaf<'a>,
}

/// Parses a name made by [`metric_name`], with or without Envoy's
/// `wasmcustom.` prefix. Names are dot-separated and the parts never contain
/// dots (the configuration refuses such names), so the split is unambiguous.
pub fn parse_metric_name(name: &str) -> Option<MetricKey<'_>> {
    let rest = name.strip_prefix("wasmcustom.").unwrap_or(name).strip_prefix(PREFIX)?;
    let mut parts = rest.split('.');
    let rollout = parts.next()?;
    (parts.next()? == "epoch").then_some(())?;
    let epoch = parts.next()?.parse().ok()?;
    (parts.next()? == "version").then_some(())?;
    let version = parts.next()?;
    let leaf = match parts.next()? {
        "pred" => Leaf::Pred(parts.next()?),
        "segment" => {
            let segment = parts.next()?;
            Leaf::Segment(segment, Stat::from_name(parts.next()?)?)
        }
        "shadow" => Leaf::Shadow(ShadowStat::from_name(parts.next()?)?),
        name => Leaf::Stat(Stat::from_name(name)?),
    };
    parts.next().is_none().then_some(MetricKey { rollout, epoch, version, leaf })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let stats = Counter::ALL.map(Stat::from).into_iter().chain(Histogram::ALL.map(Stat::from));
        for c in stats {
            let n = metric_name("recs", 7, "v2", c);
            let k = parse_metric_name(&n).unwrap();
            assert_eq!(k, MetricKey { rollout: "recs", epoch: 7, version: "v2", leaf: Leaf::Stat(c) });
            assert_eq!(parse_metric_name(&format!("wasmcustom.{n}")), Some(k));
        }
        assert_eq!(metric_name("r", 1, "v", Counter::Rq5xx), "canary.rollout.r.epoch.1.version.v.rq_5xx");
    }

    #[test]
    fn prediction_segment_and_shadow_names_round_trip() {
        let leaves = [
            Leaf::Pred("b3"),
            Leaf::Pred("unparsed"),
            Leaf::Segment("pro", Stat::Counter(Counter::Rq5xx)),
            Leaf::Segment("other", Stat::Histogram(Histogram::LatencyUs)),
            Leaf::Shadow(ShadowStat::Agree),
            Leaf::Shadow(ShadowStat::LatencyUs),
        ];
        for leaf in leaves {
            let n = metric_name("r", 2, "v2", leaf);
            assert_eq!(parse_metric_name(&n), Some(MetricKey { rollout: "r", epoch: 2, version: "v2", leaf }), "{n}");
        }
        assert_eq!(metric_name("r", 2, "v1", Leaf::Pred("cat")), "canary.rollout.r.epoch.2.version.v1.pred.cat");
        assert_eq!(
            metric_name("r", 2, "v1", Leaf::Segment("pro", Stat::Counter(Counter::RqTotal))),
            "canary.rollout.r.epoch.2.version.v1.segment.pro.rq_total"
        );
        assert_eq!(parse_metric_name("canary.rollout.r.epoch.2.version.v1.shadow.bogus"), None);
        assert_eq!(parse_metric_name("canary.rollout.r.epoch.2.version.v1.segment.pro"), None);
    }

    #[test]
    fn foreign_names_are_not_parsed() {
        assert_eq!(parse_metric_name("cluster.v1.upstream_rq_2xx"), None);
        assert_eq!(parse_metric_name("canary.rollout.r.epoch.x.version.v.rq_total"), None);
        assert_eq!(parse_metric_name("canary.rollout.r.epoch.1.version.v.rq_total.extra"), None);
        assert_eq!(parse_metric_name("canary.rollout.r.epoch.1.version.v.bogus"), None);
    }

    #[test]
    fn status_classes() {
        assert_eq!(Counter::for_status(200), Some(Counter::Rq2xx));
        assert_eq!(Counter::for_status(503), Some(Counter::Rq5xx));
        assert_eq!(Counter::for_status(404), Some(Counter::Rq4xx));
        assert_eq!(Counter::for_status(99), None);
        assert_eq!(Counter::for_status(600), None);
    }
}

/// One metric of a configuration, by what it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Per-version counter or latency histogram.
    Version(crate::split::Arm, Stat),
    /// The same, for one segment (index into the segment plan's names).
    Segment(crate::split::Arm, u16, Stat),
    /// Responses in one prediction bin (index into the prediction plan's names).
    Pred(crate::split::Arm, u16),
    /// Shadow calls to the challenger.
    Shadow(ShadowStat),
}

/// Stats per version (and per segment): the counters, then the histogram.
const STATS: usize = Counter::ALL.len() + Histogram::ALL.len();

impl Stat {
    /// Position among the [`STATS`] per-version stats.
    pub fn index(self) -> usize {
        match self {
            Stat::Counter(c) => c.index(),
            Stat::Histogram(h) => Counter::ALL.len() + h.index(),
        }
    }

    fn all() -> impl Iterator<Item = Stat> {
        Counter::ALL.into_iter().map(Stat::Counter).chain(Histogram::ALL.into_iter().map(Stat::Histogram))
    }
}

/// Counter increments held in the filter's memory between flushes. A host
/// call costs about a microsecond (bench/ablate.sh), so the request path adds
/// to a cell here and the root context's tick hands each counter that moved
/// to the proxy in one call. Cells, not `&mut`: the root context and every
/// stream of a worker share one table, on one thread.
#[derive(Debug, Default)]
pub struct PendingCounts {
    counts: Vec<Cell<u64>>,
    moved: Cell<bool>,
}

impl PendingCounts {
    /// `len` counters, indexed like [`MetricTable`].
    pub fn new(len: usize) -> PendingCounts {
        PendingCounts { counts: (0..len).map(|_| Cell::new(0)).collect(), moved: Cell::new(false) }
    }

    /// Adds `n` to counter `index` (an index the table does not have is ignored).
    pub fn add(&self, index: usize, n: u64) {
        if let Some(c) = self.counts.get(index) {
            c.set(c.get().saturating_add(n));
            self.moved.set(true);
        }
    }

    /// Calls `f(index, n)` for every counter that moved since the last drain,
    /// and zeroes them.
    pub fn drain(&self, mut f: impl FnMut(usize, u64)) {
        if !self.moved.replace(false) {
            return;
        }
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.replace(0);
            if n > 0 {
                f(i, n);
            }
        }
    }
}

/// Every metric a configuration defines, laid out in one flat table so the
/// filter keeps their host ids in a `Vec` and finds one by arithmetic.
///
/// Per arm: `[stats][prediction bins][segments × stats]`, then the shadow stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricTable {
    bins: usize,
    segments: usize,
    shadow: bool,
}

impl MetricTable {
    pub fn new(plan: &crate::config::Plan) -> MetricTable {
        MetricTable {
            bins: plan.prediction.as_ref().map_or(0, |p| p.names.len()),
            segments: plan.segment.as_ref().map_or(0, |s| s.names.len()),
            shadow: plan.shadow.is_some(),
        }
    }

    fn arm_stride(&self) -> usize {
        STATS + self.bins + self.segments * STATS
    }

    pub fn len(&self) -> usize {
        2 * self.arm_stride() + if self.shadow { ShadowStat::ALL.len() } else { 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where a metric sits; `None` if this configuration does not define it.
    pub fn index(&self, m: Metric) -> Option<usize> {
        let arm_base = |arm: crate::split::Arm| arm.index() * self.arm_stride();
        match m {
            Metric::Version(arm, stat) => Some(arm_base(arm) + stat.index()),
            Metric::Pred(arm, bin) => {
                let bin = usize::from(bin);
                (bin < self.bins).then(|| arm_base(arm) + STATS + bin)
            }
            Metric::Segment(arm, seg, stat) => {
                let seg = usize::from(seg);
                (seg < self.segments).then(|| arm_base(arm) + STATS + self.bins + seg * STATS + stat.index())
            }
            Metric::Shadow(s) => self.shadow.then(|| 2 * self.arm_stride() + s.index()),
        }
    }

    /// `(is_histogram, name)` of every metric, in table order.
    pub fn definitions(&self, plan: &crate::config::Plan) -> Vec<(bool, String)> {
        let mut out = Vec::with_capacity(self.len());
        for arm in crate::split::Arm::BOTH {
            let version = plan.version(arm);
            for stat in Stat::all() {
                out.push((matches!(stat, Stat::Histogram(_)), metric_name(&plan.rollout, plan.epoch, version, stat)));
            }
            for bin in plan.prediction.iter().flat_map(|p| p.names.iter()) {
                out.push((false, metric_name(&plan.rollout, plan.epoch, version, Leaf::Pred(bin))));
            }
            for seg in plan.segment.iter().flat_map(|s| s.names.iter()) {
                for stat in Stat::all() {
                    let name = metric_name(&plan.rollout, plan.epoch, version, Leaf::Segment(seg, stat));
                    out.push((matches!(stat, Stat::Histogram(_)), name));
                }
            }
        }
        if self.shadow {
            let version = plan.version(crate::split::Arm::Challenger);
            for s in ShadowStat::ALL {
                out.push((s.is_histogram(), metric_name(&plan.rollout, plan.epoch, version, Leaf::Shadow(s))));
            }
        }
        out
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;
    use crate::config::Plan;
    use crate::split::Arm;

    #[test]
    fn every_metric_has_one_slot_and_the_right_name() {
        let plan = Plan::from_json(
            br#"{"rollout":"r","epoch":3,"stage":"s","salt":"x","champion":"a","challenger":"b","challenger_weight_bp":0,
                "prediction":{"from":{"header":"x-p"},"bins":{"categorical":["cat","dog"]}},
                "segment":{"header":"x-tier","values":["free","pro"]},
                "shadow":{"cluster":"b"}}"#,
        )
        .unwrap();
        let t = MetricTable::new(&plan);
        let defs = t.definitions(&plan);
        assert_eq!(defs.len(), t.len());
        let mut all = vec![];
        for arm in Arm::BOTH {
            all.extend(Stat::all().map(|s| Metric::Version(arm, s)));
            all.extend((0..4).map(|b| Metric::Pred(arm, b)));
            for seg in 0..3 {
                all.extend(Stat::all().map(|s| Metric::Segment(arm, seg, s)));
            }
        }
        all.extend(ShadowStat::ALL.map(Metric::Shadow));
        let mut seen: Vec<usize> = all.iter().map(|m| t.index(*m).unwrap()).collect();
        seen.sort();
        assert_eq!(seen, (0..t.len()).collect::<Vec<_>>());
        let name = |m| defs[t.index(m).unwrap()].1.clone();
        assert_eq!(name(Metric::Pred(Arm::Challenger, 1)), "canary.rollout.r.epoch.3.version.b.pred.dog");
        assert_eq!(
            name(Metric::Segment(Arm::Champion, 1, Stat::Counter(Counter::Rq5xx))),
            "canary.rollout.r.epoch.3.version.a.segment.pro.rq_5xx"
        );
        assert_eq!(name(Metric::Shadow(ShadowStat::Agree)), "canary.rollout.r.epoch.3.version.b.shadow.agree");
        assert!(defs[t.index(Metric::Shadow(ShadowStat::LatencyUs)).unwrap()].0);
        assert_eq!(t.index(Metric::Pred(Arm::Champion, 4)), None);
        assert_eq!(t.index(Metric::Segment(Arm::Champion, 3, Stat::Counter(Counter::RqTotal))), None);
    }

    #[test]
    fn a_plain_configuration_has_only_the_version_stats() {
        let plan = Plan::from_json(
            br#"{"rollout":"r","stage":"s","salt":"x","champion":"a","challenger":"b","challenger_weight_bp":0}"#,
        )
        .unwrap();
        let t = MetricTable::new(&plan);
        assert_eq!(t.len(), 2 * STATS);
        assert_eq!(t.index(Metric::Shadow(ShadowStat::Agree)), None);
    }

    #[test]
    fn pending_counts_are_handed_over_once_and_only_when_moved() {
        let p = PendingCounts::new(4);
        let mut seen = vec![];
        p.drain(|i, n| seen.push((i, n)));
        assert!(seen.is_empty());
        p.add(1, 1);
        p.add(3, 2);
        p.add(1, 1);
        p.add(9, 1); // not in the table: ignored
        p.drain(|i, n| seen.push((i, n)));
        assert_eq!(seen, vec![(1, 2), (3, 2)]);
        seen.clear();
        p.drain(|i, n| seen.push((i, n)));
        assert!(seen.is_empty(), "a drained count is not handed over twice");
    }
}
