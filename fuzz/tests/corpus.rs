//! Replays every corpus input and every crash ever found (fuzz/regressions)
//! through the fuzz targets, on stable Rust, in `make test`.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            f(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no corpus for {target}: fuzz/corpus/{target} must hold the seeds");
}

#[test]
fn filter_config_corpus() {
    replay("filter_config", canary_fuzz::filter_config);
}

#[test]
fn prediction_corpus() {
    replay("prediction", canary_fuzz::prediction);
}

#[test]
fn envoy_stats_corpus() {
    replay("envoy_stats", canary_fuzz::envoy_stats);
}

#[test]
fn rollout_spec_corpus() {
    replay("rollout_spec", canary_fuzz::rollout_spec);
}

#[test]
fn labels_corpus() {
    replay("labels", canary_fuzz::labels);
}

#[test]
fn prometheus_corpus() {
    replay("prometheus", canary_fuzz::prometheus);
}
