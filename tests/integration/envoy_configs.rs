//! Every Envoy config shipped in `envoy/` passes the real Envoy's validation.

use canary_tests::{envoy_validate, render_template, root, validate_vars, wasm_path};

fn validate(config_text: &str) -> (bool, String) {
    envoy_validate(config_text).unwrap()
}

fn vars() -> Vec<(&'static str, String)> {
    validate_vars(&wasm_path().unwrap())
}

#[test]
fn every_shipped_envoy_config_passes_envoy_validate() {
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = render_template(&path, &vars()).unwrap();
        let (ok, output) = validate(&text);
        assert!(ok, "{} fails `envoy --mode validate`:\n{output}", path.display());
        checked += 1;
    }
    assert!(checked >= 1, "no Envoy config found in envoy/");
}

#[test]
fn validation_catches_a_broken_config() {
    // The check above must be able to fail: a config naming a cluster that
    // does not exist is refused by the same command.
    let text = render_template(&root().join("envoy/sidecar.yaml"), &vars()).unwrap();
    let broken = text.replace("route: { cluster: \"v2\"", "route: { cluster: \"nope\"");
    assert_ne!(text, broken);
    let (ok, output) = validate(&broken);
    assert!(!ok, "a route to an unknown cluster passed validation:\n{output}");
}

#[test]
fn the_kubernetes_sidecar_bootstrap_passes_envoy_validate() {
    // deploy/sidecar/envoy.yaml is a finished config for the pod: only the
    // mount paths change for this machine.
    let text = std::fs::read_to_string(root().join("deploy/sidecar/envoy.yaml")).unwrap();
    assert!(text.contains("watched_directory: { path: /etc/canary/ecds }"), "the ECDS mount is watched as a directory");
    let local = text
        .replace("/etc/canary/ecds", "@ECDS@")
        .replace("/etc/canary/wasm/canary_filter.wasm", &wasm_path().unwrap().display().to_string());
    let (ok, output) = validate(&local);
    assert!(ok, "deploy/sidecar/envoy.yaml fails `envoy --mode validate`:\n{output}");
    let (ok, output) = validate(&local.replace("cluster: v2,", "cluster: nope,"));
    assert!(!ok, "a broken variant passed validation:\n{output}");
}
