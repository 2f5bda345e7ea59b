//! The controller against real Envoy + the filter + real backends, with
//! stage durations compressed to about a second.

use std::path::Path;
use std::time::Duration;

use canary_tests::{canary, decisions, rollout_spec, state, Daemon, Load, Rig};

const GATES: &str = "  error_rate: { error_tolerance: 2 }\n  latency: { latency_tolerance_multiplier: 1.5 }\n  timeouts: { timeout_tolerance: 1 }\n  prediction: { max_psi: 0.2, on_no_data: ignore }";

/// Backends with a short, tight latency so that small samples compare fairly.
async fn rig(champion_latency_ms: f64, challenger_latency_ms: f64) -> Rig {
    let rig = Rig::start().await.unwrap();
    rig.champion.control(serde_json::json!({"latency_ms": champion_latency_ms, "latency_sigma": 0.15})).await.unwrap();
    rig.challenger.control(serde_json::json!({"latency_ms": challenger_latency_ms, "latency_sigma": 0.15})).await.unwrap();
    rig
}

fn load(rig: &Rig) -> Load {
    Load::start(rig.envoy.url("/predict"), 24, 20_000, Duration::ZERO)
}

fn actions(state_dir: &Path) -> Vec<(String, String)> {
    decisions(state_dir)
        .iter()
        .filter(|d| d["action"] != "hold")
        .map(|d| (d["action"].as_str().unwrap().to_string(), d["to"]["stage_name"].as_str().unwrap().to_string()))
        .collect()
}

fn assert_log_has_no_gap(state_dir: &Path) {
    let seqs: Vec<u64> = decisions(state_dir).iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert!(!seqs.is_empty());
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "decision log has a gap or duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_challenger_goes_through_every_stage_and_is_promoted() {
    let rig = rig(5.0, 5.0).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let spec = rollout_spec("healthy", &rig.envoy, "1s", 30, GATES, "");
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(90)).await.unwrap();
    load.stop().await;
    let out = daemon.output();
    println!("{out}");
    assert!(status.success(), "{out}");
    assert_eq!(state(&state_dir)["phase"], "promoted");
    let expected: Vec<(String, String)> =
        [("advance", "5pct"), ("advance", "20pct"), ("advance", "50pct"), ("promote", "100pct")]
            .iter()
            .map(|(a, s)| (a.to_string(), s.to_string()))
            .collect();
    assert_eq!(actions(&state_dir), expected);
    assert_log_has_no_gap(&state_dir);
    // Envoy ends on 100 %.
    rig.envoy.wait_version("healthy/5").await.unwrap();
    let (ok, stdout, _) = canary(&["status", "--state-dir", state_dir.to_str().unwrap(), "--output", "json"]).unwrap();
    assert!(ok);
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((s["phase"].as_str(), s["weight_bp"].as_u64()), (Some("promoted"), Some(10_000)));
}
