//! The `CanaryRollout` custom resource (canary.dev/v1alpha1): its spec is
//! the rollout spec ([`crate::spec::RolloutSpec`], derived there), its
//! status what the reconciler mirrors from the rollout's state directory.
//!
//! ```text
//!  kubectl / canary --kube ──annotate──► CanaryRollout ◄──watch── reconciler ──► state dir (authoritative)
//!                                          status ◄──────patch /status────────┘
//! ```
//!
//! Manual commands travel as two annotations: `canary.dev/command`
//! (pause | resume | advance | rollback) and `canary.dev/command-id` (any
//! new value). The reconciler applies a command once per id: the id goes
//! into the decision's reason in the log and into `status.lastCommand`.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use kube::api::{Api, Patch, PatchParams};
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::control::Status;
use crate::rollout::{Command, RolloutState};
use crate::sink::configmap::FIELD_MANAGER;
pub use crate::spec::CanaryRollout;

/// The annotation naming a manual command.
pub const COMMAND: &str = "canary.dev/command";
/// The annotation that makes a command new: a command runs once per id.
pub const COMMAND_ID: &str = "canary.dev/command-id";
/// Optional: why (goes into the decision log and the alert).
pub const COMMAND_REASON: &str = "canary.dev/command-reason";
/// `"true"`: accept a changed spec mid-rollout (recorded in the log, as
/// `canary run --accept-spec-change`).
pub const ACCEPT_SPEC_CHANGE: &str = "canary.dev/accept-spec-change";

/// Transitions kept in `status.history` (the full record is the state
/// directory's decision log).
pub const HISTORY_LIMIT: usize = 20;

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

    /// `filter.override`: the QA override header and its secret.
    pub fn qa_override(_: &mut SchemaGenerator) -> Schema {
        let secret = json!({ "type": "string", "minLength": canary_core::config::MIN_SECRET_LEN });
        object(json!({ "header": string(), "secret": secret }), &["header", "secret"])
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

/// The CRD as YAML: what `canary crd` prints and `deploy/crd.yaml` holds.
pub fn crd_yaml() -> String {
    let header = "# Generated by `canary crd` from controller/src/spec.rs and controller/src/crd.rs: do not edit.\n";
    let mut crd = serde_json::to_value(CanaryRollout::crd()).unwrap_or_default();
    structural(&mut crd);
    if let Some(spec) = crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec") {
        cross_field_rules(spec);
    }
    format!("{header}{}", serde_yaml_ng::to_string(&crd).unwrap_or_default())
}

/// Most stages a CanaryRollout may list (bounds the cost of the CEL rules).
pub const MAX_STAGES: usize = 32;

/// What the API server can check beyond each field's type, as
/// `x-kubernetes-validations` (CEL) and bounds. `spec.validate()` holds the
/// same rules (and more) for specs that do not come through the API server.
pub fn cross_field_rules(spec: &mut serde_json::Value) {
    let rule = |rule: &str, message: &str| json!({ "rule": rule, "message": message });
    spec["x-kubernetes-validations"] =
        json!([rule("self.champion != self.challenger", "challenger must differ from champion")]);
    let stages = &mut spec["properties"]["stages"];
    stages["minItems"] = json!(1);
    stages["maxItems"] = json!(MAX_STAGES);
    // A shadow stage has no weight (0); `has(…) ? … : 0.0` rather than
    // `has(…) && …`, which some CEL evaluators do not short-circuit.
    let w = |s: &str| format!("(has({s}.weight_percent) ? {s}.weight_percent : 0.0)");
    let rising = format!(
        "self.map(s, {}).filter(p, p > 0.0).isSorted() && self.all(a, {a} == 0.0 || self.exists_one(b, {} == {a}))",
        w("s"),
        w("b"),
        a = w("a"),
    );
    let last = "self[size(self) - 1]";
    let full = format!("has({last}.weight_percent) ? {last}.weight_percent == 100.0 : false");
    stages["x-kubernetes-validations"] = json!([
        rule(&rising, "stage weights must rise from each stage to the next"),
        rule(&full, "the last stage must be 100"),
    ]);
    let weight = &mut stages["items"]["properties"]["weight_percent"];
    weight["minimum"] = json!(0);
    weight["maximum"] = json!(100);
}

/// Makes the derived schema one the API server takes without a word:
/// - drops `additionalProperties: false` beside `properties`, which it
///   refuses ("additionalProperties and properties are mutual exclusive");
///   kube-derive 2.0 emits it for `deny_unknown_fields`. Unknown fields are
///   pruned by the API server (refused under strict field validation), and
///   the controller's own parse refuses them;
/// - turns schemars' `format: uint8/16/32/64` into bounds (Kubernetes ≥ 1.34
///   warns about formats it does not know).
pub fn structural(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            if map.contains_key("properties")
                && map.get("additionalProperties") == Some(&serde_json::Value::Bool(false))
            {
                map.remove("additionalProperties");
            }
            let bits = map.get("format").and_then(|f| f.as_str()).and_then(|f| f.strip_prefix("uint"));
            if let Some(bits) = bits.and_then(|b| b.parse::<u32>().ok()) {
                map.remove("format");
                if let serde_json::Value::Object(bounds) = schema::uint(bits) {
                    map.insert("minimum".into(), bounds["minimum"].clone());
                    map.insert("maximum".into(), bounds["maximum"].clone());
                }
            }
            map.values_mut().for_each(structural);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(structural),
        _ => {}
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn snake<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The status for a rollout's state: pure, so the reconciler's writes are
/// tested without a cluster.
pub fn status_of(
    s: &Status,
    state: &RolloutState,
    missing_sinks: Vec<String>,
    last_command: Option<CommandStatus>,
    message: Option<String>,
    generation: Option<i64>,
) -> CanaryRolloutStatus {
    let d = s.last_decision.as_ref();
    let skip = state.history.len().saturating_sub(HISTORY_LIMIT);
    CanaryRolloutStatus {
        phase: Some(snake(&s.phase)),
        stage: Some(s.stage as u32),
        stage_name: Some(s.stage_name.clone()),
        stages: Some(s.stages as u32),
        weight: Some(canary_core::Weight::from_bp(u64::from(s.weight_bp)).unwrap_or_default().to_string()),
        weight_bp: Some(s.weight_bp),
        epoch: Some(s.epoch),
        gates: d
            .map(|d| {
                d.gates
                    .iter()
                    .map(|g| GateStatus { gate: snake(&g.gate), outcome: snake(&g.outcome), detail: g.detail.clone() })
                    .collect()
            })
            .unwrap_or_default(),
        last_decision: d.map(|d| DecisionStatus {
            seq: d.seq,
            at: rfc3339(d.at),
            action: snake(&d.action),
            manual: d.manual,
            reasons: d.reasons.clone(),
        }),
        history: state.history[skip..]
            .iter()
            .map(|t| TransitionStatus {
                seq: t.seq,
                at: rfc3339(t.at),
                action: snake(&t.action),
                manual: t.manual,
                from_stage: t.from_stage.clone(),
                to_stage: t.to_stage.clone(),
                weight: t.weight.to_string(),
                epoch: t.epoch,
            })
            .collect(),
        missing_sinks,
        last_command,
        message,
        observed_generation: generation,
    }
}

/// A command the annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCommand {
    pub id: String,
    /// `Err(text)`: not a command (refused, and recorded as handled).
    pub command: Result<Command, String>,
    pub reason: String,
}

/// The command the annotations ask for, unless its id was handled already.
pub fn pending_command(annotations: &BTreeMap<String, String>, handled: Option<&str>) -> Option<PendingCommand> {
    let id = annotations.get(COMMAND_ID)?.trim();
    if id.is_empty() || Some(id) == handled {
        return None;
    }
    let text = annotations.get(COMMAND).map(|c| c.trim().to_ascii_lowercase()).unwrap_or_default();
    let command = match text.as_str() {
        "pause" => Ok(Command::Pause),
        "freeze" => Ok(Command::Freeze),
        "resume" => Ok(Command::Resume),
        "advance" => Ok(Command::Advance),
        "rollback" => Ok(Command::Rollback),
        other => Err(format!("`{COMMAND}: {other}` is not a command: use pause, freeze, resume, advance or rollback")),
    };
    let reason = annotations.get(COMMAND_REASON).cloned().unwrap_or_default();
    Some(PendingCommand { id: id.to_string(), command, reason })
}

/// The decision reason that records a command's id (how a command already
/// applied is recognised after a restart).
pub fn reason_with_id(reason: &str, id: &str) -> String {
    let tag = format!("[{COMMAND_ID} {id}]");
    if reason.is_empty() {
        format!("kubectl {tag}")
    } else {
        format!("{reason} {tag}")
    }
}

/// Whether a decision's reasons carry this command id.
pub fn carries_id(reasons: &[String], id: &str) -> bool {
    let tag = format!("[{COMMAND_ID} {id}]");
    reasons.iter().any(|r| r.contains(&tag))
}

pub fn command_name(c: Command) -> &'static str {
    match c {
        Command::Pause => "pause",
        Command::Freeze => "freeze",
        Command::Resume => "resume",
        Command::Advance => "advance",
        Command::Rollback => "rollback",
    }
}

/// A fresh command id: time and randomness, unique enough per resource.
pub fn new_command_id() -> String {
    let ms = crate::control::now_millis();
    format!("{ms}-{:08x}", rand::random::<u32>())
}

/// The annotation patch that asks the reconciler for a command.
pub fn command_patch(command: Command, id: &str, reason: &str) -> serde_json::Value {
    json!({ "metadata": { "annotations": {
        COMMAND: command_name(command),
        COMMAND_ID: id,
        COMMAND_REASON: reason,
    } } })
}

/// `canary pause|resume|advance|rollback --kube NS/NAME`: sets the
/// annotations through the API (what `kubectl annotate` would do).
pub async fn request_command(
    client: kube::Client,
    namespace: &str,
    name: &str,
    command: Command,
    reason: &str,
    id: &str,
) -> Result<(), kube::Error> {
    let api: Api<CanaryRollout> = Api::namespaced(client, namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch(name, &params, &Patch::Merge(command_patch(command, id, reason))).await?;
    Ok(())
}

/// Waits until the reconciler reports the command handled; its status then.
pub async fn wait_handled(
    client: kube::Client,
    namespace: &str,
    name: &str,
    id: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Option<CanaryRolloutStatus>, kube::Error> {
    let api: Api<CanaryRollout> = Api::namespaced(client, namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = api.get_status(name).await?.status;
        if status.as_ref().and_then(|s| s.last_command.as_ref()).is_some_and(|c| c.id == id) {
            return Ok(status);
        }
        if tokio::time::Instant::now() + poll > deadline {
            return Ok(None);
        }
        tokio::time::sleep(poll).await;
    }
}

/// `NAMESPACE/NAME` of a CanaryRollout (the CLI's `--kube`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for ResourceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<ResourceRef, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ResourceRef { namespace: ns.into(), name: name.into() })
            }
            _ => Err(format!("`{s}` is not NAMESPACE/NAME of a CanaryRollout, e.g. shop/recs-v2")),
        }
    }
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fixtures::{client, serve, Exchange};

    #[test]
    fn the_checked_in_crd_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crd.yaml");
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == crd_yaml(),
            "{} differs from the CRD the types generate: run `cargo run -p canary-controller --bin canary -- crd > deploy/crd.yaml`",
            path.display()
        );
    }

    #[test]
    fn the_crd_is_structural_and_has_the_status_subresource() {
        let crd: serde_json::Value = serde_yaml_ng::from_str(&crd_yaml()).unwrap();
        let text = crd.to_string();
        assert!(!text.contains(r#""additionalProperties":false"#), "the API server refuses it beside properties");
        assert!(!text.contains(r#""format":"uint"#), "Kubernetes ≥ 1.34 warns about uint formats");
        assert!(
            !text.contains("x-kubernetes-preserve-unknown-fields"),
            "every field typed: nothing the controller cannot read"
        );
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        // Durations are humantime strings.
        assert_eq!(spec["properties"]["interval"]["type"], "string");
        assert_eq!(spec["properties"]["stages"]["items"]["properties"]["min_duration"]["type"], "string");
        assert_eq!(spec["properties"]["envoy"]["properties"]["sinks"]["items"]["oneOf"].as_array().unwrap().len(), 3);
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        for field in ["phase", "stage", "weight", "gates", "lastDecision", "history", "lastCommand"] {
            assert!(status[field].is_object(), "status.{field} missing from the schema");
        }
    }

    /// The spec as the API server hands it over: JSON, maps for the
    /// filter's enums, humantime strings.
    pub(crate) fn resource(ecds_dir: &std::path::Path, annotations: serde_json::Value) -> CanaryRollout {
        serde_json::from_value(json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "CanaryRollout",
            "metadata": {"name": "recs", "namespace": "shop", "generation": 3, "annotations": annotations},
            "spec": {
                "rollout": "recs-v2", "champion": "v1", "challenger": "v2", "interval": "30s",
                "stages": [{"weight_percent": 5, "min_duration": "1h", "min_requests": 100}, {"weight_percent": 100}],
                "gates": {"error_rate": {"error_tolerance": 1.0}},
                "envoy": {
                    "admin": ["http://127.0.0.1:1"], "timeout": "200ms",
                    "ecds_dir": ecds_dir, "wasm": "/etc/canary/canary_filter.wasm",
                },
                "filter": {"key": [{"header": "x-user-id"}, {"cookie": "uid"}], "unkeyed": "champion"}
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_resource_spec_reads_like_the_yaml_spec() {
        let r = resource(std::path::Path::new("/var/run/canary"), json!({}));
        let yaml = crate::spec::RolloutSpec::from_yaml(
            "rollout: recs-v2\nchampion: v1\nchallenger: v2\ninterval: 30s\nstages:\n  - {weight_percent: 5, min_duration: 1h, min_requests: 100}\n  - {weight_percent: 100}\ngates: {error_rate: {error_tolerance: 1.0}}\nenvoy: {admin: ['http://127.0.0.1:1'], timeout: 200ms, ecds_dir: /var/run/canary, wasm: /etc/canary/canary_filter.wasm}\nfilter: {key: [{header: x-user-id}, {cookie: uid}], unkeyed: champion}\n",
        )
        .unwrap();
        assert_eq!(r.spec, yaml);
        r.spec.validate().unwrap();
    }

    #[test]
    fn the_deploy_examples_are_valid() {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let read = |f: &str| std::fs::read_to_string(deploy.join(f)).unwrap();
        let rollout: CanaryRollout = serde_yaml_ng::from_str(&read("canaryrollout.yaml")).unwrap();
        rollout.spec.validate().unwrap();
        assert_eq!(rollout.spec.sinks().len(), 2);
        let plugin: serde_json::Value = serde_yaml_ng::from_str(&read("wasmplugin.yaml")).unwrap();
        assert!(plugin["spec"]["url"].as_str().unwrap().starts_with("oci://"));
        let config = plugin["spec"]["pluginConfig"].to_string();
        canary_core::FilterConfig::from_json(config.as_bytes()).unwrap().validate().unwrap();
        let ecds: serde_json::Value = serde_yaml_ng::from_str(&read("sidecar/canary-ecds.yaml")).unwrap();
        let body: serde_json::Value = serde_json::from_str(ecds["data"]["canary.json"].as_str().unwrap()).unwrap();
        assert_eq!(body["resources"], json!([]));
    }

    /// The CRD's CEL rules (evaluated by tests/k8s/check.py with
    /// cel-python) have their equivalents in `spec.validate()`, for specs
    /// that do not come through an API server.
    #[test]
    fn what_the_cel_rules_refuse_the_spec_refuses_too() {
        let crd: serde_json::Value = serde_yaml_ng::from_str(&crd_yaml()).unwrap();
        let spec_schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let messages: Vec<&str> = [
            &spec_schema["x-kubernetes-validations"],
            &spec_schema["properties"]["stages"]["x-kubernetes-validations"],
        ]
        .iter()
        .flat_map(|rules| rules.as_array().unwrap())
        .map(|r| r["message"].as_str().unwrap())
        .collect();
        assert_eq!(messages.len(), 3);
        let tmp = tempfile::tempdir().unwrap();
        let good = resource(tmp.path(), json!({})).spec;
        let refused = |edit: &dyn Fn(&mut crate::spec::RolloutSpec), field: &str| {
            let mut spec = good.clone();
            edit(&mut spec);
            let e = spec.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        };
        refused(&|s| s.challenger = s.champion.clone(), "challenger");
        refused(&|s| s.stages[1].weight_percent = Some(2.0), "stages[1].weight_percent");
        refused(&|s| s.stages[1].weight_percent = Some(5.0), "stages[1].weight_percent");
        refused(&|s| s.stages[1].weight_percent = Some(99.0), "the last stage must be 100");
        refused(&|s| s.stages[1].weight_percent = Some(150.0), "stages[1].weight_percent");
    }

    #[test]
    fn a_command_runs_once_per_id() {
        let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let pause = ann(&[(COMMAND, "pause"), (COMMAND_ID, "a1"), (COMMAND_REASON, "looking")]);
        let p = pending_command(&pause, None).unwrap();
        assert_eq!((p.id.as_str(), p.command.clone(), p.reason.as_str()), ("a1", Ok(Command::Pause), "looking"));
        assert_eq!(pending_command(&pause, Some("a1")), None, "handled already");
        assert!(pending_command(&pause, Some("a0")).is_some(), "a new id runs again");
        assert_eq!(pending_command(&ann(&[(COMMAND, "pause")]), None), None, "no id: nothing to run");
        let odd = pending_command(&ann(&[(COMMAND, "promote"), (COMMAND_ID, "b")]), None).unwrap();
        assert!(odd.command.unwrap_err().contains("pause, freeze, resume, advance or rollback"));
        let upper = pending_command(&ann(&[(COMMAND, " Rollback "), (COMMAND_ID, "c")]), None).unwrap();
        assert_eq!(upper.command, Ok(Command::Rollback));
        let reason = reason_with_id("bad reviews", "a1");
        assert!(carries_id(std::slice::from_ref(&reason), "a1") && !carries_id(&[reason], "a"));
    }

    #[test]
    fn resource_refs_parse_as_namespace_slash_name() {
        let r: ResourceRef = "shop/recs".parse().unwrap();
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("shop", "recs"));
        for bad in ["recs", "/recs", "shop/", "a/b/c"] {
            assert!(bad.parse::<ResourceRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn status_history_is_bounded_and_mirrors_the_state() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = resource(tmp.path(), json!({})).spec;
        let mut state = RolloutState::start(&spec, 1_000);
        state = state.command(&spec, Command::Pause, "", 2_000).unwrap().0;
        state = state.command(&spec, Command::Resume, "", 3_000).unwrap().0;
        state.history = (1..=30)
            .map(|seq| crate::rollout::Transition {
                at: seq * 1000,
                seq,
                action: crate::rollout::Action::Advance,
                manual: false,
                from_stage: "a".into(),
                to_stage: "b".into(),
                weight: canary_core::Weight::from_bp(500).unwrap(),
                epoch: seq,
            })
            .collect();
        let store = crate::store::Store::open(tmp.path().join("s")).unwrap();
        store.save_spec(&spec).unwrap();
        store.save_state(&state).unwrap();
        let s = crate::control::status(&store, &spec).unwrap();
        let st = status_of(&s, &state, vec![], None, None, Some(3));
        let seqs: Vec<u64> = st.history.iter().map(|t| t.seq).collect();
        assert_eq!(seqs, (11..=30).collect::<Vec<u64>>(), "the latest 20, oldest first");
        assert_eq!((st.history[0].at.as_str(), st.history[0].weight.as_str()), ("1970-01-01T00:00:11.000Z", "5%"));
        assert_eq!(st.phase.as_deref(), Some("running"));
        assert_eq!((st.stage, st.weight.as_deref(), st.weight_bp, st.epoch), (Some(0), Some("5%"), Some(500), Some(1)));
        assert_eq!(st.last_decision.as_ref().map(|d| d.action.as_str()), Some("resume"));
        assert_eq!(st.observed_generation, Some(3));
    }

    #[tokio::test]
    async fn the_cli_asks_for_a_command_by_annotation_and_waits_for_the_status() {
        let path = "/apis/canary.dev/v1alpha1/namespaces/shop/canaryrollouts/recs";
        let tmp = tempfile::tempdir().unwrap();
        let mut handled = serde_json::to_value(resource(tmp.path(), json!({}))).unwrap();
        let (client, handle) = client();
        let mut pending = handled.clone();
        pending["status"] = json!({"lastCommand": {"id": "older", "command": "pause", "result": "applied"}});
        handled["status"] = json!({"phase": "rolled_back", "lastCommand": {"id": "id-1", "command": "rollback", "result": "applied: decision #3"}});
        let api = serve(
            handle,
            vec![
                Exchange::patch(
                    path,
                    "application/merge-patch+json",
                    json!({"metadata": {"annotations": {
                        "canary.dev/command": "rollback", "canary.dev/command-id": "id-1", "canary.dev/command-reason": "bad reviews"
                    }}}),
                    200,
                    pending.clone(),
                ),
                Exchange::get(format!("{path}/status"), 200, pending),
                Exchange::get(format!("{path}/status"), 200, handled),
            ],
        );
        request_command(client.clone(), "shop", "recs", Command::Rollback, "bad reviews", "id-1").await.unwrap();
        let status = wait_handled(client, "shop", "recs", "id-1", Duration::from_secs(5), Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.phase.as_deref(), Some("rolled_back"));
        api.await.unwrap();
    }
}
