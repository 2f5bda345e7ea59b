//! The Prometheus source against a real Prometheus (Debian's `prometheus`,
//! installed by `scripts/setup.sh prometheus`) scraping two real Envoys'
//! `/stats/prometheus` with the filter: on the same traffic (both versions,
//! 5xx from the challenger, prediction capture, segments), the controller's
//! gate values from Prometheus match the admin-API source's within 1 %.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use canary_controller::sink::EcdsFileSink;
use canary_controller::source::prometheus::{PrometheusSource, PrometheusSourceConfig};
use canary_controller::source::{AdminSource, AdminSourceConfig};
use canary_core::FilterConfig;
use canary_judge::gates::{self, GateResult, LabelEvidence, StageContext};
use canary_judge::psi;
use canary_judge::spec::GatesSpec;
use canary_judge::window::Window;
use canary_tests::{client, get, users, Proc, Rig, CHALLENGER, CHAMPION};
use futures::StreamExt;

const ROLLOUT: &str = "prom";
const EPOCH: u64 = 4;
pub(crate) const JOB: &str = "canary-envoys";

fn prometheus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CANARY_PROMETHEUS") {
        return p.into();
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/sbin"]) {
        let p = PathBuf::from(dir).join("prometheus");
        if p.is_file() {
            return p;
        }
    }
    panic!("no prometheus binary: run `bash scripts/setup.sh prometheus` (or set CANARY_PROMETHEUS)");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Prometheus scraping its targets every 500 ms; killed when dropped.
pub(crate) struct Prometheus {
    _proc: Proc,
    dir: tempfile::TempDir,
    pub(crate) url: String,
}

impl Prometheus {
    pub(crate) async fn start(targets: &[String]) -> Prometheus {
        Prometheus::start_with(serde_json::json!([{ "targets": targets }])).await
    }

    /// `groups`: file-based service discovery target groups, which
    /// [`Prometheus::set_targets`] can change while it runs (as Kubernetes
    /// discovery does when pods come and go).
    async fn start_with(groups: serde_json::Value) -> Prometheus {
        let dir = tempfile::Builder::new().prefix("canary-prometheus-").tempdir().unwrap();
        let config = format!(
            r#"global: {{ scrape_interval: 500ms, scrape_timeout: 450ms, evaluation_interval: 10s }}
scrape_configs:
- job_name: {JOB}
  metrics_path: /stats/prometheus
  # usedonly: only stats that ever changed; text_readouts: the ECDS version.
  params: {{ usedonly: [""], text_readouts: [""] }}
  file_sd_configs: [ {{ files: ["{}"] }} ]
"#,
            dir.path().join("targets.json").display()
        );
        write_targets(dir.path(), &groups);
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut proc = Proc::spawn(
            "prometheus",
            Command::new(prometheus_bin())
                .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(log),
        )
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = proc.exited() {
                let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
                panic!("prometheus exited ({status}):\n{log}");
            }
            if let Ok(r) = client().get(format!("{url}/-/ready")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "prometheus not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus { _proc: proc, dir, url }
    }

    fn set_targets(&self, groups: serde_json::Value) {
        write_targets(self.dir.path(), &groups);
    }
}

/// Whole or not at all (Prometheus watches the file): a rename.
fn write_targets(dir: &std::path::Path, groups: &serde_json::Value) {
    let tmp = dir.join("targets.json.tmp");
    std::fs::write(&tmp, groups.to_string()).unwrap();
    std::fs::rename(tmp, dir.join("targets.json")).unwrap();
}

fn config() -> FilterConfig {
    let json = serde_json::json!({
        "rollout": ROLLOUT, "epoch": EPOCH, "stage": "s", "salt": ROLLOUT,
        "champion": CHAMPION, "challenger": CHALLENGER, "challenger_weight_bp": 4000,
        "key": [{"header": "x-user-id"}],
        "prediction": {"from": {"header": "x-prediction"}, "bins": {"numeric": [0.25, 0.5, 0.75]}},
        "segment": {"header": "x-tier", "values": ["pro"]},
    });
    FilterConfig::from_json(json.to_string().as_bytes()).unwrap()
}

fn gate_values(w: &Window) -> Vec<GateResult> {
    let gates: GatesSpec = serde_json::from_value(serde_json::json!({
        "method": "threshold",
        "error_rate": {"error_tolerance": 1},
        "latency": {"quantile": 0.99, "latency_tolerance_multiplier": 1.5},
        "prediction": {"max_psi": 0.2},
    }))
    .unwrap();
    let context = StageContext::live(1);
    gates::evaluate(&gates, &w.version(CHAMPION), &w.version(CHALLENGER), &LabelEvidence::default(), context, &[])
}

/// Relative difference, 0 when both are 0.
fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_values_from_prometheus_match_the_admin_source_within_one_percent() {
    let test_started = Instant::now();
    let rig = Rig::start().await.unwrap();
    let knobs = serde_json::json!({"latency_ms": 3.0, "latency_sigma": 0.6});
    rig.champion.control(knobs.clone()).await.unwrap();
    rig.challenger.control(knobs).await.unwrap();
    rig.challenger.control(serde_json::json!({"error_rate": 0.05, "prediction_shift": 0.1})).await.unwrap();
    let second = rig.second_envoy().await.unwrap();
    let envoys = [&rig.envoy, &second];
    let config = config();
    for e in envoys {
        e.push(&config).await.unwrap();
    }
    let targets: Vec<String> = envoys.iter().map(|e| format!("127.0.0.1:{}", e.admin_port)).collect();
    let prometheus = Prometheus::start(&targets).await;

    // Real traffic through both Envoys: 3 000 users, each once, half through each.
    let c = client();
    let urls: Vec<String> = envoys.iter().map(|e| e.url("/predict")).collect();
    let ids = users("prom", 3000);
    let replies: Vec<_> = futures::stream::iter(ids.iter().enumerate())
        .map(|(i, u)| {
            let (c, url) = (&c, &urls[i % 2]);
            let tier = if i % 3 == 0 { "pro" } else { "free" };
            async move { get(c, url, &[("x-user-id", u.as_str()), ("x-tier", tier)]).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let replies: Vec<_> = replies.into_iter().map(Result::unwrap).collect();
    let errors = replies.iter().filter(|r| r.status >= 500).count();
    assert!(errors > 10, "the challenger's 5xx reached the clients ({errors})");

    let admin_endpoints = envoys.iter().map(|e| format!("http://127.0.0.1:{}", e.admin_port)).collect();
    let mut admin = AdminSource::new(AdminSourceConfig {
        endpoints: admin_endpoints,
        timeout: Duration::from_secs(5),
        max_concurrency: 4,
    });
    let mut prom = PrometheusSource::new(PrometheusSourceConfig {
        url: prometheus.url.clone(),
        timeout: Duration::from_secs(5),
        selector: format!("job=\"{JOB}\""),
    });
    let expected = EcdsFileSink::version_info(&config);

    // Histograms reach both only at Envoy's stats flush (1 s), and Prometheus
    // a scrape later: read until every count is in and both agree on them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (a, p) = loop {
        let a = admin.read(ROLLOUT, EPOCH, &expected).await;
        let p = prom.read(ROLLOUT, EPOCH, &expected).await.unwrap();
        let flushed = |w: &Window| {
            let total: u64 = w.versions.values().map(|v| v.requests).sum();
            total == ids.len() as u64 && w.versions.values().all(|v| v.latency_us.count() == v.answered())
        };
        if flushed(&a) && flushed(&p) {
            break (a, p);
        }
        assert!(Instant::now() < deadline, "no agreement on the counts within 30 s:\nadmin {a:?}\nprometheus {p:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    // Coverage: both Envoys, both answered and applied.
    for w in [&a, &p] {
        let c = &w.coverage;
        assert_eq!((c.endpoints, c.answered, c.applied, c.failures.len()), (2, 2, 2, 0), "{c:?}");
    }
    // Counts: equal.
    for version in [CHAMPION, CHALLENGER] {
        let (x, y) = (a.version(version), p.version(version));
        assert_eq!(
            (x.requests, x.responses, x.unkeyed, x.timeouts),
            (y.requests, y.responses, y.unkeyed, y.timeouts),
            "{version}"
        );
        assert_eq!(x.predictions, y.predictions, "{version}");
        assert!(!x.predictions.is_empty(), "{version}: predictions were captured");
        let segments = |v: &canary_judge::window::VersionWindow| {
            v.segments
                .iter()
                .map(|(k, s)| (k.clone(), (s.requests, s.responses, s.latency_us.count())))
                .collect::<Vec<_>>()
        };
        assert_eq!(segments(&x), segments(&y), "{version}");
        assert_eq!(x.segments.len(), 2, "{version}: pro and other");
        assert_eq!(x.latency_us.count(), y.latency_us.count(), "{version}");
    }

    // Gate values: within 1 %.
    let (ga, gp) = (gate_values(&a), gate_values(&p));
    assert_eq!(ga.len(), 3, "{ga:?}");
    let mut worst = 0.0f64;
    for (x, y) in ga.iter().zip(&gp) {
        assert_eq!(x.gate, y.gate);
        assert_eq!((x.champion_n, x.challenger_n), (y.champion_n, y.challenger_n), "{:?}", x.gate);
        assert_eq!(x.outcome, y.outcome, "{:?}", x.gate);
        for (which, u, v) in [("champion", x.champion, y.champion), ("challenger", x.challenger, y.challenger)] {
            let (u, v) = (u.unwrap(), v.unwrap());
            let d = rel(u, v);
            println!("{:?} {which}: admin {u:.6} prometheus {v:.6} (relative difference {:.5} %)", x.gate, d * 100.0);
            assert!(d <= 0.01, "{:?} {which}: admin {u} vs prometheus {v}", x.gate);
            worst = worst.max(d);
        }
    }
    // Every quantile the gates might ask, too.
    for version in [CHAMPION, CHALLENGER] {
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            let (u, v) = (
                a.version(version).latency_us.quantile(q).unwrap(),
                p.version(version).latency_us.quantile(q).unwrap(),
            );
            assert!(rel(u, v) <= 0.01, "{version} q{q}: admin {u} vs prometheus {v}");
            worst = worst.max(rel(u, v));
        }
    }
    let (pa, pp) = (
        psi::psi(&a.version(CHAMPION).predictions, &a.version(CHALLENGER).predictions).unwrap().value,
        psi::psi(&p.version(CHAMPION).predictions, &p.version(CHALLENGER).predictions).unwrap().value,
    );
    assert!(rel(pa, pp) <= 0.01, "PSI {pa} vs {pp}");
    println!(
        "worst relative difference admin vs Prometheus over gate values and quantiles: {:.5} % (test took {:?})",
        worst * 100.0,
        test_started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_scrape_target_is_a_failed_endpoint_and_a_dead_prometheus_no_window() {
    let rig = Rig::start().await.unwrap();
    rig.envoy.push(&config()).await.unwrap();
    // A second target nobody listens on.
    let dead = format!("127.0.0.1:{}", free_port());
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{}", rig.envoy.admin_port), dead.clone()]).await;
    let mut prom = PrometheusSource::new(PrometheusSourceConfig {
        url: prometheus.url.clone(),
        timeout: Duration::from_secs(5),
        selector: format!("job=\"{JOB}\""),
    });
    let expected = EcdsFileSink::version_info(&config());
    let w = read_until(&mut prom, &expected, "scrape of both targets", |w| {
        w.coverage.endpoints == 2 && w.coverage.applied == 1
    })
    .await;
    assert_eq!(w.coverage.failures.len(), 1, "{:?}", w.coverage);
    assert_eq!(w.coverage.failures[0].endpoint, dead);
    drop(prometheus);
    let err = prom.read(ROLLOUT, EPOCH, &expected).await.unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

/// Reads until `done`, for at most 20 s.
async fn read_until(prom: &mut PrometheusSource, expected: &str, what: &str, done: impl Fn(&Window) -> bool) -> Window {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let w = prom.read(ROLLOUT, EPOCH, expected).await.unwrap();
        if done(&w) {
            return w;
        }
        assert!(Instant::now() < deadline, "no {what} within 20 s: {:?}", w.coverage);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pod deleted in a mesh leaves Prometheus's service discovery: its `up`
/// series is gone. What the controller read from it stays in the stage's
/// window (listed as departed), so counts never go down on a scale-down.
/// Two "pods" here are two scrape targets on the same Envoy, told apart by
/// their `instance` label, so the window holds its counts twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_gone_from_prometheus_keeps_its_counts_in_the_window() {
    let rig = Rig::start().await.unwrap();
    rig.envoy.push(&config()).await.unwrap();
    let address = format!("127.0.0.1:{}", rig.envoy.admin_port);
    let pod = |name: &str| serde_json::json!({ "targets": [address], "labels": { "instance": name } });
    let prometheus = Prometheus::start_with(serde_json::json!([pod("pod-a"), pod("pod-b")])).await;
    let c = client();
    for u in users("gone", 200) {
        get(&c, &rig.envoy.url("/predict"), &[("x-user-id", u.as_str())]).await.unwrap();
    }
    let mut prom = PrometheusSource::new(PrometheusSourceConfig {
        url: prometheus.url.clone(),
        timeout: Duration::from_secs(5),
        selector: format!("job=\"{JOB}\""),
    });
    let expected = EcdsFileSink::version_info(&config());
    let total = |w: &Window| w.versions.values().map(|v| v.requests).sum::<u64>();
    let w = read_until(&mut prom, &expected, "scrape of both pods with every count", |w| total(w) == 400).await;
    assert_eq!((w.coverage.endpoints, w.coverage.answered), (2, 2));

    prometheus.set_targets(serde_json::json!([pod("pod-a")]));
    let w = read_until(&mut prom, &expected, "drop of pod-b from `up`", |w| w.coverage.endpoints == 1).await;
    assert_eq!(total(&w), 400, "pod-b's 200 are still counted: {:?}", w.coverage);
    assert_eq!(w.coverage.departed, vec!["pod-b".to_string()]);
    assert!(w.coverage.failures.is_empty(), "{:?}", w.coverage);
}

/// The spec's `envoy.prometheus` drives the controller: `Controller::source`
/// builds the Prometheus source and `tick` judges a real stage with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_with_envoy_prometheus_judges_stages_from_prometheus() {
    let rig = Rig::start().await.unwrap();
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{}", rig.envoy.admin_port)]).await;
    let ecds = rig.envoy.sink.path().parent().unwrap().display().to_string();
    let wasm = canary_tests::wasm_path().unwrap().display().to_string();
    let yaml = format!(
        "rollout: promd\nchampion: {CHAMPION}\nchallenger: {CHALLENGER}\ninterval: 200ms\n\
         stages:\n  - {{ weight_percent: 50, min_requests: 100 }}\n  - {{ weight_percent: 100 }}\n\
         gates:\n  method: threshold\n  error_rate: {{ error_tolerance: 5 }}\n\
         envoy:\n  admin: []\n  ecds_dir: {ecds}\n  wasm: {wasm}\n  apply_timeout: 5s\n\
         \x20 prometheus: {{ url: \"{}\", selector: 'job=\"{JOB}\"', timeout: 3s }}\n\
         filter:\n  key: [{{ header: x-user-id }}]\n",
        prometheus.url
    );
    let spec = canary_judge::spec::RolloutSpec::from_yaml(&yaml).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let mut controller =
        canary_controller::control::Controller::open(state_dir.path(), Some(spec), false, &Default::default()).unwrap();
    // Opening a rollout does not push; the first evaluation would.
    controller.ensure_pushed().await.unwrap();
    let mut source = controller.source();
    assert!(source.describe().starts_with("Prometheus at http://127.0.0.1:"), "{}", source.describe());
    let version = EcdsFileSink::version_info(&controller.state().unwrap().filter_config(&controller.spec));
    rig.envoy.wait_version(&version).await.unwrap();

    let c = client();
    let url = rig.envoy.url("/predict");
    let ids = users("promd", 400);
    canary_tests::route_users(&c, &url, &ids, 16).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let decision = loop {
        let d = controller.tick(&mut source).await.unwrap().expect("a running rollout is evaluated");
        if d.action != canary_judge::rollout::Action::Hold {
            break d;
        }
        assert!(Instant::now() < deadline, "still holding after 30 s: {:?}", d.reasons);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(decision.action, canary_judge::rollout::Action::Promote, "{:?}", decision.reasons);
    let w = decision.window.unwrap();
    assert_eq!((w.coverage.endpoints, w.coverage.applied), (1, 1));
    assert_eq!(w.champion.requests + w.challenger.requests, ids.len() as u64, "every request, read from Prometheus");
}
