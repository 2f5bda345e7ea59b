//! The configuration examples people copy from compile: the README's rollout
//! spec and plugin configuration, and the demo's spec template.

use canary_core::FilterConfig;
use canary_judge::spec::RolloutSpec;
use canary_tests::{render_template, root};

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// The fenced block of `lang` that contains `marker`.
fn block(text: &str, lang: &str, marker: &str) -> String {
    let fence = format!("```{lang}\n");
    text.split(&fence)
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or(""))
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("no ```{lang} block with {marker:?} in README.md"))
        .to_string()
}

#[test]
fn the_readme_rollout_spec_is_valid() {
    let spec = RolloutSpec::from_yaml(&block(&readme(), "yaml", "rollout: recs-v2")).unwrap();
    assert_eq!(spec.stages.len(), 5);
    assert!(spec.filter.prediction.is_some());
}

#[test]
fn the_readme_plugin_configuration_is_valid() {
    let config = FilterConfig::from_json(block(&readme(), "json", "\"challenger_weight_bp\": 500").as_bytes()).unwrap();
    config.validate().unwrap();
}

#[test]
fn the_demo_spec_template_is_valid() {
    let text = render_template(
        &root().join("controller/examples/rollout.yaml"),
        &[
            ("STAGE_DURATION", "20s".into()),
            ("ADMIN", "http://127.0.0.1:9901".into()),
            ("ECDS_DIR", "/tmp/ecds".into()),
            ("WASM", "/tmp/canary_filter.wasm".into()),
            ("WEBHOOK", "http://127.0.0.1:1/hook".into()),
        ],
    )
    .unwrap();
    RolloutSpec::from_yaml(&text).unwrap();
}
