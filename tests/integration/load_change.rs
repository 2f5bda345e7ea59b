//! Steady load through Envoy while the controller's sink pushes 50
//! configuration changes: no request fails because of a reconfiguration, and
//! within each stage every user sees one version.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_controller::sink::EcdsFileSink;
use canary_tests::{client, filter_config, get, Rig};

/// Versions each user saw, per stage.
type Seen = HashMap<(String, u32), HashSet<String>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pushes_under_load_fail_no_request_and_keep_users_on_one_version_per_stage() {
    let rig = Rig::start().await.unwrap();
    rig.envoy.push(&filter_config("churn", 1, 100)).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut tasks = vec![];
    for w in 0..48u32 {
        let (stop, ok, failed, seen, url) =
            (stop.clone(), ok.clone(), failed.clone(), seen.clone(), rig.envoy.url("/"));
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut user = w;
            while !stop.load(Ordering::Relaxed) {
                user = (user + 48) % 3000;
                match get(&c, &url, &[("x-user-id", &format!("churn-{user}"))]).await {
                    Ok(r) if r.status == 200 && r.version.is_some() && r.version == r.served_by => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let key = (r.stage.unwrap_or_default(), user);
                        seen.lock().unwrap().entry(key).or_default().insert(r.version.unwrap_or_default());
                    }
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let ok_before = ok.load(Ordering::Relaxed);
    // 50 changes through the controller's sink: weights up and down, each a new stage.
    for epoch in 2..=51u64 {
        let weight = [100, 500, 2000, 5000, 10_000, 0][(epoch % 6) as usize];
        let mut config = filter_config("churn", epoch, weight);
        config.stage = format!("s{epoch}");
        rig.envoy.sink.push(&config).unwrap();
        rig.envoy.wait_version(&EcdsFileSink::version_info(&config)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let served = ok.load(Ordering::Relaxed) - ok_before;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let rate = served as f64 / elapsed;
    let failed = failed.load(Ordering::Relaxed);
    let seen = seen.lock().unwrap();
    let mixed: Vec<_> = seen.iter().filter(|(_, versions)| versions.len() > 1).collect();
    let stages: HashSet<&String> = seen.keys().map(|(s, _)| s).collect();
    println!(
        "50 pushes in {elapsed:.1} s under {rate:.0} req/s: {served} requests ok, {failed} failed, {} stages seen, {} (stage, user) pairs, {} with two versions",
        stages.len(),
        seen.len(),
        mixed.len()
    );
    assert_eq!(failed, 0, "requests failed during reconfiguration");
    assert!(mixed.is_empty(), "users saw two versions within one stage: {:?}", &mixed[..mixed.len().min(5)]);
    assert!(stages.len() >= 40, "only {} stages saw traffic", stages.len());
    assert!(rate >= 2000.0, "load was {rate:.0} req/s, below the 2 000 req/s the test is meant to hold");
}
