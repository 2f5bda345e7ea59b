//! Guardrails against a real outage: both model backends killed in the
//! middle of a stage (Envoy answers 503 for both versions). Relative gates
//! alone would find two equally broken versions equal and advance; the
//! guardrails hold the stage and alert, and once the backends are back the
//! stage's window starts again without the outage and the rollout goes on
//! by itself to promotion.

use std::time::Duration;

use canary_tests::{
    decisions, rollout_spec, state, wait_decision, wait_stage, Backend, Daemon, Load, Receiver, Rig, CHALLENGER,
    CHAMPION,
};

const GATES: &str = "  error_rate: { error_tolerance: 2 }\n  latency: { latency_tolerance_multiplier: 2, quantile: 0.5 }\n  timeouts: { timeout_tolerance: 2 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_both_versions_holds_and_alerts_then_the_rollout_resumes_by_itself() {
    let mut rig = Rig::start().await.unwrap();
    for b in [&rig.champion, &rig.challenger] {
        b.control(serde_json::json!({"latency_ms": 5.0, "latency_sigma": 0.1})).await.unwrap();
    }
    let receiver = Receiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let extra = format!("alerts:\n  webhooks: [{{ url: \"{}\" }}]\n", receiver.url);
    let spec = rollout_spec("outage", &rig.envoy, "4s", 300, GATES, &extra);
    let load = Load::start(rig.envoy.url("/predict"), 32, 20_000, Duration::ZERO);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();

    // Into the 20 % stage, then both backends die.
    wait_stage(&state_dir, Some(2), Duration::from_secs(90), &daemon).await.unwrap();
    let ports = (rig.champion.port, rig.challenger.port);
    rig.champion.proc.stop();
    rig.challenger.proc.stop();
    let incident = wait_decision(&state_dir, Duration::from_secs(20), &daemon, |d| {
        d["reasons"][0].as_str().is_some_and(|r| r.starts_with("incident (guardrails)"))
    })
    .await
    .unwrap();
    assert_eq!(incident["action"], "hold", "{incident}");
    assert_eq!(incident["from"]["stage_name"], "20pct");
    // Held through the outage: longer than the stage's 4 s minimum, no move.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let st = state(&state_dir);
    assert_eq!((st["stage"].as_u64(), st["phase"].as_str()), (Some(2), Some("running")), "{}", daemon.output());
    let alerts: Vec<_> = receiver.bodies().into_iter().filter(|b| b["kind"] == "incident").collect();
    assert_eq!(alerts.len(), 1, "one alert per incident: {:?}", receiver.bodies());
    assert!(
        decisions(&state_dir)
            .iter()
            .all(|d| d["action"] != "advance" && d["action"] != "rollback"
                || d["seq"].as_u64() < incident["seq"].as_u64()),
        "nothing moved during the outage"
    );

    // The backends come back on the same ports: the rollout resumes alone.
    rig.champion = Backend::start(CHAMPION, &["--listen", &format!("127.0.0.1:{}", ports.0)]).unwrap();
    rig.challenger = Backend::start(CHALLENGER, &["--listen", &format!("127.0.0.1:{}", ports.1)]).unwrap();
    let over = wait_decision(&state_dir, Duration::from_secs(30), &daemon, |d| {
        d["reasons"].as_array().is_some_and(|r| r.iter().any(|r| r.as_str().is_some_and(|r| r.contains("is over"))))
    })
    .await
    .unwrap();
    assert_eq!(over["from"]["stage_name"], "20pct", "{over}");
    let status = daemon.wait_exit(Duration::from_secs(120)).await.unwrap();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());
    assert_eq!(state(&state_dir)["phase"], "promoted", "{}", daemon.output());
}
