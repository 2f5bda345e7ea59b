//! Reports from a real end-to-end rollout: written when each stage ends,
//! valid against controller/report.schema.json, and rendered by headless
//! Chromium without console errors into a non-blank page; the same rollout's
//! decision log valid against controller/decisions.schema.json.

use std::time::Duration;

use canary_judge::report::unreadable_numbers;
use canary_tests::{canary, chromium_screenshot, png_colours, rollout_spec, root, state, Daemon, Load, Rig};

/// Sequential gates (the default) sized as in `tests/integration/controller.rs`: a first
/// look at 300 responses decides an equal challenger, latency at the median.
const GATES: &str = "  error_rate: { error_tolerance: 2 }\n  latency: { latency_tolerance_multiplier: 2, quantile: 0.5 }\n  timeouts: { timeout_tolerance: 2 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_rollout_writes_reports_that_match_the_schema_and_render_in_chromium() {
    let rig = Rig::start().await.unwrap();
    for b in [&rig.champion, &rig.challenger] {
        b.control(serde_json::json!({"latency_ms": 5.0, "latency_sigma": 0.1})).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let spec = rollout_spec("reported", &rig.envoy, "1s", 300, GATES, "");
    let load = Load::start(rig.envoy.url("/predict"), 48, 20_000, Duration::ZERO);
    let mut daemon = Daemon::start(&state_dir, Some(&spec)).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(180)).await.unwrap();
    load.stop().await;
    assert!(status.success(), "{}", daemon.output());
    let phase = state(&state_dir)["phase"].as_str().unwrap_or("").to_string();
    assert!(phase == "promoted" || phase == "rolled_back", "{phase}");

    // Written by the controller as stages ended: one per stage, and the rollout's.
    let reports = state_dir.join("reports");
    let mut json: Vec<_> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    json.sort();
    assert!(json.len() >= 2, "{json:?}");
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("controller/report.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for path in &json {
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let errors: Vec<String> =
            validator.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{} does not match the schema: {errors:?}", path.display());
    }
    // The schema is not vacuous: a broken document fails it.
    let mut broken: serde_json::Value = serde_json::from_slice(&std::fs::read(&json[0]).unwrap()).unwrap();
    broken["inputs"]["spec_sha256"] = "not a hash".into();
    assert!(!validator.is_valid(&broken));

    // Every line of the decision log the same rollout wrote matches its
    // schema and names its layout.
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("controller/decisions.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let log = std::fs::read_to_string(state_dir.join("decisions.jsonl")).unwrap();
    assert!(log.lines().count() >= 2, "{log}");
    for (i, line) in log.lines().enumerate() {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(doc["schema"], "canary.decision/v1", "line {}", i + 1);
        let errors: Vec<String> =
            validator.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "decisions.jsonl line {} does not match the schema: {errors:?}", i + 1);
    }
    // Not vacuous either: a line from a newer layout, or with a field the
    // schema does not know, fails it.
    let mut broken: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    broken["schema"] = "canary.decision/v2".into();
    assert!(!validator.is_valid(&broken));
    let mut broken: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    broken["colour"] = "red".into();
    assert!(!validator.is_valid(&broken));
    // A line written before the log was versioned (no `schema`) still matches.
    let mut old: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("schema");
    assert!(validator.is_valid(&old));

    // Written for people: times in ISO 8601, values rounded with units, a
    // title that says what the page is, a forest plot per gate.
    for page in ["rollout.html", "stage-1-1pct-epoch1.html"] {
        let html = std::fs::read_to_string(reports.join(page)).unwrap();
        assert_eq!(unreadable_numbers(&html), Vec::<String>::new(), "{page}");
        assert!(html.contains("<title>Canary analysis: ") && html.contains("<th>at (UTC)</th>"), "{page}");
        assert!(html.contains("latency (ms, log scale)") && html.contains("<svg class=\"forest\""), "{page}");
    }

    // Rendered by Chromium: no console error, not blank.
    for page in ["rollout.html", "stage-1-1pct-epoch1.html"] {
        let png = dir.path().join(page.replace(".html", ".png"));
        let console =
            chromium_screenshot(&format!("file://{}", reports.join(page).display()), &png, 1100, 1600).unwrap();
        assert!(console.is_empty(), "{page}: console messages {console:?}");
        let colours = png_colours(&png).unwrap();
        assert!(colours > 20, "{page}: the screenshot looks blank ({colours} colours)");
        if std::env::var_os("CANARY_UPDATE_DOCS").is_some() {
            std::fs::create_dir_all(root().join("docs")).unwrap();
            std::fs::copy(
                &png,
                root().join("docs").join(format!("report-{}", png.file_name().unwrap().to_string_lossy())),
            )
            .unwrap();
        }
    }

    // `canary report` prints the Markdown summary.
    let (ok, out, err) = canary(&["report", "--state-dir", state_dir.to_str().unwrap()]).unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("whole rollout: recommend"), "{out}");
    assert_eq!(unreadable_numbers(&out), Vec::<String>::new(), "{out}");
    assert!(out.contains("| # | at (UTC) |") && out.contains("Z |"), "{out}");
}
