//! The status of a `CanaryRollout` resource, as `kubectl get canaryrollout -o
//! yaml` shows it, and the schemas the resource uses for the filter's own
//! types. Plain serde/schemars values: they live here, beside the spec, so
//! the spec's `CustomResource` derive (feature `kube`) can name them without
//! the Kubernetes client; the controller's reconciler fills them in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Schemas for what the derive cannot describe: humantime durations and
/// the filter's own configuration types (they live in the filter's crate,
/// which knows nothing of Kubernetes). Written out by hand, typed as the
/// filter's parser reads them, so the API server refuses what the
/// controller could not decode; the filter's own rules still run when the
/// spec is validated. `tests` checks them against the types' serde shapes.
pub mod schema {
    use schemars::{json_schema, Schema, SchemaGenerator};
    use serde_json::{json, Value};

    /// What humantime reads: `500ms`, `30s`, `1h 30m`, `2d`.
    pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*(nsec|ns|usec|us|µs|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y)\s*)+$";

    pub fn duration(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": DURATION_PATTERN })
    }

    fn string() -> Value {
        json!({ "type": "string", "minLength": 1 })
    }

    /// An externally tagged enum of strings: exactly one of `names`.
    fn one_of(names: &[&str], item: Value) -> Value {
        let properties: serde_json::Map<String, Value> = names.iter().map(|n| (n.to_string(), item.clone())).collect();
        json!({ "type": "object", "properties": properties, "minProperties": 1, "maxProperties": 1 })
    }

    fn object(properties: Value, required: &[&str]) -> Schema {
        let mut v = json!({ "type": "object", "properties": properties });
        if !required.is_empty() {
            v["required"] = json!(required);
        }
        Schema::try_from(v).unwrap_or_default()
    }

    /// `filter.key`: `[{header: x-user-id}, {cookie: uid}]`, 1–4 sources.
    pub fn key_list(_: &mut SchemaGenerator) -> Schema {
        let max = canary_core::config::MAX_KEY_SOURCES;
        json_schema!({ "type": "array", "minItems": 1, "maxItems": max, "items": one_of(&["header", "cookie"], string()) })
    }

    /// `filter.headers`: the names of the headers the filter owns.
    pub fn headers(_: &mut SchemaGenerator) -> Schema {
        object(json!({ "version": string(), "stage": string(), "unkeyed": string() }), &[])
    }

    /// `filter.prediction`: `from: {header | json_pointer}`, `bins: {numeric | categorical}`.
    pub fn prediction(_: &mut SchemaGenerator) -> Schema {
        let max = canary_core::predict::MAX_BINS;
        let bins = json!({
            "type": "object", "minProperties": 1, "maxProperties": 1,
            "properties": {
                "numeric": { "type": "array", "minItems": 1, "maxItems": max, "items": { "type": "number" } },
                "categorical": { "type": "array", "minItems": 1, "maxItems": max, "items": string() },
            }
        });
        let from = one_of(&["header", "json_pointer"], json!({ "type": "string" }));
        object(json!({ "from": from, "bins": bins, "max_body_bytes": uint(32) }), &["from", "bins"])
    }

    /// `filter.segment`: a header and its 1–32 allowed values.
    pub fn segment(_: &mut SchemaGenerator) -> Schema {
        let max = canary_core::predict::MAX_SEGMENTS;
        let values = json!({ "type": "array", "minItems": 1, "maxItems": max, "items": string() });
        object(json!({ "header": string(), "values": values }), &["header", "values"])
    }

    /// A gate's `segments`. YAML and JSON specs also take the words `all`
    /// and `none`; a structural CRD types each field once, so through the
    /// API server the segments are listed by name.
    pub fn segment_selection(_: &mut SchemaGenerator) -> Schema {
        let max = canary_core::predict::MAX_SEGMENTS + 1;
        json_schema!({ "type": "array", "maxItems": max, "items": string() })
    }

    /// `filter.override`: the QA override header and its secret.
    pub fn qa_override(_: &mut SchemaGenerator) -> Schema {
        let secret = json!({ "type": "string", "minLength": canary_core::config::MIN_SECRET_LEN });
        object(json!({ "header": string(), "secret": secret }), &["header", "secret"])
    }

    pub fn counts(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "enum": ["filter", "cluster"] })
    }

    pub fn unkeyed(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "enum": ["champion", "split_by_request_id"] })
    }

    /// An unsigned integer of `bits` as Kubernetes can say it: bounds, no
    /// `uint*` format (Kubernetes ≥ 1.34 warns about formats it does not know).
    pub fn uint(bits: u32) -> Value {
        // Kubernetes integers are int64: a u64 field takes up to i64::MAX.
        let max = if bits >= 64 { i64::MAX as u64 } else { (1u64 << bits) - 1 };
        json!({ "type": "integer", "minimum": 0, "maximum": max })
    }
}

/// What `kubectl get canaryrollout -o yaml` shows under `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRolloutStatus {
    /// running, paused, promoted or rolled_back.
    pub phase: Option<String>,
    /// 0-based stage index, and its name.
    pub stage: Option<u32>,
    pub stage_name: Option<String>,
    pub stages: Option<u32>,
    /// Challenger share, e.g. `5%`.
    pub weight: Option<String>,
    pub weight_bp: Option<u16>,
    /// The configuration's epoch (raised on every change).
    pub epoch: Option<u64>,
    /// The last decision's gate verdicts.
    #[serde(default)]
    pub gates: Vec<GateStatus>,
    pub last_decision: Option<DecisionStatus>,
    /// The latest stage changes, oldest first (at most 20).
    #[serde(default)]
    pub history: Vec<TransitionStatus>,
    /// Sinks that do not carry the current configuration yet.
    #[serde(default)]
    pub missing_sinks: Vec<String>,
    /// The last manual command handled (from the annotations).
    pub last_command: Option<CommandStatus>,
    /// Why the reconciler cannot go on (a refused spec), or the last error.
    pub message: Option<String>,
    /// `metadata.generation` of the spec this status describes.
    pub observed_generation: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    pub gate: String,
    /// pass, fail, inconclusive or no_data.
    pub outcome: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionStatus {
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// advance, promote, hold, rollback, pause or resume.
    pub action: String,
    pub manual: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionStatus {
    pub seq: u64,
    pub at: String,
    pub action: String,
    pub manual: bool,
    pub from_stage: String,
    pub to_stage: String,
    pub weight: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandStatus {
    pub id: String,
    pub command: String,
    /// `applied: …` or `refused: …`.
    pub result: String,
}
