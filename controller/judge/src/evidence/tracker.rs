//! Restart correction: an Envoy's counters go back to 0 when it restarts;
//! the tracker keeps every endpoint's counts whole across that (see
//! [`ResetTracker`]). It lives in the stats source and is persisted in
//! shards of its own next to the rollout's state (see [`TrackerShard`]),
//! so a restart of the controller keeps it too, without rewriting it whole
//! every interval.
//!
//! One piece on purpose: the reset arithmetic, the per-endpoint state and
//! its sharded persistence are one invariant (counts stay whole across
//! Envoy and controller restarts) and are tested together.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::ser::SerializeTuple as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::admin::{epoch_scope, EndpointSample};

/// Shards the tracker is persisted in (by a hash of the endpoint): each
/// interval writes the shards holding changes that no Envoy can tell again,
/// plus the next shard in turn, so that every shard is rewritten at least
/// every `SHARDS` saves and one save stays a fraction of the whole.
pub const SHARDS: usize = 16;

/// Version of the shard format (`format` in every shard).
pub const SHARD_FORMAT: u32 = 1;

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
/// Compact: the series keys (the same few hundred on every Envoy of a
/// fleet) are interned once per tracker, and an endpoint keeps a vector of
/// `(key id, last, base)` sorted by key id, 24 bytes a series.
///
/// Persisted in [`SHARDS`] shards ([`ResetTracker::take_shards_to_save`]):
/// what no Envoy can tell again (the bases a restart carried, a departed
/// endpoint's last counts, a forgotten epoch) is saved at the interval it
/// happens; the raw `last` values at least every `SHARDS` intervals. A
/// controller restarted from shards `k` intervals old has, per Envoy, last
/// values up to `k` intervals behind: an Envoy that did not restart
/// meanwhile reads exactly as before (its raw values only grew); one that
/// also restarted while the controller was down loses, on top of the limit
/// above, what it counted in those `k` intervals before its restart.
#[derive(Clone, Debug, Default)]
pub struct ResetTracker {
    keys: Keys,
    pub(crate) endpoints: BTreeMap<String, EndpointTrack>,
    /// Shards holding something no Envoy can tell again, not saved yet.
    must_save: [bool; SHARDS],
    /// The shard saved next in turn.
    rotation: usize,
}

/// Interned series keys, each with its epoch scope (the key up to and
/// including `epoch.<E>.`).
#[derive(Clone, Debug, Default)]
struct Keys {
    names: Vec<Box<str>>,
    /// By key id: the id of its scope in `scopes`.
    scope: Vec<u32>,
    scopes: Vec<Box<str>>,
    ids: HashMap<Box<str>, u32>,
}

impl Keys {
    fn intern(&mut self, key: &str) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = self.names.len() as u32;
        let scope = scope_of(key);
        let scope_id = match self.scopes.iter().position(|s| &**s == scope) {
            Some(i) => i as u32,
            None => {
                self.scopes.push(scope.into());
                (self.scopes.len() - 1) as u32
            }
        };
        self.names.push(key.into());
        self.scope.push(scope_id);
        self.ids.insert(key.into(), id);
        id
    }

    fn scope_id(&self, scope: &str) -> Option<u32> {
        self.scopes.iter().position(|s| &**s == scope).map(|i| i as u32)
    }

    fn in_scope(&self, key: u32, scope: Option<u32>) -> bool {
        scope.is_some_and(|s| self.scope[key as usize] == s)
    }
}

/// The epoch scope of a series key (`canary.rollout.R.epoch.E.` of
/// `canary.rollout.R.epoch.E.version.…`); names cannot hold `.version.`.
fn scope_of(key: &str) -> &str {
    key.find(".version.").map_or(key, |i| &key[..=i])
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EndpointTrack {
    /// `server.uptime` at the last read that had it.
    uptime_s: Option<u64>,
    /// Restarts detected so far.
    resets: u64,
    /// Listed as departed (and saved so) since it was last read.
    departed: bool,
    /// Sorted by key id.
    series: Vec<SeriesTrack>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SeriesTrack {
    key: u32,
    /// Raw value at the last read (since the current process started).
    last: u64,
    /// Counted by earlier processes of this endpoint.
    base: u64,
}

impl SeriesTrack {
    fn corrected(&self) -> u64 {
        self.base.saturating_add(self.last)
    }
}

/// One endpoint's sample after restart correction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Corrected {
    /// Every series of the sample's epoch (zeros left out): `base + raw`.
    pub series: BTreeMap<String, u64>,
    /// A restart was detected at this read.
    pub reset: bool,
}

/// Which shard an endpoint's bookkeeping is saved in (FNV-1a of its name:
/// stable across builds and processes).
pub fn shard_of(endpoint: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in endpoint.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

impl PartialEq for ResetTracker {
    /// Same bookkeeping, whatever the key ids (they depend on the order
    /// keys were first seen).
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for ResetTracker {}

type View<'a> = BTreeMap<&'a str, (Option<u64>, u64, BTreeMap<&'a str, (u64, u64)>)>;

impl ResetTracker {
    fn view(&self) -> View<'_> {
        self.endpoints
            .iter()
            .map(|(e, t)| {
                let series = t.series.iter().map(|s| (&*self.keys.names[s.key as usize], (s.last, s.base))).collect();
                (e.as_str(), (t.uptime_s, t.resets, series))
            })
            .collect()
    }

    /// Reads a tracker saved inside a state file by controllers before the
    /// tracker had files of its own (`null`: none yet). One that cannot be
    /// read is dropped rather than refusing the whole state: it only refines
    /// counts across restarts, and the source's own tracker carries on.
    pub fn deserialize_saved<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ResetTracker>, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(serde_json::from_value::<legacy::Tracker>(value).ok().map(ResetTracker::from))
    }

    /// Records a successful read of `endpoint` and returns its corrected
    /// series. Pure: no clock, no I/O. (The merge uses
    /// [`ResetTracker::observe_into`], which builds no map.)
    pub fn observe(&mut self, endpoint: &str, sample: &EndpointSample) -> Corrected {
        let mut series = BTreeMap::new();
        let reset = self.observe_into(endpoint, sample, |_, _| {});
        let scope = epoch_scope(&sample.rollout, sample.epoch);
        if let Some(track) = self.endpoints.get(endpoint) {
            let scope = self.keys.scope_id(&scope);
            for s in track.series.iter().filter(|s| self.keys.in_scope(s.key, scope)) {
                if s.corrected() > 0 {
                    series.insert(self.keys.names[s.key as usize].to_string(), s.corrected());
                }
            }
        }
        Corrected { series, reset }
    }

    /// Records a successful read of `endpoint`, hands every corrected
    /// series of the sample's epoch (zeros left out) to `each` as
    /// `(key id, base + raw)`, and returns whether a restart was detected.
    /// Key ids name series through [`ResetTracker::key`].
    pub fn observe_into(&mut self, endpoint: &str, sample: &EndpointSample, mut each: impl FnMut(u32, u64)) -> bool {
        let scope = epoch_scope(&sample.rollout, sample.epoch);
        let mut raw: Vec<(u32, u64)> = sample
            .series
            .iter()
            .filter(|(k, _)| k.starts_with(&scope))
            .map(|(k, v)| (self.keys.intern(k), *v))
            .collect();
        raw.sort_unstable_by_key(|(k, _)| *k);
        let scope = self.keys.scope_id(&scope);
        let keys = &self.keys;
        let track = match self.endpoints.get_mut(endpoint) {
            Some(t) => t,
            None => self.endpoints.entry(endpoint.to_string()).or_default(),
        };
        let raw_of = |key: u32| raw.binary_search_by_key(&key, |(k, _)| *k).map_or(0, |i| raw[i].1);

        let uptime_went_down = matches!((track.uptime_s, sample.uptime_s), (Some(before), Some(now)) if now < before);
        let series_went_down =
            track.series.iter().filter(|s| keys.in_scope(s.key, scope)).any(|s| raw_of(s.key) < s.last);
        let reset = uptime_went_down || series_went_down;
        if reset {
            track.resets = track.resets.saturating_add(1);
            for s in &mut track.series {
                s.base = s.base.saturating_add(s.last);
                s.last = 0;
            }
            // The carried counts exist nowhere else now.
            self.must_save[shard_of(endpoint)] = true;
        }
        if track.departed {
            track.departed = false;
        }
        // New series are added after the loop: the binary search needs
        // `series` sorted throughout.
        let mut added = vec![];
        for &(key, value) in &raw {
            match track.series.binary_search_by_key(&key, |s| s.key) {
                Ok(i) => track.series[i].last = value,
                Err(_) => added.push(SeriesTrack { key, last: value, base: 0 }),
            }
        }
        if !added.is_empty() {
            track.series.extend(added);
            track.series.sort_unstable_by_key(|s| s.key);
        }
        if sample.uptime_s.is_some() {
            track.uptime_s = sample.uptime_s;
        }
        for s in track.series.iter().filter(|s| keys.in_scope(s.key, scope)) {
            let v = s.corrected();
            if v > 0 {
                each(s.key, v);
            }
        }
        reset
    }

    /// The series key of a key id handed out by [`ResetTracker::observe_into`]
    /// or [`ResetTracker::departed_into`].
    pub fn key(&self, id: u32) -> &str {
        &self.keys.names[id as usize]
    }

    /// Key ids handed out so far are below this.
    pub fn key_count(&self) -> usize {
        self.keys.names.len()
    }

    /// Endpoints tracked (asked, or departed with counts kept).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Every corrected series kept for `endpoint`, all epochs (zeros left
    /// out), without reading it: what it counted as of its last read.
    pub fn corrected_all(&self, endpoint: &str) -> BTreeMap<String, u64> {
        let Some(track) = self.endpoints.get(endpoint) else { return BTreeMap::new() };
        track
            .series
            .iter()
            .filter(|s| s.corrected() > 0)
            .map(|s| (self.keys.names[s.key as usize].to_string(), s.corrected()))
            .collect()
    }

    /// Restarts detected so far at `endpoint`.
    pub fn resets(&self, endpoint: &str) -> u64 {
        self.endpoints.get(endpoint).map_or(0, |t| t.resets)
    }

    /// Drops what is kept for an endpoint (gone from the fleet).
    pub fn forget_endpoint(&mut self, endpoint: &str) {
        if self.endpoints.remove(endpoint).is_some() {
            self.must_save[shard_of(endpoint)] = true;
        }
    }

    /// Drops what is kept for one rollout epoch on every endpoint (once no
    /// window of it will be read again), so the tracker stays small:
    /// endpoints left with nothing counted go too (pods come and go in a mesh).
    pub fn forget_epoch(&mut self, rollout: &str, epoch: u64) {
        let Some(scope) = self.keys.scope_id(&epoch_scope(rollout, epoch)) else { return };
        self.forget_scopes(&[scope]);
    }

    /// [`ResetTracker::forget_epoch`] for every epoch of `rollout` before `epoch`.
    pub fn forget_epochs_before(&mut self, rollout: &str, epoch: u64) {
        let zero = epoch_scope(rollout, 0);
        let prefix = zero.strip_suffix("0.").unwrap_or(&zero);
        let old: Vec<u32> = (0..self.keys.scopes.len() as u32)
            .filter(|&i| {
                let s = &self.keys.scopes[i as usize];
                s.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix('.'))
                    .and_then(|e| e.parse::<u64>().ok())
                    .is_some_and(|e| e < epoch)
            })
            .collect();
        if !old.is_empty() {
            self.forget_scopes(&old);
        }
    }

    fn forget_scopes(&mut self, scopes: &[u32]) {
        let keys = &self.keys;
        for (endpoint, track) in &mut self.endpoints {
            let before = track.series.len();
            track.series.retain(|s| !scopes.contains(&keys.scope[s.key as usize]));
            if track.series.len() != before {
                self.must_save[shard_of(endpoint)] = true;
            }
        }
        for (endpoint, track) in &self.endpoints {
            if track.series.is_empty() {
                self.must_save[shard_of(endpoint)] = true;
            }
        }
        self.endpoints.retain(|_, track| !track.series.is_empty());
        self.compact_keys();
    }

    /// Re-interns only the keys still used (forgotten epochs' keys go).
    fn compact_keys(&mut self) {
        let mut used = vec![false; self.keys.names.len()];
        for track in self.endpoints.values() {
            for s in &track.series {
                used[s.key as usize] = true;
            }
        }
        let mut keys = Keys::default();
        let remap: Vec<u32> = self
            .keys
            .names
            .iter()
            .zip(&used)
            .map(|(name, used)| if *used { keys.intern(name) } else { u32::MAX })
            .collect();
        for track in self.endpoints.values_mut() {
            for s in &mut track.series {
                s.key = remap[s.key as usize];
            }
            track.series.sort_unstable_by_key(|s| s.key);
        }
        self.keys = keys;
    }

    /// Endpoints not in `asked` that counted under the epoch: hands their
    /// last corrected series of it to `each` as `(key id, value)` and
    /// returns their names. An endpoint listed for the first time since it
    /// was last read marks its shard to be saved (its last counts are
    /// evidence no Envoy will tell again).
    pub fn departed_into(
        &mut self,
        rollout: &str,
        epoch: u64,
        asked: &BTreeSet<&str>,
        mut each: impl FnMut(u32, u64),
    ) -> Vec<String> {
        let Some(scope) = self.keys.scope_id(&epoch_scope(rollout, epoch)) else { return vec![] };
        let keys = &self.keys;
        let mut names = vec![];
        for (endpoint, track) in self.endpoints.iter_mut().filter(|(e, _)| !asked.contains(e.as_str())) {
            let mut any = false;
            for s in track.series.iter().filter(|s| keys.in_scope(s.key, Some(scope))) {
                let v = s.corrected();
                if v > 0 {
                    any = true;
                    each(s.key, v);
                }
            }
            if any {
                if !track.departed {
                    track.departed = true;
                    self.must_save[shard_of(endpoint)] = true;
                }
                names.push(endpoint.clone());
            }
        }
        names
    }

    /// The shards to save now: those holding what no Envoy can tell again
    /// (a restart's carried counts, a departure, a forgotten epoch or
    /// endpoint) and the next one in turn. Clears their marks: a caller that
    /// fails to save them calls [`ResetTracker::must_save`] to retry.
    pub fn take_shards_to_save(&mut self) -> Vec<usize> {
        let turn = self.rotation % SHARDS;
        self.rotation = (self.rotation + 1) % SHARDS;
        let mut out: Vec<usize> = (0..SHARDS).filter(|i| self.must_save[*i] || *i == turn).collect();
        out.dedup();
        self.must_save = [false; SHARDS];
        out
    }

    /// Marks shards to be saved at the next [`ResetTracker::take_shards_to_save`].
    pub fn must_save(&mut self, shards: &[usize]) {
        for &i in shards.iter().filter(|i| **i < SHARDS) {
            self.must_save[i] = true;
        }
    }

    /// Marks every shard (a tracker loaded from an older state file, or
    /// before the controller stops).
    pub fn must_save_all(&mut self) {
        self.must_save = [true; SHARDS];
    }

    /// Shard `index`: the endpoints whose [`shard_of`] is `index`, with the
    /// keys they use.
    pub fn shard(&self, index: usize) -> TrackerShard {
        let members: Vec<(&String, &EndpointTrack)> =
            self.endpoints.iter().filter(|(e, _)| shard_of(e) == index).collect();
        let mut local: BTreeMap<u32, u32> = BTreeMap::new();
        for (_, t) in &members {
            for s in &t.series {
                local.insert(s.key, 0);
            }
        }
        let mut keys = Vec::with_capacity(local.len());
        for (i, (id, slot)) in local.iter_mut().enumerate() {
            *slot = i as u32;
            keys.push(self.keys.names[*id as usize].to_string());
        }
        let endpoints = members
            .into_iter()
            .map(|(e, t)| {
                let series =
                    t.series.iter().map(|s| ShardSeries { key: local[&s.key], last: s.last, base: s.base }).collect();
                let saved = ShardEndpoint { uptime_s: t.uptime_s, resets: t.resets, departed: t.departed, series };
                (e.clone(), saved)
            })
            .collect();
        TrackerShard { format: SHARD_FORMAT, shard: index, keys, endpoints }
    }

    /// A tracker from saved shards (any subset: an endpoint is in one shard
    /// only). A shard of another format, a series naming a key the shard
    /// does not list, or an endpoint in the wrong shard is refused.
    pub fn from_shards(shards: impl IntoIterator<Item = TrackerShard>) -> Result<ResetTracker, ShardError> {
        let mut t = ResetTracker::default();
        for shard in shards {
            if shard.format != SHARD_FORMAT {
                return Err(ShardError::Format(shard.format));
            }
            let ids: Vec<u32> = shard.keys.iter().map(|k| t.keys.intern(k)).collect();
            for (endpoint, saved) in shard.endpoints {
                if shard_of(&endpoint) != shard.shard {
                    return Err(ShardError::WrongShard { endpoint, shard: shard.shard });
                }
                let mut series = Vec::with_capacity(saved.series.len());
                for s in saved.series {
                    let key = *ids.get(s.key as usize).ok_or(ShardError::NoSuchKey(s.key))?;
                    series.push(SeriesTrack { key, last: s.last, base: s.base });
                }
                series.sort_unstable_by_key(|s| s.key);
                series.dedup_by_key(|s| s.key);
                let track =
                    EndpointTrack { uptime_s: saved.uptime_s, resets: saved.resets, departed: saved.departed, series };
                t.endpoints.insert(endpoint, track);
            }
        }
        Ok(t)
    }
}

/// Why saved shards could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard format {0} is not {SHARD_FORMAT}")]
    Format(u32),
    #[error("a series names key {0}, which the shard does not list")]
    NoSuchKey(u32),
    #[error("endpoint `{endpoint}` is saved in shard {shard}, not its own")]
    WrongShard { endpoint: String, shard: usize },
}

/// One shard of a [`ResetTracker`] as saved: the keys its endpoints use,
/// and per endpoint its uptime, restarts and series as `[key index, last]`
/// or `[key index, last, base]` (base when a restart carried counts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerShard {
    pub format: u32,
    pub shard: usize,
    pub keys: Vec<String>,
    pub endpoints: BTreeMap<String, ShardEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resets: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub departed: bool,
    pub series: Vec<ShardSeries>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `[key, last]` or `[key, last, base]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSeries {
    pub key: u32,
    pub last: u64,
    pub base: u64,
}

impl Serialize for ShardSeries {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = if self.base == 0 { 2 } else { 3 };
        let mut t = s.serialize_tuple(n)?;
        t.serialize_element(&self.key)?;
        t.serialize_element(&self.last)?;
        if self.base != 0 {
            t.serialize_element(&self.base)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for ShardSeries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<u64> = Vec::deserialize(d)?;
        let key = |k: u64| u32::try_from(k).map_err(|_| serde::de::Error::custom("key index over 2^32"));
        match v[..] {
            [k, last] => Ok(ShardSeries { key: key(k)?, last, base: 0 }),
            [k, last, base] => Ok(ShardSeries { key: key(k)?, last, base }),
            _ => Err(serde::de::Error::custom("a series is [key, last] or [key, last, base]")),
        }
    }
}

/// The tracker as older controllers kept it inside `state.json` (every
/// series by its full key): read once, then saved as shards.
mod legacy {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct Tracker {
        pub(super) endpoints: BTreeMap<String, Endpoint>,
    }

    #[derive(Deserialize)]
    pub(super) struct Endpoint {
        pub(super) uptime_s: Option<u64>,
        pub(super) resets: u64,
        pub(super) series: BTreeMap<String, Series>,
    }

    #[derive(Deserialize)]
    pub(super) struct Series {
        pub(super) last: u64,
        pub(super) base: u64,
    }
}

impl From<legacy::Tracker> for ResetTracker {
    fn from(old: legacy::Tracker) -> ResetTracker {
        let mut t = ResetTracker::default();
        for (endpoint, e) in old.endpoints {
            let mut series: Vec<SeriesTrack> = e
                .series
                .iter()
                .map(|(k, s)| SeriesTrack { key: t.keys.intern(k), last: s.last, base: s.base })
                .collect();
            series.sort_unstable_by_key(|s| s.key);
            t.endpoints
                .insert(endpoint, EndpointTrack { uptime_s: e.uptime_s, resets: e.resets, departed: false, series });
        }
        // Nothing of it is in shards yet.
        t.must_save_all();
        t
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
        let shards: Vec<TrackerShard> =
            (0..SHARDS).map(|i| serde_json::from_str(&serde_json::to_string(&t.shard(i)).unwrap()).unwrap()).collect();
        let mut back = ResetTracker::from_shards(shards).unwrap();
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

    #[test]
    fn what_no_envoy_can_tell_again_is_due_at_once_the_rest_in_turn() {
        let mut t = ResetTracker::default();
        let endpoints: Vec<String> = (0..64).map(|i| format!("http://10.0.0.{i}:9901")).collect();
        for e in &endpoints {
            t.observe(e, &sample("r", 1, Some(100), &[(TOTAL, 10)]));
        }
        // Steady state: one shard a save, each in turn.
        let mut seen = BTreeSet::new();
        for _ in 0..SHARDS {
            let due = t.take_shards_to_save();
            assert_eq!(due.len(), 1, "{due:?}");
            seen.insert(due[0]);
        }
        assert_eq!(seen.len(), SHARDS, "every shard is saved within SHARDS saves");
        // A restart: its shard is due at the next save, with the one in turn.
        let restarted = &endpoints[5];
        assert!(t.observe(restarted, &sample("r", 1, Some(1), &[(TOTAL, 2)])).reset);
        let due = t.take_shards_to_save();
        assert!(due.contains(&shard_of(restarted)) && due.len() <= 2, "{due:?}");
        // A departure: due once, not at every read that lists it.
        let asked: BTreeSet<&str> = endpoints[1..].iter().map(String::as_str).collect();
        let gone = t.departed_into("r", 1, &asked, |_, _| {});
        assert_eq!(gone, vec![endpoints[0].clone()]);
        assert!(t.take_shards_to_save().contains(&shard_of(&endpoints[0])));
        t.departed_into("r", 1, &asked, |_, _| {});
        assert_eq!(t.take_shards_to_save().len(), 1);
        // A failed save is retried.
        t.must_save(&[3, 7]);
        let due = t.take_shards_to_save();
        assert!(due.contains(&3) && due.contains(&7), "{due:?}");
    }

    #[test]
    fn shards_hold_the_whole_tracker_carried_counts_included() {
        let mut t = ResetTracker::default();
        for i in 0..40 {
            let e = format!("http://10.0.1.{i}:9901");
            t.observe(&e, &sample("r", 1, Some(100), &[(TOTAL, 10 + i), (OK, 9), (BUCKET, 9)]));
            if i % 7 == 0 {
                t.observe(&e, &sample("r", 1, Some(3), &[(TOTAL, 1)]));
            }
        }
        let shards: Vec<TrackerShard> = (0..SHARDS).map(|i| t.shard(i)).collect();
        assert_eq!(shards.iter().map(|s| s.endpoints.len()).sum::<usize>(), 40);
        let json: Vec<String> = shards.iter().map(|s| serde_json::to_string(s).unwrap()).collect();
        assert!(json.iter().any(|j| j.contains("[2,1,10]")), "a carried base is saved: {json:?}");
        let back = ResetTracker::from_shards(json.iter().map(|j| serde_json::from_str(j).unwrap())).unwrap();
        assert_eq!(back, t);
        // A shard in the wrong file, or naming a key it does not list, is refused.
        let mut moved = shards.iter().find(|s| !s.endpoints.is_empty()).unwrap().clone();
        moved.shard = (moved.shard + 1) % SHARDS;
        assert!(matches!(ResetTracker::from_shards([moved]), Err(ShardError::WrongShard { .. })));
        let mut bad = shards.iter().find(|s| !s.endpoints.is_empty()).unwrap().clone();
        bad.keys.clear();
        assert_eq!(ResetTracker::from_shards([bad]), Err(ShardError::NoSuchKey(0)));
        let wrong = r#"{"format":1,"shard":0,"keys":[],"endpoints":{"e":{"series":[[0]]}}}"#;
        assert!(serde_json::from_str::<TrackerShard>(wrong).is_err());
    }

    #[test]
    fn a_tracker_saved_inside_an_older_state_converts_and_is_all_due() {
        let old = serde_json::json!({"endpoints": {"a": {"uptime_s": 100, "resets": 1, "series": {
            TOTAL: {"last": 5, "base": 20}, OK: {"last": 4, "base": 0}}}}});
        let mut t = ResetTracker::deserialize_saved(old).unwrap().unwrap();
        assert_eq!(t.resets("a"), 1);
        assert_eq!(t.take_shards_to_save().len(), SHARDS);
        let got = t.observe("a", &sample("r", 1, Some(110), &[(TOTAL, 6), (OK, 4)]));
        assert_eq!((got.reset, got.series[TOTAL], got.series[OK]), (false, 26, 4));
        assert_eq!(ResetTracker::deserialize_saved(serde_json::json!({"endpoints": 5})).unwrap(), None);
    }

    #[test]
    fn earlier_epochs_are_forgotten_with_their_keys() {
        let mut t = ResetTracker::default();
        let key = |e: u64| format!("canary.rollout.r.epoch.{e}.version.v1.rq_total");
        for e in [1, 2, 3, 10] {
            t.observe("a", &sample("r", e, Some(100), &[(&key(e), 5)]));
        }
        t.observe("b", &sample("r", 1, Some(100), &[(&key(1), 5)]));
        t.observe("c", &sample("other", 1, Some(100), &[("canary.rollout.other.epoch.1.version.v1.rq_total", 5)]));
        t.forget_epochs_before("r", 3);
        assert_eq!(t.key_count(), 3, "epochs 3 and 10 of r, epoch 1 of other");
        assert_eq!(t.endpoints.keys().collect::<Vec<_>>(), ["a", "c"]);
        let got = t.observe("a", &sample("r", 10, Some(101), &[(&key(10), 6)]));
        assert_eq!(got.series[&key(10)], 6);
    }

    fn refs(s: &[(String, u64)]) -> Vec<(&str, u64)> {
        s.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }

    #[test]
    fn series_first_seen_in_a_later_read_are_counted_once() {
        // Buckets appear between reads (histograms flush later than
        // counters), and another Envoy may have named them first: each must
        // be kept once, whatever the order of their key ids.
        let key = |i: u64| format!("canary.rollout.r.epoch.1.version.v1.latency_us@{}+10", i * 10);
        let all: Vec<(String, u64)> = (0..40).map(|i| (key(i), 1)).collect();
        let mut t = ResetTracker::default();
        t.observe("first", &sample("r", 1, Some(100), &refs(&all)));
        for round in 1..=4u64 {
            // Every 5th key, then also every 4th, 3rd, 2nd: new ones fall between old ones.
            let some: Vec<(String, u64)> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| (5 - round..=5).any(|m| i % m as usize == 0))
                .map(|(_, s)| s.clone())
                .collect();
            let got = t.observe("e", &sample("r", 1, Some(100 + round), &refs(&some)));
            assert!(!got.reset, "round {round}");
            let mut n = 0;
            t.observe_into("e", &sample("r", 1, Some(100 + round), &refs(&some)), |_, v| n += v);
            assert_eq!(n, some.len() as u64, "round {round}: every series handed over once");
        }
    }
}
