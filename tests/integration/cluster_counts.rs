//! `envoy.counts: cluster`: the filter skips the per-request status read,
//! clock reads and histogram, and the controller reads per-version status
//! classes, 504s and latency from Envoy's own `cluster.<version>.*` stats.
//! Checked against what the backends themselves counted.

use std::time::Duration;

use canary_controller::source::{AdminSource, AdminSourceConfig};
use canary_core::config::Counts;
use canary_tests::{
    counters_settled, decisions, filter_config, rollout_spec, state, wait_stage, BackendStats, Daemon, Load, Rig,
    CHALLENGER, CHAMPION,
};

/// 5xx: `errors` (500) + `timeouts` (504); 2xx: the rest.
fn expected(s: &BackendStats) -> (u64, u64, u64) {
    (s.requests - s.errors - s.timeouts, s.errors + s.timeouts, s.timeouts)
}

async fn faulty_rig() -> Rig {
    let rig = Rig::start().await.unwrap();
    for b in [&rig.champion, &rig.challenger] {
        b.control(
            serde_json::json!({"latency_ms": 4.0, "latency_sigma": 0.3, "error_rate": 0.02, "timeout_rate": 0.02}),
        )
        .await
        .unwrap();
    }
    rig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counts_of_one_read_equal_what_the_backends_served() {
    let rig = faulty_rig().await;
    let mut config = filter_config("cl", 1, 3000);
    config.counts = Counts::Cluster;
    rig.envoy.push(&config).await.unwrap();
    let mut source = AdminSource::new(AdminSourceConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", rig.envoy.admin_port)],
        ..AdminSourceConfig::default()
    })
    .with_cluster_counts(vec![CHAMPION.into(), CHALLENGER.into()]);
    // The first read is the baseline (nothing served yet).
    let w = source.read("cl", 1, "cl/1").await;
    assert_eq!(w.version(CHAMPION).answered(), 0, "{w:?}");

    let load = Load::start(rig.envoy.url("/predict"), 16, 5000, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.stop().await;
    counters_settled().await;
    // Histograms reach the admin API at the next stats flush (1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    if let Ok(dir) = std::env::var("CANARY_WRITE_CLUSTER_FIXTURE") {
        let q = canary_controller::source::admin::stats_query_with("cl", 1, Some(&[CHAMPION, CHALLENGER]));
        std::fs::write(format!("{dir}/admin_stats.json"), rig.envoy.admin_get(&q).await.unwrap()).unwrap();
        let p = rig
            .envoy
            .admin_get("/stats?format=prometheus&usedonly&filter=%5Ecluster%5C.v%5B12%5D%5C.upstream_rq")
            .await
            .unwrap();
        std::fs::write(format!("{dir}/admin_stats.prom"), p).unwrap();
    }

    let w = source.read("cl", 1, "cl/1").await;
    for (version, backend) in [(CHAMPION, &rig.champion), (CHALLENGER, &rig.challenger)] {
        let s = backend.stats().await.unwrap();
        let v = w.version(version);
        assert!(s.requests > 200 && s.errors > 0 && s.timeouts > 0, "{version}: {s:?}");
        assert_eq!((v.responses[1], v.responses[4], v.timeouts), expected(&s), "{version}: {v:?} vs {s:?}");
        // The filter still counts what it routed.
        assert_eq!(v.requests, s.requests, "{version}");
        assert_eq!(v.latency_us.count(), s.requests, "{version}: one latency sample per response");
    }
    // No per-version class counter or latency from the filter in this mode.
    let stats = rig.envoy.stats("wasmcustom.canary.rollout.cl.epoch.1").await.unwrap();
    let counted = |k: &String| k.contains("rq_2xx") || k.contains("rq_5xx") || k.contains("latency_us");
    assert!(stats.iter().filter(|(k, _)| counted(k)).all(|(_, v)| *v == 0), "{stats:?}");
}

const GATES: &str = "  error_rate: { error_tolerance: 3 }\n  latency: { latency_tolerance_multiplier: 2, quantile: 0.5 }\n  timeouts: { timeout_tolerance: 3 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_over_two_stage_changes_counts_exactly_what_the_backends_served() {
    let rig = faulty_rig().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    // 20 % → 50 % → 80 %, where it holds (an hour): two stage changes.
    let admin = format!("http://127.0.0.1:{}", rig.envoy.admin_port);
    let stages = [(20, "1s", 300), (50, "1s", 300), (80, "1h", 300)];
    let spec = canary_tests::spec_with("clr", &admin, &rig.envoy, &stages, GATES, "")
        .replace("  apply_timeout: 5s\n", "  apply_timeout: 5s\n  counts: cluster\n");
    let daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    // The controller's first read (the baseline) before any traffic.
    canary_tests::wait_decision(&state_dir, Duration::from_secs(30), &daemon, |_| true).await.unwrap();
    let load = Load::start(rig.envoy.url("/predict"), 24, 20_000, Duration::ZERO);
    wait_stage(&state_dir, Some(2), Duration::from_secs(120), &daemon).await.unwrap();
    load.stop().await;
    counters_settled().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    check_rollout(&rig, &state_dir, &daemon).await;
    drop(daemon);
}

/// The rollout's stage windows (each stage's last decision: the windows are
/// cumulative) sum, per version, to exactly what the backends served
/// (2xx, 5xx, 504), and their latency's p99 is the access log's within a
/// bucket. Called once the load stopped and the counters settled: the
/// first decision after that is the last of the stage the rollout is in.
async fn check_rollout(rig: &Rig, state_dir: &std::path::Path, daemon: &Daemon) {
    let settled_at = canary_controller::control::now_millis();
    let last = canary_tests::wait_decision(state_dir, Duration::from_secs(30), daemon, |d| {
        d["at"].as_u64().unwrap_or(0) > settled_at + 500 && d["from"]["stage"] == 2
    })
    .await
    .unwrap();
    let last = &last;
    let log = decisions(state_dir);
    let changes: Vec<&serde_json::Value> = log.iter().filter(|d| d["action"] == "advance").collect();
    assert_eq!(changes.len(), 2, "{}", daemon.output());
    assert_eq!(state(state_dir)["phase"], "running");
    // A stage's windows are cumulative: its last decision holds the stage.
    let stage_windows = [changes[0], changes[1], last];
    for (version, backend, key) in [(CHAMPION, &rig.champion, "champion"), (CHALLENGER, &rig.challenger, "challenger")]
    {
        let s = backend.stats().await.unwrap();
        let sum =
            |f: &dyn Fn(&serde_json::Value) -> u64| stage_windows.iter().map(|d| f(&d["window"][key])).sum::<u64>();
        let got = (
            sum(&|w| w["responses"][1].as_u64().unwrap()),
            sum(&|w| w["responses"][4].as_u64().unwrap()),
            sum(&|w| w["timeouts"].as_u64().unwrap()),
        );
        println!("{version}: (2xx, 5xx, 504) controller {got:?}, backend {:?}", expected(&s));
        assert!(s.errors > 0 && s.timeouts > 0, "{version}: {s:?}");
        assert_eq!(got, expected(&s), "{version}: controller's (2xx, 5xx, 504) over the rollout vs the backend's");
        // p99 over the rollout against Envoy's access log, within a bucket (+1 ms: the log's ms are whole).
        let mut latency = canary_judge::window::MergedHistogram::default();
        for d in &stage_windows {
            let w: canary_judge::window::VersionWindow = serde_json::from_value(d["window"][key].clone()).unwrap();
            latency.merge(&w.latency_us);
        }
        assert_eq!(latency.count(), s.requests, "{version}: one latency sample per response");
        let p99_ms = latency.quantile(0.99).unwrap() / 1000.0;
        let mut logged: Vec<f64> = rig
            .envoy
            .access_log()
            .iter()
            .filter(|l| l["upstream_cluster"] == version)
            .filter_map(|l| l["duration_ms"].as_f64())
            .collect();
        logged.sort_by(f64::total_cmp);
        assert!(!logged.is_empty(), "no access log line for {version}");
        let log_p99 = logged[((logged.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
        let tolerance = (p99_ms * 0.1).max(1.0) + 1.0;
        println!("{version}: p99 {p99_ms:.2} ms (controller) vs {log_p99} ms (access log, {} lines)", logged.len());
        assert!((p99_ms - log_p99).abs() <= tolerance, "{version}: p99 {p99_ms} vs {log_p99} ms");
    }
}

/// The same rollout read from a real Prometheus scraping the Envoy
/// (Envoy's own `envoy_cluster_upstream_rq_*` names), and with the
/// controller killed (SIGKILL) and restarted in the middle of the last
/// stage: the stage's baselines are read back from the state directory, so
/// the windows still sum to exactly what the backends served (without them
/// the last stage would lack what came before the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_prometheus_with_a_controller_restart_a_rollout_counts_exactly_what_the_backends_served() {
    use crate::prometheus::{Prometheus, JOB};
    let rig = faulty_rig().await;
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{}", rig.envoy.admin_port)]).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let admin = format!("http://127.0.0.1:{}", rig.envoy.admin_port);
    let stages = [(20, "1s", 300), (50, "1s", 300), (80, "1h", 300)];
    let spec = canary_tests::spec_with("clp", &admin, &rig.envoy, &stages, GATES, "").replace(
        "  apply_timeout: 5s\n",
        &format!(
            "  apply_timeout: 5s\n  counts: cluster\n  prometheus: {{ url: \"{}\", selector: 'job=\"{JOB}\"', timeout: 3s }}\n",
            prometheus.url
        ),
    );
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    // The controller's first read of the Envoy (its baseline) before any traffic.
    canary_tests::wait_decision(&state_dir, Duration::from_secs(30), &daemon, |d| {
        d["window"]["coverage"]["answered"] == 1
    })
    .await
    .unwrap();
    let load = Load::start(rig.envoy.url("/predict"), 24, 40_000, Duration::ZERO);
    wait_stage(&state_dir, Some(2), Duration::from_secs(120), &daemon).await.unwrap();
    // Mid-stage: a stage decision with traffic in it, then a crash.
    let entered = canary_controller::control::now_millis();
    let before = canary_tests::wait_decision(&state_dir, Duration::from_secs(30), &daemon, |d| {
        d["at"].as_u64().unwrap_or(0) > entered + 1500
            && d["from"]["stage"] == 2
            && d["window"]["challenger"]["responses"][1].as_u64().unwrap_or(0) > 100
    })
    .await
    .unwrap();
    daemon.kill9();
    let saved = std::fs::read_dir(state_dir.join("tracker")).unwrap().flatten();
    let saved: Vec<String> = saved.map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(saved.iter().any(|f| f.starts_with("cluster-base-")), "no baselines saved: {saved:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let daemon = Daemon::start(&state_dir, None).unwrap();
    let restarted = canary_controller::control::now_millis();
    // The first window after the restart already holds the stage's earlier responses.
    let after = canary_tests::wait_decision(&state_dir, Duration::from_secs(30), &daemon, |d| {
        d["at"].as_u64().unwrap_or(0) > restarted && d["window"]["coverage"]["answered"] == 1
    })
    .await
    .unwrap();
    for key in ["champion", "challenger"] {
        let n = |d: &serde_json::Value| d["window"][key]["responses"][1].as_u64().unwrap();
        assert!(
            n(&after) >= n(&before),
            "{key}: the stage's window shrank across the restart: {} → {}",
            n(&before),
            n(&after)
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop().await;
    counters_settled().await;
    // Histograms reach Envoy's stats at its flush (1 s), Prometheus a scrape (0.5 s) later.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    if let Ok(dir) = std::env::var("CANARY_WRITE_CLUSTER_FIXTURE") {
        record_prometheus_fixture(&prometheus.url, &dir).await;
    }
    check_rollout(&rig, &state_dir, &daemon).await;
    drop(daemon);
}

/// Prometheus' answers to the queries the controller asks in cluster mode
/// (`up`, uptime, and the cluster query), as they are, for the judge's unit tests.
async fn record_prometheus_fixture(url: &str, dir: &str) {
    use canary_judge::evidence::cluster::prometheus::{cluster_query, ClusterMetrics};
    let sel = format!("job=\"{}\"", crate::prometheus::JOB);
    let queries = [
        ("prometheus_up.json", format!("up{{{sel}}}")),
        ("prometheus_uptime.json", format!("envoy_server_uptime{{{sel}}}")),
        ("prometheus_cluster.json", cluster_query(ClusterMetrics::Envoy, &[CHAMPION, CHALLENGER], &sel)),
    ];
    for (file, q) in queries {
        let body = canary_tests::client()
            .post(format!("{url}/api/v1/query"))
            .form(&[("query", q.as_str())])
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        std::fs::write(format!("{dir}/{file}"), body).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_with_5xx_is_rolled_back_with_cluster_counts() {
    let rig = Rig::start().await.unwrap();
    for b in [&rig.champion, &rig.challenger] {
        b.control(serde_json::json!({"latency_ms": 5.0, "latency_sigma": 0.1})).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let gates = "  error_rate: { error_tolerance: 2 }\n  latency: { latency_tolerance_multiplier: 2, quantile: 0.5 }";
    let spec = rollout_spec("clf", &rig.envoy, "2s", 300, gates, "")
        .replace("  apply_timeout: 5s\n", "  apply_timeout: 5s\n  counts: cluster\n");
    let load = Load::start(rig.envoy.url("/predict"), 48, 20_000, Duration::ZERO);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    wait_stage(&state_dir, Some(1), Duration::from_secs(90), &daemon).await.unwrap();
    rig.challenger.control(serde_json::json!({"error_rate": 0.3})).await.unwrap();
    let status = daemon.wait_exit(Duration::from_secs(60)).await.unwrap();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());
    assert_eq!(state(&state_dir)["phase"], "rolled_back", "{}", daemon.output());
    let rollback = decisions(&state_dir).into_iter().find(|d| d["action"] == "rollback").unwrap();
    assert_eq!(rollback["from"]["stage_name"], "5pct");
    assert!(rollback["reasons"][0].as_str().unwrap().contains("error_rate gate failed"), "{rollback}");
}
