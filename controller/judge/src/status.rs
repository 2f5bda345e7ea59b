//! The status of a `CanaryRollout` resource, as `kubectl get canaryrollout -o
//! yaml` shows it, and the schemas the resource uses for the filter's own
//! types. Plain serde/schemars values: they live here, beside the spec, so
//! the spec's `CustomResource` derive (feature `kube`) can name them without
//! the Kubernetes client; the controller's reconciler fills them in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Schemas for the filter's own configuration types (they live in the
/// filter's crate, which knows nothing of Kubernetes): kept open, and
/// checked by the filter's own rules when the spec is validated.
pub mod schema {
    use schemars::{json_schema, Schema, SchemaGenerator};

    pub fn object(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
    }

    pub fn object_list(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "array",
            "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
        })
    }

    pub fn unkeyed(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "enum": ["champion", "split_by_request_id"] })
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
