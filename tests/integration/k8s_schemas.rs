//! `deploy/` against real schemas, as a cluster would check it (no API
//! server can run here, so these are the schemas, not a cluster):
//! tests/k8s/check.py runs kubernetes-validate (strict, Kubernetes 1.30 and
//! 1.37), the CRD's own openAPIV3Schema and CEL rules (jsonschema,
//! cel-python) and Istio's WasmPlugin schema (@kubernetes-models/istio);
//! `scripts/setup.sh k8s` (make integration) installs them, pinned.

use std::path::{Path, PathBuf};
use std::process::Command;

use canary_controller::k8s::crd::CanaryRollout;
use canary_controller::sink::wasmplugin::WasmPluginSink;
use serde::Deserialize;

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

/// One object as `kubectl apply` sends it: kind, namespace (None: cluster-scoped), name.
type Object = (String, Option<String>, String);

const CLUSTER_SCOPED: &[&str] = &["Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"];
/// kustomize's legacy order (what `kubectl apply -k` sends first).
const KUSTOMIZE_ORDER: &[&str] = &[
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];

fn objects_in(file: &Path, namespace: Option<&str>) -> Vec<Object> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| v.is_object())
        .map(|v| {
            let kind = v["kind"].as_str().unwrap().to_string();
            let ns = (!CLUSTER_SCOPED.contains(&kind.as_str()))
                .then(|| namespace.or(v["metadata"]["namespace"].as_str()).unwrap_or("default").to_string());
            (kind, ns, v["metadata"]["name"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// What `kubectl apply -k DIR` sends, in order.
fn kustomize(dir: &Path) -> Vec<Object> {
    let k: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap()).unwrap();
    let ns = k["namespace"].as_str();
    let mut out: Vec<Object> = k["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| objects_in(&dir.join(r.as_str().unwrap()), ns))
        .collect();
    for g in k["configMapGenerator"].as_array().into_iter().flatten() {
        out.push(("ConfigMap".into(), Some(ns.unwrap_or("default").into()), g["name"].as_str().unwrap().into()));
    }
    let rank = |kind: &str| KUSTOMIZE_ORDER.iter().position(|k| *k == kind).unwrap_or(KUSTOMIZE_ORDER.len());
    out.sort_by_key(|o| rank(&o.0));
    out
}

/// The commands on a fresh cluster (Istio installed, nothing else): each
/// object's namespace must exist when it is sent, and a custom resource's
/// CRD must have been waited for (`kubectl wait … Established`).
fn on_a_fresh_cluster(commands: &[String]) -> Result<(), String> {
    let mut namespaces: std::collections::HashSet<String> = ["default", "kube-system"].map(String::from).into();
    let (mut crds, mut established) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    for command in commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        if words.starts_with(&["kubectl", "wait"]) {
            if let Some(crd) = words.iter().find_map(|w| w.strip_prefix("crd/")) {
                established.extend(crds.contains(crd).then(|| crd.to_string()));
            }
            continue;
        }
        if !words.starts_with(&["kubectl", "apply"]) {
            continue;
        }
        let mut objects = vec![];
        for pair in words[2..].windows(2) {
            match pair {
                ["-f", file] => objects.extend(objects_in(&root().join(file), None)),
                ["-k", dir] => objects.extend(kustomize(&root().join(dir))),
                _ => {}
            }
        }
        for (kind, ns, name) in objects {
            if let Some(ns) = &ns {
                if !namespaces.contains(ns) {
                    return Err(format!("`{command}`: {kind} {name}: namespaces \"{ns}\" not found"));
                }
            }
            match kind.as_str() {
                "Namespace" => drop(namespaces.insert(name)),
                "CustomResourceDefinition" => drop(crds.insert(name)),
                "CanaryRollout" if !established.contains("canaryrollouts.canary.dev") => {
                    return Err(format!("`{command}`: no matches for kind \"CanaryRollout\" (CRD not established)"))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The README's install commands (the shell block with `kubectl apply -k deploy/`).
fn readme_install_commands() -> Vec<String> {
    let readme = read("docs/kubernetes.md");
    let block = readme
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("kubectl apply -k deploy/"))
        .expect("docs/kubernetes.md has a ```sh block with `kubectl apply -k deploy/`");
    block
        .lines()
        .map(|l| l.split('#').next().unwrap())
        .flat_map(|l| l.split("&&"))
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("kubectl"))
        .collect()
}

#[test]
fn the_readme_install_sequence_works_on_a_fresh_cluster() {
    let commands = readme_install_commands();
    assert!(commands.len() >= 4, "{commands:?}");
    on_a_fresh_cluster(&commands).unwrap();
    // The checks bite: the order the README had before fails.
    let old = ["kubectl apply -f deploy/crd.yaml -f deploy/rbac.yaml -f deploy/namespaces.yaml".to_string()];
    let e = on_a_fresh_cluster(&old).unwrap_err();
    assert!(e.contains("namespaces \"canary-system\" not found"), "{e}");
    // The kustomize reading above matches the real one, where kubectl is
    // installed (`scripts/setup.sh k8s`): same objects, same order.
    let kubectl =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join("kubectl").is_file());
    for dir in ["deploy", "deploy/sidecar"] {
        if !kubectl {
            eprintln!("kubectl is not on PATH: the kustomize reading of {dir} is not compared with kubectl kustomize");
            continue;
        }
        let out = Command::new("kubectl").arg("kustomize").arg(root().join(dir)).output().unwrap();
        assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
        let real: Vec<(String, Option<String>)> = serde_yaml_ng::Deserializer::from_slice(&out.stdout)
            .map(|d| serde_json::Value::deserialize(d).unwrap())
            .map(|v| (v["kind"].as_str().unwrap().to_string(), v["metadata"]["namespace"].as_str().map(String::from)))
            .collect();
        let ours: Vec<(String, Option<String>)> =
            kustomize(&root().join(dir)).into_iter().map(|(k, ns, _)| (k, ns)).collect();
        assert_eq!(ours, real, "{dir}");
    }
    let no_wait = ["kubectl apply -k deploy/".to_string(), "kubectl apply -f deploy/canaryrollout.yaml".to_string()];
    assert!(on_a_fresh_cluster(&no_wait).unwrap_err().contains("CRD not established"));
}
