//! `canary … --kube NS/NAME` end to end: the real binary, its kubeconfig
//! loading and clap wiring, against a stand-in API server on 127.0.0.1 (no
//! Kubernetes API server can run here). It records the annotation patch and
//! answers the status polls the way the reconciler's status would.

// A test file: its helpers fail the test by panicking.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde_json::{json, Value};

const OBJECT: &str = "/apis/canary.dev/v1alpha1/namespaces/shop/canaryrollouts/recs";

#[derive(Clone)]
struct Fake {
    /// Every PATCH body received.
    patches: Arc<Mutex<Vec<Value>>>,
    /// What the reconciler reports for a command: `applied` or `refused`.
    result: &'static str,
}

fn object(status: Value) -> Value {
    json!({
        "apiVersion": "canary.dev/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": "recs", "namespace": "shop", "resourceVersion": "5"},
        "spec": {"rollout": "recs", "champion": "v1", "challenger": "v2",
                 "gates": {"error_rate": {"error_tolerance": 1}},
                 "envoy": {"admin": ["http://127.0.0.1:1"], "ecds_dir": "/x", "wasm": "/y.wasm"}},
        "status": status
    })
}

async fn patched(State(f): State<Fake>, Json(body): Json<Value>) -> Json<Value> {
    f.patches.lock().unwrap().push(body);
    Json(object(json!({})))
}

async fn status(State(f): State<Fake>) -> Json<Value> {
    // The reconciler "handles" the last requested id.
    let id = f
        .patches
        .lock()
        .unwrap()
        .last()
        .and_then(|b| b["metadata"]["annotations"]["canary.dev/command-id"].as_str().map(str::to_owned));
    let status = match id {
        Some(id) => {
            json!({"phase": "rolled_back", "stage": 0, "stageName": "1pct", "stages": 5, "weight": "0%", "epoch": 2,
                           "lastCommand": {"id": id, "command": "rollback", "result": format!("{}: decision #2", f.result)}})
        }
        None => json!({"phase": "running", "stage": 0, "stageName": "1pct", "stages": 5, "weight": "1%", "epoch": 1}),
    };
    Json(object(status))
}

async fn start(result: &'static str) -> (Fake, tempfile::TempDir) {
    let fake = Fake { patches: Arc::default(), result };
    let app = Router::new()
        .route(OBJECT, patch(patched))
        .route(&format!("{OBJECT}/status"), get(status))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{addr}\"}}}}]\n\
         users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u, namespace: default}}}}]\n\
         current-context: c\n"
    );
    std::fs::write(dir.path().join("config"), kubeconfig).unwrap();
    (fake, dir)
}

async fn canary(dir: &tempfile::TempDir, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_canary"))
        .args(args)
        .env("KUBECONFIG", dir.path().join("config"))
        .env_remove("CANARY_STATE_DIR")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn rollback_with_kube_sets_the_command_annotations_and_reports_the_reconcilers_answer() {
    let (fake, dir) = start("applied").await;
    let (ok, out, err) =
        canary(&dir, &["rollback", "--kube", "shop/recs", "--reason", "bad reviews", "--wait", "10s"]).await;
    assert!(ok, "{out}\n{err}");
    let patches = fake.patches.lock().unwrap().clone();
    assert_eq!(patches.len(), 1);
    let ann = &patches[0]["metadata"]["annotations"];
    assert_eq!(
        (ann["canary.dev/command"].as_str(), ann["canary.dev/command-reason"].as_str()),
        (Some("rollback"), Some("bad reviews"))
    );
    let id = ann["canary.dev/command-id"].as_str().unwrap();
    assert!(out.contains("rolled_back") && out.contains(id) && out.contains("applied: decision #2"), "{out}");

    let (ok, out, err) = canary(&dir, &["status", "--kube", "shop/recs", "--output", "json"]).await;
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["lastCommand"]["id"], id);
}

#[tokio::test]
async fn a_refused_command_fails_the_cli_and_a_bad_reference_is_named() {
    let (_fake, dir) = start("refused").await;
    let (ok, _, err) = canary(&dir, &["pause", "--kube", "shop/recs", "--wait", "10s"]).await;
    assert!(!ok && err.contains("refused"), "{err}");
    let (ok, _, err) = canary(&dir, &["pause", "--kube", "recs"]).await;
    assert!(!ok && err.contains("NAMESPACE/NAME"), "{err}");
    let (ok, _, err) = canary(&dir, &["pause"]).await;
    assert!(!ok && err.contains("--state-dir"), "{err}");
}

/// `kubectl canary status NS/NAME`: the same binary named `kubectl-canary`
/// (what `make install` links) answers as a kubectl plugin, run directly and,
/// when kubectl is installed (`scripts/setup.sh k8s`), through kubectl's own
/// plugin lookup on PATH.
#[tokio::test]
async fn as_kubectl_canary_it_answers_as_a_kubectl_plugin() {
    let (fake, dir) = start("applied").await;
    let bin = tempfile::tempdir().unwrap();
    let plugin = bin.path().join("kubectl-canary");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_canary"), &plugin).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let run = |program: std::path::PathBuf, args: Vec<&'static str>| {
        let (config, path) = (dir.path().join("config"), path.clone());
        async move {
            let out = tokio::process::Command::new(program)
                .args(args)
                .env("KUBECONFIG", config)
                .env("PATH", path)
                .env_remove("CANARY_STATE_DIR")
                .output()
                .await
                .unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.success(), text(&out.stdout), text(&out.stderr))
        }
    };
    let (ok, out, err) = run(plugin.clone(), vec!["status", "shop/recs", "--output", "json"]).await;
    assert!(ok, "{out}\n{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["phase"], "running");
    let (ok, out, err) =
        run(plugin.clone(), vec!["rollback", "recs", "-n", "shop", "--reason", "bad", "--wait", "10s"]).await;
    assert!(ok && out.contains("rolled_back"), "{out}\n{err}");
    assert_eq!(fake.patches.lock().unwrap().len(), 1);
    let (ok, _, err) = run(plugin.clone(), vec!["status", "--output", "json"]).await;
    assert!(!ok && err.contains("kubectl canary"), "usage names the plugin: {err}");

    let kubectl = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file());
    match kubectl {
        Some(kubectl) => {
            let (ok, out, err) = run(kubectl, vec!["canary", "status", "shop/recs", "--output", "json"]).await;
            assert!(ok, "kubectl canary status: {out}\n{err}");
            assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["phase"], "rolled_back");
        }
        None => {
            eprintln!("kubectl is not on PATH (scripts/setup.sh k8s installs it): checked kubectl-canary directly only")
        }
    }
}
