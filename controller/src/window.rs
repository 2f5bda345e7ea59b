//! A stage's window: what each version did under one configuration epoch,
//! summed across every Envoy that answered. Sources produce it, gates read it.
//!
//! Windows need no start snapshot: the filter names its counters by epoch, so
//! a window is simply "the counters of epoch E", and requests routed by an
//! earlier or later configuration never enter it.

use std::collections::BTreeMap;

use canary_core::metrics::Counter;
use serde::{Deserialize, Serialize};

/// One bucket of a merged histogram (Envoy's log-linear buckets: about two
/// significant digits, so a bucket is at most ~10 % of its lower bound wide).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub lower: f64,
    pub width: f64,
    pub count: u64,
}

/// A histogram merged from many Envoys by adding bucket counts (never by
/// averaging quantiles).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Keyed by the lower bound's bits (non-negative floats order like their bits).
    buckets: BTreeMap<u64, Bucket>,
}

impl Histogram {
    pub fn add(&mut self, lower: f64, width: f64, count: u64) {
        if count == 0 || !lower.is_finite() || !width.is_finite() || lower < 0.0 || width < 0.0 {
            return;
        }
        let b = self.buckets.entry(lower.to_bits()).or_insert(Bucket { lower, width, count: 0 });
        b.count = b.count.saturating_add(count);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for b in other.buckets.values() {
            self.add(b.lower, b.width, b.count);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.values().fold(0u64, |acc, b| acc.saturating_add(b.count))
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
    pub latency_us: Histogram,
}

impl VersionWindow {
    /// Adds a counter's value.
    pub fn add_counter(&mut self, counter: Counter, value: u64) {
        let slot = match counter {
            Counter::RqTotal => &mut self.requests,
            Counter::RqUnkeyed => &mut self.unkeyed,
            Counter::Rq1xx => &mut self.responses[0],
            Counter::Rq2xx => &mut self.responses[1],
            Counter::Rq3xx => &mut self.responses[2],
            Counter::Rq4xx => &mut self.responses[3],
            Counter::Rq5xx => &mut self.responses[4],
            Counter::RqTimeout => &mut self.timeouts,
        };
        *slot = slot.saturating_add(value);
    }

    pub fn merge(&mut self, other: &VersionWindow) {
        self.requests = self.requests.saturating_add(other.requests);
        self.unkeyed = self.unkeyed.saturating_add(other.unkeyed);
        for (a, b) in self.responses.iter_mut().zip(other.responses) {
            *a = a.saturating_add(b);
        }
        self.timeouts = self.timeouts.saturating_add(other.timeouts);
        self.latency_us.merge(&other.latency_us);
    }

    /// Responses seen (the denominator of the rates).
    pub fn answered(&self) -> u64 {
        self.responses.iter().fold(0u64, |acc, n| acc.saturating_add(*n))
    }

    pub fn errors(&self) -> u64 {
        self.responses[4]
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
        let mut h = Histogram::default();
        h.add(100.0, 10.0, 50);
        h.add(200.0, 10.0, 50);
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.25), Some(105.0));
        assert_eq!(h.quantile(0.5), Some(110.0));
        assert_eq!(h.quantile(0.99), Some(209.8));
        assert_eq!(h.quantile(1.0), Some(210.0));
        assert_eq!(Histogram::default().quantile(0.99), None);
    }

    #[test]
    fn merging_adds_bucket_counts() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.add(100.0, 10.0, 1);
        b.add(100.0, 10.0, 2);
        b.add(5.0, 1.0, 3);
        a.merge(&b);
        assert_eq!(a.count(), 6);
        assert_eq!(a.buckets().map(|b| (b.lower, b.count)).collect::<Vec<_>>(), vec![(5.0, 3), (100.0, 3)]);
    }

    #[test]
    fn bad_buckets_are_ignored() {
        let mut h = Histogram::default();
        h.add(f64::NAN, 1.0, 5);
        h.add(-1.0, 1.0, 5);
        h.add(1.0, f64::INFINITY, 5);
        assert_eq!(h.count(), 0);
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
