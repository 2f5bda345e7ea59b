//! The filter's settings passed through to its configuration (`filter` in
//! the spec), and the shadow stage's copies.

use std::time::Duration;

use canary_core::config::{KeySource, OwnedHeaders, UnkeyedPolicy};
use canary_core::predict::{PredictionConfig, SegmentConfig};
use canary_core::Weight;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{invalid, percent_to_weight, RolloutSpec, SpecError};

/// Filter settings passed through to its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSpec {
    /// `[{header: x-user-id}, {cookie: uid}]`, as in the plugin configuration.
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    #[schemars(schema_with = "crate::status::schema::key_list")]
    pub key: Vec<KeySource>,
    #[schemars(schema_with = "crate::status::schema::unkeyed")]
    pub unkeyed: UnkeyedPolicy,
    #[schemars(schema_with = "crate::status::schema::headers")]
    pub headers: OwnedHeaders,
    /// Where responses carry their prediction and how it is binned, as in
    /// the plugin configuration (`from: {header: x-prediction}`, `bins:
    /// {numeric: [0.25, 0.5, 0.75]}`). Every stage gets it. Numeric edges
    /// are fixed for the whole rollout: derive them from the champion
    /// beforehand (`canary bin-edges`).
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::status::schema::prediction")]
    pub prediction: Option<PredictionConfig>,
    /// A request header whose allowed values split the counters. Every
    /// stage gets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::status::schema::segment")]
    pub segment: Option<SegmentConfig>,
    /// Where and how shadow copies go; only shadow stages get it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// A QA override header and its secret (`<secret>:<version>`); every
    /// stage gets it. Overridden requests are not counted.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::status::schema::qa_override")]
    pub qa_override: Option<canary_core::config::OverrideConfig>,
}

impl Default for FilterSpec {
    fn default() -> Self {
        FilterSpec {
            key: vec![KeySource::Header("x-user-id".into())],
            unkeyed: UnkeyedPolicy::default(),
            headers: OwnedHeaders::default(),
            prediction: None,
            segment: None,
            shadow: None,
            qa_override: None,
        }
    }
}

/// `filter.shadow`: the filter's `shadow` configuration in spec units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowSpec {
    /// Envoy cluster of the challenger; default: the challenger's version
    /// name (`envoy/sidecar.yaml` names clusters after versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// How long the filter waits for a shadow answer (1 ms – 60 s).
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::status::schema::duration")]
    pub timeout: Duration,
    /// Share of champion-served requests copied, in percent (0.01 resolution).
    pub sample_percent: f64,
    /// Requests with a longer body are not copied (counted as skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
    /// Most shadow calls in flight per Envoy worker; more are skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl Default for ShadowSpec {
    fn default() -> Self {
        ShadowSpec {
            cluster: None,
            timeout: Duration::from_secs(1),
            sample_percent: 100.0,
            max_body_bytes: None,
            max_in_flight: None,
        }
    }
}

impl RolloutSpec {
    pub(super) fn validate_shadow_spec(&self, shadow: &ShadowSpec) -> Result<(), SpecError> {
        if let Some(cluster) = &shadow.cluster {
            if cluster.is_empty() || cluster.len() > 128 {
                return Err(invalid("filter.shadow.cluster", "must be an Envoy cluster name, 1-128 bytes"));
            }
        }
        let ms = shadow.timeout.as_millis();
        if !(1..=60_000).contains(&ms) {
            return Err(invalid(
                "filter.shadow.timeout",
                format!("{} must be within 1ms..=60s", humantime::format_duration(shadow.timeout)),
            ));
        }
        let sample =
            percent_to_weight(shadow.sample_percent).map_err(|e| invalid("filter.shadow.sample_percent", e))?;
        if sample == Weight::ZERO {
            return Err(invalid("filter.shadow.sample_percent", "must be above 0: a shadow stage needs copies"));
        }
        Ok(())
    }
}
