//! A stage's window: what each version did under one configuration epoch,
//! summed across every Envoy that answered. Sources produce it, gates read it.
//!
//! Windows need no start snapshot: the filter names its counters by epoch, so
//! a window is simply "the counters of epoch E", and requests routed by an
//! earlier or later configuration never enter it.
//!
//! Besides the per-version totals, a [`VersionWindow`] carries what the
//! filter counts when the configuration asks for it: prediction bins
//! (`pred.<bin>`), per-segment traffic (`segment.<S>.*`) and, under the
//! challenger's name, the outcome of shadow calls (`shadow.*`). All sums
//! saturate: a hostile or broken endpoint can make a number wrong, never
//! wrap it.

use std::collections::BTreeMap;

use canary_core::metrics::{Counter, ShadowStat};
use serde::{Deserialize, Serialize};

/// One bucket of a merged histogram (Envoy's log-linear buckets: about two
/// significant digits, so a bucket is at most ~10 % of its lower bound wide).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub lower: f64,
    pub width: f64,
    pub count: u64,
}

/// The width of an open bucket `[lower, ∞)` (finite, so it serialises):
/// samples known only to be at least `lower` (a timed-out shadow copy).
pub const OPEN_WIDTH: f64 = 1e300;

/// A histogram merged from many Envoys by adding bucket counts (never by
/// averaging quantiles).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MergedHistogram {
    /// Keyed by the lower bound's bits (non-negative floats order like their bits).
    buckets: BTreeMap<u64, Bucket>,
}

impl MergedHistogram {
    pub fn add(&mut self, lower: f64, width: f64, count: u64) {
        if count == 0 || !lower.is_finite() || !width.is_finite() || lower < 0.0 || width < 0.0 {
            return;
        }
        let b = self.buckets.entry(lower.to_bits()).or_insert(Bucket { lower, width, count: 0 });
        b.count = b.count.saturating_add(count);
    }

    pub fn merge(&mut self, other: &MergedHistogram) {
        for b in other.buckets.values() {
            self.add(b.lower, b.width, b.count);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.values().fold(0u64, |acc, b| acc.saturating_add(b.count))
    }

    /// What was added after `base` (an earlier state of the same
    /// cumulative histogram), bucket by bucket.
    pub fn since(&self, base: &MergedHistogram) -> MergedHistogram {
        let mut out = MergedHistogram::default();
        for (key, b) in &self.buckets {
            let before = base.buckets.get(key).map_or(0, |x| x.count);
            out.add(b.lower, b.width, b.count.saturating_sub(before));
        }
        out
    }

    pub fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.buckets.values()
    }

    /// The `q` quantile (0..=1), interpolating linearly inside the bucket
    /// where the rank falls. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for b in self.buckets.values() {
            if (below + b.count) as f64 >= rank {
                let inside = ((rank - below as f64) / b.count as f64).clamp(0.0, 1.0);
                return Some(b.lower + inside * b.width);
            }
            below += b.count;
        }
        self.buckets.values().next_back().map(|b| b.lower + b.width)
    }
}

/// What one version did in a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionWindow {
    /// Requests routed to the version (`rq_total`).
    pub requests: u64,
    /// Of those, without a user key.
    pub unkeyed: u64,
    /// Responses by class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses: [u64; 5],
    /// 504s (upstream timeouts), also counted in 5xx.
    pub timeouts: u64,
    /// Request-to-response-headers latency in microseconds.
    pub latency_us: MergedHistogram,
    /// Responses per prediction bin (`b0`..`bN`, labels, `other`,
    /// `unparsed`), when the filter reads predictions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub predictions: BTreeMap<String, u64>,
    /// Traffic per segment (an allowed value of the segment header, or
    /// `other`), when the filter splits by segment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub segments: BTreeMap<String, SegmentWindow>,
    /// Shadow calls sent to this version (only ever the challenger's).
    #[serde(default, skip_serializing_if = "ShadowWindow::is_empty")]
    pub shadow: ShadowWindow,
}

/// Adds `value` to the slot of `counter` among a version's or a segment's
/// counters (one place that knows the order of `responses`).
fn add_to(
    counter: Counter,
    value: u64,
    requests: &mut u64,
    unkeyed: &mut u64,
    responses: &mut [u64; 5],
    timeouts: &mut u64,
) {
    let slot = match counter {
        Counter::RqTotal => requests,
        Counter::RqUnkeyed => unkeyed,
        Counter::Rq1xx => &mut responses[0],
        Counter::Rq2xx => &mut responses[1],
        Counter::Rq3xx => &mut responses[2],
        Counter::Rq4xx => &mut responses[3],
        Counter::Rq5xx => &mut responses[4],
        Counter::RqTimeout => timeouts,
    };
    *slot = slot.saturating_add(value);
}

fn add_all(a: &mut [u64; 5], b: &[u64; 5]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a = a.saturating_add(*b);
    }
}

/// Responses by class counted after `before`, an earlier state of the same
/// cumulative counters.
pub fn responses_since(now: &[u64; 5], before: &[u64; 5]) -> [u64; 5] {
    std::array::from_fn(|i| now[i].saturating_sub(before[i]))
}

fn sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0u64, |acc, n| acc.saturating_add(n))
}

impl VersionWindow {
    /// Counts `n` responses, `errors` of them 5xx and the rest 2xx.
    pub fn add_responses(&mut self, n: u64, errors: u64) {
        self.add_counter(Counter::RqTotal, n);
        self.add_counter(Counter::Rq2xx, n.saturating_sub(errors));
        self.add_counter(Counter::Rq5xx, errors);
    }

    /// `n` responses, `errors` of them 5xx (tests' shorthand).
    #[cfg(test)]
    pub fn served(n: u64, errors: u64) -> VersionWindow {
        let mut w = VersionWindow::default();
        w.add_responses(n, errors);
        w
    }

    /// Adds a counter's value.
    pub fn add_counter(&mut self, counter: Counter, value: u64) {
        add_to(counter, value, &mut self.requests, &mut self.unkeyed, &mut self.responses, &mut self.timeouts);
    }

    /// Adds responses to a prediction bin.
    pub fn add_prediction(&mut self, bin: &str, value: u64) {
        let slot = self.predictions.entry(bin.to_string()).or_default();
        *slot = slot.saturating_add(value);
    }

    /// The window of one segment, created empty if new.
    pub fn segment_mut(&mut self, segment: &str) -> &mut SegmentWindow {
        self.segments.entry(segment.to_string()).or_default()
    }

    pub fn merge(&mut self, other: &VersionWindow) {
        self.requests = self.requests.saturating_add(other.requests);
        self.unkeyed = self.unkeyed.saturating_add(other.unkeyed);
        add_all(&mut self.responses, &other.responses);
        self.timeouts = self.timeouts.saturating_add(other.timeouts);
        self.latency_us.merge(&other.latency_us);
        for (bin, n) in &other.predictions {
            self.add_prediction(bin, *n);
        }
        for (name, segment) in &other.segments {
            self.segment_mut(name).merge(segment);
        }
        self.shadow.merge(&other.shadow);
    }

    /// What happened after `base`, an earlier state of the same cumulative
    /// window (the guardrails restart a window after an incident this way).
    pub fn since(&self, base: &VersionWindow) -> VersionWindow {
        let predictions = self
            .predictions
            .iter()
            .map(|(k, v)| (k.clone(), v.saturating_sub(base.predictions.get(k).copied().unwrap_or(0))))
            .collect();
        let segments = self
            .segments
            .iter()
            .map(|(k, s)| {
                let b = base.segments.get(k).cloned().unwrap_or_default();
                let seg = SegmentWindow {
                    requests: s.requests.saturating_sub(b.requests),
                    unkeyed: s.unkeyed.saturating_sub(b.unkeyed),
                    responses: responses_since(&s.responses, &b.responses),
                    timeouts: s.timeouts.saturating_sub(b.timeouts),
                    latency_us: s.latency_us.since(&b.latency_us),
                };
                (k.clone(), seg)
            })
            .collect();
        let (s, b) = (&self.shadow, &base.shadow);
        let shadow = ShadowWindow {
            requests: s.requests.saturating_sub(b.requests),
            rq_5xx: s.rq_5xx.saturating_sub(b.rq_5xx),
            failed: s.failed.saturating_sub(b.failed),
            agree: s.agree.saturating_sub(b.agree),
            disagree: s.disagree.saturating_sub(b.disagree),
            incomplete: s.incomplete.saturating_sub(b.incomplete),
            skipped: s.skipped.saturating_sub(b.skipped),
            latency_us: s.latency_us.since(&b.latency_us),
        };
        VersionWindow {
            requests: self.requests.saturating_sub(base.requests),
            unkeyed: self.unkeyed.saturating_sub(base.unkeyed),
            responses: responses_since(&self.responses, &base.responses),
            timeouts: self.timeouts.saturating_sub(base.timeouts),
            latency_us: self.latency_us.since(&base.latency_us),
            predictions,
            segments,
            shadow,
        }
    }

    /// Responses whose prediction was read (every bin but `unparsed`).
    pub fn parsed_predictions(&self) -> u64 {
        sum(self.predictions.iter().filter(|(bin, _)| bin.as_str() != canary_core::predict::UNPARSED).map(|(_, n)| *n))
    }

    /// Responses whose prediction could not be read.
    pub fn unparsed_predictions(&self) -> u64 {
        self.predictions.get(canary_core::predict::UNPARSED).copied().unwrap_or(0)
    }

    /// Responses seen (the denominator of the rates).
    pub fn answered(&self) -> u64 {
        self.responses.iter().fold(0u64, |acc, n| acc.saturating_add(*n))
    }

    pub fn errors(&self) -> u64 {
        self.responses[4]
    }

    /// 4xx responses (the client-error gate's events).
    pub fn client_errors(&self) -> u64 {
        self.responses[3]
    }

    /// 5xx share of responses; `None` with no response.
    pub fn error_rate(&self) -> Option<f64> {
        rate(self.errors(), self.answered())
    }

    /// 504 share of responses; `None` with no response.
    pub fn timeout_rate(&self) -> Option<f64> {
        rate(self.timeouts, self.answered())
    }
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// What one version did for the requests of one segment: the same counters
/// and latency histogram as the version's, restricted to the segment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentWindow {
    pub requests: u64,
    pub unkeyed: u64,
    /// `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses: [u64; 5],
    pub timeouts: u64,
    pub latency_us: MergedHistogram,
}

impl SegmentWindow {
    pub fn add_counter(&mut self, counter: Counter, value: u64) {
        add_to(counter, value, &mut self.requests, &mut self.unkeyed, &mut self.responses, &mut self.timeouts);
    }

    pub fn merge(&mut self, other: &SegmentWindow) {
        self.requests = self.requests.saturating_add(other.requests);
        self.unkeyed = self.unkeyed.saturating_add(other.unkeyed);
        add_all(&mut self.responses, &other.responses);
        self.timeouts = self.timeouts.saturating_add(other.timeouts);
        self.latency_us.merge(&other.latency_us);
    }

    pub fn answered(&self) -> u64 {
        sum(self.responses)
    }

    pub fn errors(&self) -> u64 {
        self.responses[4]
    }

    /// 5xx share of the segment's responses; `None` with no response.
    pub fn error_rate(&self) -> Option<f64> {
        rate(self.errors(), self.answered())
    }
}

/// Outcomes of the shadow calls a version received (copies of
/// champion-served requests; the user never waited for them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowWindow {
    /// Calls sent (`shadow.rq_total`).
    pub requests: u64,
    /// Answered with a 5xx.
    pub rq_5xx: u64,
    /// Not answered: timeout, reset, or the call could not be made.
    pub failed: u64,
    /// Both predictions read and equal (same bin or label).
    pub agree: u64,
    /// Both predictions read and different.
    pub disagree: u64,
    /// Answered, but a prediction was missing or unreadable, or the user's
    /// response never completed.
    pub incomplete: u64,
    /// Sampled but not sent (body over the limit, too many in flight).
    pub skipped: u64,
    /// Microseconds from sending a copy to its answer.
    pub latency_us: MergedHistogram,
}

impl ShadowWindow {
    /// Adds a shadow counter's value; the histogram stat is ignored here
    /// (its buckets go to `latency_us`).
    pub fn add_counter(&mut self, stat: ShadowStat, value: u64) {
        let slot = match stat {
            ShadowStat::RqTotal => &mut self.requests,
            ShadowStat::Rq5xx => &mut self.rq_5xx,
            ShadowStat::Failed => &mut self.failed,
            ShadowStat::Agree => &mut self.agree,
            ShadowStat::Disagree => &mut self.disagree,
            ShadowStat::Incomplete => &mut self.incomplete,
            ShadowStat::Skipped => &mut self.skipped,
            ShadowStat::LatencyUs => return,
        };
        *slot = slot.saturating_add(value);
    }

    pub fn merge(&mut self, other: &ShadowWindow) {
        for (a, b) in [
            (&mut self.requests, other.requests),
            (&mut self.rq_5xx, other.rq_5xx),
            (&mut self.failed, other.failed),
            (&mut self.agree, other.agree),
            (&mut self.disagree, other.disagree),
            (&mut self.incomplete, other.incomplete),
            (&mut self.skipped, other.skipped),
        ] {
            *a = a.saturating_add(b);
        }
        self.latency_us.merge(&other.latency_us);
    }

    pub fn is_empty(&self) -> bool {
        *self == ShadowWindow::default()
    }

    /// Calls that got an answer (any status), about: sent minus failed. The
    /// filter counts as `failed` both copies sent that got no answer (they
    /// are in `requests`) and copies it could not send (they are not), so
    /// this can undercount; the exact number of answers is the shadow latency
    /// histogram's count, which lags the counters by a stats flush.
    pub fn answered(&self) -> u64 {
        self.requests.saturating_sub(self.failed)
    }

    /// Calls whose two predictions could be compared.
    pub fn compared(&self) -> u64 {
        self.agree.saturating_add(self.disagree)
    }

    /// agree / (agree + disagree); `None` before any comparison.
    pub fn agreement(&self) -> Option<f64> {
        rate(self.agree, self.compared())
    }

    /// Calls that failed or answered 5xx.
    pub fn errors(&self) -> u64 {
        self.rq_5xx.saturating_add(self.failed)
    }

    /// Share of calls that failed or answered 5xx; `None` before any call.
    /// Over `requests` (copies sent), or over the errors when they are more:
    /// copies the filter could not send count as `failed` without being in
    /// `requests`, so this leans towards a higher rate, never a lower one,
    /// and a challenger nobody can reach reads 100 %.
    pub fn error_rate(&self) -> Option<f64> {
        rate(self.errors(), self.requests.max(self.errors()))
    }
}

/// An endpoint that did not contribute to a window, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointFailure {
    pub endpoint: String,
    pub error: String,
}

/// How much of the fleet a window covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Endpoints asked.
    pub endpoints: usize,
    /// Endpoints that answered with parseable stats.
    pub answered: usize,
    /// Of those, endpoints whose active filter configuration is the window's epoch.
    pub applied: usize,
    /// Endpoints that failed (unreachable, timed out, garbage), with the reason.
    pub failures: Vec<EndpointFailure>,
    /// Endpoints whose counters went down since the last read (an Envoy
    /// restart); their earlier counts were kept.
    pub resets: Vec<String>,
    /// Endpoints no longer in the fleet (not asked: a pod deleted, gone from
    /// Prometheus) whose last counts of the epoch are still in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub departed: Vec<String>,
}

impl Coverage {
    /// `endpoints` Envoys, every one answered and on the epoch.
    pub fn complete(endpoints: usize) -> Coverage {
        Coverage { endpoints, answered: endpoints, applied: endpoints, ..Coverage::default() }
    }
}

/// Per-version evidence for one epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub epoch: u64,
    /// By version name.
    pub versions: BTreeMap<String, VersionWindow>,
    pub coverage: Coverage,
}

impl Window {
    /// A window of `epoch` over `endpoints` Envoys that all answered (tests' shorthand).
    #[cfg(test)]
    pub fn of<'a>(
        epoch: u64,
        endpoints: usize,
        versions: impl IntoIterator<Item = (&'a str, VersionWindow)>,
    ) -> Window {
        let versions = versions.into_iter().map(|(name, w)| (name.to_string(), w)).collect();
        Window { epoch, versions, coverage: Coverage::complete(endpoints) }
    }

    /// The version's numbers (all zero if it saw nothing).
    pub fn version(&self, name: &str) -> VersionWindow {
        self.versions.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        let mut h = MergedHistogram::default();
        h.add(100.0, 10.0, 50);
        h.add(200.0, 10.0, 50);
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.25), Some(105.0));
        assert_eq!(h.quantile(0.5), Some(110.0));
        assert_eq!(h.quantile(0.99), Some(209.8));
        assert_eq!(h.quantile(1.0), Some(210.0));
        assert_eq!(MergedHistogram::default().quantile(0.99), None);
    }

    #[test]
    fn merging_adds_bucket_counts() {
        let (mut a, mut b) = (MergedHistogram::default(), MergedHistogram::default());
        a.add(100.0, 10.0, 1);
        b.add(100.0, 10.0, 2);
        b.add(5.0, 1.0, 3);
        a.merge(&b);
        assert_eq!(a.count(), 6);
        assert_eq!(a.buckets().map(|b| (b.lower, b.count)).collect::<Vec<_>>(), vec![(5.0, 3), (100.0, 3)]);
    }

    #[test]
    fn bad_buckets_are_ignored() {
        let mut h = MergedHistogram::default();
        h.add(f64::NAN, 1.0, 5);
        h.add(-1.0, 1.0, 5);
        h.add(1.0, f64::INFINITY, 5);
        assert_eq!(h.count(), 0);
    }

    #[test]
    fn predictions_segments_and_shadow_merge_and_saturate() {
        let mut a = VersionWindow::default();
        a.add_prediction("b0", 3);
        a.add_prediction("unparsed", 2);
        a.segment_mut("pro").add_counter(Counter::Rq5xx, 1);
        a.segment_mut("pro").add_counter(Counter::Rq2xx, 9);
        a.shadow.add_counter(ShadowStat::RqTotal, 10);
        a.shadow.add_counter(ShadowStat::Agree, 7);
        a.shadow.add_counter(ShadowStat::Disagree, 1);
        a.shadow.add_counter(ShadowStat::Failed, 2);
        a.shadow.add_counter(ShadowStat::LatencyUs, 99);
        let mut b = a.clone();
        b.add_prediction("b0", u64::MAX);
        b.segment_mut("free").add_counter(Counter::RqTotal, 4);
        a.merge(&b);
        assert_eq!(a.predictions["b0"], u64::MAX, "saturates");
        assert_eq!((a.parsed_predictions(), a.unparsed_predictions()), (u64::MAX, 4));
        assert_eq!(a.segments["pro"].answered(), 20);
        assert_eq!(a.segments["pro"].error_rate(), Some(0.1));
        assert_eq!(a.segments["free"].requests, 4);
        assert_eq!((a.shadow.requests, a.shadow.answered(), a.shadow.compared()), (20, 16, 16));
        assert_eq!(a.shadow.agreement(), Some(14.0 / 16.0));
        assert_eq!(a.shadow.error_rate(), Some(0.2));
        assert_eq!(ShadowWindow::default().agreement(), None);
        let unsendable = ShadowWindow { failed: 5, ..ShadowWindow::default() };
        assert_eq!(unsendable.error_rate(), Some(1.0), "copies that could not be sent are errors");
        assert_eq!(ShadowWindow::default().error_rate(), None);
    }

    #[test]
    fn empty_extras_are_left_out_of_the_json_and_read_back_as_empty() {
        let v = VersionWindow::default();
        let json = serde_json::to_value(&v).unwrap();
        for absent in ["predictions", "segments", "shadow"] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
        // Decisions written before these fields existed still read.
        let old = r#"{"requests":1,"unkeyed":0,"responses":[0,1,0,0,0],"timeouts":0,"latency_us":{"buckets":{}}}"#;
        let back: VersionWindow = serde_json::from_str(old).unwrap();
        assert_eq!(back.requests, 1);
        let mut full = VersionWindow::default();
        full.add_prediction("cat", 1);
        full.segment_mut("pro").add_counter(Counter::RqTotal, 1);
        full.shadow.add_counter(ShadowStat::Skipped, 1);
        assert_eq!(serde_json::from_value::<VersionWindow>(serde_json::to_value(&full).unwrap()).unwrap(), full);
    }

    #[test]
    fn rates_need_responses() {
        let mut v = VersionWindow::default();
        assert_eq!(v.error_rate(), None);
        v.add_counter(Counter::Rq2xx, 95);
        v.add_counter(Counter::Rq5xx, 5);
        v.add_counter(Counter::RqTimeout, 2);
        assert_eq!(v.error_rate(), Some(0.05));
        assert_eq!(v.timeout_rate(), Some(0.02));
    }
}
