//! The daemon's dashboard in headless Chromium during a real rollout (live
//! weight changes without a reload, the pause button with the operator
//! token, confirmations), its control API's refusals, and `/metrics`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use canary_tests::cdp::{png_grey_stats, Browser};
use canary_tests::{decisions, rollout_spec, root, state, workspace_bin, Daemon, Load, Proc, Rig};

/// The page and the metrics are under test, not the gates: the point-estimate
/// rule (`method: threshold`) with loose limits moves a compressed rollout
/// through its stages in seconds (the sequential method waits for hundreds
/// of challenger responses at 1 %).
const GATES: &str = "  method: threshold\n  error_rate: { error_tolerance: 5 }\n  latency: { latency_tolerance_multiplier: 4 }\n  timeouts: { timeout_tolerance: 2 }";
/// The browser test also judges predictions and labels (loose limits: the
/// page is under test, not the gates), so every chart has data.
const MORE_GATES: &str =
    "\n  prediction: { max_psi: 1.0, on_no_data: ignore }\n  labels: { min_degradation_tolerance: 0.5, min_labels: 5 }";
/// Appended to the spec's `filter:` (the backends' predictions are uniform on [0, 1)).
const PREDICTIONS: &str =
    "  prediction:\n    from: { header: x-prediction }\n    bins: { numeric: [0.2, 0.4, 0.6, 0.8] }\n";

/// Starts `canary run` with extra arguments and environment variables.
fn start_daemon(state_dir: &Path, spec: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let spec_path = state_dir.with_extension("spec.yaml");
    std::fs::write(&spec_path, spec).unwrap();
    let log = state_dir.with_extension("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(workspace_bin("canary").unwrap());
    cmd.arg("run").arg("--state-dir").arg(state_dir).arg("--spec").arg(&spec_path).args(args);
    cmd.env_remove("CANARY_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc::spawn("canary run", cmd.stdout(out.try_clone().unwrap()).stderr(out)).unwrap();
    Daemon { proc, log }
}

/// The daemon's `host:port`, once it has written it.
async fn daemon_addr(state_dir: &Path, daemon: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(a) = std::fs::read_to_string(state_dir.join("daemon.addr")) {
            return a.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no daemon.addr:\n{}", daemon.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("operator.token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

async fn rig() -> Rig {
    let rig = Rig::start().await.unwrap();
    for b in [&rig.champion, &rig.challenger] {
        b.control(serde_json::json!({"latency_ms": 10.0, "latency_sigma": 0.1})).await.unwrap();
    }
    rig
}

/// (phase, stage, epoch) of the state file.
fn position(state_dir: &Path) -> (String, u64, u64) {
    let s = state(state_dir);
    (s["phase"].as_str().unwrap_or("").to_string(), s["stage"].as_u64().unwrap_or(99), s["epoch"].as_u64().unwrap_or(0))
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_rollout_live_and_its_pause_button_stops_it() {
    let rig = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let token = "dashboard-test-7d1f0c9e";
    let token_path = token_file(dir.path(), token);
    // The error rate is also judged per segment (every request is `other`:
    // none carries x-tier), so the charts can switch to a segment.
    let gates = format!("{GATES}{MORE_GATES}")
        .replace("error_rate: { error_tolerance: 5 }", "error_rate: { error_tolerance: 5, segments: all }");
    let filter = format!("{PREDICTIONS}  segment: {{ header: x-tier, values: [pro] }}\n");
    let spec = rollout_spec("dashboard", &rig.envoy, "3s", 20, &gates, &filter);
    let load = Load::start(rig.envoy.url("/predict"), 24, 20_000, Duration::ZERO);
    let daemon = start_daemon(&state_dir, &spec, &["--token-file", token_path.to_str().unwrap()], &[]);
    let addr = daemon_addr(&state_dir, &daemon).await;
    let labels = tokio::spawn(post_labels(addr.clone()));

    let mut browser = Browser::launch(1360, 1000).await.unwrap();
    let page = browser.page().await.unwrap();
    page.set_viewport(1360, 1000).await.unwrap();
    page.goto(&format!("http://{addr}/")).await.unwrap();
    page.wait_for("window.canaryDashboard && window.canaryDashboard.snapshots > 0", Duration::from_secs(10))
        .await
        .unwrap();
    // Set once: a reload would lose it.
    page.eval("window.__loadedOnce = 'yes'").await.unwrap();

    // The weight moves from one stage to the next on the open page.
    let mut seen: Vec<String> = vec![];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(seen.iter().any(|w| w == "5%") && seen.iter().any(|w| w == "20%")) {
        assert!(Instant::now() < deadline, "weights seen {seen:?}:\n{}", daemon.output());
        let w = page.text("weight").await.unwrap().unwrap_or_default();
        if seen.last() != Some(&w) {
            seen.push(w);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(page.eval("window.__loadedOnce").await.unwrap(), "yes", "the page was reloaded");
    let i5 = seen.iter().position(|w| w == "5%").unwrap();
    let i20 = seen.iter().position(|w| w == "20%").unwrap();
    assert!(i5 < i20, "{seen:?}");
    assert_eq!(page.eval("window.canaryDashboard.transport").await.unwrap(), "sse");

    // Update latency: a decision's time in the log → the page first drawing it.
    let shown: BTreeMap<String, i64> =
        serde_json::from_value(page.eval("window.canaryDashboard.shown").await.unwrap()).unwrap();
    let logged: BTreeMap<String, i64> =
        decisions(&state_dir).iter().map(|d| (d["seq"].to_string(), d["at"].as_i64().unwrap())).collect();
    let mut latencies: Vec<i64> =
        shown.iter().filter_map(|(seq, at)| logged.get(seq).map(|logged_at| at - logged_at)).collect();
    latencies.sort_unstable();
    assert!(latencies.len() >= 10, "{shown:?}");
    let (median, p90, max) = (percentile(&latencies, 0.5), percentile(&latencies, 0.9), latencies[latencies.len() - 1]);
    println!(
        "update latency (decision logged → drawn) over {} decisions: median {median} ms, p90 {p90} ms, max {max} ms",
        latencies.len()
    );
    assert!(median < 1000, "median update latency {median} ms");

    // Page weight: the page's own assets as the browser fetched them.
    let weight = page
        .eval(
            "(() => { const nav = performance.getEntriesByType('navigation')[0];
               const res = performance.getEntriesByType('resource').filter(r => /\\/assets\\//.test(r.name));
               return { html: nav.transferSize, html_body: nav.decodedBodySize,
                        assets: res.map(r => [r.name.replace(location.origin, ''), r.transferSize, r.decodedBodySize]) }; })()",
        )
        .await
        .unwrap();
    let assets_bytes: u64 = weight["assets"].as_array().unwrap().iter().map(|a| a[1].as_u64().unwrap_or(0)).sum();
    let total = weight["html"].as_u64().unwrap_or(0) + assets_bytes;
    let snapshot = reqwest::get(format!("http://{addr}/api/state")).await.unwrap().bytes().await.unwrap().len();
    println!("page weight: {total} bytes transferred on load ({weight}); one state snapshot {snapshot} bytes");
    assert_eq!(weight["assets"].as_array().unwrap().len(), 2, "{weight}");
    assert!(total > 1000 && total < 100_000, "{weight}");

    // Every panel drew: gates with outcomes, charts as SVG, the timeline.
    page.wait_for("document.querySelectorAll('#gates tbody tr[data-gate]').length >= 3", Duration::from_secs(10))
        .await
        .unwrap();
    page.wait_for("document.querySelectorAll('#charts svg path').length >= 8", Duration::from_secs(10)).await.unwrap();
    assert!(page.eval("document.querySelectorAll('#timeline li[data-seq]').length").await.unwrap().as_u64() >= Some(2));
    // Each judged gate's interval against its threshold; PSI as one value
    // against its limit (the champion is the reference); the expected
    // remaining time at the current traffic.
    page.wait_for(
        "document.querySelectorAll('#gates tbody tr[data-gate] svg.forest').length >= 3
         && document.getElementById('eta').textContent.includes('until promotion')",
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    let psi_row = page
        .eval(
            "Array.from(document.querySelectorAll('#gates tr[data-gate=\"prediction\"] td')).map(td => td.textContent)",
        )
        .await
        .unwrap();
    assert_eq!(psi_row[1], "reference", "{psi_row}");
    assert!(psi_row[2].as_str().unwrap_or("").starts_with("PSI "), "{psi_row}");
    assert!(psi_row[3].as_str().unwrap_or("").starts_with("< "), "{psi_row}");

    // A screenshot mid-rollout, not blank (once the stage's clock runs and
    // the latency, PSI and label lines are drawn).
    page.wait_for(
        "document.getElementById('time-left').textContent !== '–' && document.querySelectorAll('#chart-p99 path').length >= 2
         && document.querySelectorAll('#chart-psi path').length >= 1 && document.querySelectorAll('#chart-labels path').length >= 2",
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    let png = page.screenshot(true).await.unwrap();
    let (mean, sd, w, h) = png_grey_stats(&png).unwrap();
    println!("screenshot {w}×{h}: grey mean {mean:.1}, standard deviation {sd:.1}");
    assert!(w >= 1300 && h >= 900, "{w}×{h}");
    assert!(sd > 10.0, "the screenshot looks blank (grey sd {sd:.1})");
    std::fs::write(root().join("target/dashboard.png"), &png).unwrap();
    if std::env::var_os("CANARY_UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(root().join("docs")).unwrap();
        std::fs::write(root().join("docs/dashboard.png"), &png).unwrap();
    }

    // Pause with the token: the rollout stops advancing.
    page.click("#token").await.unwrap();
    page.type_text(token).await.unwrap();
    page.click("#btn-pause").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while position(&state_dir).0 != "paused" {
        let msg = page.text("control-msg").await.unwrap();
        assert!(Instant::now() < deadline, "not paused; page says {msg:?}:\n{}", daemon.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    page.wait_for("document.getElementById('phase').textContent === 'paused'", Duration::from_secs(5)).await.unwrap();
    let msg = page.text("control-msg").await.unwrap().unwrap_or_default();
    assert!(msg.contains("pause"), "{msg}");
    let paused_at = position(&state_dir);
    let last_seq = decisions(&state_dir).last().unwrap()["seq"].as_u64().unwrap();
    let pause = decisions(&state_dir).into_iter().find(|d| d["action"] == "pause").unwrap();
    assert_eq!(pause["manual"], true);
    assert!(pause["reasons"][0].as_str().unwrap().contains("dashboard"), "{pause}");
    // Longer than a stage: unpaused, it would have moved on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(position(&state_dir), paused_at, "the rollout moved while paused");
    assert_eq!(decisions(&state_dir).last().unwrap()["seq"].as_u64().unwrap(), last_seq);

    // The charts switch to a judged segment's series and back.
    page.wait_for(
        "!document.getElementById('segment-pick').hidden
         && Array.from(document.getElementById('segment').options).some(o => o.value === 'other')",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let pick = |value: &str| {
        format!("(() => {{ const s = document.getElementById('segment'); s.value = '{value}'; s.dispatchEvent(new Event('change')); return s.value; }})()")
    };
    assert_eq!(page.eval(&pick("other")).await.unwrap(), "other");
    page.wait_for(
        "document.querySelector('#chart-errors h3 span').textContent === 'Error rate (5xx) · segment other'
         && document.querySelectorAll('#chart-errors path').length >= 2",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(page.eval(&pick("")).await.unwrap(), "");
    page.wait_for(
        "document.querySelector('#chart-errors h3 span').textContent === 'Error rate (5xx)'",
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    // Roll back asks first; Cancel changes nothing.
    page.click("#btn-rollback").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while page.dialogs.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no confirmation asked for the rollback");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(page.dialogs.lock().unwrap()[0].contains("Roll back"), "{:?}", page.dialogs.lock().unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(position(&state_dir), paused_at, "a cancelled rollback changed the state");

    // Advance asks too; OK goes through the same path as the CLI.
    page.accept_dialogs.store(true, std::sync::atomic::Ordering::Relaxed);
    page.click("#btn-advance").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while position(&state_dir).1 == paused_at.1 {
        assert!(Instant::now() < deadline, "advance did not happen:\n{}", daemon.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(page.dialogs.lock().unwrap().len(), 2);
    let (phase, stage, epoch) = position(&state_dir);
    assert_eq!((phase.as_str(), stage, epoch), ("paused", paused_at.1 + 1, paused_at.2 + 1));
    assert!(!daemon.output().contains(token), "the token was logged");

    let chromium = browser.pid();
    browser.kill();
    assert!(!canary_tests::pid_alive(chromium));
    labels.abort();
    load.stop().await;
}

/// Posts labels for the current stage to the daemon, 90 % correct, until aborted.
async fn post_labels(addr: String) {
    let client = reqwest::Client::new();
    let mut i = 0u64;
    loop {
        let stage = match client.get(format!("http://{addr}/status")).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.ok().and_then(|s| s["stage_name"].as_str().map(str::to_owned)),
            Err(_) => None,
        };
        if let Some(stage) = stage {
            let batch: Vec<serde_json::Value> = (0..8)
                .map(|k| {
                    i += 1;
                    let version = if k % 2 == 0 { "v1" } else { "v2" };
                    serde_json::json!({"version": version, "stage": stage, "correct": !(i / 2).is_multiple_of(10)})
                })
                .collect();
            let _ = client.post(format!("http://{addr}/labels")).json(&batch).send().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spec with an Envoy admin nobody answers: the rollout holds forever.
fn idle_spec(dir: &Path, rollout: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ecds = dir.join(format!("{rollout}-ecds"));
    std::fs::create_dir_all(&ecds).unwrap();
    format!(
        "rollout: {rollout}\nchampion: v1\nchallenger: v2\ninterval: 200ms\nstages:\n  - {{ weight_percent: 1, min_duration: 1s, min_requests: 10 }}\n  - {{ weight_percent: 10, min_duration: 1s, min_requests: 10 }}\n  - {{ weight_percent: 100 }}\ngates:\n  error_rate: {{ error_tolerance: 1 }}\nenvoy:\n  admin: [\"http://127.0.0.1:{port}\"]\n  ecds_dir: {}\n  wasm: /opt/canary_filter.wasm\n  timeout: 200ms\n",
        ecds.display()
    )
}

async fn post(url: &str, auth: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let www = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let body = r.text().await.unwrap();
    if status == 401 {
        assert_eq!(www.as_deref(), Some("Bearer realm=\"canary\""));
    }
    (status, body)
}

fn manual_decisions(state_dir: &Path) -> usize {
    decisions(state_dir).iter().filter(|d| d["manual"] == true).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_calls_without_the_right_token_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("guarded");
    let token = "s3cret-operator-token";
    let daemon = start_daemon(&state_dir, &idle_spec(dir.path(), "guarded"), &[], &[("CANARY_TOKEN", token)]);
    let addr = daemon_addr(&state_dir, &daemon).await;
    let before = position(&state_dir);
    assert_eq!(before, ("running".to_string(), 0, 1));

    for command in ["pause", "advance", "rollback", "resume"] {
        let url = format!("http://{addr}/api/{command}");
        for auth in
            [None, Some("Bearer wrong"), Some(&format!("Bearer {token}x")[..]), Some("Basic czNjcmV0"), Some(token)]
        {
            let (status, body) = post(&url, auth).await;
            assert_eq!(status, 401, "{command} with {auth:?}: {body}");
            assert!(!body.contains(token), "{body}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(position(&state_dir), before, "a refused call changed the state");
    assert_eq!(manual_decisions(&state_dir), 0);

    // The right token works, and a command the phase refuses says so.
    let bearer = format!("Bearer {token}");
    let (status, body) = post(&format!("http://{addr}/api/resume"), Some(&bearer)).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(&format!("http://{addr}/api/pause"), Some(&bearer)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(position(&state_dir).0, "paused");
    assert_eq!(post(&format!("http://{addr}/api/bogus"), Some(&bearer)).await.0, 404);

    // Reports are served read-only from their folder and nothing else.
    for path in ["/reports/..%2Fstate.json", "/reports/%2E%2E%2Fspec.yaml", "/reports/.lock", "/reports/state.json"] {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    assert_eq!(reqwest::Client::new().put(format!("http://{addr}/reports/x.html")).send().await.unwrap().status(), 405);

    // Read-only views are open, never show the token, and say controls are on.
    let s: serde_json::Value = reqwest::get(format!("http://{addr}/api/state")).await.unwrap().json().await.unwrap();
    assert_eq!(s["controls"]["enabled"], true);
    assert_eq!(s["phase"], "paused");
    let metrics = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("canary_control_requests_total{command=\"pause\",result=\"unauthorized\"} 5"),
        "{metrics}"
    );
    for text in [s.to_string(), metrics, daemon.output()] {
        assert!(!text.contains(token), "the token leaked");
    }

    // Without a token the controls are off (403) and say how to turn them on.
    let open_dir = dir.path().join("open");
    let open = start_daemon(&open_dir, &idle_spec(dir.path(), "open"), &[], &[]);
    let open_addr = daemon_addr(&open_dir, &open).await;
    let (status, body) = post(&format!("http://{open_addr}/api/pause"), Some("Bearer anything")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--token-file") && body.contains("CANARY_TOKEN"), "{body}");
    assert_eq!(position(&open_dir).0, "running");
    let s: serde_json::Value =
        reqwest::get(format!("http://{open_addr}/api/state")).await.unwrap().json().await.unwrap();
    assert_eq!(s["controls"]["enabled"], false);
    assert_eq!(manual_decisions(&open_dir), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_is_described_at_openapi_json_answers_errors_as_json_and_its_address_goes_with_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("api");
    let mut daemon = start_daemon(&state_dir, &idle_spec(dir.path(), "api"), &[], &[]);
    let addr = daemon_addr(&state_dir, &daemon).await;
    // A connection per request: the server closes one it answered 413
    // before reading the whole body.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();

    let r = client.get(format!("http://{addr}/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/labels"]["post"]["responses"]["413"].is_object(), "{doc}");

    // Every error is JSON with an `error` message.
    let error_of = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_else(|e| panic!("{status}: not JSON: {e}"));
        (status, body["error"].as_str().unwrap_or_else(|| panic!("{status}: no error in {body}")).to_string())
    };
    let (status, message) = error_of(client.get(format!("http://{addr}/nowhere")).send().await.unwrap()).await;
    assert_eq!((status, message.contains("/openapi.json")), (404, true), "{message}");
    let labels = format!("http://{addr}/labels");
    let (status, message) = error_of(client.post(&labels).body("not json").send().await.unwrap()).await;
    assert_eq!((status, message.contains("JSON array")), (400, true), "{message}");
    let big = format!("[{}]", vec![r#"{"version":"v1","stage":"1pct","value":0.5}"#; 260_000].join(","));
    assert!(big.len() > 10 * 1024 * 1024);
    let (status, message) = error_of(client.post(&labels).body(big).send().await.unwrap()).await;
    assert_eq!((status, message.contains("10 MiB")), (413, true), "{message}");

    // A partial batch is 200 with what was rejected and why; negative values are allowed.
    let batch = r#"[{"version":"v1","stage":"1pct","value":-1.5},{"version":"v9","stage":"1pct","correct":true}]"#;
    let r = client.post(&labels).body(batch).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let intake: serde_json::Value = r.json().await.unwrap();
    assert_eq!((intake["accepted"].as_u64(), intake["rejected"].as_u64()), (Some(1), Some(1)), "{intake}");
    assert!(intake["errors"][0].as_str().unwrap().starts_with("record 1:"), "{intake}");

    // SIGTERM: the daemon exits and takes its address and pid files with it.
    assert!(Command::new("kill").arg(daemon.proc.pid().to_string()).status().unwrap().success());
    daemon.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(!state_dir.join("daemon.addr").exists(), "daemon.addr left behind");
    assert!(!state_dir.join("daemon.pid").exists(), "daemon.pid left behind");
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the text exposition format 0.0.4: every sample under
/// a `# TYPE` of its family, label values quoted with `\\`, `\"`, `\n`
/// escapes, histogram buckets cumulative and ending at `+Inf` = `_count`.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = vec![];
    for (i, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| err("TYPE without a type"))?;
            if !is_name(name, true) || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err("bad TYPE"));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(err("second TYPE for a family"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !is_name(name, true) {
                return Err(err("bad HELP"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(err("bad metric name"));
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let end = loop {
                // name="value"
                let start = match chars.peek() {
                    Some((_, '}')) => break chars.next().map(|(j, _)| j),
                    Some((j, _)) => *j,
                    None => return Err(err("unterminated labels")),
                };
                let eq = after[start..].find('=').ok_or_else(|| err("label without ="))? + start;
                let lname = &after[start..eq];
                if !is_name(lname, false) {
                    return Err(err("bad label name"));
                }
                while chars.peek().is_some_and(|(j, _)| *j <= eq) {
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(err("label value not quoted"));
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            _ => return Err(err("bad escape")),
                        },
                        Some((_, '"')) => break,
                        Some((_, '\n')) | None => return Err(err("unterminated label value")),
                        Some((_, c)) => value.push(c),
                    }
                }
                if labels.insert(lname.to_string(), value).is_some() {
                    return Err(err("repeated label"));
                }
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((_, '}')) => {}
                    _ => return Err(err("expected , or }")),
                }
            };
            let end = end.ok_or_else(|| err("unterminated labels"))?;
            rest = &after[end + 1..];
        }
        let mut parts = rest.strip_prefix(' ').ok_or_else(|| err("no space before the value"))?.split(' ');
        let value = match parts.next().unwrap_or("") {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse::<f64>().map_err(|_| err("bad value"))?,
        };
        if let Some(ts) = parts.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp"))?;
        }
        if parts.next().is_some() {
            return Err(err("trailing text"));
        }
        let family = types
            .iter()
            .find(|(f, kind)| {
                name == f.as_str()
                    || (kind.as_str() == "histogram"
                        && ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{f}{s}")))
            })
            .ok_or_else(|| err("sample before its TYPE"))?;
        if family.1 == "counter" && value < 0.0 {
            return Err(err("negative counter"));
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(err("bucket without le"));
        }
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    // Histograms: cumulative buckets, +Inf last and equal to _count.
    for (family, kind) in types.iter().filter(|(_, k)| k.as_str() == "histogram") {
        let _ = kind;
        let buckets: Vec<&Sample> = samples.iter().filter(|s| s.name == format!("{family}_bucket")).collect();
        let les: Vec<f64> = buckets.iter().map(|s| s.labels["le"].parse::<f64>().unwrap_or(f64::NAN)).collect();
        if les.last() != Some(&f64::INFINITY) || les.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("{family}: bucket bounds {les:?}"));
        }
        if buckets.windows(2).any(|w| w[0].value > w[1].value) {
            return Err(format!("{family}: buckets are not cumulative"));
        }
        let count = samples.iter().find(|s| s.name == format!("{family}_count")).map(|s| s.value);
        if count != buckets.last().map(|b| b.value) {
            return Err(format!("{family}: _count {count:?} differs from the +Inf bucket"));
        }
    }
    Ok(samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[test]
fn the_prometheus_reader_refuses_malformed_text() {
    let good = "# TYPE a_total counter\na_total{x=\"q\\\"\\\\\"} 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let s = parse_prometheus(good).unwrap();
    assert_eq!(s[0].labels["x"], "q\"\\");
    for bad in [
        "a 1\n",
        "# TYPE a counter\na{x=y} 1\n",
        "# TYPE a counter\na{x=\"y} 1\n",
        "# TYPE a counter\na 1 2 3\n",
        "# TYPE a counter\na -1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_during_a_rollout() {
    let rig = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let spec = rollout_spec("metered", &rig.envoy, "1s", 20, GATES, "");
    let load = Load::start(rig.envoy.url("/predict"), 24, 20_000, Duration::ZERO);
    let mut daemon = start_daemon(&state_dir, &spec, &[], &[]);
    let addr = daemon_addr(&state_dir, &daemon).await;
    let scrape = || async {
        let r = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
        assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
        let text = r.text().await.unwrap();
        parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    let first = scrape().await;
    for name in [
        "canary_evaluations_total",
        "canary_source_reads_total",
        "canary_sink_push_duration_seconds_count",
        "canary_challenger_weight_ratio",
        "canary_stage",
        "canary_epoch",
    ] {
        assert!(first.iter().any(|s| s.name == name), "{name} missing: {first:?}");
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while position(&state_dir).1 < 2 {
        assert!(Instant::now() < deadline, "not at stage 3:\n{}", daemon.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = scrape().await;
    load.stop().await;
    let grew = |name: &str, labels: &[(&str, &str)]| {
        let (a, b) = (value(&first, name, labels), value(&second, name, labels));
        assert!(b > a, "{name}{labels:?} did not grow: {a} → {b}");
        b
    };
    let evaluations = grew("canary_evaluations_total", &[]);
    grew("canary_source_reads_total", &[]);
    grew("canary_source_read_duration_seconds_count", &[]);
    let advances = grew("canary_decisions_total", &[("action", "advance"), ("manual", "false")]);
    assert!(advances >= 2.0, "{advances}");
    let holds = value(&second, "canary_decisions_total", &[("action", "hold")]);
    assert!(holds + advances <= evaluations + 1.0, "{holds} + {advances} vs {evaluations}");
    let pushes = grew("canary_sink_pushes_total", &[("result", "ok")]);
    assert!(pushes >= 2.0);
    assert_eq!(value(&second, "canary_sink_push_duration_seconds_count", &[]), pushes);
    assert!(value(&second, "canary_challenger_weight_ratio", &[]) >= 0.2);
    assert!(
        value(&second, "canary_challenger_weight_ratio", &[]) > value(&first, "canary_challenger_weight_ratio", &[])
    );
    assert_eq!(value(&second, "canary_phase", &[("phase", "running")]), 1.0);
    assert_eq!(value(&second, "canary_rollout_info", &[("rollout", "metered")]), 1.0);
    assert_eq!(value(&second, "canary_source_errors_total", &[]), 0.0);
    // `/healthz` stays.
    assert_eq!(reqwest::get(format!("http://{addr}/healthz")).await.unwrap().text().await.unwrap(), "ok\n");
    daemon.kill9();
}
