use super::*;
use crate::evidence::admin::{bucket_series, counter_series, ReadError};
use crate::evidence::sample;

/// The real answer of Envoy 1.40 to the admin source's query in cluster mode
/// (rollout `cl` epoch 1, versions v1 and v2; backends failing 2 % with 500
/// and 2 % with 504), captured by `tests/integration/cluster_counts.rs`.
const REAL: &str = include_str!("fixtures/admin_stats.json");

const V: [&str; 2] = ["v1", "v2"];

#[test]
fn the_real_answer_reads_as_cumulative_classes_504s_and_latency_in_microseconds() {
    let s = parse_cluster_stats(REAL.as_bytes(), "cl", &V).unwrap();
    assert_eq!((s.epoch, s.uptime_s, s.active_version.as_deref()), (CUMULATIVE_EPOCH, Some(6), None));
    let c = |v: &str, counter| s.series.get(&counter_series("cl", CUMULATIVE_EPOCH, v, counter)).copied();
    assert_eq!(
        (c("v1", Counter::Rq2xx), c("v1", Counter::Rq5xx), c("v1", Counter::RqTimeout)),
        (Some(5911), Some(253), Some(136))
    );
    assert_eq!(
        (c("v2", Counter::Rq2xx), c("v2", Counter::Rq5xx), c("v2", Counter::RqTimeout)),
        (Some(2477), Some(105), Some(56))
    );
    // The filter's own counters are not read here.
    assert_eq!(c("v1", Counter::RqTotal), None);
    // ms buckets → µs: [5, 5.1) ms is [5000, 5100) µs.
    let key = bucket_series("cl", CUMULATIVE_EPOCH, "v1", Histogram::LatencyUs, 5000.0, 100.0);
    assert_eq!(s.series.get(&key), Some(&1701));
    let mut w = Window { epoch: 1, ..Window::default() };
    let mut counts = ClusterCounts::default();
    // A first read is only a baseline …
    let read = |s: &EndpointSample| [EndpointRead { endpoint: "a".into(), outcome: Ok(s.clone()) }];
    counts.apply(&read(&sample("cl", 0, Some(1), &[])), &mut w);
    assert_eq!(w.version("v1").answered(), 0);
    // … then everything since it counts.
    counts.apply(&read(&s), &mut w);
    let v1 = w.version("v1");
    assert_eq!((v1.answered(), v1.errors(), v1.timeouts), (5911 + 253, 253, 136));
    assert_eq!(v1.latency_us.count(), 6164, "one sample per response (rq_completed)");
    let p50 = v1.latency_us.quantile(0.5).unwrap();
    assert!((5000.0..6000.0).contains(&p50), "{p50}");
}

#[test]
fn the_filters_stats_in_the_same_answer_are_not_read_and_others_are_ignored() {
    assert!(pick("cluster.v3.upstream_rq_2xx", &V).is_none());
    assert!(pick("cluster.v1.upstream_rq_total", &V).is_none());
    assert!(pick("cluster.v1.upstream_rq_200", &V).is_none());
    assert!(pick("wasmcustom.canary.rollout.cl.epoch.1.version.v1.rq_total", &V).is_none());
    assert_eq!(stats_filter(&V), r"^cluster\.(v1|v2)\.upstream_rq_([1-5]xx|504|time)$");
}

fn cum(uptime: u64, ok: u64, errors: u64) -> EndpointSample {
    let k = |c| counter_series("r", CUMULATIVE_EPOCH, "v1", c);
    sample("r", CUMULATIVE_EPOCH, Some(uptime), &[(&k(Counter::Rq2xx), ok), (&k(Counter::Rq5xx), errors)])
}

fn reads(list: &[(&str, Option<EndpointSample>)]) -> Vec<EndpointRead> {
    list.iter()
        .map(|(e, s)| EndpointRead { endpoint: e.to_string(), outcome: s.clone().ok_or(ReadError::ScrapeFailed) })
        .collect()
}

fn window(counts: &mut ClusterCounts, epoch: u64, r: &[EndpointRead]) -> (u64, u64) {
    let mut w = Window { epoch, ..Window::default() };
    w.versions.insert("v1".into(), VersionWindow { requests: 7, ..VersionWindow::default() });
    counts.apply(r, &mut w);
    let v = w.version("v1");
    assert_eq!(v.requests, 7, "the filter's own counts stay");
    (v.responses[1], v.errors())
}

#[test]
fn stages_tile_restarts_carry_and_failed_endpoints_keep_their_counts() {
    let mut c = ClusterCounts::default();
    // Epoch 1: baseline at the first read (100 served before the rollout).
    assert_eq!(window(&mut c, 1, &reads(&[("a", Some(cum(10, 100, 0))), ("b", Some(cum(10, 50, 0)))])), (0, 0));
    assert_eq!(window(&mut c, 1, &reads(&[("a", Some(cum(11, 130, 2))), ("b", Some(cum(11, 60, 0)))])), (40, 2));
    // Epoch 2 starts from epoch 1's last read: nothing lost, nothing twice.
    assert_eq!(window(&mut c, 2, &reads(&[("a", Some(cum(12, 140, 2))), ("b", Some(cum(12, 60, 1)))])), (10, 1));
    // a restarts (uptime and counters down): its earlier counts carry over.
    assert_eq!(window(&mut c, 2, &reads(&[("a", Some(cum(1, 5, 0))), ("b", Some(cum(13, 61, 1)))])), (16, 1));
    assert_eq!(c.resets("a"), 1);
    // b fails a read: what it counted in the stage stays.
    assert_eq!(window(&mut c, 2, &reads(&[("a", Some(cum(2, 8, 0))), ("b", None)])), (19, 1));
    // A new endpoint is baselined at its first read.
    assert_eq!(
        window(&mut c, 2, &reads(&[("a", Some(cum(3, 8, 0))), ("b", None), ("c", Some(cum(99, 500, 9)))])),
        (19, 1)
    );
}

#[test]
fn the_spec_option_defaults_to_filter_reaches_the_filter_and_refuses_prometheus() {
    use crate::spec::{RolloutSpec, SpecError};
    let base = "rollout: r\nchampion: v1\nchallenger: v2\nstages:\n  - { weight_percent: 10 }\n  - { weight_percent: 100 }\ngates:\n  error_rate: { error_tolerance: 1 }\nenvoy:\n  admin: [\"http://127.0.0.1:9901\"]\n  wasm: /x.wasm\n  ecds_dir: /tmp/e\n";
    let spec = RolloutSpec::from_yaml(base).unwrap();
    assert_eq!(spec.envoy.counts, canary_core::Counts::Filter);
    assert_eq!(spec.filter_config("s", canary_core::Weight::ZERO, 1, false).counts, canary_core::Counts::Filter);
    let spec = RolloutSpec::from_yaml(&format!("{base}  counts: cluster\n")).unwrap();
    assert_eq!(spec.filter_config("s", canary_core::Weight::ZERO, 1, false).counts, canary_core::Counts::Cluster);
    let field = |r: Result<RolloutSpec, SpecError>| match r {
        Err(SpecError::Invalid { field, .. }) => field,
        Err(SpecError::Parse { path, .. }) => path,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(field(RolloutSpec::from_yaml(&format!("{base}  counts: envoy\n"))), "envoy.counts");
    let prom = format!("{base}  counts: cluster\n  prometheus: {{ url: 'http://p:9090', selector: 'job=\"c\"' }}\n");
    assert_eq!(field(RolloutSpec::from_yaml(&prom)), "envoy.counts");
}
