use super::*;
use canary_core::config::KeySource;

pub const EXAMPLE: &str = r#"
rollout: recs-v2
champion: v1
challenger: v2
interval: 30s
stages:
  - { weight_percent: 1, min_duration: 1d, min_requests: 1000 }
  - { weight_percent: 5, min_duration: 1d, min_requests: 1000 }
  - { name: half, weight_percent: 50, min_duration: 2d, min_requests: 2000 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 0.5 }
  latency: { latency_tolerance_multiplier: 1.2 }
  prediction: { max_psi: 0.2, on_no_data: ignore }
  timeouts: { timeout_tolerance: 0.2 }
  labels: { min_degradation_tolerance: 0.02, min_labels: 500 }
envoy:
  admin: ["http://127.0.0.1:9901"]
  ecds_dir: /var/run/canary
  wasm: /etc/envoy/canary_filter.wasm
filter:
  key: [{ header: x-user-id }, { cookie: uid }]
alerts:
  webhooks: [{ url: "https://hooks.slack.com/services/x", format: slack }]
"#;

fn with(path: &[&str], value: serde_yaml_ng::Value) -> Result<RolloutSpec, SpecError> {
    edited(EXAMPLE, path, value)
}

/// `base` with the value at `path` set to `value`, parsed.
fn edited(base: &str, path: &[&str], value: serde_yaml_ng::Value) -> Result<RolloutSpec, SpecError> {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(base).unwrap();
    let mut at = &mut doc;
    for (i, key) in path.iter().enumerate() {
        if i + 1 == path.len() {
            at[*key] = value.clone();
        } else {
            at = &mut at[*key];
        }
    }
    RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap())
}

fn field_of(r: Result<RolloutSpec, SpecError>) -> String {
    match r {
        Err(SpecError::Invalid { field, .. }) => field,
        Err(SpecError::Parse { path, .. }) => path,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_example_parses() {
    let spec = RolloutSpec::from_yaml(EXAMPLE).unwrap();
    assert_eq!(spec.stages.len(), 4);
    assert_eq!(spec.stage_name(0), "1pct");
    assert_eq!(spec.stage_name(2), "half");
    assert_eq!(spec.stage_weight(1).bp(), 500);
    assert_eq!(spec.interval, Duration::from_secs(30));
    assert_eq!(spec.stages[0].min_duration, Duration::from_secs(DAY));
    assert_eq!(spec.salt(), "recs-v2");
    assert_eq!(spec.gates.prediction.as_ref().unwrap().on_no_data, NoDataPolicy::Ignore);
    assert_eq!((spec.gates.method, spec.gates.alpha, spec.gates.look_growth), (GateMethod::Anytime, 0.05, 1.5));
    let threshold = with(&["gates", "method"], "threshold".into()).unwrap();
    assert_eq!(threshold.gates.method, GateMethod::Threshold);
    let tuned = with(&["gates", "alpha"], 0.01.into()).unwrap();
    assert_eq!(tuned.gates.schedule(), crate::stats::LookSchedule { alpha: 0.01, growth: 1.5 });
    assert_eq!(spec.filter.key, vec![KeySource::Header("x-user-id".into()), KeySource::Cookie("uid".into())]);
    // What the store writes back reads the same.
    assert_eq!(RolloutSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
}

#[test]
fn default_stages_are_the_documented_schedule() {
    let spec = with(&["stages"], serde_yaml_ng::Value::Null);
    // `stages: null` is a type error; omitting the field gives the default.
    assert!(spec.is_err());
    let text =
        EXAMPLE.split("stages:").next().unwrap().to_string() + "gates:" + EXAMPLE.split("gates:").nth(1).unwrap();
    let spec = RolloutSpec::from_yaml(&text).unwrap();
    let weights: Vec<u16> = (0..spec.stages.len()).map(|i| spec.stage_weight(i).bp()).collect();
    assert_eq!(weights, [100, 500, 2000, 5000, 10_000]);
    let days: Vec<u64> = spec.stages.iter().map(|s| s.min_duration.as_secs() / DAY).collect();
    // Entered on day 1, 2, 3, 5 and 7.
    assert_eq!(days, [1, 1, 2, 2, 0]);
}

#[test]
fn errors_name_the_field() {
    use serde_yaml_ng::Value;
    let cases: Vec<(Vec<&str>, Value, &str)> = vec![
        (vec!["rollout"], "bad name".into(), "rollout"),
        (vec!["challenger"], "v1".into(), "challenger"),
        (vec!["interval"], "soon".into(), "interval"),
        (vec!["colour"], "red".into(), "colour"),
        (
            vec!["gates", "latency", "latency_tolerance_multiplier"],
            0.5.into(),
            "gates.latency.latency_tolerance_multiplier",
        ),
        (vec!["gates", "error_rate", "error_tolerance"], (-1.0).into(), "gates.error_rate.error_tolerance"),
        (vec!["gates", "labels", "min_labels"], 0.into(), "gates.labels.min_labels"),
        (vec!["gates", "prediction", "on_no_data"], "maybe".into(), "gates.prediction.on_no_data"),
        (vec!["gates", "method"], "bayesian".into(), "gates.method"),
        (vec!["gates", "alpha"], 0.5.into(), "gates.alpha"),
        (vec!["gates", "alpha"], 0.0.into(), "gates.alpha"),
        (vec!["gates", "look_growth"], 1.0.into(), "gates.look_growth"),
        (vec!["gates", "look_growth"], "fast".into(), "gates.look_growth"),
        (vec!["envoy", "admin"], Value::Sequence(vec![]), "envoy.admin"),
        (vec!["envoy", "admin"], Value::Sequence(vec!["127.0.0.1:9901".into()]), "envoy.admin[0]"),
        (vec!["server", "listen"], "everywhere".into(), "server.listen"),
        (vec!["envoy", "max_missing_share"], 1.0.into(), "envoy.max_missing_share"),
        (vec!["envoy", "max_missing_share"], (-0.1).into(), "envoy.max_missing_share"),
        (
            vec!["envoy", "prometheus"],
            serde_yaml_ng::from_str("{url: prom:9090, selector: 'job=\"x\"'}").unwrap(),
            "envoy.prometheus.url",
        ),
        (
            vec!["envoy", "prometheus"],
            serde_yaml_ng::from_str("{url: 'http://p:9090', selector: '{job=\"x\"}'}").unwrap(),
            "envoy.prometheus.selector",
        ),
        (
            vec!["envoy", "prometheus"],
            serde_yaml_ng::from_str("{url: 'http://p:9090', selector: ''}").unwrap(),
            "envoy.prometheus.selector",
        ),
        (
            vec!["envoy", "prometheus"],
            serde_yaml_ng::from_str("{url: 'http://p:9090', selector: 'job=\"x\"', timeout: 0s}").unwrap(),
            "envoy.prometheus.timeout",
        ),
        (
            vec!["envoy", "prometheus"],
            serde_yaml_ng::from_str("{url: 'http://p:9090', selector: 'job=\"x\"', query: up}").unwrap(),
            "envoy.prometheus.query",
        ),
        (vec!["alerts", "retry_attempts"], 0.into(), "alerts.retry_attempts"),
        (vec!["alerts", "retry_backoff"], "0s".into(), "alerts.retry_backoff"),
        (vec!["alerts", "retry_backoff"], "1m".into(), "alerts.retry_backoff"),
        (vec!["alerts", "retry_max_backoff"], "1h".into(), "alerts.retry_max_backoff"),
    ];
    for (path, value, field) in cases {
        assert_eq!(field_of(with(&path, value.clone())), field, "{path:?} = {value:?}");
    }
}

#[test]
fn stage_weights_must_rise_to_100() {
    let stages = |ws: &[f64]| {
        serde_yaml_ng::Value::Sequence(
            ws.iter()
                .map(|w| serde_yaml_ng::from_str(&format!("{{weight_percent: {w}, min_requests: 1}}")).unwrap())
                .collect(),
        )
    };
    assert_eq!(field_of(with(&["stages"], stages(&[5.0, 1.0, 100.0]))), "stages[1].weight_percent");
    assert_eq!(field_of(with(&["stages"], stages(&[1.0, 50.0]))), "stages[1].weight_percent");
    assert_eq!(field_of(with(&["stages"], stages(&[0.001, 100.0]))), "stages[0].weight_percent");
    assert_eq!(field_of(with(&["stages"], stages(&[1.0, 101.0]))), "stages[1].weight_percent");
    let err = with(&["stages"], stages(&[1.0, 150.0])).unwrap_err().to_string();
    assert!(err.contains("weight_percent`: 150 must be within 0..=100"), "{err}");
    assert!(!err.contains("basis points"), "{err}");
    assert_eq!(field_of(with(&["stages"], stages(&[]))), "stages");
    assert!(with(&["stages"], stages(&[0.5, 100.0])).is_ok());
}

#[test]
fn gate_segments_read_all_none_or_a_list_and_name_what_is_wrong() {
    let segmented = |segments: &str| {
        let spec = edited(
            EXAMPLE,
            &["filter", "segment"],
            serde_yaml_ng::from_str("{header: x-tier, values: [free, pro]}").unwrap(),
        )
        .unwrap();
        let mut doc = serde_yaml_ng::to_value(&spec).unwrap();
        doc["gates"]["error_rate"]["segments"] = serde_yaml_ng::from_str(segments).unwrap();
        RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap())
    };
    let spec = RolloutSpec::from_yaml(EXAMPLE).unwrap();
    let e = spec.gates.error_rate.as_ref().unwrap();
    assert_eq!(e.segments, SegmentSelection::None, "default: today's specs keep their meaning");
    assert_eq!(spec.gates.segment_min_responses, 100);
    assert_eq!(spec.gates.on_segment_too_small, SegmentTooSmall::Ignore);
    let all = segmented("all").unwrap();
    let sel = &all.gates.error_rate.as_ref().unwrap().segments;
    assert_eq!(sel, &SegmentSelection::All);
    assert_eq!(sel.names(all.filter.segment.as_ref()), ["free", "pro", "other"]);
    let listed = segmented("[pro, other]").unwrap();
    assert_eq!(listed.gates.error_rate.unwrap().segments, SegmentSelection::Only(vec!["pro".into(), "other".into()]));
    assert_eq!(segmented("none").unwrap().gates.error_rate.unwrap().segments, SegmentSelection::None);
    // Round trip: what serializes parses back the same.
    let back = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&all).unwrap()).unwrap();
    assert_eq!(back, all);
    assert_eq!(field_of(segmented("[gold]")), "gates.error_rate.segments[0]");
    let err = segmented("[pro, gold]").unwrap_err().to_string();
    assert!(err.contains("`gold` is not a segment the filter counts: one of `free`, `pro` or `other`"), "{err}");
    assert_eq!(field_of(segmented("[pro, pro]")), "gates.error_rate.segments[1]");
    assert_eq!(field_of(segmented("[]")), "gates.error_rate.segments");
    let err = segmented("some").unwrap_err().to_string();
    assert!(err.contains("expected `all`, `none` or a list of segment names"), "{err}");
    // Without filter.segment there is nothing to split by.
    assert_eq!(
        field_of(with(
            &["gates", "timeouts"],
            serde_yaml_ng::from_str("{timeout_tolerance: 1, segments: all}").unwrap()
        )),
        "gates.timeouts.segments"
    );
    assert_eq!(
        field_of(with(
            &["gates", "labels"],
            serde_yaml_ng::from_str("{min_degradation_tolerance: 0.02, min_labels: 10, segments: all}").unwrap()
        )),
        "gates.labels.segments"
    );
    // The labels gate takes `segments` like the others.
    let mut doc = serde_yaml_ng::to_value(&all).unwrap();
    doc["gates"]["labels"] =
        serde_yaml_ng::from_str("{min_degradation_tolerance: 0.02, min_labels: 10, segments: [pro]}").unwrap();
    let labelled = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    assert_eq!(labelled.gates.labels.unwrap().segments, SegmentSelection::Only(vec!["pro".into()]));
    doc["gates"]["labels"]["segments"] = serde_yaml_ng::from_str("[gold]").unwrap();
    let bad = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap());
    assert_eq!(field_of(bad), "gates.labels.segments[0]");
    assert_eq!(field_of(with(&["gates", "segment_min_responses"], 0.into())), "gates.segment_min_responses");
    assert_eq!(field_of(with(&["gates", "on_segment_too_small"], "hold".into())), "gates.on_segment_too_small");
    let block = with(&["gates", "on_segment_too_small"], "block".into()).unwrap();
    assert_eq!(block.gates.on_segment_too_small, SegmentTooSmall::Block);
}

#[test]
fn a_prometheus_source_needs_no_admin_list() {
    let prometheus = serde_yaml_ng::from_str("{url: 'http://p:9090', selector: 'job=\"canary\"'}").unwrap();
    let spec = with(&["envoy", "prometheus"], prometheus).unwrap();
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::to_value(&spec).unwrap();
    value["envoy"]["admin"] = serde_yaml_ng::Value::Sequence(vec![]);
    let spec = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&value).unwrap()).unwrap();
    let p = spec.envoy.prometheus.unwrap();
    assert_eq!((p.url.as_str(), p.timeout), ("http://p:9090", Duration::from_secs(2)));
    assert_eq!(spec.envoy.max_missing_share, 0.0, "default: every Envoy must answer");
}

#[test]
fn sinks_list_file_configmap_and_wasmplugin_and_ecds_dir_stays_a_file_sink() {
    let spec = RolloutSpec::from_yaml(EXAMPLE).unwrap();
    assert_eq!(spec.sinks(), [SinkSpec::File { dir: "/var/run/canary".into() }]);
    let listed = with(
        &["envoy", "sinks"],
        serde_yaml_ng::from_str(
            "[{file: {dir: /b}}, {config_map: {namespace: shop, name: canary-ecds}}, \
             {wasm_plugin: {namespace: istio-system, name: canary}}]",
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        listed.sinks(),
        [
            SinkSpec::File { dir: "/var/run/canary".into() },
            SinkSpec::File { dir: "/b".into() },
            SinkSpec::ConfigMap { namespace: "shop".into(), name: "canary-ecds".into(), key: "canary.json".into() },
            SinkSpec::WasmPlugin { namespace: "istio-system".into(), name: "canary".into() },
        ]
    );
    assert_eq!(RolloutSpec::from_yaml(&listed.to_yaml()).unwrap(), listed, "round-trips through the stored copy");
    assert_eq!(listed.envoy.sink_retry, RetrySpec::default());
}

#[test]
fn sink_errors_name_the_field() {
    use serde_yaml_ng::Value;
    let v = |text: &str| -> Value { serde_yaml_ng::from_str(text).unwrap() };
    let cases: Vec<(Vec<&str>, Value, &str)> = vec![
        (
            vec!["envoy", "sinks"],
            v("[{config_map: {namespace: Shop, name: x}}]"),
            "envoy.sinks[0].config_map.namespace",
        ),
        (vec!["envoy", "sinks"], v("[{wasm_plugin: {namespace: a, name: -x}}]"), "envoy.sinks[0].wasm_plugin.name"),
        (
            vec!["envoy", "sinks"],
            v("[{config_map: {namespace: a, name: b, key: 'a/b'}}]"),
            "envoy.sinks[0].config_map.key",
        ),
        (vec!["envoy", "sinks"], v("[{s3: {bucket: x}}]"), "envoy.sinks[0]"),
        (vec!["envoy", "sink_retry", "attempts"], 0.into(), "envoy.sink_retry.attempts"),
        (vec!["envoy", "sink_retry", "backoff"], "0s".into(), "envoy.sink_retry.backoff"),
    ];
    for (path, value, field) in cases {
        let got = field_of(with(&path, value.clone()));
        assert!(got.starts_with(field), "{path:?} = {value:?}: {got}");
    }
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(EXAMPLE).unwrap();
    doc["envoy"].as_mapping_mut().unwrap().remove("ecds_dir");
    let err = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap()).unwrap_err();
    assert!(matches!(&err, SpecError::Invalid { field, .. } if field == "envoy.sinks"), "{err}");
}

#[test]
fn no_gate_is_refused() {
    assert_eq!(field_of(with(&["gates"], serde_yaml_ng::from_str("{}").unwrap())), "gates");
}

#[test]
fn filter_config_follows_the_stage() {
    let spec = RolloutSpec::from_yaml(EXAMPLE).unwrap();
    let c = spec.filter_config(&spec.stage_name(1), spec.stage_weight(1), 7, false);
    assert_eq!((c.stage.as_str(), c.challenger_weight_bp.bp(), c.epoch), ("5pct", 500, 7));
    assert!(c.validate().is_ok());
}

const SHADOW_SPEC: &str = r#"
rollout: recs-v3
champion: v1
challenger: v2
interval: 1s
stages:
  - { shadow: true, min_duration: 1h, min_requests: 500 }
  - { weight_percent: 5, min_duration: 1h, min_requests: 500 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 0.5 }
  prediction: { max_psi: 0.2, min_predictions: 300 }
  shadow: { min_agreement: 0.9, error_tolerance: 1.0, latency_tolerance_multiplier: 1.5 }
envoy: { admin: ["http://127.0.0.1:9901"], ecds_dir: /x, wasm: /y.wasm }
filter:
  prediction:
    from: { header: x-prediction }
    bins: { numeric: [0.25, 0.5, 0.75] }
  segment: { header: x-tier, values: [free, pro] }
  shadow: { timeout: 250ms, sample_percent: 50 }
"#;

fn shadow_with(path: &[&str], value: serde_yaml_ng::Value) -> Result<RolloutSpec, SpecError> {
    edited(SHADOW_SPEC, path, value)
}

#[test]
fn a_shadow_stage_gets_the_shadow_configuration_and_no_other_stage_does() {
    let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
    assert_eq!((spec.stage_name(0), spec.stage_weight(0)), ("shadow".to_string(), Weight::ZERO));
    assert!(spec.is_shadow_stage(0) && !spec.is_shadow_stage(1) && !spec.is_shadow_stage(9));
    let c = spec.filter_config(&spec.stage_name(0), spec.stage_weight(0), 1, true);
    assert_eq!(
        c.shadow,
        Some(ShadowConfig {
            cluster: "v2".into(),
            sample_bp: Weight::from_bp(5000).unwrap(),
            timeout_ms: 250,
            max_body_bytes: 64 * 1024,
            max_in_flight: 1000,
        })
    );
    assert!(c.validate().is_ok());
    for i in 1..3 {
        let c = spec.filter_config(&spec.stage_name(i), spec.stage_weight(i), 1, spec.is_shadow_stage(i));
        assert_eq!(c.shadow, None, "stage {i}");
    }
    assert_eq!(spec.gates.prediction.as_ref().unwrap().min_predictions, 300);
    assert_eq!(RolloutSpec::from_yaml(&spec.to_yaml()).unwrap(), spec, "round-trips through the stored copy");
}

#[test]
fn prediction_and_segment_pass_through_to_every_stage() {
    use canary_core::predict::{Bins, PredictionSource};
    let spec = RolloutSpec::from_yaml(SHADOW_SPEC).unwrap();
    for i in 0..spec.stages.len() {
        let c = spec.filter_config(&spec.stage_name(i), spec.stage_weight(i), 3, spec.is_shadow_stage(i));
        let p = c.prediction.as_ref().unwrap();
        assert_eq!(p.from, PredictionSource::Header("x-prediction".into()));
        assert_eq!(p.bins, Bins::Numeric(vec![0.25, 0.5, 0.75]));
        assert_eq!(c.segment.as_ref().unwrap().values, ["free", "pro"]);
        let plan = c.validate().unwrap();
        assert_eq!(plan.prediction.unwrap().names, ["b0", "b1", "b2", "b3", "unparsed"]);
    }
    // Categorical bins and a JSON pointer, as YAML.
    let text = SHADOW_SPEC.replace(
        "    from: { header: x-prediction }\n    bins: { numeric: [0.25, 0.5, 0.75] }",
        "    from: { json_pointer: /label }\n    bins: { categorical: [cat, dog] }\n    max_body_bytes: 1024",
    );
    let spec = RolloutSpec::from_yaml(&text).unwrap();
    let p = spec.filter.prediction.clone().unwrap();
    assert_eq!(
        (p.from, p.bins, p.max_body_bytes),
        (PredictionSource::JsonPointer("/label".into()), Bins::Categorical(vec!["cat".into(), "dog".into()]), 1024)
    );
    assert_eq!(RolloutSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
}

#[test]
fn shadow_prediction_and_segment_errors_name_the_field() {
    use serde_yaml_ng::Value;
    let stage = |text: &str| -> Value { serde_yaml_ng::from_str(text).unwrap() };
    let cases: Vec<(Vec<&str>, Value, &str)> = vec![
        (
            vec!["stages"],
            Value::Sequence(vec![
                stage("{weight_percent: 5}"),
                stage("{shadow: true}"),
                stage("{weight_percent: 100}"),
            ]),
            "stages[1].shadow",
        ),
        (
            vec!["stages"],
            Value::Sequence(vec![stage("{shadow: true, weight_percent: 5}"), stage("{weight_percent: 100}")]),
            "stages[0].weight_percent",
        ),
        (
            vec!["stages"],
            Value::Sequence(vec![
                stage("{shadow: true}"),
                stage("{weight_percent: 0}"),
                stage("{weight_percent: 100}"),
            ]),
            "stages[1].weight_percent",
        ),
        (
            vec!["stages"],
            Value::Sequence(vec![stage("{shadow: true}"), stage("{min_requests: 5}"), stage("{weight_percent: 100}")]),
            "stages[1].weight_percent",
        ),
        (
            vec!["stages"],
            Value::Sequence(vec![stage("{weight_percent: 5}"), stage("{weight_percent: 100}")]),
            "gates.shadow",
        ),
        (vec!["gates", "shadow"], Value::Null, "gates.shadow"),
        (vec!["gates", "shadow", "min_agreement"], 1.5.into(), "gates.shadow.min_agreement"),
        (vec!["gates", "shadow", "error_tolerance"], (-1.0).into(), "gates.shadow.error_tolerance"),
        (
            vec!["gates", "shadow", "latency_tolerance_multiplier"],
            0.9.into(),
            "gates.shadow.latency_tolerance_multiplier",
        ),
        (vec!["gates", "shadow", "colour"], "red".into(), "gates.shadow.colour"),
        (vec!["filter", "shadow", "timeout"], "0s".into(), "filter.shadow.timeout"),
        (vec!["filter", "shadow", "timeout"], "2m".into(), "filter.shadow.timeout"),
        (vec!["filter", "shadow", "sample_percent"], 0.into(), "filter.shadow.sample_percent"),
        (vec!["filter", "shadow", "sample_percent"], 100.5.into(), "filter.shadow.sample_percent"),
        (vec!["filter", "shadow", "cluster"], "".into(), "filter.shadow.cluster"),
        (vec!["filter", "shadow", "max_in_flight"], 0.into(), "filter.shadow.max_in_flight"),
        (vec!["filter", "prediction", "bins"], stage("{numeric: [0.5, 0.25]}"), "filter.prediction.bins.numeric[1]"),
        (vec!["filter", "prediction", "from"], stage("{header: 'bad header'}"), "filter.prediction.from.header"),
        (vec!["filter", "prediction", "max_body_bytes"], 0.into(), "filter.prediction.max_body_bytes"),
        (vec!["filter", "segment", "values"], Value::Sequence(vec!["other".into()]), "filter.segment.values[0]"),
        (vec!["filter", "segment", "header"], "x-model-version".into(), "filter.segment.header"),
        (vec!["filter", "prediction"], Value::Null, "filter.prediction"),
    ];
    for (path, value, field) in cases {
        assert_eq!(field_of(shadow_with(&path, value.clone())), field, "{path:?} = {value:?}");
    }
}

#[test]
fn the_shadow_gate_alone_is_not_enough() {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(SHADOW_SPEC).unwrap();
    let gates = doc["gates"].as_mapping_mut().unwrap();
    gates.remove("error_rate");
    gates.remove("prediction");
    let err = RolloutSpec::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap()).unwrap_err();
    assert!(err.to_string().contains("needs a gate over live traffic too"), "{err}");
}

#[test]
fn a_prediction_gate_that_ignores_missing_data_needs_no_prediction_config() {
    // The pre-existing shape of specs (and tests): allowed, and never blocks.
    let spec = with(&["filter"], serde_yaml_ng::from_str("{key: [{header: x-user-id}]}").unwrap()).unwrap();
    assert!(spec.filter.prediction.is_none());
    assert_eq!(spec.gates.prediction.unwrap().on_no_data, NoDataPolicy::Ignore);
}
