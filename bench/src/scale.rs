//! Controller scale: one evaluation cycle (admin-source read of every
//! endpoint + merge + the state machine's step) over 100 / 1 000 / 5 000
//! simulated Envoy admin endpoints serving a recorded real answer
//! (`tests/fixtures/envoy-stats.json`).
//!
//! ```text
//!  canary-bench fleet --endpoints N   (child 1: N local HTTP servers; prints their ports)
//!  canary-bench cycle --ports-file F  (child 2, fresh: one cycle; prints wall, CPU, VmHWM as JSON)
//! ```
//!
//! Each cycle runs in a fresh process so that its peak memory (VmHWM) and
//! CPU time (getrusage) are the cycle's and the process's own, not the
//! simulated endpoints' or an earlier size's. The controller reads with the
//! daemon's settings (64 endpoints at a time, 2 s per endpoint).

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use canary_controller::source::{AdminSource, AdminSourceConfig};
use canary_judge::rollout::RolloutState;
use canary_judge::spec::RolloutSpec;
use canary_tests::fleet::{fixture, Behaviour, Fleet, FIXTURE_EPOCH, FIXTURE_ROLLOUT, FIXTURE_VERSION};

/// Endpoints read at once, as `Controller::source` does.
pub const CONCURRENCY: usize = 64;

/// One size's cycle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRow {
    pub endpoints: usize,
    pub answered: usize,
    /// Read + merge + step.
    pub wall_ms: f64,
    /// Of which the read and merge (the source's part).
    pub read_ms: f64,
    /// User + system CPU of the controller process during the cycle.
    pub cpu_ms: f64,
    /// Peak resident memory of the controller process (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// The decision's action (`hold`/`advance`/...), as a sanity check.
    pub action: String,
}

/// Raises the open-files soft limit to the hard one (thousands of sockets).
pub fn raise_fd_limit() -> Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// `canary-bench fleet`: serves the fixture on `n` ports until stdin closes.
pub fn fleet(n: usize) -> Result<()> {
    let limit = raise_fd_limit()?;
    if (n as u64) + 64 > limit {
        bail!("{n} endpoints need more open files than the limit {limit} (ulimit -n)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        let body = std::sync::Arc::new(fixture()?);
        let fleet = Fleet::start((0..n).map(|_| Behaviour::Stats(body.clone())).collect()).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&fleet.ports)?)?;
        out.flush()?;
        drop(out);
        // Until the parent closes our stdin (or kills us).
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await?;
        Ok(())
    })
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct passed.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn vm_hwm_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/self/status"))
}

/// `canary-bench cycle`: one evaluation cycle over the endpoints listed (as
/// a JSON array of ports) in `ports_file`; prints a [`ScaleRow`] as JSON.
pub fn cycle(ports_file: &Path) -> Result<()> {
    raise_fd_limit()?;
    let ports: Vec<u16> = serde_json::from_slice(&std::fs::read(ports_file)?)?;
    let endpoints: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let admin = serde_json::to_string(&endpoints)?;
    let spec = RolloutSpec::from_yaml(&format!(
        "rollout: {FIXTURE_ROLLOUT}\nchampion: v1\nchallenger: v2\n\
         stages: [{{weight_percent: 30, min_duration: 1h, min_requests: 100}}, {{weight_percent: 100}}]\n\
         gates: {{error_rate: {{error_tolerance: 1}}, latency: {{latency_tolerance_multiplier: 1.5}}}}\n\
         envoy: {{admin: {admin}, ecds_dir: /nonexistent, wasm: /nonexistent.wasm}}\n"
    ))?;
    let state = RolloutState::start(&spec, 0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut source = AdminSource::new(AdminSourceConfig {
        endpoints,
        timeout: Duration::from_secs(2),
        max_concurrency: CONCURRENCY,
    });
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let window = rt.block_on(source.read(FIXTURE_ROLLOUT, FIXTURE_EPOCH, FIXTURE_VERSION));
    let read = t0.elapsed();
    let (_, decision) = state.step(&spec, Ok(&window), 60_000);
    let (wall, cpu) = (t0.elapsed(), cpu_seconds() - cpu0);
    let row = ScaleRow {
        endpoints: ports.len(),
        answered: window.coverage.answered,
        wall_ms: wall.as_secs_f64() * 1e3,
        read_ms: read.as_secs_f64() * 1e3,
        cpu_ms: cpu * 1e3,
        peak_rss_mib: vm_hwm_kib()? as f64 / 1024.0,
        action: format!("{:?}", decision.action).to_lowercase(),
    };
    println!("{}", serde_json::to_string(&row)?);
    Ok(())
}

/// Measures each size: starts a fleet, runs one cycle in a fresh process,
/// stops the fleet. `exe` is this binary.
pub fn measure(exe: &Path, sizes: &[usize], work: &Path) -> Result<Vec<ScaleRow>> {
    let mut rows = vec![];
    for &n in sizes {
        let mut fleet = crate::procs::Proc::spawn(
            "simulated endpoints",
            Command::new(exe)
                .args(["fleet", "--endpoints", &n.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        let result = (|| {
            let stdout = fleet.child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            let ports: Vec<u16> = serde_json::from_str(line.trim()).context("the fleet's ports")?;
            if ports.len() != n {
                bail!("fleet started {} of {n} endpoints", ports.len());
            }
            let file = work.join(format!("ports-{n}.json"));
            std::fs::write(&file, line.trim())?;
            let mut cycle = crate::procs::Proc::spawn(
                "controller cycle",
                Command::new(exe).arg("cycle").arg("--ports-file").arg(&file).stdout(Stdio::piped()),
            )?;
            let mut stdout = String::new();
            std::io::Read::read_to_string(
                &mut cycle.child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?,
                &mut stdout,
            )?;
            if !cycle.wait()?.success() {
                bail!("the cycle over {n} endpoints failed (its error is above)");
            }
            let row: ScaleRow = serde_json::from_str(stdout.trim()).context("the cycle's row")?;
            if row.answered != n {
                bail!("only {} of {n} simulated endpoints answered", row.answered);
            }
            Ok(row)
        })();
        // Closing stdin ends the fleet; the handle kills it by PID anyway.
        drop(fleet.child.stdin.take());
        fleet.stop();
        let row = result?;
        eprintln!(
            "bench: controller cycle over {n} endpoints: {:.0} ms wall, {:.0} ms CPU, {:.1} MiB peak",
            row.wall_ms, row.cpu_ms, row.peak_rss_mib
        );
        rows.push(row);
    }
    Ok(rows)
}
