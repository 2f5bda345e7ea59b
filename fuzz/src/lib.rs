//! The fuzz targets' bodies. Each takes arbitrary bytes and must neither
//! panic nor allocate without bound; `fuzz_targets/*.rs` hand them to
//! libFuzzer, `tests/corpus.rs` replays the corpus and every crash found so
//! far as ordinary tests.

use canary_core::headers::cookie_value;
use canary_core::predict::{Bins, PredictionConfig, PredictionSource};
use canary_core::Plan;

/// The filter's configuration parser and validator (runs in `on_configure`).
pub fn filter_config(data: &[u8]) {
    if let Ok(plan) = Plan::from_json(data) {
        // What validated must lower to a metric table and round-trip.
        let table = canary_core::metrics::MetricTable::new(&plan);
        assert_eq!(table.definitions(&plan).len(), table.len());
    }
}

/// The prediction extractor: response headers and JSON bodies, and the cookie reader.
pub fn prediction(data: &[u8]) {
    let numeric = PredictionConfig {
        from: PredictionSource::JsonPointer("/prediction/0/score".into()),
        max_body_bytes: 4096,
        bins: Bins::Numeric(vec![-1.0, 0.0, 0.5, 1e9]),
    };
    let labels = PredictionConfig {
        from: PredictionSource::JsonPointer("".into()),
        max_body_bytes: 4096,
        bins: Bins::Categorical(vec!["cat".into(), "dog".into()]),
    };
    for config in [numeric, labels] {
        let Ok(plan) = config.validate() else { continue };
        let bin = plan.bin_of_json(data);
        assert!(bin < plan.names.len());
        let bin = plan.bin_of_header(Some(data));
        assert!(bin < plan.names.len());
    }
    let _ = cookie_value(data, b"uid");
}

/// The parser of Envoy's `/stats?format=json` answers.
pub fn envoy_stats(data: &[u8]) {
    let _ = canary_judge::evidence::admin::parse_stats(data, "r", 1);
}

/// The rollout spec parser and validator.
pub fn rollout_spec(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = canary_judge::spec::RolloutSpec::from_yaml(text) {
            // A valid spec yields valid filter configurations for every stage.
            for i in 0..spec.stages.len() {
                let c = spec.filter_config(&spec.stage_name(i), spec.stage_weight(i), 1, false);
                assert!(c.validate().is_ok(), "stage {i} of a valid spec gives an invalid filter configuration");
            }
        }
    }
}

/// The labels intake (JSONL and JSON batches).
pub fn labels(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (records, _) = canary_judge::labels::parse_jsonl(&text);
    let mut book = canary_judge::labels::LabelBook::default();
    let tiers =
        canary_core::predict::SegmentConfig { header: "x-tier".into(), values: vec!["free".into(), "ent".into()] };
    book.add("r", &records, |_, _| true, Some(&tiers));
    if let Ok(batch) = serde_json::from_slice::<Vec<canary_judge::labels::LabelRecord>>(data) {
        book.add("r", &batch, |_, _| true, None);
        let _ = book.evidence("s", "v1", "v2");
    }
}

/// The parser of Prometheus query answers (`/api/v1/query`) and their
/// conversion into per-Envoy samples and a window.
pub fn prometheus(data: &[u8]) {
    use canary_judge::evidence::merge::merge_reads;
    use canary_judge::evidence::prometheus::{parse_vector, reads_from, PromSample};
    use canary_judge::evidence::tracker::ResetTracker;
    let Ok(samples) = parse_vector(data) else { return };
    // Every instance the answer names is up, so that its samples are read.
    let up: Vec<PromSample> = samples
        .iter()
        .filter_map(|s| s.labels.get("instance"))
        .map(|i| PromSample { labels: [("instance".to_string(), i.clone())].into(), value: 1.0 })
        .collect();
    if let Ok(reads) = reads_from("r", 1, &up, &samples, &samples, &samples) {
        let w = merge_reads("r", 1, "r/1", &reads, &mut ResetTracker::default());
        assert!(w.coverage.answered <= w.coverage.endpoints);
    }
}
