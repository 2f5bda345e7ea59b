//! The plugin configuration: the JSON the controller writes and Envoy hands to
//! the filter. Parsed into typed structs (unknown fields refused), validated,
//! then lowered once into a [`Plan`] that the request path only reads.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::headers::{self, HeaderNameError};
use crate::predict::{PredictionConfig, PredictionPlan, SegmentConfig, SegmentPlan};
use crate::split::{Arm, Salt, SplitHash, Weight};

/// The plugin configuration as written (see the configuration reference).
///
/// On the wire it also names its hash (`"hash": "xxh3-64"`, see
/// [`SplitHash`]): written on every serialization, the default when absent,
/// any other name refused. It is not a field here because this filter computes
/// one hash only; `WireConfig` carries it and the serde attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "WireConfig", into = "WireConfig")]
pub struct FilterConfig {
    /// Rollout name; part of every metric name.
    pub rollout: String,
    /// Configuration epoch, raised by the controller on every change; part of
    /// every metric name so that windows never mix configurations.
    pub epoch: u64,
    /// Stage name, sent in the stage header.
    pub stage: String,
    /// Hash salt; a new rollout gets a new salt and so a new shuffle.
    pub salt: String,
    /// Version name of the champion (the header value its route matches).
    pub champion: String,
    /// Version name of the challenger.
    pub challenger: String,
    /// The challenger's share in basis points, 0..=10000.
    pub challenger_weight_bp: Weight,
    /// Where the user key is read from, first match wins.
    pub key: Vec<KeySource>,
    /// What happens to requests with no key.
    pub unkeyed: UnkeyedPolicy,
    /// Names of the headers the filter owns.
    pub headers: OwnedHeaders,
    /// Where responses carry their prediction, and its bins.
    pub prediction: Option<PredictionConfig>,
    /// A request header that splits the per-version counters.
    pub segment: Option<SegmentConfig>,
    /// Copies of champion-served requests sent to the challenger.
    pub shadow: Option<ShadowConfig>,
    /// A QA override: a request carrying `<secret>:<version>` in this header
    /// goes to that version. Without the secret the header is only removed.
    pub qa_override: Option<OverrideConfig>,
    /// Where per-version response counts and latency come from.
    pub counts: Counts,
}

/// [`FilterConfig`] as serialized: the same fields and `hash`. Holds the serde
/// attributes (unknown fields refused, defaults); a field added to
/// `FilterConfig` is added here too (the conversions below list every field).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireConfig {
    /// The split's bucket function. Absent means `xxh3-64` (configurations
    /// written before the field existed); always written.
    #[serde(default)]
    hash: SplitHash,
    rollout: String,
    #[serde(default)]
    epoch: u64,
    stage: String,
    salt: String,
    champion: String,
    challenger: String,
    challenger_weight_bp: Weight,
    #[serde(default = "default_key")]
    key: Vec<KeySource>,
    #[serde(default)]
    unkeyed: UnkeyedPolicy,
    #[serde(default)]
    headers: OwnedHeaders,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prediction: Option<PredictionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    segment: Option<SegmentConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shadow: Option<ShadowConfig>,
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    qa_override: Option<OverrideConfig>,
    /// Written only when not the default, so a configuration that does not
    /// use it still reads in a filter built before the field existed.
    #[serde(default, skip_serializing_if = "Counts::is_filter")]
    counts: Counts,
}

impl From<WireConfig> for FilterConfig {
    fn from(w: WireConfig) -> FilterConfig {
        // `hash` was checked while parsing: this filter computes every hash
        // [`SplitHash`] can name.
        let WireConfig {
            hash: SplitHash::Xxh3_64,
            rollout,
            epoch,
            stage,
            salt,
            champion,
            challenger,
            challenger_weight_bp,
            key,
            unkeyed,
            headers,
            prediction,
            segment,
            shadow,
            qa_override,
            counts,
        } = w;
        FilterConfig {
            rollout,
            epoch,
            stage,
            salt,
            champion,
            challenger,
            challenger_weight_bp,
            key,
            unkeyed,
            headers,
            prediction,
            segment,
            shadow,
            qa_override,
            counts,
        }
    }
}

impl From<FilterConfig> for WireConfig {
    fn from(c: FilterConfig) -> WireConfig {
        let FilterConfig {
            rollout,
            epoch,
            stage,
            salt,
            champion,
            challenger,
            challenger_weight_bp,
            key,
            unkeyed,
            headers,
            prediction,
            segment,
            shadow,
            qa_override,
            counts,
        } = c;
        WireConfig {
            hash: SplitHash::default(),
            rollout,
            epoch,
            stage,
            salt,
            champion,
            challenger,
            challenger_weight_bp,
            key,
            unkeyed,
            headers,
            prediction,
            segment,
            shadow,
            qa_override,
            counts,
        }
    }
}

/// Where the per-version response counts (status classes, 504s) and the
/// latency histogram come from (`counts` in the plugin configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counts {
    /// The filter reads every response's `:status`, times every request and
    /// counts `rq_<class>`, `rq_timeout` and `latency_us` per version and
    /// epoch (the default).
    #[default]
    Filter,
    /// Envoy's own per-cluster stats (`cluster.<version>.upstream_rq_<class>`,
    /// `upstream_rq_504`, `upstream_rq_time`) count them, one cluster per
    /// version: the filter reads no `:status`, no clock and records no
    /// latency for them. It still counts `rq_total` and `rq_unkeyed` (held in
    /// its memory, no host call per request), and whatever prediction
    /// capture, segments and shadow need.
    Cluster,
}

impl Counts {
    pub fn is_filter(&self) -> bool {
        *self == Counts::Filter
    }
}

/// `override` in the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    /// The request header carrying `<secret>:<version>`.
    pub header: String,
    /// At least 16 bytes; compared in constant time.
    pub secret: String,
}

/// Shortest QA override secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// `shadow` in the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The Envoy cluster the copies go to (the challenger's).
    pub cluster: String,
    /// Share of champion-served requests copied, in basis points.
    #[serde(default = "full")]
    pub sample_bp: Weight,
    /// Time the filter waits for a shadow answer.
    #[serde(default = "default_shadow_timeout")]
    pub timeout_ms: u32,
    /// Requests with a longer body are not copied (counted as skipped).
    #[serde(default = "crate::predict::default_max_body")]
    pub max_body_bytes: u32,
    /// Most shadow calls in flight per worker; more are skipped.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
}

fn full() -> Weight {
    Weight::FULL
}

fn default_shadow_timeout() -> u32 {
    1000
}

fn default_in_flight() -> u32 {
    1000
}

/// One place a user key can come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// A request header, e.g. `{"header": "x-user-id"}`.
    Header(String),
    /// A cookie, e.g. `{"cookie": "uid"}`.
    Cookie(String),
}

fn default_key() -> Vec<KeySource> {
    vec![KeySource::Header("x-user-id".into())]
}

/// Routing of requests that carry no key. Either way they are marked unkeyed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnkeyedPolicy {
    /// All go to the champion (the safe default).
    #[default]
    Champion,
    /// Split at the weight by Envoy's `x-request-id`: the share is right but
    /// the same client may get a different version on each request.
    SplitByRequestId,
}

/// Names of the headers the filter owns. Client-sent copies are replaced or
/// removed before routing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnedHeaders {
    /// Carries the version name; the route table matches on it.
    pub version: String,
    /// Carries the stage name.
    pub stage: String,
    /// Present (value `1`) only on requests that had no key.
    pub unkeyed: String,
}

impl Default for OwnedHeaders {
    fn default() -> Self {
        OwnedHeaders {
            version: "x-model-version".into(),
            stage: "x-canary-stage".into(),
            unkeyed: "x-canary-unkeyed".into(),
        }
    }
}

/// A refused configuration. Its message names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration is not valid JSON for this filter: at `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid { field: field.into(), reason: reason.to_string() }
    }

    /// The field the error is about (`.` for the document itself).
    pub fn field(&self) -> &str {
        match self {
            ConfigError::Parse { path, .. } => path,
            ConfigError::Invalid { field, .. } => field,
        }
    }
}

/// Longest name (rollout, stage, version) accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Most key sources accepted.
pub const MAX_KEY_SOURCES: usize = 4;

/// Names end up in metric names, header values and file names: keep them to
/// `[A-Za-z0-9_-]`, which also keeps metric names unambiguous to parse.
fn check_name(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ConfigError::invalid(
            field,
            format!("is {} bytes long; at most {MAX_NAME_LEN} are allowed", value.len()),
        ));
    }
    if let Some(ch) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(ConfigError::invalid(
            field,
            format!("`{value}` contains {ch:?}; only letters, digits, '-' and '_' are allowed"),
        ));
    }
    Ok(())
}

fn check_header(field: &str, value: &str) -> Result<String, ConfigError> {
    headers::header_name(value).map_err(|e: HeaderNameError| ConfigError::invalid(field, e))
}

impl FilterConfig {
    /// Parses plugin configuration bytes. Errors name the offending field.
    pub fn from_json(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Parse { path, message: e.into_inner().to_string() }
        })
    }

    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<Plan, ConfigError> {
        check_name("rollout", &self.rollout)?;
        check_name("stage", &self.stage)?;
        check_name("champion", &self.champion)?;
        check_name("challenger", &self.challenger)?;
        if self.champion == self.challenger {
            return Err(ConfigError::invalid(
                "challenger",
                format!("`{}` is also the champion; the two versions must differ", self.challenger),
            ));
        }
        if self.salt.is_empty() || self.salt.len() > 256 {
            return Err(ConfigError::invalid("salt", "must be 1 to 256 bytes long"));
        }

        let owned = OwnedHeaders {
            version: check_header("headers.version", &self.headers.version)?,
            stage: check_header("headers.stage", &self.headers.stage)?,
            unkeyed: check_header("headers.unkeyed", &self.headers.unkeyed)?,
        };
        let owned_names =
            [("headers.version", &owned.version), ("headers.stage", &owned.stage), ("headers.unkeyed", &owned.unkeyed)];
        for (i, (field, name)) in owned_names.iter().enumerate() {
            if let Some((other, _)) = owned_names[..i].iter().find(|(_, n)| n == name) {
                return Err(ConfigError::invalid(*field, format!("`{name}` is already used by `{other}`")));
            }
        }

        if self.key.is_empty() {
            return Err(ConfigError::invalid("key", "needs at least one key source (a header or a cookie)"));
        }
        if self.key.len() > MAX_KEY_SOURCES {
            return Err(ConfigError::invalid(
                "key",
                format!("has {} sources; at most {MAX_KEY_SOURCES} are allowed", self.key.len()),
            ));
        }
        let mut key = Vec::with_capacity(self.key.len());
        for (i, source) in self.key.iter().enumerate() {
            let field = format!("key[{i}]");
            key.push(match source {
                KeySource::Header(h) => {
                    let h = check_header(&format!("{field}.header"), h)?;
                    if let Some((owned_field, _)) = owned_names.iter().find(|(_, n)| **n == h) {
                        return Err(ConfigError::invalid(
                            format!("{field}.header"),
                            format!(
                                "`{h}` is owned by the filter (`{owned_field}`); a client could pick its own bucket"
                            ),
                        ));
                    }
                    KeySource::Header(h)
                }
                KeySource::Cookie(c) => KeySource::Cookie(
                    headers::cookie_name(c).map_err(|e| ConfigError::invalid(format!("{field}.cookie"), e))?,
                ),
            });
        }

        let prediction = self.prediction.as_ref().map(PredictionConfig::validate).transpose()?;
        let segment = self.segment.as_ref().map(SegmentConfig::validate).transpose()?;
        if let Some(seg) = &segment {
            if owned_names.iter().any(|(_, n)| **n == seg.header) {
                return Err(ConfigError::invalid("segment.header", format!("`{}` is owned by the filter", seg.header)));
            }
        }
        let qa_override = match &self.qa_override {
            Some(o) => {
                let header = check_header("override.header", &o.header)?;
                if owned_names.iter().any(|(_, n)| **n == header)
                    || key.iter().any(|k| matches!(k, KeySource::Header(h) if *h == header))
                {
                    return Err(ConfigError::invalid(
                        "override.header",
                        format!("`{header}` is already used by the filter"),
                    ));
                }
                if o.secret.len() < MIN_SECRET_LEN || o.secret.contains(':') {
                    return Err(ConfigError::invalid(
                        "override.secret",
                        format!("must be at least {MIN_SECRET_LEN} bytes and contain no ':'"),
                    ));
                }
                Some(OverrideConfig { header, secret: o.secret.clone() })
            }
            None => None,
        };
        if let Some(shadow) = &self.shadow {
            if self.counts == Counts::Cluster && (shadow.cluster == self.champion || shadow.cluster == self.challenger)
            {
                return Err(ConfigError::invalid(
                    "shadow.cluster",
                    format!(
                        "`{}` is a version's cluster, and with `counts: cluster` that cluster's stats are the \
                         version's response counts: the copies would be counted as its responses; send them \
                         to a cluster of their own",
                        shadow.cluster
                    ),
                ));
            }
            if shadow.cluster.is_empty() || shadow.cluster.len() > 128 {
                return Err(ConfigError::invalid("shadow.cluster", "must be an Envoy cluster name, 1-128 bytes"));
            }
            if shadow.timeout_ms == 0 || shadow.timeout_ms > 60_000 {
                return Err(ConfigError::invalid("shadow.timeout_ms", "must be within 1..=60000"));
            }
            if shadow.max_body_bytes > 1 << 20 {
                return Err(ConfigError::invalid("shadow.max_body_bytes", "must be at most 1048576"));
            }
            if shadow.max_in_flight == 0 {
                return Err(ConfigError::invalid("shadow.max_in_flight", "must be at least 1"));
            }
        }

        Ok(Plan {
            rollout: self.rollout.clone(),
            epoch: self.epoch,
            stage: self.stage.clone(),
            salt: Salt::new(&self.salt),
            versions: [self.champion.clone(), self.challenger.clone()],
            weight: self.challenger_weight_bp,
            key,
            unkeyed: self.unkeyed,
            headers: owned,
            prediction,
            segment,
            shadow: self.shadow.clone(),
            qa_override,
            counts: self.counts,
            shadow_salt: Salt::new(SHADOW_SEED),
        })
    }
}

/// A validated configuration, lowered for the request path: header names
/// lowercased, the salt reduced to its seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub rollout: String,
    pub epoch: u64,
    pub stage: String,
    pub salt: Salt,
    /// Version names, indexed by [`Arm::index`].
    pub versions: [String; 2],
    pub weight: Weight,
    pub key: Vec<KeySource>,
    pub unkeyed: UnkeyedPolicy,
    pub headers: OwnedHeaders,
    pub prediction: Option<PredictionPlan>,
    pub segment: Option<SegmentPlan>,
    pub shadow: Option<ShadowConfig>,
    pub qa_override: Option<OverrideConfig>,
    pub counts: Counts,
    /// The shadow sample's salt, hashed once here rather than per request.
    pub shadow_salt: Salt,
}

/// Seed perturbation for the shadow sample, so that which users are shadowed
/// is independent of which users are on the challenger.
const SHADOW_SEED: &str = "canary-shadow-sample";

impl Plan {
    /// Parse and validate in one step: what the filter does in `on_configure`.
    pub fn from_json(bytes: &[u8]) -> Result<Plan, ConfigError> {
        FilterConfig::from_json(bytes)?.validate()
    }

    pub fn version(&self, arm: Arm) -> &str {
        &self.versions[arm.index()]
    }

    /// The filter counts per-version status classes and latency itself
    /// (`counts: filter`); with `cluster`, Envoy's cluster stats do.
    pub fn counts_versions(&self) -> bool {
        self.counts == Counts::Filter
    }

    /// Responses' `:status` is read: for the per-version counts, or for the
    /// per-segment ones (segments are the filter's own in either mode).
    pub fn reads_status(&self) -> bool {
        self.counts_versions() || self.segment.is_some()
    }

    /// Requests are timed (two clock reads): for the per-version latency, or
    /// the per-segment one.
    pub fn times_requests(&self) -> bool {
        self.counts_versions() || self.segment.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "rollout": "recs-v2", "epoch": 3, "stage": "s5", "salt": "recs-v2-1",
        "champion": "v1", "challenger": "v2", "challenger_weight_bp": 500,
        "key": [{"header": "X-User-Id"}, {"cookie": "uid"}],
        "unkeyed": "split_by_request_id",
        "headers": {"version": "x-model-version", "stage": "x-canary-stage", "unkeyed": "x-canary-unkeyed"}
    }"#;

    fn with(field: &str, value: serde_json::Value) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    }

    fn refused(bytes: &[u8]) -> ConfigError {
        Plan::from_json(bytes).unwrap_err()
    }

    #[test]
    fn good_configuration_is_lowered() {
        let plan = Plan::from_json(GOOD.as_bytes()).unwrap();
        assert_eq!(plan.weight.bp(), 500);
        assert_eq!(plan.version(Arm::Challenger), "v2");
        assert_eq!(plan.key[0], KeySource::Header("x-user-id".into()));
        assert_eq!(plan.unkeyed, UnkeyedPolicy::SplitByRequestId);
        assert_eq!(plan.salt, Salt::new("recs-v2-1"));
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let plan = Plan::from_json(
            br#"{"rollout":"r","stage":"s","salt":"x","champion":"a","challenger":"b","challenger_weight_bp":0}"#,
        )
        .unwrap();
        assert_eq!(plan.epoch, 0);
        assert_eq!(plan.key, vec![KeySource::Header("x-user-id".into())]);
        assert_eq!(plan.unkeyed, UnkeyedPolicy::Champion);
        assert_eq!(plan.headers, OwnedHeaders::default());
    }

    #[test]
    fn round_trips_through_json() {
        let cfg = FilterConfig::from_json(GOOD.as_bytes()).unwrap();
        assert_eq!(FilterConfig::from_json(cfg.to_json().as_bytes()).unwrap(), cfg);
    }

    #[test]
    fn hash_xxh3_64_is_accepted() {
        let plan = Plan::from_json(&with("hash", "xxh3-64".into())).unwrap();
        assert_eq!(plan.salt, Salt::new("recs-v2-1"));
    }

    #[test]
    fn absent_hash_means_xxh3_64_and_is_written_back() {
        // GOOD has no `hash`: configurations written before the field existed.
        let cfg = FilterConfig::from_json(GOOD.as_bytes()).unwrap();
        assert_eq!(cfg, FilterConfig::from_json(&with("hash", "xxh3-64".into())).unwrap());
        let written: serde_json::Value = serde_json::from_str(&cfg.to_json()).unwrap();
        assert_eq!(written["hash"], "xxh3-64", "the hash is always written: {written}");
    }

    #[test]
    fn unknown_hash_is_refused_naming_the_field_and_the_accepted_value() {
        for value in [serde_json::json!("fnv1a-64"), serde_json::json!("XXH3-64"), serde_json::json!(""), 3.into()] {
            let e = refused(&with("hash", value.clone()));
            assert_eq!(e.field(), "hash", "{value}: {e}");
            if value.is_string() {
                assert!(e.to_string().contains("the only accepted value is `xxh3-64`"), "{value}: {e}");
            }
        }
        let e = refused(&with("hash", "murmur3".into()));
        assert!(e.to_string().contains("`murmur3` is not a hash this filter computes"), "{e}");
    }

    #[test]
    fn malformed_json_is_refused() {
        let e = refused(b"{\"rollout\": ");
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = refused(b"");
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    }

    #[test]
    fn unknown_field_is_refused_and_named() {
        let e = refused(&with("colour", "red".into()));
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["headers"]["extra"] = "x".into();
        let e = refused(&serde_json::to_vec(&v).unwrap());
        assert!(e.to_string().contains("headers"), "{e}");
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn weight_above_10000_is_refused_and_named() {
        let e = refused(&with("challenger_weight_bp", 10_001.into()));
        assert_eq!(e.field(), "challenger_weight_bp", "{e}");
        assert!(e.to_string().contains("10001"), "{e}");
        let e = refused(&with("challenger_weight_bp", (-1).into()));
        assert_eq!(e.field(), "challenger_weight_bp", "{e}");
        assert!(Plan::from_json(&with("challenger_weight_bp", 10_000.into())).is_ok());
    }

    #[test]
    fn missing_field_is_named() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v.as_object_mut().unwrap().remove("salt");
        let e = refused(&serde_json::to_vec(&v).unwrap());
        assert!(e.to_string().contains("missing field `salt`"), "{e}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("rollout", "".into(), "rollout"),
            ("rollout", "a.b".into(), "rollout"),
            ("stage", "five percent".into(), "stage"),
            ("champion", "v1".repeat(40).into(), "champion"),
            ("challenger", "v1".into(), "challenger"),
            ("salt", "".into(), "salt"),
            ("key", serde_json::json!([]), "key"),
            ("key", serde_json::json!([{"header": "x user"}]), "key[0].header"),
            ("key", serde_json::json!([{"cookie": "uid"}, {"header": ":path"}]), "key[1].header"),
            ("key", serde_json::json!([{"cookie": "a;b"}]), "key[0].cookie"),
            ("key", serde_json::json!([{"header": "X-Model-Version"}]), "key[0].header"),
            ("headers", serde_json::json!({"version": "host"}), "headers.version"),
            ("headers", serde_json::json!({"stage": "x-model-version"}), "headers.stage"),
        ];
        for (field, value, named) in cases {
            let e = refused(&with(field, value.clone()));
            assert_eq!(e.field(), *named, "{field}={value}: {e}");
        }
    }

    #[test]
    fn wrong_types_are_refused_with_their_path() {
        let e = refused(&with("epoch", "three".into()));
        assert_eq!(e.field(), "epoch", "{e}");
        let e = refused(&with("unkeyed", "random".into()));
        assert_eq!(e.field(), "unkeyed", "{e}");
        let e = refused(&with("key", serde_json::json!([{"header": "a", "cookie": "b"}])));
        assert!(e.field().starts_with("key"), "{e}");
    }

    #[test]
    fn counts_default_to_filter_and_cluster_is_accepted() {
        assert_eq!(Plan::from_json(GOOD.as_bytes()).unwrap().counts, Counts::Filter);
        let plan = Plan::from_json(&with("counts", "cluster".into())).unwrap();
        assert_eq!(plan.counts, Counts::Cluster);
        assert!(!plan.counts_versions() && !plan.reads_status() && !plan.times_requests());
        assert_eq!(Plan::from_json(&with("counts", "filter".into())).unwrap().counts, Counts::Filter);
    }

    #[test]
    fn counts_are_written_only_when_not_the_default() {
        // A filter built before the field existed reads the default's configuration.
        let cfg = FilterConfig::from_json(GOOD.as_bytes()).unwrap();
        assert!(!cfg.to_json().contains("counts"), "{}", cfg.to_json());
        let cluster = FilterConfig { counts: Counts::Cluster, ..cfg };
        let written: serde_json::Value = serde_json::from_str(&cluster.to_json()).unwrap();
        assert_eq!(written["counts"], "cluster");
        assert_eq!(FilterConfig::from_json(cluster.to_json().as_bytes()).unwrap(), cluster);
    }

    #[test]
    fn unknown_counts_are_refused_and_named() {
        for value in [serde_json::json!("envoy"), serde_json::json!("Cluster"), serde_json::json!(1)] {
            let e = refused(&with("counts", value.clone()));
            assert_eq!(e.field(), "counts", "{value}: {e}");
        }
    }

    #[test]
    fn cluster_counts_refuse_shadow_copies_into_a_versions_cluster() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["counts"] = "cluster".into();
        v["shadow"] = serde_json::json!({"cluster": "v2"});
        let e = refused(&serde_json::to_vec(&v).unwrap());
        assert_eq!(e.field(), "shadow.cluster", "{e}");
        assert!(e.to_string().contains("counted as its responses"), "{e}");
        v["shadow"] = serde_json::json!({"cluster": "v2-shadow"});
        assert!(Plan::from_json(&serde_json::to_vec(&v).unwrap()).is_ok());
        v["counts"] = "filter".into();
        v["shadow"] = serde_json::json!({"cluster": "v2"});
        assert!(Plan::from_json(&serde_json::to_vec(&v).unwrap()).is_ok());
    }
}
