//! Per-version response counts and latency from Envoy's own per-cluster
//! stats (`envoy.counts: cluster`): with one cluster per version, named
//! after it, Envoy already counts what the filter would
//! (`counts: filter`), so the filter skips the `:status` read, the clock
//! reads and the histogram on every request.
//!
//! ```text
//!  /stats?format=json&usedonly&histogram_buckets=detailed&filter=…|^cluster\.(v1|v2)\.upstream_rq_…
//!    cluster.<v>.upstream_rq_1xx … upstream_rq_5xx  ─► rq_1xx … rq_5xx  ┐ cumulative since that Envoy
//!    cluster.<v>.upstream_rq_504                    ─► rq_timeout       │ started, in a scope of their
//!    cluster.<v>.upstream_rq_time (ms, histogram)   ─► latency_us (×1000)┘ own (CUMULATIVE_EPOCH)
//!      ──parse_cluster_stats──► EndpointSample ──ResetTracker (restarts)──► corrected, per endpoint
//!      ──ClusterCounts::apply: − the endpoint's baseline ──► the stage window's responses, timeouts, latency
//! ```
//!
//! Everything else of the window stays the filter's, read per epoch as
//! ever: `rq_total` and `rq_unkeyed` (the filter keeps counting them: held
//! in its memory, no host call per request), predictions, segments (their
//! status classes and latency too), shadow, and the coverage.
//!
//! ## Windows without an epoch in the name
//!
//! Envoy's stat names carry no epoch, so a stage's window is *cumulative
//! now − a baseline*. Per endpoint, the baseline of a stage is that
//! endpoint's cumulative (restart-corrected) counts at its last read before
//! the stage's first read, i.e. at the read that decided the change; for an
//! endpoint first read during the stage, its first read. Consecutive stages
//! therefore tile: what one stage's last window ends with, the next one
//! starts from, and the whole rollout's counts are the sum of its stages'
//! last windows (from the controller's first read of each endpoint on).
//!
//! **What a window can mix at a stage change.** A stage's window also holds
//! the responses completed between the deciding read and the moment each
//! Envoy applied the new configuration (the push and Envoy's reload: tens of
//! milliseconds with the ECDS file sink, up to `envoy.apply_timeout`), and
//! requests in flight across the apply complete under the new window. Each
//! of them is counted for the version that served it, which is the same model
//! in both stages, so per-version evidence stays valid: only the attribution
//! to the stage boundary blurs, by at most those responses (routed at the
//! earlier stage's weight, so the share of challenger responses in the
//! window is off by at most as much). With `counts: filter` the epoch in the
//! name makes the boundary exact.
//!
//! **What differs from the filter's own counts.** Envoy counts upstream
//! attempts: with retries configured on the route, each attempt is counted
//! (the filter counts the response the client got). Requests routed to a
//! version's cluster without the filter deciding (a QA override, a route
//! that bypasses the filter) are counted too. A shadow copy sent to a
//! version's cluster would be counted as its response: the filter refuses a
//! shadow cluster that is a version's in this mode. Replies Envoy makes
//! itself without an upstream attempt (no healthy host, overflow) are in
//! `upstream_rq_*` as Envoy charges them (503), as the filter would see them.
//!
//! **Restarts and departures** are the [`ResetTracker`]'s, on a tracker of
//! its own: an Envoy restart (uptime or a counter going down) carries the
//! earlier counts over, so cumulative counts never go down; an endpoint that
//! fails a read or leaves the fleet keeps what it counted in the stage.
//!
//! ## Sources
//!
//! The admin API answers the cluster stats in the same answer as the
//! filter's ([`parse_cluster_stats`]); Prometheus answers one more query
//! ([`prometheus::cluster_query`], Envoy's own names or Istio's, read by
//! [`prometheus::cluster_reads`]). Both give the same cumulative samples, so
//! the windows, the restarts and the persistence below are the same.
//!
//! ## Controller restarts
//!
//! The baselines survive a controller restart: they are saved next to the
//! filter's reset tracker, in [`SHARDS`] shards by endpoint
//! ([`ClusterCounts::baseline_shard`]), each written only when it changes
//! (every baseline moves at a stage's first read; one moves when an
//! endpoint is first read), at most one shard an interval, the next changed
//! one in turn: a stage change is on disk within [`SHARDS`] intervals, and
//! no interval writes more than a sixteenth of the baselines. The counts'
//! own reset tracker is saved like the filter's, a shard per interval in
//! turn plus what no Envoy can tell again ([`ClusterCounts::tracker_mut`]).
//! At 10 000 Envoys with 2 × 23 series each that is ≤ 0.4 MB of baselines
//! plus ~0.4 MB of tracker per interval (`cluster::tests`), and the filter's
//! tracker is small in this mode (it counts no classes or latency).
//!
//! After a restart mid-stage, each endpoint's window is its cumulative
//! count now (restart-corrected as the tracker allows) minus the same
//! baseline as before: the stage's window is whole, as if the controller
//! had not restarted. What loses evidence instead (never misplaces it):
//! an endpoint whose baseline shard was not saved yet at this stage (within
//! [`SHARDS`] intervals of the stage's start, or its first read) is
//! baselined again at its first read after the restart; a controller
//! restarted between a stage's deciding read and the next stage's first
//! read baselines every endpoint at its first read after the restart (the
//! saved tracker's values may be older than the deciding read); and an
//! Envoy that also restarted while the controller was down loses what the
//! tracker documents.

use std::collections::{BTreeMap, BTreeSet};

use canary_core::metrics::{Counter, Histogram, Leaf};
use serde::{Deserialize, Serialize};

use super::admin::{decode_series, parse_answer, EndpointSample, HistogramOf, ParseError, Pick, Series, What};
use super::merge::EndpointRead;
use super::tracker::{shard_of, ResetTracker, SHARDS};
use crate::window::{VersionWindow, Window};

pub mod prometheus;

/// The epoch the cumulative cluster series are kept under (they have none):
/// a scope of [`ClusterCounts`]' own tracker, never mixed with the filter's.
pub const CUMULATIVE_EPOCH: u64 = 0;

/// The admin-API `filter` regex branch (RE2, anchored) that selects the
/// cluster stats read for `versions` (their clusters are named after them).
/// Version names are `[A-Za-z0-9_-]`, so they need no escaping.
pub fn stats_filter(versions: &[&str]) -> String {
    format!("^cluster\\.({})\\.upstream_rq_([1-5]xx|504|time)$", versions.join("|"))
}

/// What a cluster stat is read as: `(version, leaf, scale)`.
fn pick<'a>(name: &'a str, versions: &[&str]) -> Option<Pick<'a>> {
    let rest = name.strip_prefix("cluster.")?;
    let (cluster, stat) = rest.split_once(".upstream_rq_")?;
    let version = versions.iter().find(|v| **v == cluster).map(|_| cluster)?;
    let (leaf, scale): (Leaf<'_>, f64) = match stat {
        "1xx" => (Counter::Rq1xx.into(), 1.0),
        "2xx" => (Counter::Rq2xx.into(), 1.0),
        "3xx" => (Counter::Rq3xx.into(), 1.0),
        "4xx" => (Counter::Rq4xx.into(), 1.0),
        "5xx" => (Counter::Rq5xx.into(), 1.0),
        "504" => (Counter::RqTimeout.into(), 1.0),
        // Milliseconds in Envoy, microseconds in the window.
        "time" => (Histogram::LatencyUs.into(), 1000.0),
        _ => return None,
    };
    Some(Pick { version, leaf, scale })
}

/// Parses the cluster stats of `versions` out of an admin-API answer
/// (`/stats?format=json&histogram_buckets=detailed`, the same answer the
/// filter's stats come in) into a sample of `rollout` at
/// [`CUMULATIVE_EPOCH`]: `rq_1xx`…`rq_5xx`, `rq_timeout` (504s) and
/// `latency_us` buckets (Envoy's ms bounds × 1000), cumulative since that
/// Envoy started, plus its uptime. Pure, bounded, never panics; refuses what
/// [`parse_stats`](super::admin::parse_stats) refuses.
pub fn parse_cluster_stats(body: &[u8], rollout: &str, versions: &[&str]) -> Result<EndpointSample, ParseError> {
    let mut sample = parse_answer(body, rollout, CUMULATIVE_EPOCH, |name| pick(name, versions))?;
    // The ECDS version belongs to the filter's sample (coverage).
    sample.active_version = None;
    Ok(sample)
}

/// One endpoint's corrected cumulative series: at the stage's start, and now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Baseline {
    base: BTreeMap<String, u64>,
    last: BTreeMap<String, u64>,
}

/// Stage windows from cumulative cluster counts (see the module docs): a
/// reset tracker of its own, and per endpoint the baseline of the stage
/// being read. Pure; lives in the stats source.
#[derive(Clone, Debug, Default)]
pub struct ClusterCounts {
    tracker: ResetTracker,
    /// The epoch the baselines are of.
    epoch: Option<u64>,
    endpoints: BTreeMap<String, Baseline>,
    /// Baseline shards changed since they were last saved.
    unsaved: [bool; SHARDS],
    /// Where the search for the next baseline shard to save starts.
    cursor: usize,
    /// Restored from saved state and not read since: the `last` values are
    /// the saved tracker's, possibly older than the last read before the
    /// restart (not a baseline a new stage may start from).
    restored: bool,
}

/// Version of the baseline shard format (`format` in every shard).
pub const BASELINE_FORMAT: u32 = 1;

/// One shard of a [`ClusterCounts`]' baselines as saved: the epoch they
/// are of, the series keys they use, and per endpoint its baseline as
/// `[key index, value]` pairs (zeros left out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineShard {
    pub format: u32,
    pub shard: usize,
    pub epoch: Option<u64>,
    pub keys: Vec<String>,
    pub endpoints: BTreeMap<String, Vec<(u32, u64)>>,
}

/// Why saved baselines could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BaselineError {
    #[error("baseline shard format {0} is not {BASELINE_FORMAT}")]
    Format(u32),
    #[error("a baseline names key {0}, which the shard does not list")]
    NoSuchKey(u32),
    #[error("endpoint `{endpoint}` is saved in baseline shard {shard}, not its own")]
    WrongShard { endpoint: String, shard: usize },
}

impl ClusterCounts {
    /// Puts into `window` (the filter's window of its epoch) each version's
    /// responses, timeouts and latency since the stage's baseline, from
    /// `reads` (samples of [`parse_cluster_stats`]). A read of a new epoch
    /// starts a stage: every endpoint's baseline becomes its last read. An
    /// endpoint that failed keeps what it counted in the stage; one no
    /// longer asked at a stage start is dropped (its counts are in the
    /// earlier stages' windows).
    pub fn apply(&mut self, reads: &[EndpointRead], window: &mut Window) {
        if self.epoch != Some(window.epoch) {
            let asked: BTreeSet<&str> = reads.iter().map(|r| r.endpoint.as_str()).collect();
            let gone: Vec<String> = self.endpoints.keys().filter(|e| !asked.contains(e.as_str())).cloned().collect();
            for e in &gone {
                // Its counts are in the earlier stages' windows.
                self.endpoints.remove(e);
                self.tracker.forget_endpoint(e);
            }
            if self.restored {
                // The saved `last` values may predate the deciding read:
                // each endpoint starts from its first read now instead.
                self.endpoints.clear();
            }
            for b in self.endpoints.values_mut() {
                b.base = b.last.clone();
            }
            self.epoch = Some(window.epoch);
            self.unsaved = [true; SHARDS];
        }
        self.restored = false;
        for read in reads {
            let Ok(sample) = &read.outcome else { continue };
            if sample.epoch != CUMULATIVE_EPOCH {
                continue;
            }
            let now = self.tracker.observe(&read.endpoint, sample).series;
            let b = match self.endpoints.get_mut(&read.endpoint) {
                Some(b) => b,
                None => {
                    self.unsaved[shard_of(&read.endpoint)] = true;
                    let base = Baseline { base: now.clone(), last: BTreeMap::new() };
                    self.endpoints.entry(read.endpoint.clone()).or_insert(base)
                }
            };
            b.last = now;
        }
        let mut since: BTreeMap<&str, u64> = BTreeMap::new();
        for b in self.endpoints.values() {
            for (key, now) in &b.last {
                let n = now.saturating_sub(b.base.get(key).copied().unwrap_or(0));
                let slot = since.entry(key.as_str()).or_default();
                *slot = slot.saturating_add(n);
            }
        }
        let mut versions: BTreeMap<String, VersionWindow> = BTreeMap::new();
        for (key, n) in since {
            let Some(Series { version, what }) = decode_series(key) else { continue };
            let v = versions.entry(version.to_string()).or_default();
            match what {
                // Only classes and 504s are read from clusters (see `pick`).
                What::Counter(c) => v.add_counter(c, n),
                What::Bucket { of: HistogramOf::Latency, lower, width } => v.latency_us.add(lower, width, n),
                _ => {}
            }
        }
        for (name, v) in window.versions.iter_mut() {
            // Replaced, not added to: the filter does not count these in this mode.
            let c = versions.remove(name).unwrap_or_default();
            (v.responses, v.timeouts, v.latency_us) = (c.responses, c.timeouts, c.latency_us);
        }
        for (name, c) in versions {
            let v = window.versions.entry(name).or_default();
            (v.responses, v.timeouts, v.latency_us) = (c.responses, c.timeouts, c.latency_us);
        }
    }

    /// Restarts detected so far at `endpoint`.
    pub fn resets(&self, endpoint: &str) -> u64 {
        self.tracker.resets(endpoint)
    }

    /// The reset tracker of the cumulative counts, to be saved in shards
    /// like the filter's (see [`ResetTracker::take_shards_to_save`]).
    pub fn tracker(&self) -> &ResetTracker {
        &self.tracker
    }

    pub fn tracker_mut(&mut self) -> &mut ResetTracker {
        &mut self.tracker
    }

    /// The baseline shards to save now, of those that changed since they
    /// were last saved (none in a steady stage): one holding endpoints a
    /// save, the next changed one in turn, so that a stage change (every
    /// baseline moves) is written over at most [`SHARDS`] intervals, a
    /// fraction each, rather than all at once; and every changed one that
    /// holds none (a few bytes). Clears their marks: a caller that fails to save them calls
    /// [`ClusterCounts::must_save_baselines`].
    pub fn take_baselines_to_save(&mut self) -> Vec<usize> {
        if !self.unsaved.contains(&true) {
            return vec![];
        }
        let mut held = [false; SHARDS];
        for e in self.endpoints.keys() {
            held[shard_of(e)] = true;
        }
        // Shards holding no endpoint are a few bytes: all of them now.
        let mut due: Vec<usize> = (0..SHARDS).filter(|i| self.unsaved[*i] && !held[*i]).collect();
        if let Some(i) = (0..SHARDS).map(|i| (self.cursor + i) % SHARDS).find(|i| self.unsaved[*i] && held[*i]) {
            due.push(i);
            self.cursor = (i + 1) % SHARDS;
        }
        for &i in &due {
            self.unsaved[i] = false;
        }
        due.sort_unstable();
        due
    }

    /// Marks baseline shards to be saved at the next
    /// [`ClusterCounts::take_baselines_to_save`].
    pub fn must_save_baselines(&mut self, shards: &[usize]) {
        for &i in shards.iter().filter(|i| **i < SHARDS) {
            self.unsaved[i] = true;
        }
    }

    /// Baseline shard `index`: the epoch, and the baselines of the
    /// endpoints whose [`shard_of`] is `index`.
    pub fn baseline_shard(&self, index: usize) -> BaselineShard {
        let mut keys: Vec<String> = vec![];
        let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        for (e, b) in self.endpoints.iter().filter(|(e, _)| shard_of(e) == index) {
            let pairs = b
                .base
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| {
                    let id = *ids.entry(k.as_str()).or_insert_with(|| {
                        keys.push(k.clone());
                        (keys.len() - 1) as u32
                    });
                    (id, *v)
                })
                .collect();
            endpoints.insert(e.clone(), pairs);
        }
        BaselineShard { format: BASELINE_FORMAT, shard: index, epoch: self.epoch, keys, endpoints }
    }

    /// Cluster counts from their saved reset tracker and baseline shards
    /// (any subset). The baselines are of the latest epoch any shard names;
    /// endpoints of shards saved at an earlier one are left out (baselined
    /// at their next read). Each endpoint's last counts are the tracker's.
    pub fn restore(
        tracker: ResetTracker,
        shards: impl IntoIterator<Item = BaselineShard>,
    ) -> Result<ClusterCounts, BaselineError> {
        let shards: Vec<BaselineShard> = shards.into_iter().collect();
        let epoch = shards.iter().filter_map(|s| s.epoch).max();
        let mut endpoints = BTreeMap::new();
        for shard in shards {
            if shard.format != BASELINE_FORMAT {
                return Err(BaselineError::Format(shard.format));
            }
            for (endpoint, pairs) in shard.endpoints {
                if shard_of(&endpoint) != shard.shard {
                    return Err(BaselineError::WrongShard { endpoint, shard: shard.shard });
                }
                if shard.epoch != epoch {
                    continue;
                }
                let mut base = BTreeMap::new();
                for (id, v) in pairs {
                    let key = shard.keys.get(id as usize).ok_or(BaselineError::NoSuchKey(id))?;
                    base.insert(key.clone(), v);
                }
                let last = tracker.corrected_all(&endpoint);
                endpoints.insert(endpoint, Baseline { base, last });
            }
        }
        Ok(ClusterCounts { tracker, epoch, endpoints, unsaved: [false; SHARDS], cursor: 0, restored: true })
    }
}

#[cfg(test)]
mod tests;
