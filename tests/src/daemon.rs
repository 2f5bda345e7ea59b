//! The controller as the tests drive it: the `canary` CLI, a `canary run`
//! daemon, its state directory (state, decision log), rollout specs for the
//! test versions, waiting for stages and decisions, and a webhook receiver.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::*;

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
