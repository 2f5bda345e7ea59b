//! Live reconfiguration through file-based ECDS: no restart, no failed
//! request, and a refused configuration leaves the last good one serving.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_controller::sink::EcdsFileSink;
use canary_core::metrics::Counter;
use canary_tests::{client, filter_config, get, route_users, users, Rig, CHALLENGER, CHAMPION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_live_with_no_failed_request_under_load() {
    let rig = Rig::start().await.unwrap();
    let pid = rig.envoy.proc.pid();
    rig.envoy.push(&filter_config("live", 1, 0)).await.unwrap();
    let success_before = rig.envoy.ecds_counter("update_success").await.unwrap();

    // Steady load: 16 clients, each a loop of keyed requests.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = vec![];
    for worker in 0..16u64 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), rig.envoy.url("/"));
        load.push(tokio::spawn(async move {
            let c = client();
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("load-{}", i % 5000);
                match get(&c, &url, &[("x-user-id", &user)]).await {
                    Ok(r) if r.status == 200 && r.version == r.served_by && r.version.is_some() => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(r) => {
                        eprintln!("bad reply {r:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("request failed: {e:#}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 16;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 20 rewrites, alternating everyone-on-champion and everyone-on-challenger,
    // timing each from the rename until a probe request sees the new version.
    let probe = client();
    let mut applied_ms = vec![];
    for epoch in 2..=21u64 {
        let weight = if epoch % 2 == 0 { 10_000 } else { 0 };
        let want = if weight == 0 { CHAMPION } else { CHALLENGER };
        let config = filter_config("live", epoch, weight);
        let start = Instant::now();
        rig.envoy.sink.push(&config).unwrap();
        loop {
            let r = get(&probe, &rig.envoy.url("/"), &[("x-user-id", "probe")]).await.unwrap();
            if r.version.as_deref() == Some(want) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "epoch {epoch} not applied after 10 s");
        }
        applied_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        rig.envoy.wait_version(&EcdsFileSink::version_info(&config)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    applied_ms.sort_by(f64::total_cmp);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "20 rewrites under load: {ok} requests ok, {failed} failed; new weight applied after median {:.1} ms, max {:.1} ms",
        applied_ms[applied_ms.len() / 2],
        applied_ms[applied_ms.len() - 1]
    );
    assert_eq!(failed, 0, "requests failed during reconfiguration");
    assert!(ok > 1000, "only {ok} requests: the load was not steady");
    assert_eq!(rig.envoy.ecds_counter("update_success").await.unwrap() - success_before, 20);
    assert_eq!(rig.envoy.proc.pid(), pid);
    assert!(canary_tests::pid_alive(pid), "envoy restarted or died");
}

/// Writes a DiscoveryResponse carrying `plugin_config` and waits until Envoy
/// counts it as rejected (`counter` grows).
async fn write_and_wait_refused(rig: &Rig, version: &str, body: Vec<u8>, counter: &str) {
    let before = rig.envoy.ecds_counter(counter).await.unwrap();
    rig.envoy.sink.write_raw(&body).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.envoy.ecds_counter(counter).await.unwrap() == before {
        assert!(Instant::now() < deadline, "{version}: envoy did not count it in {counter}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_and_the_last_good_split_keeps_serving() {
    let rig = Rig::start().await.unwrap();
    let good = filter_config("refuse", 1, 2000);
    rig.envoy.push(&good).await.unwrap();
    let c = client();
    let ids = users("refuse", 2000);
    let before: Vec<_> =
        route_users(&c, &rig.envoy.url("/"), &ids, 32).await.unwrap().into_iter().map(|r| r.version).collect();
    assert!(before.iter().any(|v| v.as_deref() == Some(CHALLENGER)));

    let good_json: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
    let mut unknown = good_json.clone();
    unknown["colour"] = "red".into();
    let mut heavy = good_json.clone();
    heavy["challenger_weight_bp"] = 10_001.into();
    heavy["epoch"] = 2.into();
    // A configuration for a filter that hashes differently: refused, so no
    // user moves (what the controller writes names this filter's hash).
    assert_eq!(good_json["hash"], "xxh3-64", "{good_json}");
    let mut other_hash = good_json.clone();
    other_hash["hash"] = "fnv1a-64".into();
    other_hash["epoch"] = 2.into();
    let cases = [
        ("malformed", r#"{"rollout": "refuse", "#.to_string(), "is not valid JSON"),
        ("unknown-field", unknown.to_string(), "unknown field `colour`"),
        ("weight-10001", heavy.to_string(), "`challenger_weight_bp`: 10001"),
        (
            "other-hash",
            other_hash.to_string(),
            "`hash`: `fnv1a-64` is not a hash this filter computes; the only accepted value is `xxh3-64`",
        ),
    ];
    for (name, plugin, reason) in cases {
        let body = serde_json::to_vec(&rig.envoy.sink.render_raw(name, &plugin)).unwrap();
        write_and_wait_refused(&rig, name, body, "update_rejected").await;
        let log = rig.envoy.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("canary: configuration refused"))
            .unwrap_or_else(|| panic!("{name}: no refusal logged"));
        assert!(line.contains(reason), "{name}: log line does not give the reason {reason:?}: {line}");

        // Traffic keeps flowing with the last good split.
        let after: Vec<_> =
            route_users(&c, &rig.envoy.url("/"), &ids, 32).await.unwrap().into_iter().map(|r| r.version).collect();
        assert_eq!(after, before, "{name}: the split changed after a refused configuration");
    }

    // A file that is not even a DiscoveryResponse: refused too.
    write_and_wait_refused(&rig, "garbage", b"{ this is not json".to_vec(), "update_failure").await;
    let after: Vec<_> =
        route_users(&c, &rig.envoy.url("/"), &ids, 32).await.unwrap().into_iter().map(|r| r.version).collect();
    assert_eq!(after, before);
    let version = rig.envoy.stats("http_filter.canary.version_text").await.unwrap();
    assert!(version.values().any(|v| v.as_str() == Some("refuse/1")), "{version:?}");

    // And the next good configuration is taken.
    rig.envoy.push(&filter_config("refuse", 3, 10_000)).await.unwrap();
    let all = route_users(&c, &rig.envoy.url("/"), &ids, 32).await.unwrap();
    assert!(all.iter().all(|r| r.version.as_deref() == Some(CHALLENGER)));
}

/// The filter holds its counters between flushes. Requests still in flight
/// when a push replaces the configuration answer after the old root context
/// is gone: what they count must still reach Envoy, in the old epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_across_a_push_are_counted_in_their_epoch() {
    let rig = Rig::start().await.unwrap();
    let old = filter_config("in-flight", 1, 5000);
    rig.envoy.push(&old).await.unwrap();
    for backend in [&rig.champion, &rig.challenger] {
        backend.control(serde_json::json!({"latency_ms": 600.0, "latency_sigma": 0.0})).await.unwrap();
    }
    let url = rig.envoy.url("/");
    let flights: Vec<_> = users("flight", 40)
        .into_iter()
        .map(|user| {
            let url = url.clone();
            tokio::spawn(async move { get(&client(), &url, &[("x-user-id", &user)]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.envoy.sink.push(&filter_config("in-flight", 2, 5000)).unwrap();
    let mut answered = 0;
    for f in flights {
        let r = f.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        answered += 1;
    }
    let applied = rig.envoy.stats("http_filter.canary.version_text").await.unwrap();
    println!("after the flights: {applied:?}");
    let mut counted = (0, 0);
    for v in [CHAMPION, CHALLENGER] {
        counted.0 += rig.envoy.canary_counter(&old, v, Counter::RqTotal).await.unwrap();
        counted.1 += rig.envoy.canary_counter(&old, v, Counter::Rq2xx).await.unwrap();
    }
    assert_eq!(counted, (answered, answered), "(requests, 2xx) of epoch 1");
}
