//! Envoys for the bench: rendered from `envoy/bench-*.yaml`, started with
//! `--concurrency 1` under `taskset -c CPU`, stopped by PID. CPU time and RSS
//! come from `/proc/<pid>`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use canary_tests::{render_template, urlencode};

use crate::http;
use crate::procs::Proc;

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// File under `envoy/`.
    pub template: String,
    /// The .wasm, for templates with a filter.
    pub wasm: Option<PathBuf>,
    /// Plugin configuration JSON, for templates with a filter.
    pub plugin_config: Option<String>,
}

/// A running Envoy.
pub struct Envoy {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub admin_port: u16,
    pub listen_port: u16,
}

/// Start-up either worked or Envoy refused (and exited).
pub enum Started {
    Up(Envoy),
    Refused(String),
}

/// Lines of an Envoy log worth showing: errors, criticals, what a filter logged.
pub fn error_lines(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("[error]") || l.contains("[critical]") || l.contains("wasm log"))
        .map(|l| l.split("] ").last().unwrap_or(l))
        .collect();
    lines[lines.len().saturating_sub(6)..].join("\n")
}

/// Starts Envoy from `root/envoy/<template>` in front of `upstream_port`
/// (both clusters), pinned to `cpu`.
pub fn start(envoy_bin: &Path, root: &Path, spec: &Spec, upstream_port: u16, cpu: usize) -> Result<Started> {
    let dir = tempfile::Builder::new().prefix("canary-bench-envoy-").tempdir()?;
    let vars = [
        ("ADMIN_PORT", "0".to_string()),
        ("LISTEN_PORT", "0".to_string()),
        ("WASM", spec.wasm.as_ref().map(|p| p.display().to_string()).unwrap_or_default()),
        ("DEFAULT_CONFIG", spec.plugin_config.clone().unwrap_or_default()),
        ("CHAMPION", "v1".to_string()),
        ("CHALLENGER", "v2".to_string()),
        ("CHAMPION_PORT", upstream_port.to_string()),
        ("CHALLENGER_PORT", upstream_port.to_string()),
    ];
    let config = render_template(&root.join("envoy").join(&spec.template), &vars)?;
    let config_path = dir.path().join("envoy.yaml");
    fs::write(&config_path, config)?;
    let admin_file = dir.path().join("admin-address");
    let log_path = dir.path().join("envoy.log");
    let log = fs::File::create(&log_path)?;
    let mut proc = Proc::spawn(
        &format!("envoy {}", spec.template),
        Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(envoy_bin)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warning"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let admin_port = loop {
        if let Some(status) = proc.exited() {
            return Ok(Started::Refused(format!("Envoy exited ({status}) at start-up: {}", error_lines(&log_path))));
        }
        if let Some(port) =
            fs::read_to_string(&admin_file).ok().and_then(|a| a.trim().rsplit(':').next()?.parse::<u16>().ok())
        {
            break port;
        }
        if Instant::now() > deadline {
            bail!("{} wrote no admin address within 60 s: {}", proc.name, error_lines(&log_path));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let listen_port = loop {
        if let Some(status) = proc.exited() {
            return Ok(Started::Refused(format!("Envoy exited ({status}) at start-up: {}", error_lines(&log_path))));
        }
        let ready = (|| -> Option<u16> {
            if http::get(admin_port, "/ready", &[]).ok()?.text().trim() != "LIVE" {
                return None;
            }
            let listeners: serde_json::Value =
                serde_json::from_slice(&http::get(admin_port, "/listeners?format=json", &[]).ok()?.body).ok()?;
            let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
            u16::try_from(port).ok().filter(|p| *p != 0)
        })();
        if let Some(port) = ready {
            break port;
        }
        if Instant::now() > deadline {
            bail!("{} not ready within 60 s: {}", proc.name, error_lines(&log_path));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Started::Up(Envoy { proc, dir, admin_port, listen_port }))
}

impl Envoy {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    /// Sum of the counters whose name matches `regex` (admin `/stats?filter=`).
    pub fn counter_sum(&self, regex: &str) -> Result<u64> {
        let path = format!("/stats?filter={}", urlencode(regex));
        let text = http::get(self.admin_port, &path, &[])?.text();
        Ok(text.lines().filter_map(|l| l.rsplit_once(": ")).filter_map(|(_, v)| v.trim().parse::<u64>().ok()).sum())
    }

    /// Stops it if it is still running; an error if it died on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.proc.exited() {
            bail!("{} died ({status}): {}", self.proc.name, error_lines(&self.log_path()));
        }
        Ok(())
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid} is gone"))?;
    // Fields after "(comm) ": state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields.get(n - 3).and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("bad /proc/{pid}/stat field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

/// One core's time from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreTimes {
    pub total: u64,
    /// Neither idle nor iowait.
    pub busy: u64,
    /// Taken by the hypervisor for other guests.
    pub steal: u64,
}

impl CoreTimes {
    pub fn read(cpu: usize) -> Result<CoreTimes> {
        let stat = fs::read_to_string("/proc/stat")?;
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .ok_or_else(|| anyhow!("no {name} in /proc/stat"))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest times are inside user)
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        let total: u64 = (0..8).map(at).sum();
        Ok(CoreTimes { total, busy: total - at(3) - at(4), steal: at(7) })
    }

    /// Busy and steal shares of the time since `earlier`.
    pub fn since(self, earlier: CoreTimes) -> (f64, f64) {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        (self.busy.saturating_sub(earlier.busy) as f64 / total, self.steal.saturating_sub(earlier.steal) as f64 / total)
    }
}

/// user + nice + system ticks of the whole machine (`cpu` line of /proc/stat):
/// process time, without interrupts and steal.
pub fn machine_busy_ticks() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().find(|l| l.starts_with("cpu ")).ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    Ok(line.split_whitespace().skip(1).take(3).filter_map(|x| x.parse::<u64>().ok()).sum())
}

/// CPU seconds of this process's reaped children.
pub fn children_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Niceness of a process (field 19 of `/proc/<pid>/stat`).
pub fn niceness(pid: u32) -> Result<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    rest.split_whitespace()
        .nth(19 - 3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no nice in /proc/{pid}/stat"))
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_and_rss_are_readable() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(clock_ticks_per_second() >= 100);
        assert!((-20..=19).contains(&niceness(pid).unwrap()));
    }

    #[test]
    fn every_bench_template_renders_with_the_bench_placeholders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let vars: Vec<(&str, String)> = [
            "ADMIN_PORT",
            "LISTEN_PORT",
            "WASM",
            "DEFAULT_CONFIG",
            "CHAMPION",
            "CHALLENGER",
            "CHAMPION_PORT",
            "CHALLENGER_PORT",
        ]
        .into_iter()
        .map(|n| (n, "1".to_string()))
        .collect();
        for t in ["bench-plain.yaml", "bench-wasm.yaml", "bench-native.yaml"] {
            render_template(&root.join("envoy").join(t), &vars).unwrap();
        }
    }
}
