//! Envoy with the canary filter: templates and `envoy --mode validate`, a
//! running Envoy fed by file-based ECDS and its admin API, the test versions'
//! filter configuration, the two-backend rig, and a switchable proxy in front
//! of an admin API.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use canary_controller::sink::EcdsFileSink;
use canary_core::FilterConfig;

use crate::*;

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
pub(crate) const EMPTY_ECDS: &str = r#"{"version_info":"none","resources":[]}"#;

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

pub(crate) fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c.to_string() } else { format!("\\{c}") })
        .collect()
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
