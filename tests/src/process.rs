//! Processes and paths: the repository root, the Envoy, filter and workspace
//! binaries, a child process killed and reaped when dropped, free ports.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{anyhow, bail, Context, Result};

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
    pub(crate) child: Child,
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
