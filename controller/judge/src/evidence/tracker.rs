//! Restart correction: an Envoy's counters go back to 0 when it restarts;
//! the tracker keeps every endpoint's counts whole across that (see
//! [`ResetTracker`]). Kept in the rollout's state, so a restart of the
//! controller keeps it too.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::admin::{epoch_scope, EndpointSample};

/// Keeps counts whole across Envoy restarts, per endpoint.
///
/// An Envoy's counters and histogram buckets are cumulative since it
/// started, so a restart sends them back to 0. For every series (a counter,
/// or one bucket of a histogram) the tracker keeps the last raw value read
/// and a carried `base`; the corrected value is `base + raw`. A restart is
/// detected when `server.uptime` went down, or when any series of the epoch
/// being read went down (or vanished). On a restart the last raw values of
/// **every** series of that endpoint, all epochs, are added to their bases:
/// nothing is negative, nothing counted before is lost, nothing is counted
/// twice (a series of another epoch restarts from 0 too, and is compared with
/// 0 when that epoch is read next).
///
/// What cannot be recovered: requests an Envoy counted between our last read
/// and its restart (and histogram samples it had not flushed yet). And a
/// restart goes unnoticed if, by the next read, the new process's uptime is
/// already above the old one's at the last read and every series has already
/// climbed back above its old value: then the old process's counts are lost
/// (they are at most what it counted within its uptime at the last read,
/// which is shorter than the gap between the reads). Envoy computes uptime
/// from its wall clock, so a backward step of an Envoy host's clock reads as
/// a restart (its counts since the last read would then be counted twice).
/// A hot restart keeps counters and uptime, and is correctly not a reset.
///
/// Serializable so the controller can persist it across its own restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetTracker {
    pub(crate) endpoints: BTreeMap<String, EndpointTrack>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EndpointTrack {
    /// `server.uptime` at the last read that had it.
    uptime_s: Option<u64>,
    /// Restarts detected so far.
    resets: u64,
    /// By series key.
    series: BTreeMap<String, SeriesTrack>,
}

impl EndpointTrack {
    /// Every series under `scope` (an epoch), `base + last`, zeros left out.
    fn corrected(&self, scope: &str) -> BTreeMap<String, u64> {
        self.series
            .iter()
            .filter(|(k, _)| k.starts_with(scope))
            .map(|(k, s)| (k.clone(), s.base.saturating_add(s.last)))
            .filter(|(_, v)| *v > 0)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SeriesTrack {
    /// Raw value at the last read (since the current process started).
    last: u64,
    /// Counted by earlier processes of this endpoint.
    base: u64,
}

/// One endpoint's sample after restart correction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Corrected {
    /// Every series of the sample's epoch (zeros left out): `base + raw`.
    pub series: BTreeMap<String, u64>,
    /// A restart was detected at this read.
    pub reset: bool,
}

impl ResetTracker {
    /// Reads the tracker saved in a state file: `null` (none yet) or the
    /// tracker. One that cannot be read is dropped rather than refusing the
    /// whole state, as when it was stored as free JSON: it only refines
    /// counts across restarts, and the source's own tracker carries on.
    pub fn deserialize_saved<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ResetTracker>, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(serde_json::from_value(value).ok())
    }

    /// Records a successful read of `endpoint` and returns its corrected
    /// series. Pure: no clock, no I/O.
    pub fn observe(&mut self, endpoint: &str, sample: &EndpointSample) -> Corrected {
        let scope = epoch_scope(&sample.rollout, sample.epoch);
        let in_scope = |k: &String| k.starts_with(&scope);
        let track = self.endpoints.entry(endpoint.to_string()).or_default();

        let uptime_went_down = matches!((track.uptime_s, sample.uptime_s), (Some(before), Some(now)) if now < before);
        let series_went_down = track
            .series
            .iter()
            .filter(|(k, _)| in_scope(k))
            .any(|(k, s)| sample.series.get(k).copied().unwrap_or(0) < s.last);
        let reset = uptime_went_down || series_went_down;
        if reset {
            track.resets = track.resets.saturating_add(1);
            for s in track.series.values_mut() {
                s.base = s.base.saturating_add(s.last);
                s.last = 0;
            }
        }
        for (k, raw) in sample.series.iter().filter(|(k, _)| in_scope(k)) {
            track.series.entry(k.clone()).or_default().last = *raw;
        }
        if sample.uptime_s.is_some() {
            track.uptime_s = sample.uptime_s;
        }
        Corrected { series: track.corrected(&scope), reset }
    }

    /// Restarts detected so far at `endpoint`.
    pub fn resets(&self, endpoint: &str) -> u64 {
        self.endpoints.get(endpoint).map_or(0, |t| t.resets)
    }

    /// Drops what is kept for an endpoint (gone from the fleet).
    pub fn forget_endpoint(&mut self, endpoint: &str) {
        self.endpoints.remove(endpoint);
    }

    /// Drops what is kept for one rollout epoch on every endpoint (once no
    /// window of it will be read again), so the state stays small: endpoints
    /// left with nothing counted go too (pods come and go in a mesh).
    pub fn forget_epoch(&mut self, rollout: &str, epoch: u64) {
        let scope = epoch_scope(rollout, epoch);
        for track in self.endpoints.values_mut() {
            track.series.retain(|k, _| !k.starts_with(&scope));
        }
        self.endpoints.retain(|_, track| !track.series.is_empty());
    }

    /// Endpoints not in `asked` that counted under the epoch, with their
    /// last corrected series of it (zeros left out).
    pub fn departed(&self, rollout: &str, epoch: u64, asked: &BTreeSet<&str>) -> Vec<(String, BTreeMap<String, u64>)> {
        let scope = epoch_scope(rollout, epoch);
        self.endpoints
            .iter()
            .filter(|(endpoint, _)| !asked.contains(endpoint.as_str()))
            .map(|(endpoint, track)| (endpoint.clone(), track.corrected(&scope)))
            .filter(|(_, series)| !series.is_empty())
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::evidence::merge::{merge_reads, EndpointRead};
    use crate::evidence::sample;

    #[test]
    fn the_tracker_carries_prediction_segment_and_shadow_series_across_a_restart() {
        const PRED: &str = "canary.rollout.r.epoch.1.version.v1.pred.b2";
        const SEG: &str = "canary.rollout.r.epoch.1.version.v1.segment.pro.rq_5xx";
        const SEG_BUCKET: &str = "canary.rollout.r.epoch.1.version.v1.segment.pro.latency_us@100+10";
        const AGREE: &str = "canary.rollout.r.epoch.1.version.v2.shadow.agree";
        const SHADOW_BUCKET: &str = "canary.rollout.r.epoch.1.version.v2.shadow.latency_us@2000+100";
        let mut t = ResetTracker::default();
        let before = [(PRED, 10), (SEG, 3), (SEG_BUCKET, 8), (AGREE, 20), (SHADOW_BUCKET, 20)];
        t.observe("e", &sample("r", 1, Some(100), &before));
        // Only a shadow counter went down (uptime unknown): still a restart of the whole endpoint.
        let after = [(PRED, 12), (SEG, 3), (SEG_BUCKET, 9), (AGREE, 1), (SHADOW_BUCKET, 21)];
        let got = t.observe("e", &sample("r", 1, None, &after));
        assert!(got.reset);
        let want: BTreeMap<String, u64> = [(PRED, 22), (SEG, 6), (SEG_BUCKET, 17), (AGREE, 21), (SHADOW_BUCKET, 41)]
            .map(|(k, v)| (k.into(), v))
            .into();
        assert_eq!(got.series, want);
        let w = merge_reads(
            "r",
            1,
            "r/1",
            &[EndpointRead { endpoint: "e".into(), outcome: Ok(sample("r", 1, Some(1), &after)) }],
            &mut t,
        );
        assert_eq!(w.version("v1").predictions["b2"], 22 + 12, "a second restart carries again");
        assert_eq!(w.version("v2").shadow.agree, 21 + 1);
    }

    /// Two raw reads of one endpoint, and what the tracker must make of them.
    struct TrackerCase {
        name: &'static str,
        before: EndpointSample,
        after: EndpointSample,
        reset: bool,
        corrected: &'static [(&'static str, u64)],
    }

    pub(crate) const TOTAL: &str = "canary.rollout.r.epoch.1.version.v1.rq_total";
    const OK: &str = "canary.rollout.r.epoch.1.version.v1.rq_2xx";
    const BUCKET: &str = "canary.rollout.r.epoch.1.version.v1.latency_us@100+10";

    fn tracker_cases() -> Vec<TrackerCase> {
        vec![
            TrackerCase {
                name: "counters grow, uptime grows: no reset, raw values as they are",
                before: sample("r", 1, Some(100), &[(TOTAL, 10), (OK, 9), (BUCKET, 9)]),
                after: sample("r", 1, Some(110), &[(TOTAL, 15), (OK, 14), (BUCKET, 14)]),
                reset: false,
                corrected: &[(TOTAL, 15), (OK, 14), (BUCKET, 14)],
            },
            TrackerCase {
                name: "nothing new: no reset",
                before: sample("r", 1, Some(100), &[(TOTAL, 10)]),
                after: sample("r", 1, Some(100), &[(TOTAL, 10)]),
                reset: false,
                corrected: &[(TOTAL, 10)],
            },
            TrackerCase {
                name: "uptime went down though every counter grew: reset, old counts carried",
                before: sample("r", 1, Some(100), &[(TOTAL, 10), (OK, 9)]),
                after: sample("r", 1, Some(5), &[(TOTAL, 12), (OK, 12)]),
                reset: true,
                corrected: &[(TOTAL, 22), (OK, 21)],
            },
            TrackerCase {
                name: "one counter went down, uptime unknown: reset",
                before: sample("r", 1, None, &[(TOTAL, 10), (OK, 9)]),
                after: sample("r", 1, None, &[(TOTAL, 3), (OK, 9)]),
                reset: true,
                corrected: &[(TOTAL, 13), (OK, 18)],
            },
            TrackerCase {
                name: "a histogram bucket went down: reset",
                before: sample("r", 1, Some(50), &[(TOTAL, 10), (BUCKET, 10)]),
                after: sample("r", 1, Some(60), &[(TOTAL, 11), (BUCKET, 2)]),
                reset: true,
                corrected: &[(TOTAL, 21), (BUCKET, 12)],
            },
            TrackerCase {
                name: "series vanished (restarted Envoy has not counted yet): reset, never negative",
                before: sample("r", 1, Some(50), &[(TOTAL, 10), (OK, 10), (BUCKET, 10)]),
                after: sample("r", 1, Some(1), &[]),
                reset: true,
                corrected: &[(TOTAL, 10), (OK, 10), (BUCKET, 10)],
            },
            TrackerCase {
                name: "uptime went up and all series grew back: an unseen restart (documented limit)",
                before: sample("r", 1, Some(5), &[(TOTAL, 10)]),
                after: sample("r", 1, Some(50), &[(TOTAL, 12)]),
                reset: false,
                corrected: &[(TOTAL, 12)],
            },
            TrackerCase {
                name: "another epoch read in between does not count as a decrease",
                before: sample("r", 2, Some(5), &[("canary.rollout.r.epoch.2.version.v1.rq_total", 1)]),
                after: sample("r", 1, Some(6), &[(TOTAL, 4)]),
                reset: false,
                corrected: &[(TOTAL, 4)],
            },
        ]
    }

    #[test]
    fn tracker_cases_hold() {
        for case in tracker_cases() {
            let mut t = ResetTracker::default();
            let first = t.observe("e", &case.before);
            assert!(!first.reset, "{}: first read is never a reset", case.name);
            assert_eq!(first.series, case.before.series, "{}: first read is taken as is", case.name);
            let got = t.observe("e", &case.after);
            let want: BTreeMap<String, u64> = case.corrected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            assert_eq!((got.reset, &got.series), (case.reset, &want), "{}", case.name);
            assert_eq!(t.resets("e"), u64::from(case.reset), "{}", case.name);
            // Corrected values never go down from one read to the next.
            for (k, v) in &first.series {
                if case.before.epoch == case.after.epoch {
                    assert!(got.series.get(k).copied().unwrap_or(0) >= *v, "{}: {k} went down", case.name);
                }
            }
        }
    }

    #[test]
    fn nothing_is_double_counted_over_several_restarts() {
        // Raw counter of one endpoint over reads; restarts after reads 2 and 4.
        // Truth = what the endpoint really counted, visible at each read.
        let raws = [(100, 4), (110, 9), (2, 3), (12, 7), (1, 0), (11, 5), (21, 6)];
        let truth = [4, 9, 12, 16, 16, 21, 22];
        let mut t = ResetTracker::default();
        for ((uptime, raw), want) in raws.into_iter().zip(truth) {
            let got = t.observe("e", &sample("r", 1, Some(uptime), &[(TOTAL, raw)]));
            assert_eq!(got.series.get(TOTAL).copied().unwrap_or(0), want, "uptime {uptime} raw {raw}");
        }
        assert_eq!(t.resets("e"), 2);
    }

    #[test]
    fn a_restart_seen_in_one_epoch_carries_every_epoch_once() {
        let e1 = "canary.rollout.r.epoch.1.version.v1.rq_total";
        let e2 = "canary.rollout.r.epoch.2.version.v1.rq_total";
        let mut t = ResetTracker::default();
        t.observe("e", &sample("r", 1, Some(100), &[(e1, 50)]));
        t.observe("e", &sample("r", 2, Some(101), &[(e2, 7)]));
        // Restart; epoch 2 is read first and sees it.
        let got = t.observe("e", &sample("r", 2, Some(3), &[(e2, 2)]));
        assert!(got.reset);
        assert_eq!(got.series[e2], 9);
        // Epoch 1 restarted from 0 too: it is carried, not a second reset, not counted twice.
        let got = t.observe("e", &sample("r", 1, Some(4), &[(e1, 1)]));
        assert!(!got.reset);
        assert_eq!(got.series[e1], 51);
        assert_eq!(t.resets("e"), 1);
    }

    #[test]
    fn endpoints_are_tracked_apart_and_the_state_survives_serde() {
        let mut t = ResetTracker::default();
        t.observe("a", &sample("r", 1, Some(100), &[(TOTAL, 10)]));
        t.observe("b", &sample("r", 1, Some(5), &[(TOTAL, 3)]));
        let json = serde_json::to_string(&t).unwrap();
        let mut back: ResetTracker = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        let got = back.observe("a", &sample("r", 1, Some(1), &[(TOTAL, 1)]));
        assert_eq!((got.reset, got.series[TOTAL]), (true, 11));
        let got = back.observe("b", &sample("r", 1, Some(6), &[(TOTAL, 4)]));
        assert_eq!((got.reset, got.series[TOTAL]), (false, 4));

        back.forget_epoch("r", 1);
        let got = back.observe("a", &sample("r", 1, Some(2), &[(TOTAL, 2)]));
        assert_eq!(got.series[TOTAL], 2);
        back.forget_endpoint("a");
        assert_eq!(back.resets("a"), 0);
    }
}
