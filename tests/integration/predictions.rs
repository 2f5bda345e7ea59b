//! The controller judging predictions and shadow answers, against a real
//! Envoy, the filter and model backends whose predictions are a known
//! function of the user (see `src/bin/model_backend.rs`), with the `canary
//! run` daemon.
//!
//! Bin edges are derived the way a real rollout would: from the champion's
//! observed predictions before the first stage (`psi::quantile_edges`), then
//! fixed in the spec.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_judge::psi::quantile_edges;
use canary_tests::{canary, client, decisions, get, state, wasm_path, Daemon, Rig, CHALLENGER, CHAMPION};

/// Users of the load, `load-0` .. `load-19999`.
const USERS: usize = 20_000;

/// The shift that gives PSI ≈ 0.5 over quartile bins: shares become
/// (0.25 − s, 0.25, 0.25, 0.25 + s), PSI = s · ln((1 + 4s) / (1 − 4s)) = 0.501.
const SHIFT: f64 = 0.2085;

async fn rig(challenger: serde_json::Value) -> Rig {
    let rig = Rig::start().await.unwrap();
    let knobs = serde_json::json!({"latency_ms": 5.0, "latency_sigma": 0.1});
    rig.champion.control(knobs.clone()).await.unwrap();
    rig.challenger.control(knobs).await.unwrap();
    rig.challenger.control(challenger).await.unwrap();
    rig
}

/// Quartile edges from the champion's predictions for 2 000 of the load's
/// users, asked of the champion backend directly (as a pre-rollout sample).
async fn champion_edges(rig: &Rig) -> Vec<f64> {
    let c = client();
    let url = format!("http://127.0.0.1:{}/predict", rig.champion.port);
    let mut values = vec![];
    for i in (0..USERS).step_by(10) {
        let user = format!("load-{i}");
        let resp = c.get(&url).header("x-user-id", &user).send().await.unwrap();
        let x = resp.headers()["x-prediction"].to_str().unwrap().parse::<f64>().unwrap();
        values.push(x);
    }
    let edges = quantile_edges(&values, 4).unwrap();
    println!("bin edges from {} champion predictions: {edges:?}", values.len());
    assert_eq!(edges.len(), 3);
    edges
}

/// PSI of the populations (no sampling, no smoothing) when the champion's
/// predictions are uniform on [0, 1) and the challenger's are shifted by
/// `shift`, over the bins `edges` draw: what the shift gives by construction.
fn population_psi(edges: &[f64], shift: f64) -> f64 {
    let cdf = |x: f64| x.clamp(0.0, 1.0);
    let bounds: Vec<f64> =
        std::iter::once(f64::NEG_INFINITY).chain(edges.iter().copied()).chain([f64::INFINITY]).collect();
    bounds
        .windows(2)
        .map(|w| {
            let p = cdf(w[1]) - cdf(w[0]);
            let c = cdf(w[1] - shift) - cdf(w[0] - shift);
            (c - p) * (c / p).ln()
        })
        .sum()
}

/// Keyed load with a segment header (`x-tier`: `free` or `pro` by user),
/// from background tasks, until dropped.
struct TieredLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TieredLoad {
    fn start(url: String, clients: usize) -> TieredLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|worker| {
                let (stop, ok, url) = (stop.clone(), ok.clone(), url.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let user = format!("load-{}", i % USERS);
                        let tier = if i % 3 == 0 { "pro" } else { "free" };
                        if let Ok(r) = get(&c, &url, &[("x-user-id", &user), ("x-tier", tier)]).await {
                            if r.status < 500 {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        i += clients;
                    }
                })
            })
            .collect();
        TieredLoad { stop, ok, tasks }
    }

    async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.ok.load(Ordering::Relaxed)
    }
}

impl Drop for TieredLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A spec for the test versions against the rig's Envoy: `stages` and
/// `gates` as YAML lines, and the prediction configuration from `from`
/// (`{ header: x-prediction }` or `{ json_pointer: /prediction }`).
fn spec(rollout: &str, rig: &Rig, stages: &str, gates: &str, from: &str, edges: &[f64], extra: &str) -> String {
    format!(
        "rollout: {rollout}\nchampion: {CHAMPION}\nchallenger: {CHALLENGER}\ninterval: 200ms\nstages:\n{stages}gates:\n{gates}envoy:\n  admin: [\"http://127.0.0.1:{}\"]\n  ecds_dir: {}\n  wasm: {}\n  timeout: 1s\n  apply_timeout: 5s\nfilter:\n  key: [{{ header: x-user-id }}]\n  prediction:\n    from: {from}\n    bins: {{ numeric: {edges:?} }}\n  segment: {{ header: x-tier, values: [free, pro] }}\n{extra}",
        rig.envoy.admin_port,
        rig.envoy.sink.path().parent().map(|p| p.display().to_string()).unwrap_or_default(),
        wasm_path().map(|p| p.display().to_string()).unwrap_or_default(),
    )
}

const LIVE_STAGES: &str = "  - { weight_percent: 10, min_duration: 1s, min_requests: 300 }\n  - { weight_percent: 50, min_duration: 1s, min_requests: 300 }\n  - { weight_percent: 100 }\n";

/// The PSI gate (hold on no data) with a tolerant error gate beside it, so a
/// rollback can only come from the prediction distribution.
const PSI_GATES: &str =
    "  error_rate: { error_tolerance: 5 }\n  prediction: { max_psi: 0.2, on_no_data: hold, min_predictions: 300 }\n";

fn actions(state_dir: &Path) -> Vec<(String, String)> {
    decisions(state_dir)
        .iter()
        .filter(|d| d["action"] != "hold")
        .map(|d| (d["action"].as_str().unwrap().to_string(), d["to"]["stage_name"].as_str().unwrap().to_string()))
        .collect()
}

/// The gate result of `gate` in a decision.
fn gate(decision: &serde_json::Value, gate: &str) -> serde_json::Value {
    decision["gates"].as_array().unwrap().iter().find(|g| g["gate"] == gate).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_whose_predictions_shift_is_rolled_back_by_the_psi_gate() {
    let rig = rig(serde_json::json!({"prediction_shift": SHIFT})).await;
    let edges = champion_edges(&rig).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let spec = spec("shifted", &rig, LIVE_STAGES, PSI_GATES, "{ header: x-prediction }", &edges, "");
    let load = TieredLoad::start(rig.envoy.url("/predict"), 32);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(60)).await.unwrap();
    let served = load.stop().await;
    let out = daemon.output();
    assert!(status.success(), "{out}");
    assert_eq!(state(&state_dir)["phase"], "rolled_back", "{out}");
    assert_eq!(actions(&state_dir), vec![("rollback".to_string(), "rolled-back".to_string())], "{out}");

    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback").unwrap();
    assert_eq!(rollback["from"]["stage_name"], "10pct");
    let reasons = rollback["reasons"].to_string();
    assert!(reasons.contains("prediction gate failed: PSI"), "{reasons}");
    assert!(!reasons.contains("ErrorRate"), "{reasons}");
    let psi = gate(&rollback, "prediction");
    let value = psi["challenger"].as_f64().unwrap();
    let expected = population_psi(&edges, SHIFT);
    let bins = &rollback["window"]["challenger"]["predictions"];
    println!(
        "shift {SHIFT}: the controller computed PSI {value:.4}; by construction {expected:.4} with these edges (0.501 with exact quartiles); over {} champion and {} challenger predictions; challenger bins {bins}; {served} requests served",
        psi["champion_n"], psi["challenger_n"]
    );
    assert!((expected - 0.501).abs() < 0.1, "edges {edges:?} are far from the quartiles");
    // ±0.15 covers the sampling noise of a few hundred challenger users.
    assert!((value - expected).abs() < 0.15, "PSI {value} is far from {expected}: {psi}");
    assert_eq!(psi["outcome"], "fail");
    assert!(psi["notes"]["challenger_unparsed_share"].as_f64() == Some(0.0), "{psi}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_with_the_same_prediction_distribution_is_promoted_with_psi_near_zero() {
    let rig = rig(serde_json::json!({"prediction_shift": 0.0})).await;
    let edges = champion_edges(&rig).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    // The JSON body this time (`{"prediction": x, ...}`), read by pointer.
    let spec = spec("same", &rig, LIVE_STAGES, PSI_GATES, "{ json_pointer: /prediction }", &edges, "");
    let load = TieredLoad::start(rig.envoy.url("/predict"), 32);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(90)).await.unwrap();
    let served = load.stop().await;
    let out = daemon.output();
    assert!(status.success(), "{out}");
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback");
    assert_eq!(state(&state_dir)["phase"], "promoted", "rolled back: {rollback:?}\n{out}");
    let expected: Vec<(String, String)> =
        [("advance", "50pct"), ("promote", "100pct")].iter().map(|(a, s)| (a.to_string(), s.to_string())).collect();
    assert_eq!(actions(&state_dir), expected);

    for d in decisions(&state_dir).iter().filter(|d| d["action"] != "hold") {
        let psi = gate(d, "prediction");
        let value = psi["challenger"].as_f64().unwrap();
        println!(
            "{} from {}: PSI {value:.4} over {} champion and {} challenger predictions ({served} requests served)",
            d["action"], d["from"]["stage_name"], psi["champion_n"], psi["challenger_n"]
        );
        assert_eq!(psi["outcome"], "pass", "{psi}");
        assert!(value < 0.05, "same distribution, PSI {value}: {psi}");
        assert!(psi["challenger_n"].as_u64().unwrap() >= 300);
    }

    // The segment breakdown is in the decision's window and in `canary status`.
    let last = decisions(&state_dir).into_iter().find(|d| d["action"] == "promote").unwrap();
    let segments = &last["window"]["champion"]["segments"];
    let (free, pro) = (segments["free"]["requests"].as_u64().unwrap(), segments["pro"]["requests"].as_u64().unwrap());
    assert!(free > pro && pro > 0, "free {free}, pro {pro}: the load sends one pro per two free");
    assert!(segments.get("other").is_none(), "every request carried an allowed tier: {segments}");
    let (ok, stdout, _) = canary(&["status", "--state-dir", state_dir.to_str().unwrap()]).unwrap();
    assert!(ok);
    println!("{stdout}");
    assert!(stdout.contains("segment free: 5xx v1 0.00% ("), "{stdout}");
    assert!(stdout.contains("segment pro: 5xx v1 0.00% ("), "{stdout}");
}

const SHADOW_STAGES: &str = "  - { shadow: true, min_duration: 1s, min_requests: 300 }\n  - { weight_percent: 50, min_duration: 1s, min_requests: 300 }\n  - { weight_percent: 100 }\n";

/// Shadow gate plus the live ones for the stages after it. The latency
/// multiplier leaves room for the 2-core machine's scheduling noise: shadow
/// copies leave on the filter's 5 ms tick and share the CPU with the load.
const SHADOW_GATES: &str = "  error_rate: { error_tolerance: 5 }\n  prediction: { max_psi: 0.2, on_no_data: hold, min_predictions: 300 }\n  shadow: { min_agreement: 0.9, error_tolerance: 5, latency_tolerance_multiplier: 4 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_challenger_passes_the_shadow_stage_then_the_live_ones() {
    let rig = rig(serde_json::json!({})).await;
    let edges = champion_edges(&rig).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let extra = "  shadow: { timeout: 2s }\n";
    let spec = spec("shadowed", &rig, SHADOW_STAGES, SHADOW_GATES, "{ header: x-prediction }", &edges, extra);
    let load = TieredLoad::start(rig.envoy.url("/predict"), 32);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(90)).await.unwrap();
    load.stop().await;
    let out = daemon.output();
    assert!(status.success(), "{out}");
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback");
    assert_eq!(state(&state_dir)["phase"], "promoted", "rolled back: {rollback:?}\n{out}");
    let left_shadow = decisions(&state_dir).into_iter().find(|d| d["action"] == "advance").unwrap();
    assert_eq!(left_shadow["from"]["stage_name"], "shadow");
    assert_eq!(left_shadow["from"]["weight"], 0);
    let agreement = gate(&left_shadow, "shadow_agreement");
    println!(
        "shadow stage passed: agreement {} over {} comparisons; {}",
        agreement["challenger"],
        agreement["challenger_n"],
        gate(&left_shadow, "shadow_latency")["detail"]
    );
    assert_eq!(agreement["challenger"].as_f64(), Some(1.0), "{agreement}");
    assert!(left_shadow["window"]["challenger"]["responses"].as_array().unwrap().iter().all(|n| n == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_that_disagrees_with_the_champion_is_rolled_back_in_the_shadow_stage() {
    let rig = rig(serde_json::json!({"disagree_rate": 0.3})).await;
    let edges = champion_edges(&rig).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let spec = spec("disagree", &rig, SHADOW_STAGES, SHADOW_GATES, "{ header: x-prediction }", &edges, "");
    let load = TieredLoad::start(rig.envoy.url("/predict"), 32);
    let started = Instant::now();
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(60)).await.unwrap();
    load.stop().await;
    let out = daemon.output();
    assert!(status.success(), "{out}");
    assert_eq!(state(&state_dir)["phase"], "rolled_back", "{out}");
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback").unwrap();
    assert_eq!(rollback["from"]["stage_name"], "shadow");
    let reasons = rollback["reasons"].to_string();
    assert!(reasons.contains("shadow_agreement gate failed"), "{reasons}");
    let agreement = gate(&rollback, "shadow_agreement");
    let value = agreement["challenger"].as_f64().unwrap();
    println!(
        "disagree rate 0.3: agreement {value:.3} over {} comparisons, rolled back {:.1} s after start",
        agreement["challenger_n"],
        started.elapsed().as_secs_f64()
    );
    assert!((value - 0.7).abs() < 0.08, "agreement {value}, expected ≈ 0.7: {agreement}");
    // No user was ever served by the challenger: everything it saw was a copy.
    assert!(rollback["window"]["challenger"]["responses"].as_array().unwrap().iter().all(|n| n == 0));
    // After the rollback the filter stops sending copies.
    let epoch = rollback["to"]["epoch"].as_u64().unwrap();
    rig.envoy.wait_version(&format!("disagree/{epoch}")).await.unwrap();
    let before = rig.challenger.stats().await.unwrap().requests;
    let load = TieredLoad::start(rig.envoy.url("/predict"), 8);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent = load.stop().await;
    assert!(sent > 100);
    assert_eq!(rig.challenger.stats().await.unwrap().requests, before, "copies still reach the challenger");
}
