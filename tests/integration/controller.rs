//! The controller against real Envoy + the filter + real backends, with
//! stage durations compressed to about a second.

use std::path::Path;
use std::time::{Duration, Instant};

use canary_controller::control::now_millis;
use canary_tests::{canary, decisions, rollout_spec, state, wait_decision, wait_stage, Daemon, Load, Receiver, Rig};

/// The gates of most tests, judged sequentially (the default): a gate passes
/// only once its interval lies within the tolerance, so a stage needs enough
/// responses. [`MIN_REQUESTS`] is the first look, sized so that a challenger
/// equal to the champion passes there: 0 errors (or timeouts) in 300 put the
/// upper bound of the difference at 1.2 points at look 1 (93.9 %), one stray
/// error at 1.9, both within 2. Latency is compared at the median: on a
/// 2-core machine shared with other work, scheduling noise dominates the
/// tail (the p99 of a 5 ms backend measured 50–130 ms under load), and a tail
/// verdict at 1 % takes thousands of challenger responses.
const GATES: &str = "  error_rate: { error_tolerance: 2 }\n  latency: { latency_tolerance_multiplier: 2, quantile: 0.5 }\n  timeouts: { timeout_tolerance: 2 }\n  prediction: { max_psi: 0.2, on_no_data: ignore }";

/// Responses per version before a stage is judged: the first look.
const MIN_REQUESTS: u64 = 300;

/// Backends with a tight latency. Short, so that the 1 % stage sees enough
/// responses soon; the machine's own scheduling noise (2 cores shared by
/// Envoy, backends, load and controller) adds to both versions alike, and
/// the gates' intervals account for the spread.
async fn rig(champion_latency_ms: f64, challenger_latency_ms: f64) -> Rig {
    let rig = Rig::start().await.unwrap();
    rig.champion.control(serde_json::json!({"latency_ms": champion_latency_ms, "latency_sigma": 0.1})).await.unwrap();
    rig.challenger
        .control(serde_json::json!({"latency_ms": challenger_latency_ms, "latency_sigma": 0.1}))
        .await
        .unwrap();
    rig
}

fn load(rig: &Rig) -> Load {
    Load::start(rig.envoy.url("/predict"), 48, 20_000, Duration::ZERO)
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
    let spec = rollout_spec("healthy", &rig.envoy, "1s", MIN_REQUESTS, GATES, "");
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(150)).await.unwrap();
    load.stop().await;
    let out = daemon.output();
    println!("{out}");
    assert!(status.success(), "{out}");
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback");
    assert_eq!(state(&state_dir)["phase"], "promoted", "rolled back: {rollback:?}");
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

fn alerts_of(receiver: &Receiver, kind: &str) -> Vec<serde_json::Value> {
    receiver.bodies().into_iter().filter(|b| b["kind"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_with_5xx_above_tolerance_is_rolled_back_and_stops_getting_traffic() {
    let rig = rig(5.0, 5.0).await;
    let receiver = Receiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let extra = format!("alerts:\n  webhooks: [{{ url: \"{}\" }}]\n", receiver.url);
    let spec = rollout_spec("faulty", &rig.envoy, "2s", MIN_REQUESTS, GATES, &extra);
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();

    // Healthy until it reaches 5 %, then the challenger starts failing 30 % of requests.
    wait_stage(&state_dir, Some(1), Duration::from_secs(90), &daemon).await.unwrap();
    let fault_at = now_millis();
    rig.challenger.control(serde_json::json!({"error_rate": 0.3})).await.unwrap();

    let status = daemon.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "{}", daemon.output());
    let st = state(&state_dir);
    assert_eq!(st["phase"], "rolled_back", "{}", daemon.output());
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback").unwrap();
    assert_eq!(rollback["from"]["stage_name"], "5pct");
    assert_eq!(rollback["to"]["weight"], 0);
    assert!(rollback["reasons"][0].as_str().unwrap().contains("error_rate gate failed"), "{rollback}");
    let decided_at = rollback["at"].as_u64().unwrap();

    // After the rollback no request reaches the challenger.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_rollback = rig.challenger.stats().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = rig.challenger.stats().await.unwrap();
    let served = load.ok.load(std::sync::atomic::Ordering::Relaxed);
    load.stop().await;
    assert_eq!(later.requests, after_rollback.requests, "the challenger still gets traffic after the rollback");
    assert!(served > 1000);

    // The alert reached the webhook.
    let deadline = Instant::now() + Duration::from_secs(5);
    while alerts_of(&receiver, "rollback").is_empty() {
        assert!(Instant::now() < deadline, "no rollback alert: {:?}", receiver.bodies());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alert = &alerts_of(&receiver, "rollback")[0];
    assert_eq!(alert["rollout"], "faulty");
    assert_log_has_no_gap(&state_dir);
    println!(
        "5xx fault start → rollback decision: {} ms; rollback decision → last challenger request: {} ms",
        decided_at.saturating_sub(fault_at),
        after_rollback.last_request_unix_ms as i64 - decided_at as i64
    );
}

/// Ten times slower (5 → 50 ms), so that the slowdown stays far beyond the
/// 2× tolerance whatever scheduling noise the machine adds to both versions.
/// The first look is at 100 responses: a fault this large needs no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_much_slower_challenger_is_rolled_back_by_the_latency_gate() {
    let rig = rig(5.0, 50.0).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let spec = rollout_spec("slow", &rig.envoy, "1s", 100, GATES, "");
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(60)).await.unwrap();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());
    assert_eq!(state(&state_dir)["phase"], "rolled_back", "{}", daemon.output());
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback").unwrap();
    let reasons = rollback["reasons"].to_string();
    assert!(reasons.contains("latency gate failed"), "{reasons}");
    assert!(!reasons.contains("ErrorRate"), "{reasons}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_requests_hold_the_stage() {
    let rig = rig(1.0, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    // A trickle: a few requests a second, far from 200 per version at 1 %.
    let spec = rollout_spec("trickle", &rig.envoy, "200ms", 200, GATES, "");
    let load = Load::start(rig.envoy.url("/"), 1, 1000, Duration::from_millis(100));
    let _daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop().await;
    let log = decisions(&state_dir);
    assert!(log.len() >= 5, "only {} evaluations", log.len());
    assert!(log.iter().all(|d| d["action"] == "hold"), "something else than hold: {log:?}");
    assert!(log.last().unwrap()["reasons"][0].as_str().unwrap().contains("too few responses"));
    assert_eq!(state(&state_dir)["stage"], 0);
    let (ok, out, _) = canary(&["status", "--state-dir", state_dir.to_str().unwrap()]).unwrap();
    assert!(ok);
    assert!(out.contains("responses still needed before judging"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_envoy_admin_holds_and_alerts_and_never_advances() {
    let rig = rig(1.0, 1.0).await;
    let receiver = Receiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let extra = format!("alerts:\n  webhooks: [{{ url: \"{}\" }}]\n  source_failures: 3\n", receiver.url);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spec = rollout_spec("blind", &rig.envoy, "200ms", 10, GATES, &extra)
        .replace(&format!("127.0.0.1:{}", rig.envoy.admin_port), &format!("127.0.0.1:{closed}"));
    let load = load(&rig);
    let _daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop().await;
    let log = decisions(&state_dir);
    assert!(log.len() >= 5);
    assert!(log.iter().all(|d| d["action"] == "hold"), "{log:?}");
    assert!(log.last().unwrap()["reasons"][0].as_str().unwrap().starts_with("no data"), "{:?}", log.last());
    assert_eq!(state(&state_dir)["stage"], 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alerts_of(&receiver, "source_failing").is_empty() {
        assert!(Instant::now() < deadline, "no alert: {:?}", receiver.bodies());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(alerts_of(&receiver, "source_failing").len(), 1, "alerted more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_stage_resumes_the_same_stage() {
    let rig = rig(5.0, 5.0).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let spec = rollout_spec("crash", &rig.envoy, "2s", MIN_REQUESTS, GATES, "");
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    wait_stage(&state_dir, Some(1), Duration::from_secs(90), &daemon).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    daemon.kill9();
    let before = state(&state_dir);
    assert_eq!(before["stage"], 1, "moved on before the kill");
    let epoch = before["epoch"].as_u64().unwrap();

    let mut daemon = Daemon::start(&state_dir, None).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(90)).await.unwrap();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());
    let first_after = decisions(&state_dir).into_iter().find(|d| d["seq"].as_u64() > before["seq"].as_u64()).unwrap();
    assert_eq!((first_after["from"]["stage"].as_u64(), first_after["from"]["epoch"].as_u64()), (Some(1), Some(epoch)));
    let expected: Vec<(String, String)> =
        [("advance", "5pct"), ("advance", "20pct"), ("advance", "50pct"), ("promote", "100pct")]
            .iter()
            .map(|(a, s)| (a.to_string(), s.to_string()))
            .collect();
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback");
    assert_eq!(actions(&state_dir), expected, "a stage was skipped or repeated; rollback: {rollback:?}");
    assert_log_has_no_gap(&state_dir);
}

/// Runs a manual command and returns the decision it printed.
fn manual(command: &str, state_dir: &Path) -> serde_json::Value {
    let (ok, out, err) =
        canary(&[command, "--state-dir", state_dir.to_str().unwrap(), "--reason", "test", "--output", "json"]).unwrap();
    assert!(ok, "canary {command} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_commands_act_without_the_daemon() {
    let rig = rig(1.0, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let spec = rollout_spec("manual", &rig.envoy, "1h", 10, GATES, "");
    // Start, then stop the daemon at once: the rollout exists, nobody runs it.
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    wait_decision(&state_dir, Duration::from_secs(10), &daemon, |_| true).await.unwrap();
    daemon.proc.stop();
    rig.envoy.wait_version("manual/1").await.unwrap();

    assert_eq!(manual("pause", &state_dir)["action"], "pause");
    let (ok, out, _) = canary(&["pause", "--state-dir", state_dir.to_str().unwrap()]).unwrap();
    assert!(!ok, "pausing twice should be refused: {out}");
    assert_eq!(manual("resume", &state_dir)["action"], "resume");

    let d = manual("advance", &state_dir);
    assert_eq!((d["action"].as_str(), d["to"]["weight"].as_u64()), (Some("advance"), Some(500)));
    rig.envoy.wait_version("manual/2").await.unwrap();

    let d = manual("rollback", &state_dir);
    assert_eq!((d["action"].as_str(), d["to"]["weight"].as_u64()), (Some("rollback"), Some(0)));
    rig.envoy.wait_version("manual/3").await.unwrap();
    let before = rig.challenger.stats().await.unwrap().requests;
    let load = load(&rig);
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop().await;
    assert_eq!(rig.challenger.stats().await.unwrap().requests, before, "traffic reached the challenger after rollback");
    assert_log_has_no_gap(&state_dir);
    let (ok, out, _) = canary(&["status", "--state-dir", state_dir.to_str().unwrap()]).unwrap();
    assert!(ok && out.contains("rolled back") && out.contains("daemon not running"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_commands_act_while_the_daemon_runs() {
    let rig = rig(2.0, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let spec = rollout_spec("steer", &rig.envoy, "500ms", MIN_REQUESTS, GATES, "");
    let load = load(&rig);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    wait_decision(&state_dir, Duration::from_secs(10), &daemon, |_| true).await.unwrap();
    manual("pause", &state_dir);
    let paused_at = state(&state_dir);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = state(&state_dir);
    assert_eq!(
        (still["stage"].clone(), still["phase"].clone()),
        (paused_at["stage"].clone(), "paused".into()),
        "it moved while paused"
    );

    // Advance acts at once, even while paused.
    let d = manual("advance", &state_dir);
    assert_eq!(d["to"]["stage"].as_u64(), Some(paused_at["stage"].as_u64().unwrap() + 1));
    rig.envoy.wait_version(&format!("steer/{}", d["to"]["epoch"])).await.unwrap();

    manual("resume", &state_dir);
    let resumed_stage = state(&state_dir)["stage"].as_u64().unwrap();
    wait_stage(&state_dir, Some(resumed_stage + 1), Duration::from_secs(60), &daemon).await.unwrap();

    // Rollback acts at once and ends the daemon.
    let d = manual("rollback", &state_dir);
    rig.envoy.wait_version(&format!("steer/{}", d["to"]["epoch"])).await.unwrap();
    let status = daemon.wait_exit(Duration::from_secs(10)).await.unwrap();
    load.stop().await;
    assert!(status.success());
    assert_eq!(state(&state_dir)["phase"], "rolled_back");
    assert_log_has_no_gap(&state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_label_gate_holds_until_enough_labels_arrive_by_http_and_jsonl() {
    let rig = rig(5.0, 5.0).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let jsonl = dir.path().join("labels.jsonl");
    std::fs::write(&jsonl, "").unwrap();
    // 500 labels per version, 90 % correct each: the anytime engine proves
    // "within 0.1" from them (the no-harm e-value passes 1/(0.9 α) ≈ 22);
    // within 0.05 would need about 800 each, as a fixed-horizon test would.
    let gates = "  error_rate: { error_tolerance: 2 }\n  labels: { min_degradation_tolerance: 0.1, min_labels: 500 }";
    let extra = format!("labels:\n  jsonl: {}\n", jsonl.display());
    let spec = rollout_spec("labelled", &rig.envoy, "200ms", MIN_REQUESTS, gates, &extra);
    let load = load(&rig);
    let daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    // Once the stage has its responses, only the labels hold it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = decisions(&state_dir);
        assert!(log.iter().all(|d| d["action"] == "hold"), "advanced without labels: {}", daemon.output());
        if log.last().is_some_and(|d| d["reasons"].to_string().contains("waiting for labels")) {
            break;
        }
        assert!(Instant::now() < deadline, "never held for labels: {:?}", log.last());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(state(&state_dir)["stage"], 0, "advanced without labels: {}", daemon.output());

    // Champion labels by HTTP, challenger labels in the JSONL file: 500 each, 90 % correct.
    // The HTTP ones name a segment: accepted, and (the spec has no
    // filter.segment) counted for all traffic only.
    let addr = std::fs::read_to_string(state_dir.join("daemon.addr")).unwrap();
    let batch: Vec<serde_json::Value> = (0..500)
        .map(|i| serde_json::json!({"version": "v1", "stage": "1pct", "correct": i % 10 != 0, "segment": "pro"}))
        .collect();
    let resp = reqwest::Client::new().post(format!("http://{addr}/labels")).json(&batch).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let intake: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(intake["accepted"], 500);
    let bad = reqwest::Client::new()
        .post(format!("http://{addr}/labels"))
        .json(&serde_json::json!([{"version": "v9", "stage": "1pct", "correct": true}]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "a label for an unknown version is refused");
    let lines: String =
        (0..500).map(|i| format!("{{\"version\":\"v2\",\"stage\":\"1pct\",\"correct\":{}}}\n", i % 10 != 0)).collect();
    std::fs::write(&jsonl, lines).unwrap();

    wait_stage(&state_dir, Some(1), Duration::from_secs(60), &daemon).await.unwrap();
    load.stop().await;
    // The state is written before the log line: wait for the line.
    let advance =
        wait_decision(&state_dir, Duration::from_secs(5), &daemon, |d| d["action"] == "advance").await.unwrap();
    let label_gate = advance["gates"].as_array().unwrap().iter().find(|g| g["gate"] == "labels").unwrap().clone();
    assert_eq!((label_gate["outcome"].as_str(), label_gate["champion_n"].as_u64()), (Some("pass"), Some(500)));
    assert_eq!(label_gate["challenger"].as_f64(), Some(0.9));
    assert!(state(&state_dir)["labels"].get("by_segment").is_none(), "no filter.segment: no per-segment labels");
}
