//! The model backend (`model-backend` binary) on a free port: its live
//! controls and its own count of what it served.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::*;

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

    /// What it served: `{"requests", "errors", "timeouts", "last_request_unix_ms"}`.
    pub async fn stats(&self) -> Result<BackendStats> {
        let url = format!("http://127.0.0.1:{}/_stats", self.port);
        Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
    }
}

/// A backend's own count of what it served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct BackendStats {
    pub requests: u64,
    /// 500s.
    pub errors: u64,
    /// 504s (`timeout_rate`).
    #[serde(default)]
    pub timeouts: u64,
    pub last_request_unix_ms: u64,
}
