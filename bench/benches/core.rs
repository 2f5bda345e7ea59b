//! Host-side micro-benchmarks of the filter's pure core (criterion): what one
//! request decision, one configuration parse and one prediction binning cost
//! without Envoy or Wasm around them. `make bench` runs them and copies the
//! estimates into its results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use canary_core::predict::Prediction;
use canary_core::split::{arm_for, Salt, Weight};
use canary_core::Plan;
use criterion::{criterion_group, criterion_main, Criterion};

const CONFIG: &str = r#"{"rollout":"recs-v2","epoch":3,"stage":"5pct","salt":"recs-v2-2026-11-22","champion":"v1","challenger":"v2","challenger_weight_bp":500,"key":[{"header":"x-user-id"},{"cookie":"uid"}],"unkeyed":"champion","headers":{"version":"x-model-version","stage":"x-canary-stage","unkeyed":"x-canary-unkeyed"}}"#;

fn with_prediction(from: &str) -> String {
    let extra =
        format!(r#","prediction":{{"from":{from},"bins":{{"numeric":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]}}}}}}"#);
    format!("{}{extra}", &CONFIG[..CONFIG.len() - 1])
}

fn split(c: &mut Criterion) {
    let salt = Salt::new("recs-v2-2026-11-22");
    let weight = Weight::from_bp(500).unwrap();
    let keys: Vec<String> = (0..1024).map(|i| format!("user-{i:06}")).collect();
    let mut i = 0usize;
    c.bench_function("split/bucket_and_arm_for", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let key = black_box(keys[i].as_bytes());
            arm_for(salt.bucket(key), black_box(weight))
        })
    });
}

fn config(c: &mut Criterion) {
    c.bench_function("config/plan_from_json", |b| b.iter(|| Plan::from_json(black_box(CONFIG.as_bytes())).unwrap()));
    let json = with_prediction(r#"{"json_pointer":"/prediction"}"#);
    c.bench_function("config/plan_from_json_with_prediction", |b| {
        b.iter(|| Plan::from_json(black_box(json.as_bytes())).unwrap())
    });
}

fn predict(c: &mut Criterion) {
    let header = Plan::from_json(with_prediction(r#"{"header":"x-prediction"}"#).as_bytes()).unwrap();
    let header = header.prediction.expect("prediction plan");
    let json = Plan::from_json(with_prediction(r#"{"json_pointer":"/prediction"}"#).as_bytes()).unwrap();
    let json = json.prediction.expect("prediction plan");
    let body = canary_bench::bodies::json_body();
    assert_eq!(body.len(), 1024);
    assert_eq!(json.bin_of_json(&body), 4, "0.42 falls in [0.4, 0.5)");
    c.bench_function("predict/bin_number", |b| b.iter(|| header.bin(black_box(&Prediction::Number(0.42)))));
    c.bench_function("predict/bin_of_header", |b| b.iter(|| header.bin_of_header(black_box(Some(&b"0.42"[..])))));
    c.bench_function("predict/bin_of_json_1kib", |b| b.iter(|| json.bin_of_json(black_box(&body))));
}

criterion_group!(benches, split, config, predict);
criterion_main!(benches);
