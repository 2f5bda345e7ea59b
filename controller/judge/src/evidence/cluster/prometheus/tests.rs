use super::*;
use crate::evidence::admin::EndpointSample;
use crate::evidence::admin::ReadError;
use crate::evidence::cluster::ClusterCounts;
use crate::evidence::prometheus::parse_vector;
use crate::evidence::sample;
use crate::window::Window;

/// Real answers of Prometheus 2.42 (Debian) scraping Envoy 1.40 with
/// `envoy/sidecar.yaml`, to the queries of cluster mode (rollout `clp`,
/// versions v1 and v2; backends failing 2 % with 500 and 2 % with 504),
/// recorded by `tests/integration/cluster_counts.rs`
/// (`CANARY_WRITE_CLUSTER_FIXTURE=DIR`) at the end of its rollout.
const UP: &str = include_str!("../fixtures/prometheus_up.json");
const UPTIME: &str = include_str!("../fixtures/prometheus_uptime.json");
const CLUSTER: &str = include_str!("../fixtures/prometheus_cluster.json");
/// Istio's names over the same counts (no Istio here to record one from):
/// `istio_requests_total` per `response_code` from the recorded
/// `envoy_cluster_upstream_rq` rows, the recorded latency buckets as
/// `istio_request_duration_milliseconds_bucket` of code 200, and 3 requests
/// of code `0` (a client gone before the response).
const ISTIO: &str = include_str!("../fixtures/istio_cluster.json");

const V: [&str; 2] = ["v1", "v2"];

fn answer(body: &str) -> Vec<PromSample> {
    parse_vector(body.as_bytes()).unwrap()
}

fn real(metrics: ClusterMetrics, data: &str) -> EndpointSample {
    let reads = cluster_reads("clp", &V, metrics, &answer(UP), &answer(UPTIME), &answer(data)).unwrap();
    assert_eq!(reads.len(), 1);
    reads[0].outcome.clone().unwrap()
}

fn count(s: &EndpointSample, version: &str, counter: Counter) -> Option<u64> {
    s.series.get(&counter_series("clp", CUMULATIVE_EPOCH, version, counter)).copied()
}

/// Per version: (2xx, 5xx, 504, latency samples, p50 µs) after a baseline of nothing.
fn windowed(s: &EndpointSample) -> Vec<(u64, u64, u64, u64, f64)> {
    let mut counts = ClusterCounts::default();
    let mut w = Window { epoch: 3, ..Window::default() };
    let read = |s: EndpointSample| [EndpointRead { endpoint: "127.0.0.1:41395".into(), outcome: Ok(s) }];
    counts.apply(&read(sample("clp", CUMULATIVE_EPOCH, Some(1), &[])), &mut w);
    counts.apply(&read(s.clone()), &mut w);
    V.iter()
        .map(|v| {
            let v = w.version(v);
            (v.responses[1], v.responses[4], v.timeouts, v.latency_us.count(), v.latency_us.quantile(0.5).unwrap())
        })
        .collect()
}

#[test]
fn the_real_answer_reads_as_cumulative_classes_504s_and_latency_in_microseconds() {
    let s = real(ClusterMetrics::Envoy, CLUSTER);
    assert_eq!((s.epoch, s.uptime_s, s.active_version.as_deref()), (CUMULATIVE_EPOCH, Some(18), None));
    assert_eq!(
        [Counter::Rq2xx, Counter::Rq5xx, Counter::RqTimeout, Counter::Rq4xx].map(|c| count(&s, "v1", c)),
        [Some(4120), Some(176), Some(89), None]
    );
    assert_eq!(
        [Counter::Rq2xx, Counter::Rq5xx, Counter::RqTimeout].map(|c| count(&s, "v2", c)),
        [Some(7969), Some(326), Some(173)]
    );
    // The filter's own counters are not read here.
    assert_eq!(count(&s, "v1", Counter::RqTotal), None);
    let w = windowed(&s);
    // One latency sample per response (rq_completed).
    assert_eq!((w[0].0, w[0].1, w[0].2, w[0].3), (4120, 176, 89, 4296));
    assert_eq!((w[1].0, w[1].1, w[1].2, w[1].3), (7969, 326, 173, 8295));
    for (_, _, _, _, p50) in &w {
        // Backends at 4 ms (log-normal) under load: the recorded run's access log had p99 26–28 ms.
        assert!((2000.0..20_000.0).contains(p50), "{p50}");
    }
}

#[test]
fn istio_names_read_the_same_counts_without_codes_that_are_no_response() {
    let envoy = real(ClusterMetrics::Envoy, CLUSTER);
    let istio = real(ClusterMetrics::Istio, ISTIO);
    // Classes and 504s from codes; code 0 (3 requests of v2) counted nowhere.
    assert_eq!(istio.series, envoy.series);
    assert_eq!(windowed(&istio), windowed(&envoy));
    // Envoy's names are not Istio's: each reads only its own.
    let none = real(ClusterMetrics::Istio, CLUSTER);
    assert!(none.series.is_empty(), "{:?}", none.series);
}

fn row(labels: &[(&str, &str)], value: &str) -> serde_json::Value {
    let metric: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    serde_json::json!({"metric": metric, "value": [1.0, value]})
}

fn vector(rows: Vec<serde_json::Value>) -> Vec<PromSample> {
    let body = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": rows}});
    parse_vector(body.to_string().as_bytes()).unwrap()
}

const A: &str = "10.0.0.1:15020";

#[test]
fn istio_buckets_and_classes_sum_over_response_codes() {
    let up = vector(vec![row(&[("instance", A)], "1"), row(&[("instance", "10.0.0.2:15020")], "0")]);
    let req = |code: &str, n: &str| {
        row(&[("__name__", ISTIO_REQUESTS), ("instance", A), ("destination_version", "v2"), ("response_code", code)], n)
    };
    let bucket = |code: &str, le: &str, n: &str| {
        row(
            &[
                ("__name__", ISTIO_DURATION),
                ("instance", A),
                ("destination_version", "v2"),
                ("response_code", code),
                ("le", le),
            ],
            n,
        )
    };
    let data = vector(vec![
        req("200", "10"),
        req("201", "5"),
        req("503", "2"),
        req("504", "1"),
        req("0", "7"),
        req("999", "7"),
        bucket("200", "5", "4"),
        bucket("200", "10", "15"),
        bucket("200", "+Inf", "15"),
        bucket("503", "5", "0"),
        bucket("503", "10", "3"),
        bucket("503", "+Inf", "3"),
        // Another version than the rollout's: ignored.
        row(
            &[("__name__", ISTIO_REQUESTS), ("instance", A), ("destination_version", "v9"), ("response_code", "200")],
            "50",
        ),
    ]);
    let reads = cluster_reads("r", &V, ClusterMetrics::Istio, &up, &[], &data).unwrap();
    assert_eq!(reads[1].outcome, Err(ReadError::ScrapeFailed), "up = 0 is a failed endpoint");
    let s = reads[0].outcome.as_ref().unwrap();
    let c = |counter| s.series.get(&counter_series("r", CUMULATIVE_EPOCH, "v2", counter)).copied();
    assert_eq!(
        [Counter::Rq2xx, Counter::Rq5xx, Counter::RqTimeout, Counter::Rq1xx].map(c),
        [Some(15), Some(3), Some(1), None]
    );
    let b = |lower: f64, width: f64| {
        s.series.get(&bucket_series("r", CUMULATIVE_EPOCH, "v2", Histogram::LatencyUs, lower, width)).copied()
    };
    // le 5 → [0, 10) ms: 4; le 10 → [10, 10) ms read at the last bound: 11 + 3 = 14.
    assert_eq!((b(0.0, 10_000.0), b(10_000.0, 5_000.0)), (Some(4), Some(14)));
    assert_eq!(s.series.keys().filter(|k| k.contains("v9")).count(), 0);
}

#[test]
fn malformed_answers_fail_the_read_naming_the_series() {
    let up = vector(vec![row(&[("instance", A)], "1")]);
    let classes = |class: &str, n: &str| {
        row(
            &[
                ("__name__", ENVOY_CLASSES),
                ("instance", A),
                ("envoy_cluster_name", "v1"),
                ("envoy_response_code_class", class),
            ],
            n,
        )
    };
    let err = |data: Vec<serde_json::Value>| {
        cluster_reads("r", &V, ClusterMetrics::Envoy, &up, &[], &vector(data)).unwrap_err().to_string()
    };
    let e = err(vec![classes("7", "1")]);
    assert!(e.contains("envoy_response_code_class") && e.contains("is not 1 … 5"), "{e}");
    let e = err(vec![classes("2", "1.5")]);
    assert!(e.contains("envoy_cluster_upstream_rq_xx") && e.contains("is not a count"), "{e}");
    let e = err(vec![row(&[("__name__", ENVOY_CLASSES), ("instance", A), ("envoy_response_code_class", "2")], "1")]);
    assert!(e.contains("no `envoy_cluster_name` label"), "{e}");
    let time = |le: &str, n: &str| {
        row(&[("__name__", ENVOY_TIME), ("instance", A), ("envoy_cluster_name", "v1"), ("le", le)], n)
    };
    let e = err(vec![time("5", "9"), time("10", "3")]);
    assert!(e.contains("not cumulative"), "{e}");
    let e = err(vec![time("fast", "9")]);
    assert!(e.contains("`le` is not a non-negative number"), "{e}");
    // Codes other than 504 of `envoy_cluster_upstream_rq` are not read (classes come from `_xx`).
    let code = |c: &str| {
        row(
            &[("__name__", ENVOY_CODES), ("instance", A), ("envoy_cluster_name", "v1"), ("envoy_response_code", c)],
            "4",
        )
    };
    let reads =
        cluster_reads("r", &V, ClusterMetrics::Envoy, &up, &[], &vector(vec![code("200"), code("504")])).unwrap();
    let s = reads[0].outcome.as_ref().unwrap();
    assert_eq!(s.series.len(), 1);
    assert_eq!(s.series.get(&counter_series("r", CUMULATIVE_EPOCH, "v1", Counter::RqTimeout)), Some(&4));
}

#[test]
fn the_queries_select_the_versions_and_the_fleet() {
    let q = cluster_query(ClusterMetrics::Envoy, &V, r#"job="canary""#);
    assert_eq!(
        q,
        r#"sum by (__name__, instance, envoy_cluster_name, envoy_response_code_class, envoy_response_code, le) ({__name__=~"envoy_cluster_upstream_rq_xx|envoy_cluster_upstream_rq|envoy_cluster_upstream_rq_time_bucket", envoy_cluster_name=~"v1|v2", job="canary"})"#
    );
    let q = cluster_query(ClusterMetrics::Istio, &V, "");
    assert_eq!(
        q,
        r#"sum by (__name__, instance, destination_version, response_code, le) ({__name__=~"istio_requests_total|istio_request_duration_milliseconds_bucket", reporter="source", destination_version=~"v1|v2"})"#
    );
}
