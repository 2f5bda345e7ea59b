//! Predictions, segments, shadow copies and access-log tags, in a real Envoy
//! running the filter, against the echo backend (the client dictates what
//! the model answers, so every expected count is known exactly).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use canary_core::metrics::{metric_name, Counter, Leaf, ShadowStat, Stat};
use canary_core::FilterConfig;
use canary_tests::{
    client, counters_settled, filter_config, get, Backend, Envoy, EnvoyOptions, Reply, CHALLENGER, CHAMPION,
};

struct EchoRig {
    #[allow(dead_code)]
    champion: Backend,
    challenger: Backend,
    envoy: Envoy,
}

async fn echo_rig(challenger_args: &[&str]) -> EchoRig {
    let champion = Backend::start_bin("echo-backend", CHAMPION, &[]).unwrap();
    let challenger = Backend::start_bin("echo-backend", CHALLENGER, challenger_args).unwrap();
    let envoy = Envoy::start(&EnvoyOptions::new(&champion, &challenger)).await.unwrap();
    EchoRig { champion, challenger, envoy }
}

/// The test config with extra plugin-configuration fields merged in.
fn config(rollout: &str, epoch: u64, weight_bp: u64, extra: serde_json::Value) -> FilterConfig {
    let mut v: serde_json::Value = serde_json::from_str(&filter_config(rollout, epoch, weight_bp).to_json()).unwrap();
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    FilterConfig::from_json(v.to_string().as_bytes()).unwrap()
}

async fn counter(envoy: &Envoy, c: &FilterConfig, version: &str, leaf: Leaf<'_>) -> u64 {
    counters_settled().await;
    envoy.counter(&format!("wasmcustom.{}", metric_name(&c.rollout, c.epoch, version, leaf))).await.unwrap()
}

async fn send(envoy: &Envoy, user: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("x-user-id", user)];
    all.extend_from_slice(headers);
    get(&client(), &envoy.url("/predict"), &all).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_and_categorical_predictions_land_in_their_bins_from_a_header_and_a_json_body() {
    let rig = echo_rig(&[]).await;
    let envoy = &rig.envoy;

    // Numeric, from a response header.
    let c = config(
        "bins",
        1,
        0,
        serde_json::json!({"prediction": {"from": {"header": "x-prediction"}, "bins": {"numeric": [0.25, 0.5, 0.75]}}}),
    );
    envoy.push(&c).await.unwrap();
    let sends = [("0.1", 10), ("0.3", 20), ("0.6", 30), ("0.9", 40), ("high", 5)];
    for (p, n) in sends {
        for i in 0..n {
            let r = send(envoy, &format!("u{i}"), &[("x-echo-prediction", p)]).await;
            assert_eq!(r.status, 200);
        }
    }
    let got: Vec<u64> = futures::future::join_all(
        ["b0", "b1", "b2", "b3", "unparsed"].map(|b| counter(envoy, &c, CHAMPION, Leaf::Pred(b))),
    )
    .await;
    assert_eq!(got, [10, 20, 30, 40, 5]);

    // Categorical, from a JSON body; malformed and oversized bodies are unparsed
    // and the client still gets them whole.
    let c = config(
        "bins",
        2,
        0,
        serde_json::json!({"prediction": {"from": {"json_pointer": "/prediction"}, "max_body_bytes": 1024, "bins": {"categorical": ["cat", "dog"]}}}),
    );
    envoy.push(&c).await.unwrap();
    for (p, n) in [("cat", 7), ("dog", 3), ("cow", 4)] {
        for i in 0..n {
            let r = send(envoy, &format!("u{i}"), &[("x-echo-prediction", p), ("x-echo-body", "json")]).await;
            assert_eq!(r.status, 200);
            assert!(r.body.contains(&format!("\"prediction\":\"{p}\"")), "{}", r.body);
        }
    }
    for _ in 0..2 {
        let r = send(envoy, "m", &[("x-echo-body", "raw"), ("x-echo-raw", "{not json")]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "{not json"));
    }
    for _ in 0..3 {
        let r =
            send(envoy, "o", &[("x-echo-prediction", "cat"), ("x-echo-body", "json"), ("x-echo-pad", "5000")]).await;
        assert_eq!(r.status, 200);
        assert!(r.body.len() > 5000, "the oversized body reached the client whole");
    }
    let got: Vec<u64> = futures::future::join_all(
        ["cat", "dog", "other", "unparsed"].map(|b| counter(envoy, &c, CHAMPION, Leaf::Pred(b))),
    )
    .await;
    assert_eq!(got, [7, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_counters_appear_per_allowed_value_and_unknown_values_go_to_other() {
    let rig = echo_rig(&[]).await;
    let c = config("seg", 1, 0, serde_json::json!({"segment": {"header": "x-tier", "values": ["free", "pro"]}}));
    rig.envoy.push(&c).await.unwrap();
    for (tier, n) in [(Some("free"), 5), (Some("pro"), 7), (Some("gold"), 3), (None, 2)] {
        for i in 0..n {
            let headers: Vec<(&str, &str)> = tier.map(|t| vec![("x-tier", t)]).unwrap_or_default();
            assert_eq!(send(&rig.envoy, &format!("s{i}"), &headers).await.status, 200);
        }
    }
    for (seg, n) in [("free", 5), ("pro", 7), ("other", 5)] {
        let total = counter(&rig.envoy, &c, CHAMPION, Leaf::Segment(seg, Stat::Counter(Counter::RqTotal))).await;
        let ok = counter(&rig.envoy, &c, CHAMPION, Leaf::Segment(seg, Stat::Counter(Counter::Rq2xx))).await;
        assert_eq!((total, ok), (n, n), "segment {seg}");
    }
    counters_settled().await;
    let gold = rig.envoy.stats("segment\\.gold").await.unwrap();
    assert!(gold.is_empty(), "a value outside the allow-list got its own counter: {gold:?}");
}

/// The FNV-1a share the echo backend flips (same function as echo_backend.rs).
fn flipped(user: &str, rate: f64) -> bool {
    let h = user.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    (h % 1_000_000) as f64 / 1_000_000.0 < rate
}

const PREDICTIONS: [&str; 4] = ["0.1", "0.3", "0.7", "0.9"];

fn shadow_config(epoch: u64, shadow: bool) -> FilterConfig {
    let mut extra = serde_json::json!({"prediction": {"from": {"header": "x-prediction"}, "bins": {"numeric": [0.5]}}});
    if shadow {
        extra["shadow"] = serde_json::json!({"cluster": CHALLENGER, "timeout_ms": 3000});
    }
    config("shadow", epoch, 0, extra)
}

/// Sends `n` users' requests, 8 at a time; returns their replies and latencies.
async fn traffic(envoy: &Envoy, n: usize) -> Vec<(Reply, Duration)> {
    use futures::StreamExt;
    let c = client();
    let url = envoy.url("/predict");
    futures::stream::iter(0..n)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let user = format!("shadow-user-{i}");
                let p = PREDICTIONS[i % 4];
                let start = Instant::now();
                let r = get(&c, &url, &[("x-user-id", &user), ("x-echo-prediction", p)]).await.unwrap();
                (r, start.elapsed())
            }
        })
        .buffered(8)
        .collect()
        .await
}

fn median_ms(replies: &[(Reply, Duration)]) -> f64 {
    let mut ms: Vec<f64> = replies.iter().map(|(_, d)| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

async fn shadow_counters(envoy: &Envoy, c: &FilterConfig) -> HashMap<&'static str, u64> {
    let mut m = HashMap::new();
    for s in ShadowStat::ALL.into_iter().filter(|s| !s.is_histogram()) {
        m.insert(s.name(), counter(envoy, c, CHALLENGER, Leaf::Shadow(s)).await);
    }
    m
}

/// Waits until every one of `n` sampled requests has an outcome, then reads
/// the counters once more (they are read one by one, not atomically).
async fn wait_shadow_settled(envoy: &Envoy, c: &FilterConfig, n: u64) -> HashMap<&'static str, u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = shadow_counters(envoy, c).await;
        let done = m["agree"] + m["disagree"] + m["incomplete"] + m["failed"] + m["skipped"];
        if done >= n || Instant::now() > deadline {
            return shadow_counters(envoy, c).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_copies_measure_agreement_without_touching_the_user() {
    let rig = echo_rig(&["--flip-rate", "0.2"]).await;
    let c = shadow_config(1, true);
    rig.envoy.push(&c).await.unwrap();
    let n = 2000;
    let replies = traffic(&rig.envoy, n).await;
    assert!(replies.iter().all(|(r, _)| r.status == 200 && r.served_by.as_deref() == Some(CHAMPION)));
    let m = wait_shadow_settled(&rig.envoy, &c, n as u64).await;
    assert_eq!(m["rq_total"], n as u64, "{m:?}");
    let known = (0..n).filter(|i| !flipped(&format!("shadow-user-{i}"), 0.2)).count() as f64 / n as f64;
    let measured = m["agree"] as f64 / (m["agree"] + m["disagree"]) as f64;
    println!("shadow agreement: measured {:.2}% vs known {:.2}% ({m:?})", measured * 100.0, known * 100.0);
    assert!((measured - known).abs() <= 0.02, "agreement {measured} vs known {known}");
    let challenger_stats: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/_stats", rig.challenger.port)).await.unwrap().json().await.unwrap();
    assert_eq!(challenger_stats["shadow_requests"], n as u64);

    // The access log tags every request: version, stage, and the shadow mark.
    // (Envoy flushes access logs to the file about once a second.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = rig.envoy.access_log();
    while log.iter().filter(|l| l["stage"] == "w0").count() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        log = rig.envoy.access_log();
    }
    let tagged: Vec<_> = log.iter().filter(|l| l["stage"] == "w0").collect();
    assert_eq!(tagged.len(), n, "one access-log line per user request");
    assert!(tagged.iter().all(|l| l["model_version"] == CHAMPION && l["shadow"] == "1"), "{:?}", tagged.first());
    let unkeyed = get(&client(), &rig.envoy.url("/x"), &[]).await.unwrap();
    assert!(unkeyed.unkeyed);
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        if let Some(l) = rig.envoy.access_log().into_iter().find(|l| l["path"] == "/x") {
            break l;
        }
        assert!(Instant::now() < deadline, "the unkeyed request never reached the access log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(last["unkeyed"], "1", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_failing_shadow_never_delays_or_changes_the_users_response() {
    for (args, name) in [(vec!["--delay-ms", "1000"], "slow"), (vec!["--fail"], "failing")] {
        let rig = echo_rig(&args).await;
        let without = shadow_config(1, false);
        rig.envoy.push(&without).await.unwrap();
        let base = traffic(&rig.envoy, 400).await;
        let with = shadow_config(2, true);
        rig.envoy.push(&with).await.unwrap();
        let shadowed = traffic(&rig.envoy, 400).await;
        for (r, _) in base.iter().chain(&shadowed) {
            assert_eq!((r.status, r.served_by.as_deref()), (200, Some(CHAMPION)), "{name}: {r:?}");
        }
        let (a, b) = (median_ms(&base), median_ms(&shadowed));
        println!("{name} shadow: user median latency {a:.2} ms without shadow, {b:.2} ms with");
        assert!(b <= a + 5.0, "{name}: the shadow slowed users down: {a:.2} → {b:.2} ms");
        let m = wait_shadow_settled(&rig.envoy, &with, 400).await;
        assert_eq!(m["rq_total"], 400, "{name}: {m:?}");
        if name == "failing" {
            assert_eq!(m["rq_5xx"], 400, "{m:?}");
            assert_eq!(m["agree"] + m["disagree"], 0, "{m:?}");
        } else {
            assert_eq!(m["agree"], 400, "identical models agree: {m:?}");
        }
    }
}

/// Envoy's own answers to copies it could not complete — a timeout (504
/// "upstream request timeout") or a refused connection (503 "upstream
/// connect error …") — count as failed copies, not as the challenger's 5xx,
/// and add no latency sample (the controller censors them at the timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_and_refused_shadow_copies_count_as_failed() {
    let mut rig = echo_rig(&["--delay-ms", "1000"]).await;
    let mut c = shadow_config(1, true);
    if let Some(s) = c.shadow.as_mut() {
        s.timeout_ms = 200;
    }
    rig.envoy.push(&c).await.unwrap();
    traffic(&rig.envoy, 100).await;
    let m = wait_shadow_settled(&rig.envoy, &c, 100).await;
    assert_eq!((m["rq_total"], m["failed"], m["rq_5xx"]), (100, 100, 0), "timed out: {m:?}");

    rig.challenger.proc.stop();
    let mut c2 = shadow_config(2, true);
    if let Some(s) = c2.shadow.as_mut() {
        s.timeout_ms = 200;
    }
    rig.envoy.push(&c2).await.unwrap();
    traffic(&rig.envoy, 100).await;
    let m = wait_shadow_settled(&rig.envoy, &c2, 100).await;
    assert_eq!((m["rq_total"], m["failed"], m["rq_5xx"]), (100, 100, 0), "refused: {m:?}");
}
