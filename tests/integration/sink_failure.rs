//! Sink failure (issue 10): the ECDS directory of one sink cannot be
//! written (its parent is a regular file: root ignores permission bits, not
//! that), a second file sink feeds a real Envoy. The push is retried and
//! reported (error log, alert), the rollout never moves on a failed push,
//! and a rollback still reaches Envoy through the working sink; once the
//! broken path works again, it gets the rollback too.

use std::time::{Duration, Instant};

use canary_tests::{
    canary, client, decisions, rollout_spec, route_users, state, users, Daemon, Receiver, Rig, CHALLENGER,
};

const GATES: &str = "  error_rate: { error_tolerance: 2 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_reaches_envoy_through_the_working_sink_when_another_cannot_be_written() {
    let rig = Rig::start().await.unwrap();
    let receiver = Receiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a file, so nothing can be created under it").unwrap();
    let broken = blocker.join("ecds");
    let good = rig.envoy.sink.path().parent().unwrap().display().to_string();
    let spec = rollout_spec(
        "sinkfail",
        &rig.envoy,
        "1h",
        10,
        GATES,
        &format!("alerts:\n  webhooks: [{{ url: \"{}\" }}]\n", receiver.url),
    );
    // envoy.ecds_dir (the broken path) plus a working file sink, with fast retries.
    let spec = spec.replace(
        &format!("  ecds_dir: {good}\n"),
        &format!(
            "  ecds_dir: {}\n  sinks: [{{ file: {{ dir: {good} }} }}]\n  sink_retry: {{ attempts: 3, backoff: 20ms, max_backoff: 40ms }}\n",
            broken.display()
        ),
    );
    assert!(spec.contains("sink_retry"), "the spec template changed: {spec}");

    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    // The working sink delivers the first stage; the broken one is retried,
    // reported and alerted, and no evaluation happens on a half-pushed stage.
    rig.envoy.wait_version("sinkfail/1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alerted = receiver.bodies().iter().any(|b| b["kind"] == "sink_failing");
        if alerted && daemon.output().contains("evaluation failed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sink_failing alert or error: {:?}\n{}",
            receiver.bodies(),
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = daemon.output();
    assert!(out.contains(&broken.display().to_string()), "the error names the broken sink:\n{out}");
    assert!(out.contains("attempt 1 failed, retrying"), "the push is retried:\n{out}");
    assert!(decisions(&state_dir).is_empty(), "an evaluation ran on a stage not every sink carries");
    let alert = receiver.bodies().into_iter().find(|b| b["kind"] == "sink_failing").unwrap();
    assert!(alert["reasons"][0].as_str().unwrap().contains("cannot write the ECDS file"), "{alert}");

    // A manual advance cannot go through: the state stays at stage 1.
    let sd = state_dir.to_str().unwrap();
    let (ok, _, err) = canary(&["advance", "--state-dir", sd]).unwrap();
    assert!(!ok && err.contains("every sink must take a stage change"), "{err}");
    assert_eq!((state(&state_dir)["stage"].as_u64(), state(&state_dir)["epoch"].as_u64()), (Some(0), Some(1)));

    // The rollback goes through the working sink to the real Envoy.
    let (ok, out, err) = canary(&["rollback", "--state-dir", sd, "--reason", "test", "--output", "json"]).unwrap();
    assert!(ok, "rollback refused: {err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((d["action"].as_str(), d["to"]["weight"].as_u64()), (Some("rollback"), Some(0)));
    rig.envoy.wait_version(&format!("sinkfail/{}", d["to"]["epoch"])).await.unwrap();
    assert!(err.contains("push failed after 3 attempts"), "the broken sink's failure is reported:\n{err}");
    let replies = route_users(&client(), &rig.envoy.url("/predict"), &users("after", 200), 8).await.unwrap();
    assert!(replies.iter().all(|r| r.version.as_deref() != Some(CHALLENGER)), "the challenger still gets users");

    // The rollout has ended, but the daemon keeps delivering to the sink
    // that missed the rollback; once its path works, it gets it and exits.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(daemon.proc.exited().is_none(), "the daemon left with a sink missing the rollback:\n{}", daemon.output());
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir_all(&broken).unwrap();
    daemon.wait_exit(Duration::from_secs(20)).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(broken.join("canary.json")).unwrap()).unwrap();
    assert_eq!(doc["version_info"], format!("sinkfail/{}", d["to"]["epoch"]));
}

/// Drift: a GitOps sync (here: a plain write) puts another configuration in
/// the ECDS file while the rollout runs. The daemon reads the sink back each
/// interval, writes its configuration again (the real Envoy follows), and
/// alerts once for the epoch however often it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_changed_behind_the_controllers_back_is_written_back_and_alerted_once() {
    let rig = Rig::start().await.unwrap();
    let receiver = Receiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let extra = format!("alerts:\n  webhooks: [{{ url: \"{}\" }}]\n", receiver.url);
    let spec = rollout_spec("drift", &rig.envoy, "1h", 10, GATES, &extra);
    let daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    rig.envoy.wait_version("drift/1").await.unwrap();

    // What a Git repository might hold: another rollout's configuration.
    let foreign = serde_json::json!({
        "rollout": "from-git", "epoch": 1, "stage": "s", "salt": "s",
        "champion": "v1", "challenger": CHALLENGER, "challenger_weight_bp": 0,
    });
    let path = rig.envoy.sink.path();
    for round in 0..2 {
        rig.envoy
            .sink
            .write_raw(rig.envoy.sink.render_raw("from-git/1", &foreign.to_string()).to_string().as_bytes())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap_or_default();
            if doc["version_info"] == "drift/1" {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: not written back within 10 s:\n{}", daemon.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rig.envoy.wait_version("drift/1").await.unwrap();
    }
    // Alerts leave from a task of their own: give the second round's a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drifted: Vec<_> = receiver.bodies().into_iter().filter(|b| b["kind"] == "sink_drifted").collect();
    assert_eq!(drifted.len(), 1, "one alert for the epoch: {drifted:?}");
    assert!(drifted[0]["reasons"][0].as_str().unwrap().contains("changed outside the controller"), "{drifted:?}");
    assert!(daemon.output().contains("sinks changed outside the controller"), "{}", daemon.output());
    assert_eq!(state(&state_dir)["epoch"].as_u64(), Some(1), "drift is not a decision");
    drop(daemon);
}
