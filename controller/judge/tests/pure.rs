//! The judge stays pure by construction, not by comment: its normal
//! dependency tree (default features) holds no async runtime, HTTP,
//! Kubernetes or CLI crate. A dependency that brings one in fails here.

// Test helpers too: a failure here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;

/// Crates (and their `-`/`_` families: `tokio-util`, `clap_builder`, …)
/// that would make the decisions depend on I/O.
const FORBIDDEN: &[&str] = &["tokio", "reqwest", "kube", "k8s-openapi", "axum", "clap", "hyper", "tower"];

/// The forbidden crates in `cargo tree -p canary-judge -e normal`, with `args` added.
fn forbidden_in_tree(args: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", "canary-judge", "-e", "normal", "--prefix", "none", "--offline"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            FORBIDDEN
                .iter()
                .any(|f| name.strip_prefix(f).is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '_'])))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn the_judge_depends_on_no_runtime_http_kubernetes_or_cli_crate() {
    let found = forbidden_in_tree(&[]);
    assert!(found.is_empty(), "canary-judge must stay pure, but its dependency tree has {found:?}");
}

#[test]
fn the_check_sees_the_kubernetes_derive_behind_its_feature() {
    // The same check with `--features kube` must find kube: it is not blind.
    let found = forbidden_in_tree(&["--features", "kube"]);
    assert!(found.contains("kube"), "{found:?}");
}
