//! Controller scale in steady state: consecutive evaluations of the real
//! daemon's code path (`Controller::tick`: admin-source read of every
//! endpoint, restart correction, merge, the state machine's step, the
//! state and tracker writes) over 100 / 1 000 / 5 000 / 10 000 simulated
//! Envoy admin endpoints serving a recorded real answer
//! (`tests/fixtures/envoy-stats.json`), two of them hanging (first and last
//! in the list) and one answering garbage.
//!
//! ```text
//!  canary-bench fleet --endpoints N         (child 1: N local HTTP servers; prints their ports)
//!  canary-bench evaluations --ports-file F  (child 2, fresh: E evaluations, one per interval;
//!                                            prints CPU, wall, read time, peak memory and bytes
//!                                            written per evaluation as JSON)
//! ```
//!
//! The evaluations run in a fresh process so that its CPU time (getrusage)
//! and peak memory are the controller's own, not the simulated endpoints'.
//! The peak is reset before every evaluation (`/proc/self/clear_refs` 5), so
//! each evaluation's VmHWM is its own; the 10th is the steady-state figure.
//! The controller reads with the daemon's settings (64 endpoints at a time)
//! and the issue's: interval 2 s, timeout 1 s. After the evaluations, two
//! more reads (a fresh source each) time one hanging endpoint alone first,
//! then alone last in the list.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use canary_controller::control::Controller;
use canary_controller::source::{AdminSource, AdminSourceConfig};
use canary_judge::spec::RolloutSpec;
use canary_tests::fleet::{fixture, Behaviour, Fleet, FIXTURE_EPOCH, FIXTURE_ROLLOUT, FIXTURE_VERSION};

/// Endpoints read at once, as `Controller::source` does.
pub const CONCURRENCY: usize = 64;

/// Evaluations per size (the 10th is the steady-state row).
pub const EVALUATIONS: usize = 12;
/// The evaluation reported as steady state (1-based).
pub const STEADY: usize = 10;
/// Defaults (the issue's settings); `canary-bench scale --timeout-ms
/// --interval-ms` change them (a fleet whose read does not fit in one
/// timeout on this machine loses its last endpoints to the deadline).
pub const INTERVAL: Duration = Duration::from_secs(2);
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// One evaluation of one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluationRow {
    pub wall_ms: f64,
    pub read_ms: f64,
    pub cpu_ms: f64,
    /// VmHWM of this evaluation (reset just before it), MiB.
    pub peak_rss_mib: f64,
    /// VmRSS after it, MiB.
    pub rss_mib: f64,
    /// Bytes written into the state directory by this evaluation.
    pub written_bytes: u64,
    pub action: String,
}

/// One size: the steady-state evaluation, and every evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRow {
    pub endpoints: usize,
    pub answered: usize,
    /// The steady-state evaluation ([`STEADY`]th): read + merge + step + writes.
    pub wall_ms: f64,
    /// Of which the read and merge (the source's part).
    pub read_ms: f64,
    /// User + system CPU of the controller process during the evaluation.
    pub cpu_ms: f64,
    /// Peak resident memory of the controller process during the
    /// evaluation, MiB (VmHWM, reset before it).
    pub peak_rss_mib: f64,
    /// The decision's action (`hold`/`advance`/...), as a sanity check.
    pub action: String,
    /// Peak over the whole process (all evaluations), MiB.
    #[serde(default)]
    pub process_peak_rss_mib: f64,
    /// Bytes written into the state directory by the steady-state evaluation.
    #[serde(default)]
    pub written_bytes: u64,
    /// Most bytes written by one evaluation after the first.
    #[serde(default)]
    pub written_max_bytes: u64,
    /// `state.json` and the tracker's shards after the last evaluation.
    #[serde(default)]
    pub state_json_bytes: u64,
    #[serde(default)]
    pub tracker_bytes: u64,
    /// One read with a single hanging endpoint first, then last, in the list.
    #[serde(default)]
    pub read_hang_first_ms: f64,
    #[serde(default)]
    pub read_hang_last_ms: f64,
    #[serde(default)]
    pub timeout_ms: f64,
    #[serde(default)]
    pub interval_ms: f64,
    #[serde(default)]
    pub evaluations: Vec<EvaluationRow>,
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

/// `canary-bench fleet`: serves the fixture on `n` ports until stdin closes;
/// the first and last hang, the middle one answers garbage.
pub fn fleet(n: usize) -> Result<()> {
    let limit = raise_fd_limit()?;
    if (n as u64) + 64 > limit {
        bail!("{n} endpoints need more open files than the limit {limit} (ulimit -n)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        let body = std::sync::Arc::new(fixture()?);
        let mut behaviours: Vec<Behaviour> = (0..n).map(|_| Behaviour::Stats(body.clone())).collect();
        // Two hanging (first and last in the list), one garbage (middle).
        if n >= 3 {
            behaviours[0] = Behaviour::Hang;
            behaviours[n - 1] = Behaviour::Hang;
            behaviours[n / 2] = Behaviour::Garbage;
        }
        let fleet = Fleet::start(behaviours).await?;
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

fn vm_rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/self/status"))
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Every file under `dir`: (size, inode, mtime in ns).
fn files(dir: &Path) -> BTreeMap<PathBuf, (u64, u64, i128)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    e.path(),
                    (m.len(), m.ino(), i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())),
                );
            }
        }
    }
    out
}

/// Bytes written between two listings: a replaced or new file counts
/// whole, an appended one (same inode, longer) by what it gained.
fn written(before: &BTreeMap<PathBuf, (u64, u64, i128)>, after: &BTreeMap<PathBuf, (u64, u64, i128)>) -> u64 {
    after
        .iter()
        .map(|(p, &(len, ino, mtime))| match before.get(p) {
            Some(&(l0, i0, m0)) if i0 == ino && m0 == mtime && l0 == len => 0,
            Some(&(l0, i0, _)) if i0 == ino && len >= l0 => len - l0,
            _ => len,
        })
        .sum()
}

fn dir_bytes(dir: &Path) -> u64 {
    files(dir).values().map(|(len, _, _)| len).sum()
}

/// `canary-bench evaluations`: [`EVALUATIONS`] evaluations, one per
/// interval, over the endpoints listed (as a JSON array of ports) in
/// `ports_file`; prints a [`ScaleRow`] as JSON.
pub fn evaluations(ports_file: &Path, count: usize, timeout: Duration, interval: Duration) -> Result<()> {
    raise_fd_limit()?;
    let ports: Vec<u16> = serde_json::from_slice(&std::fs::read(ports_file)?)?;
    let endpoints: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let work = tempfile::tempdir()?;
    let (state_dir, ecds_dir) = (work.path().join("state"), work.path().join("ecds"));
    std::fs::create_dir_all(&ecds_dir)?;
    let spec = RolloutSpec::from_yaml(&format!(
        "rollout: {FIXTURE_ROLLOUT}\nchampion: v1\nchallenger: v2\ninterval: {}ms\n\
         stages: [{{weight_percent: 30, min_duration: 1h, min_requests: 100}}, {{weight_percent: 100}}]\n\
         gates: {{error_rate: {{error_tolerance: 1}}, latency: {{latency_tolerance_multiplier: 1.5}}}}\n\
         envoy: {{admin: {}, ecds_dir: {}, wasm: /nonexistent.wasm, timeout: {}ms}}\n",
        interval.as_millis(),
        serde_json::to_string(&endpoints)?,
        ecds_dir.display(),
        timeout.as_millis()
    ))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut controller = Controller::open(&state_dir, Some(spec), false, &Default::default())?;
    let mut source = controller.source();
    let started = Instant::now();
    let mut rows = vec![];
    for i in 0..count {
        // One evaluation per interval, as the daemon's ticker (late ones start at once).
        let due = started + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let before = files(&state_dir);
        reset_peak();
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let decision = rt.block_on(controller.tick(&mut source))?;
        let (wall, cpu) = (t0.elapsed(), cpu_seconds() - cpu0);
        let decision = decision.ok_or_else(|| anyhow!("evaluation {} judged nothing", i + 1))?;
        let row = EvaluationRow {
            wall_ms: wall.as_secs_f64() * 1e3,
            read_ms: controller.last_read().unwrap_or_default().as_secs_f64() * 1e3,
            cpu_ms: cpu * 1e3,
            peak_rss_mib: vm_hwm_kib()? as f64 / 1024.0,
            rss_mib: vm_rss_kib()? as f64 / 1024.0,
            written_bytes: written(&before, &files(&state_dir)),
            action: format!("{:?}", decision.action).to_lowercase(),
        };
        eprintln!(
            "bench:   {} endpoints, evaluation {:2}: {:6.0} ms wall, read {:6.0} ms, {:6.0} ms CPU, peak {:6.1} MiB, wrote {:9} B, {}",
            ports.len(),
            i + 1,
            row.wall_ms,
            row.read_ms,
            row.cpu_ms,
            row.peak_rss_mib,
            row.written_bytes,
            row.action
        );
        rows.push(row);
    }
    let process_peak = rows.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max);
    // One hanging endpoint alone, first then last in the list (fresh sources).
    // (The decisions hold on partial coverage and carry no window: the
    // answered count comes from these reads.)
    let positional = |list: Vec<String>| -> (f64, usize) {
        let mut s = AdminSource::new(AdminSourceConfig { endpoints: list, timeout, max_concurrency: CONCURRENCY });
        let t0 = Instant::now();
        let w = rt.block_on(s.read(FIXTURE_ROLLOUT, FIXTURE_EPOCH, FIXTURE_VERSION));
        (t0.elapsed().as_secs_f64() * 1e3, w.coverage.answered)
    };
    let n = endpoints.len();
    let ((first, answered), (last, _)) = if n >= 3 {
        (positional(endpoints[..n - 1].to_vec()), positional(endpoints[1..].to_vec()))
    } else {
        let all = positional(endpoints.clone());
        (all, all)
    };
    let steady = rows.get(STEADY.min(count) - 1).cloned().ok_or_else(|| anyhow!("no evaluation"))?;
    let row = ScaleRow {
        endpoints: n,
        answered,
        wall_ms: steady.wall_ms,
        read_ms: steady.read_ms,
        cpu_ms: steady.cpu_ms,
        peak_rss_mib: steady.peak_rss_mib,
        action: steady.action.clone(),
        process_peak_rss_mib: process_peak,
        written_bytes: steady.written_bytes,
        written_max_bytes: rows.iter().skip(1).map(|r| r.written_bytes).max().unwrap_or(0),
        state_json_bytes: std::fs::metadata(state_dir.join("state.json")).map_or(0, |m| m.len()),
        tracker_bytes: dir_bytes(&state_dir.join("tracker")),
        read_hang_first_ms: first,
        read_hang_last_ms: last,
        timeout_ms: timeout.as_secs_f64() * 1e3,
        interval_ms: interval.as_secs_f64() * 1e3,
        evaluations: rows,
    };
    println!("{}", serde_json::to_string(&row)?);
    Ok(())
}

/// Measures each size: starts a fleet, runs the evaluations in a fresh
/// process, stops the fleet. `exe` is this binary.
pub fn measure(
    exe: &Path,
    sizes: &[usize],
    work: &Path,
    timeout: Duration,
    interval: Duration,
) -> Result<Vec<ScaleRow>> {
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
                "controller evaluations",
                Command::new(exe)
                    .arg("evaluations")
                    .arg("--ports-file")
                    .arg(&file)
                    .arg("--count")
                    .arg(EVALUATIONS.to_string())
                    .arg("--timeout-ms")
                    .arg(timeout.as_millis().to_string())
                    .arg("--interval-ms")
                    .arg(interval.as_millis().to_string())
                    .stdout(Stdio::piped()),
            )?;
            let mut stdout = String::new();
            std::io::Read::read_to_string(
                &mut cycle.child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?,
                &mut stdout,
            )?;
            if !cycle.wait()?.success() {
                bail!("the evaluations over {n} endpoints failed (the error is above)");
            }
            let row: ScaleRow = serde_json::from_str(stdout.trim()).context("the evaluations' row")?;
            let working = if n >= 3 { n - 3 } else { n };
            if row.answered != working {
                // Reported, not hidden: the read did not fit in the deadline here.
                eprintln!(
                    "bench: only {} of {n} simulated endpoints answered within the deadline ({working} could)",
                    row.answered
                );
            }
            Ok(row)
        })();
        // Closing stdin ends the fleet; the handle kills it by PID anyway.
        drop(fleet.child.stdin.take());
        fleet.stop();
        let row = result?;
        eprintln!(
            "bench: controller over {n} endpoints, evaluation {STEADY}: {:.0} ms wall, {:.0} ms CPU, {:.1} MiB peak, {} B written; one hanging first {:.0} ms, last {:.0} ms",
            row.wall_ms, row.cpu_ms, row.peak_rss_mib, row.written_bytes, row.read_hang_first_ms, row.read_hang_last_ms
        );
        rows.push(row);
    }
    Ok(rows)
}
