//! Harness for tests and the demo: starts real processes (Envoy with the built
//! .wasm, model backends) on free ports of 127.0.0.1, talks to them, and stops
//! every one of them by PID when dropped.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use canary_controller::sink::EcdsFileSink;
use canary_core::FilterConfig;
use futures::StreamExt;

pub mod cdp;
pub mod fleet;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The pinned Envoy that `scripts/setup.sh` installs (or `CANARY_ENVOY`).
pub fn envoy_bin() -> Result<PathBuf> {
    let path =
        std::env::var_os("CANARY_ENVOY").map(PathBuf::from).unwrap_or_else(|| root().join(".tools/venv/bin/envoy"));
    if !path.exists() {
        bail!("no Envoy at {}: run `make setup` (or `make test`, which runs it)", path.display());
    }
    Ok(path)
}

/// The filter built by `scripts/build-wasm.sh` (or `CANARY_WASM`).
pub fn wasm_path() -> Result<PathBuf> {
    let path = std::env::var_os("CANARY_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm/wasm32-unknown-unknown/wasm/canary_filter.wasm"));
    if !path.exists() {
        bail!("no filter at {}: run `make wasm` (or `make test`, which builds it)", path.display());
    }
    Ok(path)
}

/// A binary of this workspace next to the running one (tests run from
/// `target/<profile>/deps`, binaries live in `target/<profile>`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidates = exe.ancestors().skip(1).take(2).map(|d| d.join(name)).collect::<Vec<_>>();
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| anyhow!("binary {name} not found in {candidates:?}: run `cargo build --workspace`"))
}

/// A child process, killed and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Proc { name: name.to_string(), child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port free on 127.0.0.1 a moment ago (for processes that take a port
/// number rather than 0).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True while a process with this PID exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// A model backend (the `model-backend` binary) on a free port.
pub struct Backend {
    pub proc: Proc,
    pub port: u16,
    pub version: String,
}

impl Backend {
    pub fn start(version: &str, extra_args: &[&str]) -> Result<Backend> {
        Backend::start_bin("model-backend", version, extra_args)
    }

    /// A backend from another binary of this package (e.g. `echo-backend`).
    pub fn start_bin(bin: &str, version: &str, extra_args: &[&str]) -> Result<Backend> {
        let bin = workspace_bin(bin)?;
        let mut proc = Proc::spawn(
            &format!("backend {version}"),
            Command::new(bin)
                .args(["--version", version])
                .args(extra_args)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        let stdout = proc.child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).context("backend did not report its port within 10 s")?;
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("backend printed {line:?}, expected `listening on 127.0.0.1:PORT`"))?;
        Ok(Backend { proc, port, version: version.to_string() })
    }

    /// Changes knobs while it runs (`error_rate`, `latency_ms`, `latency_sigma`).
    pub async fn control(&self, knobs: serde_json::Value) -> Result<()> {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/_control", self.port))
            .json(&knobs)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// What it served: `{"requests", "errors", "last_request_unix_ms"}`.
    pub async fn stats(&self) -> Result<BackendStats> {
        let url = format!("http://127.0.0.1:{}/_stats", self.port);
        Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
    }
}

/// A backend's own count of what it served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct BackendStats {
    pub requests: u64,
    pub errors: u64,
    pub last_request_unix_ms: u64,
}

/// The sidecar template with its `${NAME}` placeholders filled.
pub fn render_template(template: &Path, vars: &[(&str, String)]) -> Result<String> {
    let mut text = fs::read_to_string(template).with_context(|| format!("cannot read {}", template.display()))?;
    for (name, value) in vars {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    if let Some(at) = text.find("${") {
        let rest: String = text[at..].chars().take(40).collect();
        bail!("{} has a placeholder left unfilled: {rest}", template.display());
    }
    Ok(text)
}

/// `envoy --mode validate` of a configuration text whose ECDS directory is
/// written `@ECDS@` (a temporary one holding an empty `canary.json`): whether
/// Envoy accepts it, and what it said.
pub fn envoy_validate(config_text: &str) -> Result<(bool, String)> {
    let dir = tempfile::tempdir()?;
    fs::create_dir(dir.path().join("ecds"))?;
    fs::write(dir.path().join("ecds/canary.json"), r#"{"version_info":"none","resources":[]}"#)?;
    let path = dir.path().join("envoy.yaml");
    fs::write(&path, config_text.replace("@ECDS@", &dir.path().join("ecds").display().to_string()))?;
    let out =
        Command::new(envoy_bin()?).args(["--mode", "validate", "--disable-hot-restart", "-c"]).arg(&path).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    ))
}

/// The `${NAME}`s of an `envoy/` template for [`envoy_validate`]: ports 0,
/// ECDS at `@ECDS@`, the filter at `wasm`.
pub fn validate_vars(wasm: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("ADMIN_PORT", "0".into()),
        ("LISTEN_PORT", "0".into()),
        ("ECDS_DIR", "@ECDS@".into()),
        ("WASM", wasm.display().to_string()),
        ("CHAMPION", "v1".into()),
        ("CHALLENGER", "v2".into()),
        ("CHAMPION_PORT", "1".into()),
        ("CHALLENGER_PORT", "2".into()),
        ("DEFAULT_CONFIG", default_plugin_config("v1", "v2")),
        ("ACCESS_LOG", "/dev/null".into()),
    ]
}

/// The plugin configuration Envoy serves until the first good ECDS file.
pub fn default_plugin_config(champion: &str, challenger: &str) -> String {
    format!(
        r#"{{"rollout":"default","stage":"default","salt":"default","champion":"{champion}","challenger":"{challenger}","challenger_weight_bp":0}}"#
    )
}

/// How to start an Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    pub champion: String,
    pub challenger: String,
    pub champion_port: u16,
    pub challenger_port: u16,
    /// Worker threads.
    pub concurrency: u32,
    /// Template under `envoy/`.
    pub template: String,
}

impl EnvoyOptions {
    pub fn new(champion: &Backend, challenger: &Backend) -> EnvoyOptions {
        EnvoyOptions {
            champion: champion.version.clone(),
            challenger: challenger.version.clone(),
            champion_port: champion.port,
            challenger_port: challenger.port,
            concurrency: 2,
            template: "sidecar.yaml".into(),
        }
    }
}

/// A running Envoy with the canary filter, fed by file-based ECDS.
pub struct Envoy {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub admin_port: u16,
    pub listen_port: u16,
    pub sink: EcdsFileSink,
    client: reqwest::Client,
    opts: EnvoyOptions,
}

/// An ECDS file with no resource: Envoy keeps serving the default config.
const EMPTY_ECDS: &str = r#"{"version_info":"none","resources":[]}"#;

impl Envoy {
    /// Renders the template for `opts` into a fresh directory; returns the
    /// directory, the config path and the ECDS sink.
    pub fn prepare(opts: &EnvoyOptions) -> Result<(tempfile::TempDir, PathBuf, EcdsFileSink)> {
        let dir = tempfile::Builder::new().prefix("canary-envoy-").tempdir()?;
        let ecds = dir.path().join("ecds");
        fs::create_dir(&ecds)?;
        let wasm = wasm_path()?;
        let sink = EcdsFileSink::new(&ecds, &wasm);
        sink.write_raw(EMPTY_ECDS.as_bytes())?;
        let path = Envoy::render(opts, dir.path(), 0, 0)?;
        Ok((dir, path, sink))
    }

    /// Writes `dir/envoy.yaml` for `opts` with the given ports (0: any free one).
    fn render(opts: &EnvoyOptions, dir: &Path, admin_port: u16, listen_port: u16) -> Result<PathBuf> {
        let ecds = dir.join("ecds");
        let wasm = wasm_path()?;
        let vars = [
            ("ADMIN_PORT", admin_port.to_string()),
            ("LISTEN_PORT", listen_port.to_string()),
            ("ECDS_DIR", ecds.display().to_string()),
            ("WASM", wasm.display().to_string()),
            ("CHAMPION", opts.champion.clone()),
            ("CHALLENGER", opts.challenger.clone()),
            ("CHAMPION_PORT", opts.champion_port.to_string()),
            ("CHALLENGER_PORT", opts.challenger_port.to_string()),
            ("ACCESS_LOG", dir.join("access.log").display().to_string()),
        ];
        let config = render_template(&root().join("envoy").join(&opts.template), &vars)?;
        let path = dir.join("envoy.yaml");
        fs::write(&path, config)?;
        Ok(path)
    }

    pub async fn start(opts: &EnvoyOptions) -> Result<Envoy> {
        let (dir, config, sink) = Envoy::prepare(opts)?;
        let (proc, admin_port, deadline) = Envoy::spawn(opts, dir.path(), &config).await?;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let mut envoy = Envoy { proc, dir, admin_port, listen_port: 0, sink, client, opts: opts.clone() };
        envoy.listen_port = envoy.wait_ready(deadline).await?;
        Ok(envoy)
    }

    /// Starts Envoy on `config`; returns it with its admin port and the
    /// deadline for readiness.
    async fn spawn(opts: &EnvoyOptions, dir: &Path, config: &Path) -> Result<(Proc, u16, Instant)> {
        let admin_file = dir.join("admin-address");
        let _ = fs::remove_file(&admin_file);
        let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("envoy.log"))?;
        let mut proc = Proc::spawn(
            "envoy",
            Command::new(envoy_bin()?)
                .arg("-c")
                .arg(config)
                .args(["--disable-hot-restart", "--concurrency", &opts.concurrency.to_string(), "-l", "info"])
                // Access-log lines reach the file within 200 ms (default 10 s).
                .args(["--file-flush-interval-msec", "200"])
                .arg("--admin-address-path")
                .arg(&admin_file)
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin_port = loop {
            if let Some(status) = proc.exited() {
                bail!("envoy exited ({status}) at start-up:\n{}", error_lines(&dir.join("envoy.log")));
            }
            if let Some(port) =
                fs::read_to_string(&admin_file).ok().and_then(|a| a.trim().rsplit(':').next()?.parse().ok())
            {
                break port;
            }
            if Instant::now() > deadline {
                bail!("envoy wrote no admin address within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok((proc, admin_port, deadline))
    }

    /// Kills Envoy (SIGKILL: its counters are lost) and starts a new one on
    /// the same ports, ECDS directory and configuration: what a crashed
    /// sidecar does. Returns how long it was down.
    pub async fn restart(&mut self) -> Result<Duration> {
        let down_at = Instant::now();
        self.proc.stop();
        let config = Envoy::render(&self.opts, self.dir.path(), self.admin_port, self.listen_port)?;
        // The ports were just released; a few tries cover a slow release.
        let mut tries = 0;
        let (proc, admin_port, deadline) = loop {
            match Envoy::spawn(&self.opts, self.dir.path(), &config).await {
                Ok(started) => break started,
                Err(e) if tries < 20 => {
                    tries += 1;
                    eprintln!("envoy restart try {tries} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.proc = proc;
        if admin_port != self.admin_port {
            bail!("restarted envoy has admin port {admin_port}, expected {}", self.admin_port);
        }
        let listen = self.wait_ready(deadline).await?;
        if listen != self.listen_port {
            bail!("restarted envoy listens on {listen}, expected {}", self.listen_port);
        }
        Ok(down_at.elapsed())
    }

    async fn wait_ready(&mut self, deadline: Instant) -> Result<u16> {
        loop {
            if let Some(status) = self.proc.exited() {
                bail!("envoy exited ({status}):\n{}", error_lines(&self.log_path()));
            }
            let ready = async {
                let live = self.admin_get("/ready").await.ok()?;
                if live.trim() != "LIVE" {
                    return None;
                }
                let listeners: serde_json::Value =
                    serde_json::from_str(&self.admin_get("/listeners?format=json").await.ok()?).ok()?;
                listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()
            }
            .await;
            if let Some(port) = ready {
                return Ok(port as u16);
            }
            if Instant::now() > deadline {
                bail!("envoy not ready within 30 s:\n{}", error_lines(&self.log_path()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The access log's lines (one JSON object each).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen_port)
    }

    pub async fn admin_get(&self, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        Ok(self.client.get(&url).send().await?.error_for_status()?.text().await?)
    }

    /// Counters and gauges matching a regex, by name.
    pub async fn stats(&self, filter: &str) -> Result<HashMap<String, serde_json::Value>> {
        let body = self.admin_get(&format!("/stats?format=json&filter={}", urlencode(filter))).await?;
        let doc: serde_json::Value = serde_json::from_str(&body)?;
        let mut out = HashMap::new();
        for stat in doc["stats"].as_array().into_iter().flatten() {
            if let Some(name) = stat["name"].as_str() {
                out.insert(name.to_string(), stat["value"].clone());
            }
        }
        Ok(out)
    }

    /// One counter's value (0 when it does not exist yet).
    pub async fn counter(&self, name: &str) -> Result<u64> {
        let stats = self.stats(&format!("^{}$", regex_escape(name))).await?;
        Ok(stats.get(name).and_then(|v| v.as_u64()).unwrap_or(0))
    }

    /// The filter's per-version counter, as published by Envoy.
    pub async fn canary_counter(
        &self,
        c: &FilterConfig,
        version: &str,
        counter: canary_core::metrics::Counter,
    ) -> Result<u64> {
        counters_settled().await;
        self.counter(&format!(
            "wasmcustom.{}",
            canary_core::metrics::metric_name(&c.rollout, c.epoch, version, counter)
        ))
        .await
    }

    /// ECDS counter `extension_config_discovery.http_filter.canary.<name>`.
    pub async fn ecds_counter(&self, name: &str) -> Result<u64> {
        self.counter(&format!("extension_config_discovery.http_filter.canary.{name}")).await
    }

    /// Pushes a configuration and waits until Envoy reports it applied.
    pub async fn push(&self, config: &FilterConfig) -> Result<Duration> {
        let start = Instant::now();
        self.sink.push(config)?;
        self.wait_version(&EcdsFileSink::version_info(config)).await?;
        Ok(start.elapsed())
    }

    /// Waits until the active ECDS version is `version`.
    pub async fn wait_version(&self, version: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.stats("http_filter.canary.version_text").await?;
            if stats.values().any(|v| v.as_str() == Some(version)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "envoy did not apply ECDS version {version} within 10 s (stats {stats:?}):\n{}",
                    error_lines(&self.log_path())
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Lines of an Envoy log worth showing on failure: errors, criticals, and
/// what the filter logged.
pub fn error_lines(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> =
        text.lines().filter(|l| l.contains("[error]") || l.contains("[critical]") || l.contains("wasm log")).collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Percent-encodes everything but RFC 3986's unreserved characters (query values).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c.to_string() } else { format!("\\{c}") })
        .collect()
}

/// What the client saw for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// `x-model-version` on the response (the filter's tag).
    pub version: Option<String>,
    /// `x-canary-stage` on the response.
    pub stage: Option<String>,
    /// `x-canary-unkeyed` on the response.
    pub unkeyed: bool,
    /// `x-served-by`: the backend that really answered.
    pub served_by: Option<String>,
    pub body: String,
}

/// Sends one GET with the given headers.
pub async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (version, stage, unkeyed, served_by) =
        (h("x-model-version"), h("x-canary-stage"), h("x-canary-unkeyed").is_some(), h("x-served-by"));
    let status = resp.status().as_u16();
    Ok(Reply { status, version, stage, unkeyed, served_by, body: resp.text().await? })
}

/// One request per user (`x-user-id`), `concurrency` at a time; replies in
/// the users' order.
pub async fn route_users(
    client: &reqwest::Client,
    url: &str,
    users: &[String],
    concurrency: usize,
) -> Result<Vec<Reply>> {
    futures::stream::iter(users)
        .map(|u| async move { get(client, url, &[("x-user-id", u.as_str())]).await })
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// `n` distinct user ids with a prefix.
pub fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A keep-alive HTTP client for load against 127.0.0.1.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(256).build().unwrap_or_default()
}

/// The filter hands its counters to Envoy every 100 ms (FLUSH_PERIOD in
/// filter/wasm): after traffic, wait this long before reading them.
pub const COUNTER_FLUSH: Duration = Duration::from_millis(300);

/// Waits until every counter of traffic already answered has reached Envoy.
pub async fn counters_settled() {
    tokio::time::sleep(COUNTER_FLUSH).await;
}

/// The champion and challenger version names the tests use.
pub const CHAMPION: &str = "v1";
pub const CHALLENGER: &str = "v2";

/// A filter configuration for the test versions.
pub fn filter_config(rollout: &str, epoch: u64, weight_bp: u64) -> FilterConfig {
    let json = serde_json::json!({
        "rollout": rollout, "epoch": epoch, "stage": format!("w{weight_bp}"), "salt": rollout,
        "champion": CHAMPION, "challenger": CHALLENGER, "challenger_weight_bp": weight_bp,
        "key": [{"header": "x-user-id"}, {"cookie": "uid"}],
    });
    // The literal above is valid by construction; a failure here is a bug in the test.
    FilterConfig::from_json(json.to_string().as_bytes()).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// Two backends and one Envoy in front of them.
pub struct Rig {
    pub champion: Backend,
    pub challenger: Backend,
    pub envoy: Envoy,
}

impl Rig {
    pub async fn start() -> Result<Rig> {
        let champion = Backend::start(CHAMPION, &[])?;
        let challenger = Backend::start(CHALLENGER, &[])?;
        let envoy = Envoy::start(&EnvoyOptions::new(&champion, &challenger)).await?;
        Ok(Rig { champion, challenger, envoy })
    }

    /// Another Envoy in front of the same backends.
    pub async fn second_envoy(&self) -> Result<Envoy> {
        Envoy::start(&EnvoyOptions::new(&self.champion, &self.challenger)).await
    }
}

/// Steady keyed load through an Envoy from background tasks, until dropped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` concurrent loops, each sending requests for users
    /// `prefix-0 .. prefix-<users>` in turn; `pause` between requests of one loop.
    pub fn start(url: String, clients: usize, users: usize, pause: Duration) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..clients)
            .map(|worker| {
                let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let user = format!("load-{}", i % users.max(1));
                        match get(&c, &url, &[("x-user-id", &user)]).await {
                            Ok(r) if r.status < 500 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        i += clients;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, tasks }
    }

    /// About `rps` requests a second in all (users `load-0 .. load-<users>`),
    /// from `clients` loops each ticking every `clients / rps` seconds: the
    /// steady low traffic a small service sees, not a flood.
    pub fn paced(url: String, rps: u32, clients: usize, users: usize) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let period = Duration::from_secs_f64(clients as f64 / f64::from(rps.max(1)));
        let tasks = (0..clients)
            .map(|worker| {
                let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let user = format!("load-{}", i % users.max(1));
                        match get(&c, &url, &[("x-user-id", &user)]).await {
                            Ok(r) if r.status < 500 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        i += clients;
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, tasks }
    }

    pub async fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A local webhook receiver that keeps every JSON body it gets.
pub struct Receiver {
    pub url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Result<Receiver> {
        use axum::routing::post;
        let received = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let r = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let r = r.clone();
                async move {
                    r.lock().unwrap_or_else(|e| e.into_inner()).push(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { url, received, task })
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `canary` with arguments and returns (success, stdout, stderr).
pub fn canary(args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(workspace_bin("canary")?).args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A `canary run` daemon on a state directory; killed when dropped.
pub struct Daemon {
    pub proc: Proc,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `canary run`; `spec` is written to the state dir's parent when given.
    pub fn start(state_dir: &Path, spec: Option<&str>) -> Result<Daemon> {
        Daemon::start_with(state_dir, spec, &[])
    }

    /// [`Daemon::start`] with environment variables (e.g. `CANARY_TOKEN`, `RUST_LOG`).
    pub fn start_with(state_dir: &Path, spec: Option<&str>, env: &[(&str, &str)]) -> Result<Daemon> {
        let mut cmd = Command::new(workspace_bin("canary")?);
        cmd.arg("run").arg("--state-dir").arg(state_dir);
        cmd.envs(env.iter().copied());
        if let Some(spec) = spec {
            let path = state_dir.with_extension("spec.yaml");
            fs::write(&path, spec)?;
            cmd.arg("--spec").arg(path);
        }
        let log = state_dir.with_extension(format!(
            "daemon-{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos()
        ));
        let out = fs::File::create(&log)?;
        let proc = Proc::spawn("canary run", cmd.stdout(out.try_clone()?).stderr(out))?;
        Ok(Daemon { proc, log })
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon to exit by itself (the rollout ended).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.exited() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("daemon still running after {timeout:?}:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, no cleanup: a crash.
    pub fn kill9(&mut self) {
        self.proc.stop();
    }
}

/// The rollout's decision log.
pub fn decisions(state_dir: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(state_dir.join("decisions.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The rollout's state file.
pub fn state(state_dir: &Path) -> serde_json::Value {
    fs::read(state_dir.join("state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// A rollout spec for the test versions against one Envoy, compressed to
/// seconds. `extra` is appended (YAML), e.g. alerts.
pub fn rollout_spec(
    rollout: &str,
    envoy: &Envoy,
    min_duration: &str,
    min_requests: u64,
    gates: &str,
    extra: &str,
) -> String {
    let stages: Vec<(u32, &str, u64)> = [1, 5, 20, 50].iter().map(|w| (*w, min_duration, min_requests)).collect();
    spec_with(rollout, &format!("http://127.0.0.1:{}", envoy.admin_port), envoy, &stages, gates, extra)
}

/// A rollout spec with stages `(weight_percent, min_duration,
/// min_requests)` before the final 100 %, read from the admin API at
/// `admin` (an Envoy's, or a proxy in front of it), pushing to `envoy`'s
/// ECDS directory.
pub fn spec_with(
    rollout: &str,
    admin: &str,
    envoy: &Envoy,
    stages: &[(u32, &str, u64)],
    gates: &str,
    extra: &str,
) -> String {
    let stages: String = stages
        .iter()
        .map(|(w, d, n)| format!("  - {{ weight_percent: {w}, min_duration: {d}, min_requests: {n} }}\n"))
        .collect();
    format!(
        "rollout: {rollout}\nchampion: {CHAMPION}\nchallenger: {CHALLENGER}\ninterval: 200ms\nstages:\n{stages}  - {{ weight_percent: 100 }}\ngates:\n{gates}\nenvoy:\n  admin: [\"{admin}\"]\n  ecds_dir: {}\n  wasm: {}\n  timeout: 1s\n  apply_timeout: 5s\nfilter:\n  key: [{{ header: x-user-id }}, {{ cookie: uid }}]\n{extra}",
        envoy.sink.path().parent().map(|p| p.display().to_string()).unwrap_or_default(),
        wasm_path().map(|p| p.display().to_string()).unwrap_or_default(),
    )
}

/// Polls `cond` every 20 ms until it holds; fails after `timeout` with
/// `what` and whatever `context` says then (e.g. a daemon's output).
pub async fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the state file says stage index `stage` (or, with `None`,
/// a final phase); fails with the daemon's output.
pub async fn wait_stage(state_dir: &Path, stage: Option<u64>, timeout: Duration, daemon: &Daemon) -> Result<Duration> {
    let what = match stage {
        Some(s) => format!("reach stage index {s}"),
        None => "end the rollout".into(),
    };
    wait_until(
        timeout,
        &what,
        || {
            let st = state(state_dir);
            match stage {
                Some(s) => st["stage"].as_u64() == Some(s),
                None => st["phase"] == "promoted" || st["phase"] == "rolled_back",
            }
        },
        || format!("state: {}\n{}", state(state_dir), daemon.output()),
    )
    .await
}

/// Waits until the decision log has a decision matching `pred` (the state
/// is written before the log line) and returns it.
pub async fn wait_decision(
    state_dir: &Path,
    timeout: Duration,
    daemon: &Daemon,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let mut found = None;
    wait_until(
        timeout,
        "a matching decision in the log",
        || {
            found = decisions(state_dir).into_iter().find(|d| pred(d));
            found.is_some()
        },
        || daemon.output(),
    )
    .await?;
    found.ok_or_else(|| anyhow!("unreachable: found no decision"))
}

/// What an [`AdminProxy`] does with each new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMode {
    /// Forwards to the real admin API.
    Pass,
    /// Accepts and closes at once: the admin API is down.
    Down,
    /// Accepts, reads, never answers: a hung admin API.
    Hang,
    /// Forwards, but only after this delay (beyond the controller's timeout).
    Slow(Duration),
    /// Answers 200 with a body that is not Envoy's stats JSON.
    Garbage,
}

/// A TCP proxy in front of an Envoy admin API whose behaviour a test
/// switches while the controller reads through it.
pub struct AdminProxy {
    pub url: String,
    mode: std::sync::Arc<std::sync::Mutex<AdminMode>>,
    /// Connections accepted so far.
    pub connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminProxy {
    pub async fn start(admin_port: u16) -> Result<AdminProxy> {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let mode = std::sync::Arc::new(std::sync::Mutex::new(AdminMode::Pass));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (m, n) = (mode.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                n.fetch_add(1, Ordering::Relaxed);
                let mode = *m.lock().unwrap_or_else(|e| e.into_inner());
                tokio::spawn(async move {
                    let forward = |mut inbound: tokio::net::TcpStream| async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    };
                    match mode {
                        AdminMode::Pass => forward(inbound).await,
                        AdminMode::Down => drop(inbound),
                        AdminMode::Hang => {
                            let mut buf = [0u8; 4096];
                            while matches!(inbound.read(&mut buf).await, Ok(k) if k > 0) {}
                        }
                        AdminMode::Slow(d) => {
                            tokio::time::sleep(d).await;
                            forward(inbound).await;
                        }
                        AdminMode::Garbage => {
                            let mut buf = [0u8; 4096];
                            let _ = inbound.read(&mut buf).await;
                            let body = "{\"stats\": [{\"name\": 42, \"value\": \"\\u0000\"}, \u{1}\u{2}not json";
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = inbound.write_all(head.as_bytes()).await;
                            let _ = inbound.write_all(body.as_bytes()).await;
                            let _ = inbound.shutdown().await;
                        }
                    }
                });
            }
        });
        Ok(AdminProxy { url, mode, connections, task })
    }

    pub fn set(&self, mode: AdminMode) {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }
}

impl Drop for AdminProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Debian's Chromium (installed by `scripts/setup.sh browser`) or `CANARY_CHROMIUM`.
pub fn chromium_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CANARY_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let p = PathBuf::from("/usr/bin/chromium");
    if p.exists() {
        return Ok(p);
    }
    bail!("no Chromium at /usr/bin/chromium: run `bash scripts/setup.sh browser` or set CANARY_CHROMIUM")
}

/// The flags that keep headless Chromium off the (closed) network.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// Loads `url` in headless Chromium, saves a screenshot to `png`, and returns
/// the console messages Chromium logged (`CONSOLE` lines of its stderr).
/// Chromium is killed if it takes longer than 60 s.
pub fn chromium_screenshot(url: &str, png: &Path, width: u32, height: u32) -> Result<Vec<String>> {
    let profile = tempfile::tempdir()?;
    let mut cmd = Command::new(chromium_bin()?);
    cmd.args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn("chromium", &mut cmd)?;
    let stderr = proc.child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while proc.exited().is_none() {
        if Instant::now() > deadline {
            proc.stop();
            bail!("chromium took more than 60 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = reader.join().unwrap_or_default();
    if !png.exists() {
        bail!("chromium wrote no screenshot of {url}:\n{text}");
    }
    Ok(text.lines().filter(|l| l.contains("CONSOLE")).map(str::to_owned).collect())
}

/// Distinct colours in a PNG (a blank page has one or two).
pub fn png_colours(png: &Path) -> Result<usize> {
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(png)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let bpp = info.color_type.samples() * usize::from(info.bit_depth as u8).div_ceil(8);
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(bpp.max(1)).collect();
    Ok(colours.len())
}
