//! `deploy/` against real schemas, as a cluster would check it (no API
//! server can run here, so these are the schemas, not a cluster):
//! tests/k8s/check.py runs kubernetes-validate (strict, Kubernetes 1.30 and
//! 1.37), the CRD's own openAPIV3Schema and CEL rules (jsonschema,
//! cel-python) and Istio's WasmPlugin schema (@kubernetes-models/istio);
//! `scripts/setup.sh k8s` (make integration) installs them, pinned.

use std::path::{Path, PathBuf};
use std::process::Command;

use canary_controller::crd::CanaryRollout;
use canary_controller::sink::wasmplugin::WasmPluginSink;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// The example WasmPlugin after the sink's patch (as the API server would
/// apply it) for the example rollout's second stage.
fn patched_wasmplugin() -> serde_json::Value {
    let mut plugin: serde_json::Value = serde_yaml_ng::from_str(&read("deploy/wasmplugin.yaml")).unwrap();
    let rollout: CanaryRollout = serde_yaml_ng::from_str(&read("deploy/canaryrollout.yaml")).unwrap();
    let spec = &rollout.spec;
    let config = spec.filter_config(&spec.stage_name(1), spec.stage_weight(1), 2, false);
    plugin["metadata"]["resourceVersion"] = "41".into();
    let patch: json_patch::Patch = serde_json::from_value(WasmPluginSink::patch_body("41", &config)).unwrap();
    json_patch::patch(&mut plugin, &patch).unwrap();
    assert_eq!(plugin["spec"]["pluginConfig"]["challenger_weight_bp"], 500);
    plugin
}

#[test]
fn deploy_objects_bad_rollouts_and_the_sinks_patch_meet_the_real_schemas() {
    let python = root().join(".tools/k8s/bin/python");
    assert!(python.exists(), "{} is missing: run `bash scripts/setup.sh k8s`", python.display());
    let tmp = tempfile::tempdir().unwrap();
    let patched = tmp.path().join("wasmplugin-patched.json");
    std::fs::write(&patched, serde_json::to_vec(&patched_wasmplugin()).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(&python)
        .arg(root().join("tests/k8s/check.py"))
        .arg(root())
        .arg("--wasmplugin")
        .arg(&patched)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}\n({:?})", String::from_utf8_lossy(&out.stderr), started.elapsed());
    assert!(out.status.success(), "schema validation failed:\n{stdout}");
    for expected in [
        "deploy/crd.yaml: CustomResourceDefinition canaryrollouts.canary.dev against Kubernetes 1.37, strict",
        "deploy/canaryrollout.yaml: CanaryRollout recs-v2 against the CRD's schema",
        "bad CanaryRollout refused (interval without a unit)",
        "bad CanaryRollout refused (retry_attempts over u32)",
        "bad CanaryRollout refused (filter.key with a typo)",
        "bad CanaryRollout refused (spec.intervall (a typo))",
        "wasmplugin-patched.json against Istio's WasmPlugin schema",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with("ok") && l.contains(expected)),
            "no passing `{expected}`:\n{stdout}"
        );
    }
}

/// The hand-written CRD schemas (filter.key, prediction, …) and the
/// filter's serde shapes agree: what check.py accepts, the controller reads.
#[test]
fn the_full_rollout_fixture_is_a_spec_the_controller_reads() {
    let rollout: CanaryRollout = serde_yaml_ng::from_str(&read("tests/fixtures/k8s/canaryrollout-full.yaml")).unwrap();
    rollout.spec.validate().unwrap();
    let filter = &rollout.spec.filter;
    assert!(filter.prediction.is_some() && filter.segment.is_some() && filter.qa_override.is_some());
}
