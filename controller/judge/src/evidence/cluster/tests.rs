use super::*;
use crate::evidence::admin::{bucket_series, counter_series, ReadError};
use crate::evidence::sample;
use crate::evidence::tracker::SHARDS;

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
fn the_spec_option_defaults_to_filter_reaches_the_filter_and_reads_prometheus_by_envoys_or_istios_names() {
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
    // Over Prometheus too, under Envoy's names (the default) or Istio's.
    let prom = |counts: &str, extra: &str| {
        format!("{base}  counts: {counts}\n  prometheus: {{ url: 'http://p:9090', selector: 'job=\"c\"'{extra} }}\n")
    };
    let spec = RolloutSpec::from_yaml(&prom("cluster", "")).unwrap();
    assert_eq!(spec.envoy.prometheus.unwrap().cluster_metrics, prometheus::ClusterMetrics::Envoy);
    let spec = RolloutSpec::from_yaml(&prom("cluster", ", cluster_metrics: istio")).unwrap();
    assert_eq!(spec.envoy.prometheus.as_ref().unwrap().cluster_metrics, prometheus::ClusterMetrics::Istio);
    assert!(spec.to_yaml().contains("cluster_metrics: istio"), "{}", spec.to_yaml());
    // Names that are never read, or none that exist, are refused with the field.
    assert_eq!(
        field(RolloutSpec::from_yaml(&prom("filter", ", cluster_metrics: istio"))),
        "envoy.prometheus.cluster_metrics"
    );
    assert_eq!(
        field(RolloutSpec::from_yaml(&prom("cluster", ", cluster_metrics: linkerd"))),
        "envoy.prometheus.cluster_metrics"
    );
}

/// Reads of endpoints `a` and `b` at epoch `epoch`: cumulative (2xx, 5xx) each, `None` a failed read.
fn both(a: Option<(u64, u64, u64)>, b: Option<(u64, u64, u64)>) -> Vec<EndpointRead> {
    reads(&[("a", a.map(|(u, ok, e)| cum(u, ok, e))), ("b", b.map(|(u, ok, e)| cum(u, ok, e)))])
}

/// `counts` saved (every shard, as a store does over successive saves) and read back.
fn saved_and_restored(counts: &mut ClusterCounts) -> ClusterCounts {
    let bases: Vec<BaselineShard> = (0..SHARDS)
        .map(|i| serde_json::from_str(&serde_json::to_string(&counts.baseline_shard(i)).unwrap()).unwrap())
        .collect();
    let shards: Vec<crate::evidence::tracker::TrackerShard> = (0..SHARDS)
        .map(|i| serde_json::from_str(&serde_json::to_string(&counts.tracker().shard(i)).unwrap()).unwrap())
        .collect();
    ClusterCounts::restore(ResetTracker::from_shards(shards).unwrap(), bases).unwrap()
}

#[test]
fn a_controller_restart_mid_stage_keeps_the_stages_window_whole() {
    // The same reads, with and without a restart between the 3rd and 4th read of epoch 2.
    let script: Vec<(u64, Vec<EndpointRead>)> = vec![
        (1, both(Some((10, 100, 0)), Some((10, 50, 0)))),
        (1, both(Some((11, 130, 2)), Some((11, 60, 0)))),
        (2, both(Some((12, 140, 2)), Some((12, 60, 1)))),
        (2, both(Some((13, 170, 3)), Some((13, 75, 1)))),
        (2, both(Some((14, 190, 3)), None)),
        // After the restart point: a's Envoy restarts too, b comes back.
        (2, both(Some((1, 4, 1)), Some((15, 90, 2)))),
        (2, both(Some((2, 9, 1)), Some((16, 95, 2)))),
        (3, both(Some((3, 12, 1)), Some((17, 99, 2)))),
        (3, both(Some((4, 20, 2)), Some((18, 99, 2)))),
    ];
    let mut kept = ClusterCounts::default();
    let want: Vec<(u64, u64)> = script.iter().map(|(e, r)| window(&mut kept, *e, r)).collect();
    let mut c = ClusterCounts::default();
    let mut forgot = None;
    let mut got = vec![];
    for (i, (e, r)) in script.iter().enumerate() {
        if i == 5 {
            // Without its baselines, the restarted controller starts the stage over.
            forgot = Some(ClusterCounts::restore(saved_and_restored(&mut c).tracker().clone(), []).unwrap());
            c = saved_and_restored(&mut c);
        }
        got.push(window(&mut c, *e, r));
    }
    assert_eq!(got, want);
    // Stage 2 after the restart: a (carried 190 + 9 now) and b (95) since
    // stage 1's last read (130, 60): 69 + 35 2xx, (3 + 1 − 2) + 2 5xx.
    assert_eq!(want[6], (104, 4), "{want:?}");
    let mut forgot = forgot.unwrap();
    window(&mut forgot, 2, &script[5].1);
    assert_eq!(window(&mut forgot, 2, &script[6].1), (5 + 5, 0), "the counts since the restart only");
}

#[test]
fn a_restart_between_the_deciding_read_and_the_next_stage_loses_evidence_never_misplaces_it() {
    let mut c = ClusterCounts::default();
    window(&mut c, 1, &both(Some((10, 100, 0)), Some((10, 50, 0))));
    // The tracker is saved here (as its rotation may leave it) …
    let stale = saved_and_restored(&mut c);
    // … then the deciding read of stage 1 (in memory only), and a restart.
    window(&mut c, 1, &both(Some((11, 130, 2)), Some((11, 60, 0))));
    let mut c = ClusterCounts::restore(stale.tracker().clone(), (0..SHARDS).map(|i| c.baseline_shard(i))).unwrap();
    // Stage 2 starts at its first read after the restart, not at the stale values (130 − 100 is stage 1's).
    assert_eq!(window(&mut c, 2, &both(Some((12, 140, 2)), Some((12, 60, 1)))), (0, 0));
    assert_eq!(window(&mut c, 2, &both(Some((13, 150, 3)), Some((13, 61, 1)))), (11, 1));
}

#[test]
fn saved_baselines_are_compact_and_written_only_when_they_change() {
    // Envoys with two versions of 3 counters and 20 latency buckets each.
    let series: Vec<String> = ["v1", "v2"]
        .iter()
        .flat_map(|v| {
            let counters = [Counter::Rq2xx, Counter::Rq5xx, Counter::RqTimeout]
                .map(|c| counter_series("r", CUMULATIVE_EPOCH, v, c));
            let buckets = (0..20).map(move |i| {
                crate::evidence::admin::bucket_series("r", 0, v, Histogram::LatencyUs, i as f64 * 1000.0, 1000.0)
            });
            counters.into_iter().chain(buckets)
        })
        .collect();
    let read = |n: usize, round: u64| -> Vec<EndpointRead> {
        (0..n)
            .map(|i| {
                let values: Vec<(&str, u64)> = series
                    .iter()
                    .enumerate()
                    .map(|(j, k)| (k.as_str(), 1_000_000 + round * 1000 + (i + j) as u64))
                    .collect();
                EndpointRead {
                    endpoint: format!("http://10.{}.{}.1:9901", i / 256, i % 256),
                    outcome: Ok(sample("r", 0, Some(100 + round), &values)),
                }
            })
            .collect()
    };
    // (baseline bytes, tracker bytes) written per save over `rounds` reads of `n` Envoys, stage 2 from read 18.
    let saves = |n: usize, rounds: u64| {
        let mut c = ClusterCounts::default();
        c.tracker_mut().must_save_all();
        let mut bytes_per_save = vec![];
        for round in 0..rounds {
            let epoch = if round < 18 { 1 } else { 2 };
            let mut w = Window { epoch, ..Window::default() };
            c.apply(&read(n, round), &mut w);
            let due = c.take_baselines_to_save();
            let bases: usize = due.iter().map(|i| serde_json::to_vec(&c.baseline_shard(*i)).unwrap().len()).sum();
            let due = c.tracker_mut().take_shards_to_save();
            let tracker: usize = due.iter().map(|i| serde_json::to_vec(&c.tracker().shard(*i)).unwrap().len()).sum();
            bytes_per_save.push((bases, tracker));
        }
        bytes_per_save
    };
    let bytes_per_save = saves(300, 36);
    // Every baseline shard is written once after a stage change, one a save; then none.
    let written = |from: usize, to: usize| bytes_per_save[from..to].iter().filter(|(b, _)| *b > 0).count();
    assert_eq!((written(0, 16), written(16, 18)), (16, 0), "{bytes_per_save:?}");
    assert_eq!((written(18, 34), written(34, 36)), (16, 0), "{bytes_per_save:?}");
    // At 10 000 Envoys, after the first save (the whole tracker, as a
    // controller with none saved yet does), at most 1 MB a save: one
    // baseline shard (a stage change is being written) and one tracker shard.
    let bytes_per_save = saves(10_000, 2);
    let worst = bytes_per_save[1].0 + bytes_per_save[1].1;
    assert!(bytes_per_save[1].0 > 0, "{bytes_per_save:?}");
    assert!(worst <= 1_000_000, "{worst} bytes: {bytes_per_save:?}");
    println!("bytes written (baselines, tracker) per save at 10 000 Envoys, worst after the first: {worst}: {bytes_per_save:?}");
}
