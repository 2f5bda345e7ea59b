//! Sticky consistent-hash split.
//!
//! `bucket = xxh3_64_with_seed(key, seed = xxh3_64(salt)) mod 10 000`; the
//! challenger serves the request iff `bucket < weight` (basis points). The same
//! key gets the same bucket in every process, so a user keeps one version
//! across Envoys and restarts; raising the weight only adds buckets to the
//! challenger, so nobody moves back; a new salt reshuffles everyone.

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Number of buckets: one per basis point.
pub const BUCKETS: u16 = 10_000;

/// The challenger's share of traffic in basis points (1 bp = 0.01 %), 0..=10 000.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u16")]
pub struct Weight(u16);

/// A weight outside 0..=10 000 basis points.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a weight in basis points: it must be within 0..=10000 (10000 = 100%)")]
pub struct WeightOutOfRange(pub u64);

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(BUCKETS);

    pub fn from_bp(bp: u64) -> Result<Weight, WeightOutOfRange> {
        if bp <= u64::from(BUCKETS) {
            Ok(Weight(bp as u16))
        } else {
            Err(WeightOutOfRange(bp))
        }
    }

    /// Whole percent (1 % = 100 bp); `percent(101)` is refused.
    pub fn from_percent(percent: u64) -> Result<Weight, WeightOutOfRange> {
        Weight::from_bp(percent.saturating_mul(100))
    }

    pub fn bp(self) -> u16 {
        self.0
    }

    pub fn as_fraction(self) -> f64 {
        f64::from(self.0) / f64::from(BUCKETS)
    }
}

impl TryFrom<u64> for Weight {
    type Error = WeightOutOfRange;
    fn try_from(bp: u64) -> Result<Self, Self::Error> {
        Weight::from_bp(bp)
    }
}

impl From<Weight> for u16 {
    fn from(w: Weight) -> u16 {
        w.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{whole}%")
        } else {
            write!(f, "{whole}.{frac:02}%")
        }
    }
}

/// The bucket function, by the name the plugin configuration gives it
/// (`"hash"`). There is one today; a filter that hashes differently gets a
/// new name, so that an old filter and a new configuration (or the reverse)
/// refuse each other instead of silently moving users between versions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SplitHash {
    /// `xxh3_64_with_seed(key, xxh3_64(salt))`, the formula above.
    #[default]
    Xxh3_64,
}

impl SplitHash {
    /// Every hash this filter computes, by its configuration name.
    pub const ACCEPTED: [SplitHash; 1] = [SplitHash::Xxh3_64];

    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            SplitHash::Xxh3_64 => "xxh3-64",
        }
    }

    /// The hash named `name`, if this filter computes it.
    pub fn from_name(name: &str) -> Option<SplitHash> {
        SplitHash::ACCEPTED.into_iter().find(|h| h.name() == name)
    }
}

impl fmt::Display for SplitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for SplitHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for SplitHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SplitHash, D::Error> {
        let name = String::deserialize(d)?;
        SplitHash::from_name(&name).ok_or_else(|| {
            let accepted: Vec<String> = SplitHash::ACCEPTED.iter().map(|h| format!("`{h}`")).collect();
            serde::de::Error::custom(format!(
                "`{name}` is not a hash this filter computes; the only accepted value is {}",
                accepted.join(", ")
            ))
        })
    }
}

/// Which of the two versions serves a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Champion,
    Challenger,
}

impl Arm {
    pub const BOTH: [Arm; 2] = [Arm::Champion, Arm::Challenger];

    /// Position in per-arm arrays.
    pub fn index(self) -> usize {
        match self {
            Arm::Champion => 0,
            Arm::Challenger => 1,
        }
    }
}

/// A rollout's salt, reduced once to the hash seed used for every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Salt {
    seed: u64,
}

impl Salt {
    pub fn new(salt: &str) -> Salt {
        Salt { seed: xxh3_64(salt.as_bytes()) }
    }

    /// The user's bucket, 0..10 000.
    pub fn bucket(self, key: &[u8]) -> u16 {
        (xxh3_64_with_seed(key, self.seed) % u64::from(BUCKETS)) as u16
    }

    /// A bucket under this salt mixed with another: an independent draw for
    /// the same key (used to sample shadow traffic).
    pub fn bucket_with(self, other: &Salt, key: &[u8]) -> u16 {
        (xxh3_64_with_seed(key, self.seed ^ other.seed.rotate_left(17)) % u64::from(BUCKETS)) as u16
    }
}

/// The arm a bucket falls in at a given weight.
pub fn arm_for(bucket: u16, weight: Weight) -> Arm {
    if bucket < weight.0 {
        Arm::Challenger
    } else {
        Arm::Champion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_bounds_are_inclusive() {
        assert_eq!(Weight::from_bp(0).unwrap().bp(), 0);
        assert_eq!(Weight::from_bp(10_000).unwrap().bp(), 10_000);
        assert_eq!(Weight::from_bp(10_001), Err(WeightOutOfRange(10_001)));
        assert_eq!(Weight::from_percent(5).unwrap().bp(), 500);
        assert!(Weight::from_percent(101).is_err());
    }

    #[test]
    fn weight_displays_as_percent() {
        assert_eq!(Weight::from_bp(500).unwrap().to_string(), "5%");
        assert_eq!(Weight::from_bp(1).unwrap().to_string(), "0.01%");
        assert_eq!(Weight::from_bp(1250).unwrap().to_string(), "12.50%");
    }

    #[test]
    fn bucket_is_deterministic_and_in_range() {
        let salt = Salt::new("rollout-a");
        for i in 0..10_000u32 {
            let key = format!("user-{i}");
            let b = salt.bucket(key.as_bytes());
            assert!(b < BUCKETS);
            assert_eq!(b, Salt::new("rollout-a").bucket(key.as_bytes()));
        }
    }

    #[test]
    fn bucket_matches_the_documented_formula() {
        // The controller and other tools recompute buckets; pin the formula.
        let seed = xxh3_64(b"salt");
        let expected = (xxh3_64_with_seed(b"user-42", seed) % 10_000) as u16;
        assert_eq!(Salt::new("salt").bucket(b"user-42"), expected);
    }

    #[test]
    fn weight_increase_never_moves_user_back() {
        let salt = Salt::new("ramp");
        let ramp = [0u64, 100, 500, 2000, 5000, 10_000];
        for i in 0..20_000u32 {
            let b = salt.bucket(format!("u{i}").as_bytes());
            let mut was_challenger = false;
            for bp in ramp {
                let arm = arm_for(b, Weight::from_bp(bp).unwrap());
                if was_challenger {
                    assert_eq!(arm, Arm::Challenger, "user u{i} moved back at {bp} bp");
                }
                was_challenger = arm == Arm::Challenger;
            }
        }
    }

    #[test]
    fn share_is_close_to_weight() {
        let salt = Salt::new("share");
        let w = Weight::from_bp(500).unwrap();
        let n = 100_000u32;
        let hits = (0..n).filter(|i| arm_for(salt.bucket(format!("id{i}").as_bytes()), w) == Arm::Challenger).count();
        let share = hits as f64 / f64::from(n);
        assert!((share - 0.05).abs() < 0.005, "share {share}");
    }

    #[test]
    fn new_salt_reshuffles() {
        let (a, b) = (Salt::new("one"), Salt::new("two"));
        let same = (0..10_000u32)
            .filter(|i| {
                let k = format!("k{i}");
                a.bucket(k.as_bytes()) == b.bucket(k.as_bytes())
            })
            .count();
        assert!(same < 50, "{same} of 10000 keys kept their bucket");
    }

    #[test]
    fn edges_of_the_weight() {
        assert_eq!(arm_for(0, Weight::ZERO), Arm::Champion);
        assert_eq!(arm_for(9_999, Weight::FULL), Arm::Challenger);
        assert_eq!(arm_for(499, Weight::from_bp(500).unwrap()), Arm::Challenger);
        assert_eq!(arm_for(500, Weight::from_bp(500).unwrap()), Arm::Champion);
    }
}
