//! Per-segment gates against a real Envoy, the filter and the model
//! backends, with the `canary run` daemon: three segments (`x-tier`:
//! free, pro, ent, a third of the traffic each); a challenger that returns
//! 6 % 5xx for `ent` only (0.3 % elsewhere, as the champion everywhere) is
//! rolled back naming `ent` although its total stays within the tolerance;
//! an identical challenger over the same segments is promoted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use canary_judge::report::unreadable_numbers;
use canary_tests::{
    chromium_screenshot, client, decisions, get, png_colours, state, wasm_path, Daemon, Rig, CHALLENGER, CHAMPION,
};

const TIERS: [&str; 3] = ["free", "pro", "ent"];

/// Keyed load, one tier per request in turn, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|worker| {
                let (stop, url) = (stop.clone(), url.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let user = format!("load-{}", i % 10_000);
                        let _ = get(&c, &url, &[("x-user-id", &user), ("x-tier", TIERS[i % 3])]).await;
                        i += clients;
                    }
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn rig(challenger_segments: serde_json::Value) -> Rig {
    let rig = Rig::start().await.unwrap();
    let knobs = serde_json::json!({"latency_ms": 2.0, "latency_sigma": 0.1, "error_rate": 0.003});
    rig.champion.control(knobs.clone()).await.unwrap();
    rig.challenger.control(knobs).await.unwrap();
    rig.challenger.control(serde_json::json!({ "segment_error_rate": challenger_segments })).await.unwrap();
    rig
}

/// Tolerance 3 points: the harmful challenger's total (≈ 2.2 % vs 0.3 %)
/// is within it, its `ent` segment (6 % vs 0.3 %) is not.
fn spec(rollout: &str, rig: &Rig) -> String {
    format!(
        "rollout: {rollout}\nchampion: {CHAMPION}\nchallenger: {CHALLENGER}\ninterval: 200ms\nstages:\n  - {{ weight_percent: 50, min_duration: 1s, min_requests: 300 }}\n  - {{ weight_percent: 100 }}\ngates:\n  error_rate: {{ error_tolerance: 3, segments: all }}\n  segment_min_responses: 100\nenvoy:\n  admin: [\"http://127.0.0.1:{}\"]\n  ecds_dir: {}\n  wasm: {}\n  timeout: 1s\n  apply_timeout: 5s\nfilter:\n  key: [{{ header: x-user-id }}]\n  segment: {{ header: x-tier, values: [free, pro, ent] }}\n",
        rig.envoy.admin_port,
        rig.envoy.sink.path().parent().map(|p| p.display().to_string()).unwrap_or_default(),
        wasm_path().map(|p| p.display().to_string()).unwrap_or_default(),
    )
}

fn results(decision: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    decision["gates"].as_array().into_iter().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_harmful_in_one_segment_is_rolled_back_naming_it() {
    let rig = rig(serde_json::json!({"ent": 0.06})).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let load = Load::start(rig.envoy.url("/predict"), 24);
    let mut daemon = Daemon::start(&state_dir, Some(&spec("ent-harm", &rig))).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(60)).await.unwrap();
    load.stop().await;
    let out = daemon.output();
    assert!(status.success(), "{out}");
    assert_eq!(state(&state_dir)["phase"], "rolled_back", "{out}");
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback").unwrap();
    let reasons = rollback["reasons"].to_string();
    println!("{reasons}");
    assert!(reasons.contains("error_rate gate failed: segment `ent`: 5xx rate: challenger"), "{reasons}");
    let failed: Vec<_> = results(&rollback).filter(|g| g["outcome"] == "fail").collect();
    assert!(failed.iter().all(|g| g["segment"] == "ent"), "only ent fails: {failed:?}");
    let total = results(&rollback).find(|g| g["segment"].is_null()).unwrap();
    assert_ne!(total["outcome"], "fail", "the total is within tolerance: {total}");
    let ent = results(&rollback).find(|g| g["segment"] == "ent").unwrap();
    let rate = ent["challenger"].as_f64().unwrap();
    println!("ent: challenger {rate:.4} over {} responses; total {}", ent["challenger_n"], total["detail"]);
    assert!((0.03..0.10).contains(&rate), "ent's 5xx rate {rate}");
    assert!(total["difference"].as_f64().unwrap() < 0.03, "{total}");

    // The stage's report has the per-segment verdicts, `ent` highlighted as
    // the worst, readable, and Chromium renders it without a console error.
    let reports = state_dir.join("reports");
    let page = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("stage-") && p.extension().is_some_and(|e| e == "html")
        })
        .unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<h2>Segments judged by the gates</h2>"), "{}", page.display());
    assert!(html.contains("<tr class=\"worse\"><td>error_rate</td><td>ent</td><td class=\"fail\">fail</td>"));
    assert_eq!(unreadable_numbers(&html), Vec::<String>::new());
    let png = dir.path().join("segments.png");
    let console = chromium_screenshot(&format!("file://{}", page.display()), &png, 1100, 1600).unwrap();
    assert!(console.is_empty(), "console messages {console:?}");
    let colours = png_colours(&png).unwrap();
    assert!(colours > 20, "the screenshot looks blank ({colours} colours)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_challenger_over_the_same_segments_is_promoted() {
    let rig = rig(serde_json::json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let load = Load::start(rig.envoy.url("/predict"), 24);
    let mut daemon = Daemon::start(&state_dir, Some(&spec("same", &rig))).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(60)).await.unwrap();
    load.stop().await;
    let out = daemon.output();
    assert!(status.success(), "{out}");
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback");
    assert_eq!(state(&state_dir)["phase"], "promoted", "rolled back: {rollback:?}\n{out}");
    let promote = decisions(&state_dir).into_iter().find(|d| d["action"] == "promote").unwrap();
    for tier in TIERS {
        let g = results(&promote).find(|g| g["segment"] == tier).unwrap_or_else(|| panic!("no {tier} result"));
        println!("{tier}: {}", g["detail"]);
        assert_eq!(g["outcome"], "pass", "{g}");
    }
}
