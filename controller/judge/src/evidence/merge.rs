//! Many endpoints' samples of one rollout epoch, corrected for restarts,
//! summed into one [`Window`] with its coverage (who was asked, answered,
//! applied the epoch, failed, restarted or departed).

use std::collections::{BTreeMap, BTreeSet};

use super::admin::{decode_series, EndpointSample, HistogramOf, ReadError, Series, What};
use super::tracker::ResetTracker;
use crate::window::{EndpointFailure, Window};

/// One endpoint's read: a sample or why there is none.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointRead {
    pub endpoint: String,
    pub outcome: Result<EndpointSample, ReadError>,
}

/// Merges endpoint reads of epoch `epoch` of `rollout` into one window:
/// corrects each sample with `tracker` (in the order given), sums the series
/// per version, and fills the coverage. An endpoint the tracker knows but that
/// is no longer asked (a pod deleted, gone from Prometheus's `up`) keeps its
/// last counts of the epoch in the window, listed in `coverage.departed`: what
/// it served is evidence, and counts never go down because a pod went away.
/// Pure.
pub fn merge_reads(
    rollout: &str,
    epoch: u64,
    expected_version: &str,
    reads: &[EndpointRead],
    tracker: &mut ResetTracker,
) -> Window {
    let mut window = Window { epoch, ..Window::default() };
    window.coverage.endpoints = reads.len();
    // Summed by the tracker's key id first: each key is decoded once per
    // window, not once per endpoint.
    let mut totals: Vec<u64> = vec![];
    let mut add = |id: u32, value: u64| {
        let id = id as usize;
        if id >= totals.len() {
            totals.resize(id + 1, 0);
        }
        totals[id] = totals[id].saturating_add(value);
    };
    for read in reads {
        let sample = match &read.outcome {
            Ok(sample) if sample.epoch == epoch => sample,
            Ok(sample) => {
                let error = format!("sample is of epoch {}, not {epoch}", sample.epoch);
                window.coverage.failures.push(EndpointFailure { endpoint: read.endpoint.clone(), error });
                continue;
            }
            Err(e) => {
                window
                    .coverage
                    .failures
                    .push(EndpointFailure { endpoint: read.endpoint.clone(), error: e.to_string() });
                continue;
            }
        };
        window.coverage.answered += 1;
        // Applied: Envoy reports our `version_info`, or it already counted
        // something under this epoch (only this epoch's configuration defines
        // those metrics). The second matters where the mesh delivers the
        // configuration with a version text of its own (Istio's WasmPlugin).
        if sample.active_version.as_deref() == Some(expected_version) || !sample.series.is_empty() {
            window.coverage.applied += 1;
        }
        if tracker.observe_into(&read.endpoint, sample, &mut add) {
            window.coverage.resets.push(read.endpoint.clone());
        }
    }
    let asked: BTreeSet<&str> = reads.iter().map(|r| r.endpoint.as_str()).collect();
    window.coverage.departed = tracker.departed_into(rollout, epoch, &asked, &mut add);
    let mut sums = SeriesSums::default();
    for (id, total) in totals.iter().enumerate().filter(|(_, t)| **t > 0) {
        sums.add(&mut window, tracker.key(id as u32), *total);
    }
    sums.finish(&mut window);
    window
}

/// Histogram buckets summed per bound first (saturating), then added
/// to the window once each: keyed by (version, which histogram, lower
/// bound's bits).
#[derive(Default)]
struct SeriesSums {
    buckets: BTreeMap<(String, HistogramKey, u64), (f64, f64, u64)>,
}

impl SeriesSums {
    /// Adds one series' total over the endpoints: counters straight into the window.
    fn add(&mut self, window: &mut Window, key: &str, value: u64) {
        let Some(Series { version, what }) = decode_series(key) else { return };
        if let What::Bucket { of, lower, width } = what {
            let slot = self
                .buckets
                .entry((version.to_string(), HistogramKey::from(of), lower.to_bits()))
                .or_insert((lower, width, 0));
            slot.2 = slot.2.saturating_add(value);
            return;
        }
        let v = window.versions.entry(version.to_string()).or_default();
        match what {
            What::Counter(counter) => v.add_counter(counter, value),
            What::Pred(bin) => v.add_prediction(bin, value),
            What::SegmentCounter(segment, counter) => v.segment_mut(segment).add_counter(counter, value),
            What::ShadowCounter(stat) => v.shadow.add_counter(stat, value),
            What::Bucket { .. } => {}
        }
    }

    fn finish(self, window: &mut Window) {
        for ((version, of, _), (lower, width, n)) in self.buckets {
            let v = window.versions.entry(version).or_default();
            let histogram = match &of {
                HistogramKey::Latency => &mut v.latency_us,
                HistogramKey::Segment(segment) => &mut v.segment_mut(segment).latency_us,
                HistogramKey::Shadow => &mut v.shadow.latency_us,
            };
            histogram.add(lower, width, n);
        }
    }
}

/// [`HistogramOf`], owned, to key the bucket sums.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HistogramKey {
    Latency,
    Segment(String),
    Shadow,
}

impl From<HistogramOf<'_>> for HistogramKey {
    fn from(of: HistogramOf<'_>) -> Self {
        match of {
            HistogramOf::Latency => HistogramKey::Latency,
            HistogramOf::Segment(s) => HistogramKey::Segment(s.to_string()),
            HistogramOf::Shadow => HistogramKey::Shadow,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use canary_core::metrics::{Counter, Histogram};

    use super::*;
    use crate::evidence::admin::tests::REAL;
    use crate::evidence::admin::{bucket_series, counter_series, parse_stats};
    use crate::evidence::sample;
    use crate::evidence::tracker::tests::TOTAL;

    #[test]
    fn two_endpoints_merge_by_adding_counters_and_buckets() {
        let a = parse_stats(REAL.as_bytes(), "x", 1).unwrap();
        let mut b = a.clone();
        b.active_version = Some("x/0".into());
        b.series.insert(bucket_series("x", 1, "v1", Histogram::LatencyUs, 5000.0, 100.0), 4);
        b.series.insert(counter_series("x", 1, "v3", Counter::RqUnkeyed), 2);
        let reads = [
            EndpointRead { endpoint: "a".into(), outcome: Ok(a) },
            EndpointRead { endpoint: "b".into(), outcome: Ok(b) },
            EndpointRead { endpoint: "c".into(), outcome: Err(ReadError::Timeout(Duration::from_millis(500))) },
        ];
        let mut tracker = ResetTracker::default();
        let w = merge_reads("x", 1, "x/1", &reads, &mut tracker);
        assert_eq!(w.epoch, 1);
        let v1 = w.version("v1");
        assert_eq!((v1.requests, v1.responses[4]), (26, 26));
        assert_eq!(v1.latency_us.count(), 26 + 4);
        let b120 = v1.latency_us.buckets().next().copied().unwrap();
        assert_eq!((b120.lower, b120.width, b120.count), (120.0, 10.0, 12));
        assert_eq!(w.version("v2").requests, 14);
        assert_eq!(w.version("v3").unkeyed, 2);
        let c = &w.coverage;
        // b reports another version text, but it counts under epoch 1: applied.
        assert_eq!((c.endpoints, c.answered, c.applied), (3, 2, 2));
        assert_eq!(
            c.failures,
            vec![EndpointFailure {
                endpoint: "c".into(),
                error: "no complete answer within 500ms (endpoint hanging or too slow)".into()
            }]
        );
        assert!(c.resets.is_empty());
    }

    #[test]
    fn an_endpoint_is_applied_by_its_version_text_or_by_counting_under_the_epoch() {
        let read = |endpoint: &str, version: Option<&str>, total| {
            let mut s = sample("r", 2, Some(10), &[]);
            s.active_version = version.map(str::to_string);
            if total > 0 {
                s.series.insert(counter_series("r", 2, "v1", Counter::RqTotal), total);
            }
            EndpointRead { endpoint: endpoint.into(), outcome: Ok(s) }
        };
        let reads = [
            read("ours-idle", Some("r/2"), 0),
            read("istio-serving", Some("istiod-7f3a"), 5),
            read("istio-idle", Some("istiod-7f3a"), 0),
            read("behind", Some("r/1"), 0),
        ];
        let w = merge_reads("r", 2, "r/2", &reads, &mut ResetTracker::default());
        assert_eq!((w.coverage.answered, w.coverage.applied), (4, 2));
    }

    #[test]
    fn a_restarted_endpoint_is_reported_and_its_counts_kept() {
        let mut tracker = ResetTracker::default();
        let read = |uptime, total| EndpointRead {
            endpoint: "a".into(),
            outcome: Ok(sample("r", 1, Some(uptime), &[(TOTAL, total)])),
        };
        let w = merge_reads("r", 1, "r/1", &[read(100, 40)], &mut tracker);
        assert_eq!(w.version("v1").requests, 40);
        let w = merge_reads("r", 1, "r/1", &[read(3, 5)], &mut tracker);
        assert_eq!(w.version("v1").requests, 45);
        assert_eq!(w.coverage.resets, vec!["a".to_string()]);
        assert_eq!(w.coverage.applied, 1);
    }

    #[test]
    fn a_departed_endpoint_keeps_its_last_counts_until_the_epoch_is_forgotten() {
        let mut tracker = ResetTracker::default();
        let read = |endpoint: &str, epoch, total| EndpointRead {
            endpoint: endpoint.into(),
            outcome: Ok(sample("r", epoch, Some(100), &[(&counter_series("r", epoch, "v1", Counter::RqTotal), total)])),
        };
        let w = merge_reads("r", 1, "r/1", &[read("a", 1, 40), read("b", 1, 7)], &mut tracker);
        assert_eq!(w.version("v1").requests, 47);
        // Pod b is deleted: it is no longer asked. Its 7 stay; a is read on.
        let w = merge_reads("r", 1, "r/1", &[read("a", 1, 50)], &mut tracker);
        assert_eq!(w.version("v1").requests, 57);
        assert_eq!(w.coverage.departed, vec!["b".to_string()]);
        assert_eq!((w.coverage.endpoints, w.coverage.answered), (1, 1));
        // A failed endpoint is not departed: it is still in the fleet, and a failure.
        let down = EndpointRead { endpoint: "b".into(), outcome: Err(ReadError::ScrapeFailed) };
        let w = merge_reads("r", 1, "r/1", &[read("a", 1, 50), down], &mut tracker);
        assert_eq!((w.version("v1").requests, w.coverage.failures.len()), (50, 1));
        assert!(w.coverage.departed.is_empty());
        // Another epoch: b counted nothing there, so it is not listed.
        let w = merge_reads("r", 2, "r/2", &[read("a", 2, 3)], &mut tracker);
        assert_eq!((w.version("v1").requests, w.coverage.departed.len()), (3, 0));
        // Once epoch 1 is forgotten, so is b (nothing of it left).
        tracker.forget_epoch("r", 1);
        assert_eq!(tracker.endpoints.keys().collect::<Vec<_>>(), vec!["a"]);
    }
}
