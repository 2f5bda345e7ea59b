//! `canary-bench run`: the side-by-side benchmark behind `make bench`;
//! `canary-bench upstream`: the fixed-answer upstream it starts.
//! `bench/run.sh` builds everything and calls it; see `bench/README.md`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser};

use canary_bench::bodies::{JSON_PATH, SMALL_PATH};
use canary_bench::envoy::{self, Envoy, Spec, Started};
use canary_bench::load;
use canary_bench::procs::{self, Proc};
use canary_bench::report::{
    Comparison, ConfigResult, Machine, Micro, Results, Settings, Slice, Target, Versions, WasmSizes,
};
use canary_bench::stats::{percentile_sorted, Estimate};
use canary_bench::{http, report, scale, upstream};

#[derive(Parser)]
#[command(about = "What the canary filter costs on Envoy's request path")]
enum Cli {
    /// The benchmark (normally through `make bench` / `make bench-smoke`).
    Run(Box<RunArgs>),
    /// Rewrites results.md and chart.svg from a results.json.
    Report {
        /// The results folder.
        dir: PathBuf,
    },
    /// One fixed-rate slice against 127.0.0.1:PORT (a diagnostic): prints percentiles.
    Rate {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "/small")]
        path: String,
        #[arg(long, default_value_t = 2500.0)]
        rate: f64,
        #[arg(long, default_value_t = 3)]
        secs: u64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    /// The controller scale part alone: consecutive evaluations per size
    /// over simulated admin endpoints (also part of `run`).
    Scale {
        /// Comma-separated endpoint counts.
        #[arg(long, value_delimiter = ',', default_values_t = vec![100, 1000, 5000, 10000])]
        endpoints: Vec<usize>,
        /// Also write the rows as Markdown to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        #[arg(long, default_value_t = scale::TIMEOUT.as_millis() as u64)]
        timeout_ms: u64,
        #[arg(long, default_value_t = scale::INTERVAL.as_millis() as u64)]
        interval_ms: u64,
    },
    /// Simulated Envoy admin endpoints serving the recorded stats (started by `scale`).
    Fleet {
        #[arg(long)]
        endpoints: usize,
    },
    /// Consecutive controller evaluations over the ports in a file (started by `scale`).
    Evaluations {
        #[arg(long)]
        ports_file: PathBuf,
        #[arg(long, default_value_t = scale::EVALUATIONS)]
        count: usize,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(long)]
        interval_ms: u64,
    },
    /// The bench's upstream (started by `run`).
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// One short round (< 1 min): what `make bench-smoke` runs.
    #[arg(long)]
    smoke: bool,
    /// Where results.json, results.md and chart.svg go.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    envoy: PathBuf,
    #[arg(long)]
    filter_wasm: PathBuf,
    #[arg(long)]
    noop_wasm: PathBuf,
    /// CRITERION_HOME of the micro-benchmark run, read for its estimates.
    #[arg(long)]
    criterion: Option<PathBuf>,
    /// Rounds (default 5; smoke 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of each saturation slice (default 3; smoke 1).
    #[arg(long)]
    slice_secs: Option<u64>,
    /// Seconds of each fixed-rate slice (default 3; smoke 1).
    #[arg(long)]
    fixed_secs: Option<u64>,
    /// Seconds of wrk per configuration before the rounds (default 2; smoke 1).
    #[arg(long)]
    warmup_secs: Option<u64>,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Fixed rate of the latency slices, req/s: moderate, a quarter to a third
    /// of Envoy's core here (a fixed number, so runs compare; not derived
    /// from a warm-up that other processes may have slowed).
    #[arg(long, default_value_t = 2500.0)]
    rate: f64,
    /// Connections of the fixed-rate client.
    #[arg(long, default_value_t = 16)]
    fixed_connections: usize,
    #[arg(long, default_value_t = 0)]
    envoy_cpu: usize,
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// A slice during which other processes used more than this many cores is measured again.
    #[arg(long, default_value_t = 0.15)]
    foreign_threshold: f64,
    /// How many times a slice is measured again at most.
    #[arg(long, default_value_t = 2)]
    retries: usize,
    /// Seconds the whole run may spend measuring slices again (default 150; smoke 10).
    #[arg(long)]
    retry_budget_secs: Option<u64>,
    /// Pause between slices, ms.
    #[arg(long, default_value_t = 200)]
    pause_ms: u64,
    /// How the .wasm files were built (recorded).
    #[arg(long, default_value = "")]
    wasm_toolchain: String,
    /// Other builds of canary_filter.wasm (another opt-level, or the cost
    /// ablations of bench/ablate.sh), each `LABEL=PATH`, measured with the split
    /// configuration side by side with `split`: rows `split_alt`, `split_alt2`, …
    #[arg(long = "alt", value_parser = parse_alt)]
    alts: Vec<(String, PathBuf)>,
    /// Measure only these rows (comma-separated keys: none, noop, native, split,
    /// pred_header, pred_json, none_json, noop_json, split_alt, split_alt2, …).
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<String>>,
    /// Repository root (default: the one this binary was built from).
    #[arg(long)]
    root: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse() {
        Cli::Upstream { listen } => upstream::serve(&listen),
        Cli::Fleet { endpoints } => scale::fleet(endpoints),
        Cli::Evaluations { ports_file, count, timeout_ms, interval_ms } => scale::evaluations(
            &ports_file,
            count,
            Duration::from_millis(timeout_ms),
            Duration::from_millis(interval_ms),
        ),
        Cli::Scale { endpoints, markdown, timeout_ms, interval_ms } => {
            procs::install_signal_handlers();
            let work = tempfile::tempdir()?;
            let (timeout, interval) = (Duration::from_millis(timeout_ms), Duration::from_millis(interval_ms));
            let rows = scale::measure(&std::env::current_exe()?, &endpoints, work.path(), timeout, interval);
            procs::kill_all();
            let rows = rows?;
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
            if let Some(path) = markdown {
                std::fs::write(&path, report::scale_markdown(&rows))?;
            }
            Ok(())
        }
        Cli::Rate { port, path, rate, secs, connections } => {
            let mut f = load::fixed_rate(port, &path, rate, Duration::from_secs(secs), connections)?;
            let p = sorted_percentiles(&mut f.latency_ns, &[50.0, 90.0, 99.0, 99.9, 100.0]);
            let ps = sorted_percentiles(&mut f.latency_sched_ns, &[50.0, 99.0]);
            println!(
                "sent {} ok {} errors {}; from write µs: p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0}; from schedule: p50 {:.0} p99 {:.0}",
                f.sent,
                f.latency_ns.len(),
                f.errors,
                p[0].unwrap_or(f64::NAN),
                p[1].unwrap_or(f64::NAN),
                p[2].unwrap_or(f64::NAN),
                p[3].unwrap_or(f64::NAN),
                p[4].unwrap_or(f64::NAN),
                ps[0].unwrap_or(f64::NAN),
                ps[1].unwrap_or(f64::NAN)
            );
            Ok(())
        }
        Cli::Report { dir } => {
            let results: Results = serde_json::from_slice(&fs::read(dir.join("results.json"))?)?;
            fs::write(dir.join("results.md"), results.markdown())?;
            fs::write(dir.join("chart.svg"), results.svg())?;
            Ok(())
        }
        Cli::Run(args) => {
            procs::install_signal_handlers();
            let result = run(&args);
            procs::kill_all();
            result
        }
    }
}

/// An Envoy the bench starts.
struct EnvoyDef {
    key: &'static str,
    describe: String,
    spec: Spec,
}

/// A measured configuration: an Envoy and an upstream answer.
#[derive(Clone)]
struct RowDef {
    key: &'static str,
    label: &'static str,
    envoy: &'static str,
    path: &'static str,
    /// The filter must count predictions for the row to be meaningful.
    capture: bool,
    /// Only a baseline for `pred_json`: skipped when that is not available.
    json_baseline: bool,
}

const ROWS: &[RowDef] = &[
    RowDef {
        key: "none",
        label: "1. no filter",
        envoy: "plain",
        path: SMALL_PATH,
        capture: false,
        json_baseline: false,
    },
    RowDef {
        key: "noop",
        label: "2. no-op wasm filter (V8)",
        envoy: "noop",
        path: SMALL_PATH,
        capture: false,
        json_baseline: false,
    },
    RowDef {
        key: "native",
        label: "3. native hash split (weighted_clusters)",
        envoy: "native",
        path: SMALL_PATH,
        capture: false,
        json_baseline: false,
    },
    RowDef {
        key: "split",
        label: "4. canary filter (V8), split",
        envoy: "split",
        path: SMALL_PATH,
        capture: false,
        json_baseline: false,
    },
    RowDef {
        key: "split_cluster",
        label: "4c. canary filter (V8), split, counts: cluster",
        envoy: "split_cluster",
        path: SMALL_PATH,
        capture: false,
        json_baseline: false,
    },
    RowDef {
        key: "pred_header",
        label: "5. canary + prediction from header",
        envoy: "pred_header",
        path: SMALL_PATH,
        capture: true,
        json_baseline: false,
    },
    RowDef {
        key: "pred_json",
        label: "6. canary + prediction from 1 KiB JSON body",
        envoy: "pred_json",
        path: JSON_PATH,
        capture: true,
        json_baseline: false,
    },
    RowDef {
        key: "none_json",
        label: "1j. no filter, 1 KiB JSON answer",
        envoy: "plain",
        path: JSON_PATH,
        capture: false,
        json_baseline: true,
    },
    RowDef {
        key: "noop_json",
        label: "2j. no-op wasm, 1 KiB JSON answer",
        envoy: "noop",
        path: JSON_PATH,
        capture: false,
        json_baseline: true,
    },
];

/// (row, baseline) pairs reported; the JSON row is compared with the JSON baselines.
const COMPARISONS: &[(&str, &str)] = &[
    ("noop", "none"),
    ("native", "none"),
    ("split", "none"),
    ("pred_header", "none"),
    ("pred_json", "none_json"),
    ("native", "noop"),
    ("split", "noop"),
    ("pred_header", "noop"),
    ("pred_json", "noop_json"),
    ("pred_header", "split"),
    ("split_cluster", "none"),
    ("split_cluster", "noop"),
    ("split_cluster", "split"),
    ("split_alt", "none"),
    ("split_alt", "noop"),
    ("split_alt", "split"),
];

const BINS: &str = "[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]";

fn split_config(extra: &str) -> String {
    format!(
        r#"{{"rollout":"bench","epoch":1,"stage":"50pct","salt":"bench-salt","champion":"v1","challenger":"v2","challenger_weight_bp":5000,"key":[{{"header":"x-user-id"}}]{extra}}}"#
    )
}

fn parse_alt(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((label, path)) if !label.is_empty() && !path.is_empty() => Ok((label.to_string(), path.into())),
        _ => Err(format!("expected LABEL=PATH, got `{s}`")),
    }
}

/// Row key of the `i`-th alternative build.
fn alt_key(i: usize) -> &'static str {
    if i == 0 {
        "split_alt"
    } else {
        Box::leak(format!("split_alt{}", i + 1).into_boxed_str())
    }
}

fn envoy_defs(args: &RunArgs) -> Vec<EnvoyDef> {
    let wasm = |w: &Path, config: String| Spec {
        template: "bench-wasm.yaml".into(),
        wasm: Some(w.to_path_buf()),
        plugin_config: Some(config),
    };
    let plain = |t: &str| Spec { template: t.into(), wasm: None, plugin_config: None };
    let mut defs = vec![
        EnvoyDef { key: "plain", describe: "bench-plain.yaml".into(), spec: plain("bench-plain.yaml") },
        EnvoyDef {
            key: "noop",
            describe: "bench-wasm.yaml + canary_noop_filter.wasm".into(),
            spec: wasm(&args.noop_wasm, "{}".into()),
        },
        EnvoyDef { key: "native", describe: "bench-native.yaml".into(), spec: plain("bench-native.yaml") },
        EnvoyDef {
            key: "split",
            describe: "bench-wasm.yaml + canary_filter.wasm".into(),
            spec: wasm(&args.filter_wasm, split_config("")),
        },
        EnvoyDef {
            key: "split_cluster",
            describe: "bench-wasm.yaml + canary_filter.wasm, counts: cluster".into(),
            spec: wasm(&args.filter_wasm, split_config(r#","counts":"cluster""#)),
        },
        EnvoyDef {
            key: "pred_header",
            describe: "bench-wasm.yaml + canary_filter.wasm".into(),
            spec: wasm(
                &args.filter_wasm,
                split_config(&format!(
                    r#","prediction":{{"from":{{"header":"x-prediction"}},"bins":{{"numeric":{BINS}}}}}"#
                )),
            ),
        },
        EnvoyDef {
            key: "pred_json",
            describe: "bench-wasm.yaml + canary_filter.wasm".into(),
            spec: wasm(
                &args.filter_wasm,
                split_config(&format!(
                    r#","prediction":{{"from":{{"json_pointer":"/prediction"}},"bins":{{"numeric":{BINS}}}}}"#
                )),
            ),
        },
    ];
    for (i, (label, alt)) in args.alts.iter().enumerate() {
        defs.push(EnvoyDef {
            key: alt_key(i),
            describe: format!("bench-wasm.yaml + {} ({label})", alt.display()),
            spec: wasm(alt, split_config("")),
        });
    }
    defs
}

/// Per row and round: (throughput, cpu µs/req saturated, cpu µs/req fixed, p50 µs, p99 µs).
#[derive(Default, Clone, Copy)]
struct RoundValues {
    throughput: Option<f64>,
    cpu_sat: Option<f64>,
    cpu_fixed: Option<f64>,
    util: Option<f64>,
    util_fixed: Option<f64>,
    achieved: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    /// The fixed-rate slice ran with no more than `--foreign-threshold` cores of other processes.
    quiet_fixed: bool,
    /// Saturation slice: busy share of the load generator's core, steal share of Envoy's.
    load_busy: Option<f64>,
    steal: Option<f64>,
    /// Saturation slice: cores used by other processes.
    foreign: Option<f64>,
}

/// CPU accounting around one slice.
struct Window {
    at: Instant,
    envoy_ticks: u64,
    envoy_core: envoy::CoreTimes,
    load_core: envoy::CoreTimes,
    machine_busy_ticks: u64,
    ours_s: f64,
}

struct WindowEnd {
    envoy_cpu_s: f64,
    envoy_busy: f64,
    envoy_steal: f64,
    load_busy: f64,
    /// CPU used on the machine by processes that are not the bench's, in cores.
    foreign_cores: f64,
}

/// CPU seconds of the bench's own processes: the Envoys, the upstream, this
/// process (fixed-rate client) and its reaped children (wrk).
fn ours_s(pids: &[u32], tck: f64) -> Result<f64> {
    let mut ticks = envoy::cpu_ticks(std::process::id())?;
    for pid in pids {
        ticks += envoy::cpu_ticks(*pid)?;
    }
    Ok(ticks as f64 / tck + envoy::children_cpu_s())
}

impl Window {
    fn start(pid: u32, pids: &[u32], args: &RunArgs, tck: f64) -> Result<Window> {
        Ok(Window {
            at: Instant::now(),
            envoy_ticks: envoy::cpu_ticks(pid)?,
            envoy_core: envoy::CoreTimes::read(args.envoy_cpu)?,
            load_core: envoy::CoreTimes::read(args.load_cpu)?,
            machine_busy_ticks: envoy::machine_busy_ticks()?,
            ours_s: ours_s(pids, tck)?,
        })
    }

    fn end(self, pid: u32, pids: &[u32], args: &RunArgs, tck: f64) -> Result<WindowEnd> {
        let ticks = envoy::cpu_ticks(pid)?;
        let (envoy_busy, envoy_steal) = envoy::CoreTimes::read(args.envoy_cpu)?.since(self.envoy_core);
        let (load_busy, _) = envoy::CoreTimes::read(args.load_cpu)?.since(self.load_core);
        let busy_s = envoy::machine_busy_ticks()?.saturating_sub(self.machine_busy_ticks) as f64 / tck;
        let ours = ours_s(pids, tck)? - self.ours_s;
        let wall = self.at.elapsed().as_secs_f64().max(1e-3);
        Ok(WindowEnd {
            envoy_cpu_s: (ticks - self.envoy_ticks) as f64 / tck,
            envoy_busy,
            envoy_steal,
            load_busy,
            foreign_cores: ((busy_s - ours) / wall).max(0.0),
        })
    }
}

struct RowState {
    status: String,
    reason: Option<String>,
    rounds: BTreeMap<usize, RoundValues>,
    latency: Vec<u32>,
    latency_sched: Vec<u32>,
    /// Latencies of the quiet fixed-rate slices only, and how many slices.
    latency_quiet: Vec<u32>,
    quiet_slices: usize,
    errors: u64,
    requests: u64,
}

fn sorted_percentiles(v: &mut [u32], qs: &[f64]) -> Vec<Option<f64>> {
    v.sort_unstable();
    qs.iter().map(|q| percentile_sorted(v, *q).map(|ns| ns / 1e3)).collect()
}

fn cmd_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine(args: &RunArgs) -> Machine {
    // SAFETY: sysconf has no memory-safety preconditions.
    let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u64;
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    Machine { nproc, cpu_model, kernel, envoy_cpu: args.envoy_cpu, load_cpu: args.load_cpu }
}

/// Civil date (UTC) of now, YYYY-MM-DD.
fn today() -> String {
    let days = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn start_upstream(cpu: usize) -> Result<(Proc, u16)> {
    let exe = std::env::current_exe()?;
    let mut proc = Proc::spawn(
        "upstream",
        Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(exe)
            .args(["upstream", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )?;
    let stdout = proc.child.stdout.take().ok_or_else(|| anyhow!("upstream: no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).context("upstream did not report its port within 10 s")?;
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("upstream printed {line:?}"))?;
    Ok((proc, port))
}

fn read_criterion(dir: &Path) -> Vec<Micro> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") && p.join("estimates.json").exists() {
                    out.push(p);
                } else {
                    walk(&p, out);
                }
            }
        }
    }
    let mut dirs = vec![];
    walk(dir, &mut dirs);
    let mut micro: Vec<Micro> = dirs
        .iter()
        .filter_map(|d| {
            let bench: serde_json::Value = serde_json::from_slice(&fs::read(d.join("benchmark.json")).ok()?).ok()?;
            let est: serde_json::Value = serde_json::from_slice(&fs::read(d.join("estimates.json")).ok()?).ok()?;
            Some(Micro {
                id: bench["full_id"].as_str()?.to_string(),
                mean_ns: est["mean"]["point_estimate"].as_f64()?,
                mean_lo_ns: est["mean"]["confidence_interval"]["lower_bound"].as_f64()?,
                mean_hi_ns: est["mean"]["confidence_interval"]["upper_bound"].as_f64()?,
                median_ns: est["median"]["point_estimate"].as_f64()?,
            })
        })
        .collect();
    micro.sort_by(|a, b| a.id.cmp(&b.id));
    micro
}

fn run(args: &RunArgs) -> Result<()> {
    let wall = Instant::now();
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default());
    let (rounds, slice_s, fixed_s, warmup_s) = if args.smoke {
        (
            args.rounds.unwrap_or(1),
            args.slice_secs.unwrap_or(1),
            args.fixed_secs.unwrap_or(1),
            args.warmup_secs.unwrap_or(1),
        )
    } else {
        (
            args.rounds.unwrap_or(5),
            args.slice_secs.unwrap_or(3),
            args.fixed_secs.unwrap_or(3),
            args.warmup_secs.unwrap_or(2),
        )
    };
    let machine = machine(args);
    if machine.nproc < 2 || args.envoy_cpu == args.load_cpu {
        bail!(
            "the bench needs two distinct cores (Envoy on one, the load generator on the other); this machine has {}",
            machine.nproc
        );
    }
    for tool in ["wrk", "taskset"] {
        if Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            bail!("`{tool}` is not installed: run `bash scripts/setup.sh bench`");
        }
    }
    fs::create_dir_all(&args.out)?;
    let scratch = tempfile::Builder::new().prefix("canary-bench-").tempdir()?;
    let script = load::write_wrk_script(scratch.path())?;
    let mut notes: Vec<String> = vec![];

    let versions = Versions {
        envoy: cmd_output(&args.envoy.display().to_string(), &["--version"]),
        rustc: cmd_output("rustc", &["--version"]),
        wasm_toolchain: args.wasm_toolchain.clone(),
        git_commit: cmd_output("git", &["-C", &root.display().to_string(), "rev-parse", "--short=12", "HEAD"]),
        git_dirty: !cmd_output(
            "git",
            &["-C", &root.display().to_string(), "status", "--porcelain", "--untracked-files=no"],
        )
        .is_empty(),
    };
    let wasm = WasmSizes {
        filter_bytes: fs::metadata(&args.filter_wasm).map(|m| m.len()).unwrap_or(0),
        noop_bytes: fs::metadata(&args.noop_wasm).map(|m| m.len()).unwrap_or(0),
    };

    // --- processes ---------------------------------------------------------
    let (upstream, upstream_port) = start_upstream(args.load_cpu)?;
    let probe = http::get(upstream_port, SMALL_PATH, &[])?;
    if probe.head.status != 200 {
        bail!("upstream answered {} to GET {SMALL_PATH}", probe.head.status);
    }
    eprintln!("bench: upstream on 127.0.0.1:{upstream_port}; starting Envoys on core {}", args.envoy_cpu);
    let defs = envoy_defs(args);
    let mut rows: Vec<RowDef> = ROWS.to_vec();
    for (i, (alt_label, _)) in args.alts.iter().enumerate() {
        let letter = (b'b' + i as u8) as char;
        let label: &'static str =
            Box::leak(format!("4{letter}. canary filter (V8), split, {alt_label}").into_boxed_str());
        let key = alt_key(i);
        rows.insert(4 + i, RowDef { key, label, envoy: key, path: SMALL_PATH, capture: false, json_baseline: false });
    }
    if let Some(keep) = &args.rows {
        rows.retain(|r| keep.iter().any(|k| k == r.key));
    }
    let rows = rows;
    let mut envoys: HashMap<&str, Envoy> = HashMap::new();
    let mut refused: HashMap<&str, String> = HashMap::new();
    for def in &defs {
        match envoy::start(&args.envoy, &root, &def.spec, upstream_port, args.envoy_cpu)? {
            Started::Up(e) => {
                eprintln!("bench: envoy {:<12} pid {:<7} :{} ({})", def.key, e.pid(), e.listen_port, def.describe);
                envoys.insert(def.key, e);
            }
            Started::Refused(reason) => {
                eprintln!("bench: envoy {:<12} NOT AVAILABLE: {reason}", def.key);
                refused.insert(def.key, format!("Envoy refused the configuration ({reason})"));
            }
        }
    }

    let mut state: HashMap<&str, RowState> = rows
        .iter()
        .map(|r| {
            let reason = refused.get(r.envoy).cloned();
            let st = RowState {
                status: if reason.is_some() { "not available".into() } else { "ok".into() },
                reason,
                rounds: BTreeMap::new(),
                latency: vec![],
                latency_sched: vec![],
                latency_quiet: vec![],
                quiet_slices: 0,
                errors: 0,
                requests: 0,
            };
            (r.key, st)
        })
        .collect();
    let mark = |state: &mut HashMap<&str, RowState>, key: &str, status: &str, reason: String| {
        if let Some(st) = state.get_mut(key) {
            if st.status == "ok" {
                st.status = status.into();
                st.reason = Some(reason);
            }
        }
    };

    // --- probes: every row answers 200; the canary rows are tagged ----------
    for row in &rows {
        let Some(e) = envoys.get(row.envoy) else { continue };
        match http::get(e.listen_port, row.path, &[("x-user-id", "probe-user")]) {
            Ok(r) if r.head.status == 200 => {
                let canary = row.envoy.starts_with("split") || row.envoy.starts_with("pred");
                if canary && r.head.header("x-model-version").is_none() {
                    notes.push(format!(
                        "{}: the response carried no x-model-version: the filter did not tag it",
                        row.label
                    ));
                }
            }
            Ok(r) => mark(&mut state, row.key, "not available", format!("probe answered {}", r.head.status)),
            Err(err) => mark(&mut state, row.key, "not available", format!("probe failed: {err:#}")),
        }
    }

    // --- warm-up --------------------------------------------------------------
    let mut warm: HashMap<&str, f64> = HashMap::new();
    for row in &rows {
        if state.get(row.key).is_none_or(|s| s.status != "ok") {
            continue;
        }
        let Some(e) = envoys.get(row.envoy) else { continue };
        match load::wrk(args.load_cpu, e.listen_port, row.path, warmup_s, args.connections, &script) {
            Ok(w) => {
                eprintln!("bench: warm-up {:<12} {:>8.0} req/s", row.key, w.requests as f64 / w.duration_s.max(1e-9));
                warm.insert(row.key, w.requests as f64 / w.duration_s.max(1e-9));
            }
            Err(err) => mark(&mut state, row.key, "failed", format!("warm-up: {err:#}")),
        }
        if row.capture && state.get(row.key).is_some_and(|s| s.status == "ok") {
            let counted = e.counter_sum(r"\.pred\.")?;
            if counted == 0 {
                mark(
                    &mut state,
                    row.key,
                    "not available",
                    "Envoy accepted the configuration but no pred.* counter moved during warm-up: this filter build does not capture predictions".into(),
                );
            }
        }
    }
    if state.get("pred_json").is_none_or(|s| s.status != "ok") {
        for row in rows.iter().filter(|r| r.json_baseline) {
            mark(&mut state, row.key, "skipped", "only the baseline of 6, which is not available".into());
        }
    }
    let rss_warm: HashMap<&str, u64> =
        envoys.iter().filter_map(|(k, e)| envoy::rss_kib(e.pid()).ok().map(|r| (*k, r))).collect();

    let active: Vec<&RowDef> = rows.iter().filter(|r| state.get(r.key).is_some_and(|s| s.status == "ok")).collect();
    if active.is_empty() {
        bail!("no configuration could be measured");
    }
    let rate = args.rate;
    let slowest = active.iter().filter_map(|r| warm.get(r.key)).copied().fold(f64::INFINITY, f64::min);
    let rule = format!("fixed; {:.0} % of the slowest configuration's warm-up throughput", rate / slowest * 100.0);
    eprintln!("bench: {rounds} round(s) of {} configurations; fixed rate {rate:.0} req/s", active.len());

    // --- rounds ----------------------------------------------------------------
    let tck = envoy::clock_ticks_per_second() as f64;
    let pause = Duration::from_millis(args.pause_ms);
    let mut slices: Vec<Slice> = vec![];
    let mut retries = Retries {
        count: 0,
        spent: Duration::ZERO,
        budget: Duration::from_secs(args.retry_budget_secs.unwrap_or(if args.smoke { 10 } else { 150 })),
    };
    let pids: Vec<u32> = envoys.values().map(Envoy::pid).chain([upstream.pid()]).collect();
    for round in 0..rounds {
        let n = active.len();
        for k in 0..n {
            let row = active[(k + round) % n];
            if state.get(row.key).is_none_or(|s| s.status != "ok") {
                continue;
            }
            let Some(e) = envoys.get_mut(row.envoy) else { continue };
            let pid = e.pid();
            // Saturation.
            let port = e.listen_port;
            let measured = retry(args, &mut retries, || {
                let w0 = Window::start(pid, &pids, args, tck)?;
                let w = load::wrk(args.load_cpu, port, row.path, slice_s, args.connections, &script)?;
                Ok((w, w0.end(pid, &pids, args, tck)?))
            });
            let (w, win, attempts) = match measured {
                Ok(m) => m,
                Err(err) => {
                    let _ = e.check_alive();
                    mark(&mut state, row.key, "failed", format!("round {round}: {err:#}"));
                    continue;
                }
            };
            let st = state.get_mut(row.key).ok_or_else(|| anyhow!("no state"))?;
            let good = w.requests.saturating_sub(w.errors).max(1);
            st.errors += w.errors;
            st.requests += w.requests;
            let cpu_s = win.envoy_cpu_s;
            let v = st.rounds.entry(round).or_default();
            v.throughput = Some(w.requests as f64 / w.duration_s.max(1e-9));
            v.cpu_sat = Some(cpu_s * 1e6 / w.requests.max(1) as f64);
            v.util = Some(cpu_s / w.duration_s.max(1e-9));
            v.load_busy = Some(win.load_busy);
            v.foreign = Some(win.foreign_cores);
            v.steal = Some(win.envoy_steal);
            slices.push(Slice {
                round,
                row: row.key.into(),
                kind: "saturation".into(),
                requests: w.requests,
                errors: w.errors,
                duration_s: w.duration_s,
                throughput_rps: w.requests as f64 / w.duration_s.max(1e-9),
                envoy_cpu_s: cpu_s,
                cpu_us_per_request: cpu_s * 1e6 / good as f64,
                p50_us: Some(w.p50_us),
                p99_us: Some(w.p99_us),
                p99_from_schedule_us: None,
                envoy_core_busy: win.envoy_busy,
                envoy_core_steal: win.envoy_steal,
                load_core_busy: win.load_busy,
                foreign_cores: win.foreign_cores,
                attempts,
            });
            std::thread::sleep(pause);
            // Fixed rate.
            let measured = retry(args, &mut retries, || {
                let w0 = Window::start(pid, &pids, args, tck)?;
                let f = load::fixed_rate(port, row.path, rate, Duration::from_secs(fixed_s), args.fixed_connections)?;
                Ok((f, w0.end(pid, &pids, args, tck)?))
            });
            let (mut f, win, attempts) = match measured {
                Ok(m) => m,
                Err(err) => {
                    let _ = e.check_alive();
                    mark(&mut state, row.key, "failed", format!("round {round}: {err:#}"));
                    continue;
                }
            };
            let cpu_s = win.envoy_cpu_s;
            let st = state.get_mut(row.key).ok_or_else(|| anyhow!("no state"))?;
            st.errors += f.errors;
            st.requests += f.completed;
            let p = sorted_percentiles(&mut f.latency_ns, &[50.0, 99.0]);
            let ps = sorted_percentiles(&mut f.latency_sched_ns, &[99.0]);
            let v = st.rounds.entry(round).or_default();
            v.cpu_fixed = Some(cpu_s * 1e6 / f.completed.max(1) as f64);
            v.util_fixed = Some(cpu_s / f.duration_s.max(1e-9));
            v.achieved = Some(f.latency_ns.len() as f64 / f.duration_s.max(1e-9));
            v.p50 = p[0];
            v.p99 = p[1];
            v.quiet_fixed = win.foreign_cores <= args.foreign_threshold;
            if v.quiet_fixed {
                st.latency_quiet.extend_from_slice(&f.latency_ns);
                st.quiet_slices += 1;
            }
            st.latency.extend_from_slice(&f.latency_ns);
            st.latency_sched.extend_from_slice(&f.latency_sched_ns);
            slices.push(Slice {
                round,
                row: row.key.into(),
                kind: "fixed_rate".into(),
                requests: f.completed,
                errors: f.errors,
                duration_s: f.duration_s,
                throughput_rps: f.latency_ns.len() as f64 / f.duration_s.max(1e-9),
                envoy_cpu_s: cpu_s,
                cpu_us_per_request: cpu_s * 1e6 / f.completed.max(1) as f64,
                p50_us: p[0],
                p99_us: p[1],
                p99_from_schedule_us: ps[0],
                envoy_core_busy: win.envoy_busy,
                envoy_core_steal: win.envoy_steal,
                load_core_busy: win.load_busy,
                foreign_cores: win.foreign_cores,
                attempts,
            });
            std::thread::sleep(pause);
        }
        let line: Vec<String> = active
            .iter()
            .filter_map(|r| {
                let v = state.get(r.key)?.rounds.get(&round)?;
                Some(format!("{} {:.0}/s {:.1}µs", r.key, v.throughput?, v.cpu_sat?))
            })
            .collect();
        eprintln!("bench: round {}/{rounds} ({:.0} s): {}", round + 1, wall.elapsed().as_secs_f64(), line.join(" | "));
    }
    let mut rss_end: HashMap<&str, u64> = HashMap::new();
    for (k, e) in envoys.iter_mut() {
        if let Err(err) = e.check_alive() {
            notes.push(format!("{err:#}"));
        }
        if let Ok(r) = envoy::rss_kib(e.pid()) {
            rss_end.insert(*k, r);
        }
    }

    // --- summaries -------------------------------------------------------------
    let mut configurations = vec![];
    for row in &rows {
        let Some(st) = state.get_mut(row.key) else { continue };
        let def = defs.iter().find(|d| d.key == row.envoy);
        let pooled = sorted_percentiles(&mut st.latency, &[50.0, 99.0, 99.9]);
        let pooled_sched = sorted_percentiles(&mut st.latency_sched, &[99.0]);
        let quiet = sorted_percentiles(&mut st.latency_quiet, &[50.0, 99.0]);
        if st.status == "ok" && st.requests > 0 && st.errors * 100 > st.requests {
            notes.push(format!("{}: {} of {} requests failed", row.label, st.errors, st.requests));
        }
        configurations.push(ConfigResult {
            key: row.key.into(),
            label: row.label.into(),
            envoy: def.map_or(String::new(), |d| d.describe.clone()),
            path: row.path.into(),
            plugin_config: def.and_then(|d| d.spec.plugin_config.clone()),
            status: st.status.clone(),
            reason: st.reason.clone(),
            pid: envoys.get(row.envoy).map(Envoy::pid),
            rss_kib_after_warmup: rss_warm.get(row.envoy).copied(),
            rss_kib_at_end: rss_end.get(row.envoy).copied(),
            throughput_rps: None,
            cpu_us_per_request: None,
            cpu_us_per_request_fixed_rate: None,
            envoy_cpu_utilisation: None,
            envoy_cpu_utilisation_fixed_rate: None,
            latency_p50_us: pooled[0],
            latency_p99_us: pooled[1],
            latency_p999_us: pooled[2],
            latency_p99_from_schedule_us: pooled_sched[0],
            latency_quiet_p50_us: quiet[0],
            latency_quiet_p99_us: quiet[1],
            quiet_fixed_rate_slices: st.quiet_slices,
            capacity_rps: None,
            fixed_rate_achieved_rps: None,
            load_core_busy: None,
            envoy_core_steal: None,
            errors: st.errors,
            requests: st.requests,
        });
    }
    let series = |key: &str, f: fn(&RoundValues) -> Option<f64>| -> Vec<f64> {
        state.get(key).map(|s| s.rounds.values().filter_map(f).collect()).unwrap_or_default()
    };
    for c in configurations.iter_mut() {
        c.throughput_rps = Estimate::of(&series(&c.key, |v| v.throughput));
        c.cpu_us_per_request = Estimate::of(&series(&c.key, |v| v.cpu_sat));
        c.cpu_us_per_request_fixed_rate = Estimate::of(&series(&c.key, |v| v.cpu_fixed));
        c.envoy_cpu_utilisation = Estimate::of(&series(&c.key, |v| v.util));
        c.envoy_cpu_utilisation_fixed_rate = Estimate::of(&series(&c.key, |v| v.util_fixed));
        c.fixed_rate_achieved_rps = Estimate::of(&series(&c.key, |v| v.achieved));
        c.capacity_rps = Estimate::of(&series(&c.key, |v| v.cpu_sat.map(|us| 1e6 / us)));
        c.load_core_busy = Estimate::of(&series(&c.key, |v| v.load_busy));
        c.envoy_core_steal = Estimate::of(&series(&c.key, |v| v.steal));
        let foreign = Estimate::of(&series(&c.key, |v| v.foreign)).map_or(0.0, |e| e.mean);
        if let (Some(u), Some(l)) = (c.envoy_cpu_utilisation, c.load_core_busy) {
            // Only meaningful when nothing else was running.
            if u.mean < 0.9 && foreign <= args.foreign_threshold {
                notes.push(format!(
                    "{}: Envoy used {:.0} % of its core during saturation slices while the load core was {:.0} % busy{}",
                    c.label,
                    u.mean * 100.0,
                    l.mean * 100.0,
                    if l.mean > 0.95 { ": the load generator and upstream, not Envoy, set the throughput" } else { "" }
                ));
            }
        }
        if let Some(a) = c.fixed_rate_achieved_rps {
            if a.mean < rate * 0.97 {
                notes
                    .push(format!("{}: the fixed-rate client achieved only {:.0} of {rate:.0} req/s", c.label, a.mean));
            }
        }
    }
    let paired = |row: &str, base: &str, f: &dyn Fn(f64, f64) -> f64, get: fn(&RoundValues) -> Option<f64>| {
        let (Some(a), Some(b)) = (state.get(row), state.get(base)) else { return None };
        let xs: Vec<f64> = a.rounds.iter().filter_map(|(r, va)| Some(f(get(va)?, get(b.rounds.get(r)?)?))).collect();
        Estimate::of(&xs)
    };
    let diff = |a: f64, b: f64| a - b;
    let ratio = |a: f64, b: f64| a / b;
    let ok = |k: &str| state.get(k).is_some_and(|s| s.status == "ok" && !s.rounds.is_empty());
    let alt_pairs: Vec<(&str, &str)> = (1..args.alts.len())
        .flat_map(|i| [(alt_key(i), "none"), (alt_key(i), "noop"), (alt_key(i), "split")])
        .collect();
    let comparisons: Vec<Comparison> = COMPARISONS
        .iter()
        .chain(alt_pairs.iter())
        .filter(|(r, b)| ok(r) && ok(b))
        .map(|(r, b)| Comparison {
            row: (*r).into(),
            baseline: (*b).into(),
            rounds: state.get(r).map_or(0, |s| s.rounds.len()),
            cpu_delta_us: paired(r, b, &diff, |v| v.cpu_sat),
            cpu_ratio: paired(r, b, &ratio, |v| v.cpu_sat),
            throughput_ratio: paired(r, b, &ratio, |v| v.throughput),
            p50_delta_us: paired(r, b, &diff, |v| v.p50),
            p99_delta_us: paired(r, b, &diff, |v| v.p99),
            capacity_ratio: paired(r, b, &|a, b| b / a, |v| v.cpu_sat),
            p99_delta_quiet_us: paired(r, b, &diff, |v| v.p99.filter(|_| v.quiet_fixed)),
        })
        .collect();

    let dirty = slices.iter().filter(|s| s.foreign_cores > args.foreign_threshold).count();
    notes.push(format!(
        "Other processes on the machine: {} slice(s) were measured again ({:.0} s of a {:.0} s budget) because other processes used more than {} cores meanwhile; {dirty} of {} slices kept were still above that (see `foreign_cores` per slice in results.json). Mean foreign load over kept slices: {:.2} cores.",
        retries.count,
        retries.spent.as_secs_f64(),
        retries.budget.as_secs_f64(),
        args.foreign_threshold,
        slices.len(),
        slices.iter().map(|s| s.foreign_cores).sum::<f64>() / slices.len().max(1) as f64
    ));
    let micro = args.criterion.as_deref().map(read_criterion).unwrap_or_default();
    let mut targets = targets(&comparisons, &micro, &wasm, &state, &rows);
    let sizes: &[usize] = if args.smoke { &[100] } else { &[100, 1000] };
    let work = tempfile::tempdir()?;
    let controller_scale =
        match scale::measure(&std::env::current_exe()?, sizes, work.path(), scale::TIMEOUT, scale::INTERVAL) {
            Ok(rows) => rows,
            Err(e) => {
                notes.push(format!("controller scale not measured: {e:#}"));
                vec![]
            }
        };
    targets.extend(scale_targets(&controller_scale));
    if versions.git_dirty {
        notes.push("The work tree had uncommitted changes (other work in progress) when this ran; the .wasm was built from it.".into());
    }
    let results = Results {
        date: today(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        machine,
        versions,
        settings: Settings {
            mode: if args.smoke { "smoke".into() } else { "full".into() },
            rounds,
            saturation_slice_s: slice_s,
            fixed_rate_slice_s: fixed_s,
            warmup_s,
            pause_between_slices_ms: args.pause_ms,
            envoy_concurrency: 1,
            wrk_threads: 1,
            wrk_connections: args.connections,
            fixed_rate_rps: rate,
            fixed_rate_rule: rule,
            fixed_rate_connections: args.fixed_connections,
            order: "configurations interleaved, start rotated by one each round".into(),
            foreign_threshold_cores: args.foreign_threshold,
            niceness: envoy::niceness(std::process::id()).unwrap_or(0),
            max_retries: args.retries,
        },
        wasm,
        configurations,
        comparisons,
        micro,
        targets,
        notes,
        slices,
        controller_scale,
    };
    fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    let md = results.markdown();
    fs::write(args.out.join("results.md"), &md)?;
    fs::write(args.out.join("chart.svg"), results.svg())?;
    println!("{md}");
    eprintln!(
        "bench: wrote {}/results.{{json,md}} and chart.svg in {:.0} s",
        args.out.display(),
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Slices measured again, and the time that took.
struct Retries {
    count: usize,
    spent: Duration,
    budget: Duration,
}

/// Runs a slice again (up to `--retries` times, after a second's pause) when
/// other processes used more than `--foreign-threshold` cores meanwhile, as
/// long as the run's retry budget (`--retry-budget-secs`) lasts.
fn retry<T>(
    args: &RunArgs,
    retries: &mut Retries,
    mut slice: impl FnMut() -> Result<(T, WindowEnd)>,
) -> Result<(T, WindowEnd, usize)> {
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        let (t, w) = slice()?;
        if w.foreign_cores <= args.foreign_threshold || attempt > args.retries || retries.spent >= retries.budget {
            return Ok((t, w, attempt));
        }
        eprintln!("bench:   other processes used {:.2} cores during the slice; measuring it again", w.foreign_cores);
        std::thread::sleep(Duration::from_secs(1));
        retries.count += 1;
        retries.spent += started.elapsed();
        attempt += 1;
    }
}

fn verdict(v: Option<bool>) -> String {
    match v {
        Some(true) => "met".into(),
        Some(false) => "not met".into(),
        None => "inconclusive".into(),
    }
}

/// Issue 18's controller targets, at the steady-state evaluation.
fn scale_targets(rows: &[scale::ScaleRow]) -> Vec<Target> {
    let configuration = "controller (admin source), steady state".to_string();
    let mut out = vec![];
    for (n, cpu_ms, mib) in [(1000, 300.0, 100.0), (10000, 3000.0, 1024.0)] {
        let Some(r) = rows.iter().find(|r| r.endpoints == n) else {
            out.push(Target {
                target: format!("{n} endpoints: ≤ {cpu_ms} ms CPU and ≤ {mib} MiB per evaluation"),
                configuration: configuration.clone(),
                measured: "not measured in this run".into(),
                verdict: "not measured".into(),
            });
            continue;
        };
        out.push(Target {
            target: format!("{n} endpoints: ≤ {cpu_ms:.0} ms CPU per evaluation ({}th)", scale::STEADY),
            configuration: configuration.clone(),
            measured: format!("{:.0} ms CPU ({:.0} ms wall)", r.cpu_ms, r.wall_ms),
            verdict: if r.cpu_ms <= cpu_ms { "met" } else { "not met" }.into(),
        });
        out.push(Target {
            target: format!("{n} endpoints: ≤ {mib:.0} MiB peak"),
            configuration: configuration.clone(),
            measured: format!("{:.1} MiB (evaluation), {:.1} MiB (process)", r.peak_rss_mib, r.process_peak_rss_mib),
            verdict: if r.process_peak_rss_mib <= mib { "met" } else { "not met" }.into(),
        });
    }
    if !rows.is_empty() {
        let worst =
            rows.iter().flat_map(|r| [r.read_hang_first_ms, r.read_hang_last_ms, r.read_ms]).fold(0.0, f64::max);
        let limit = rows.iter().map(|r| r.timeout_ms).fold(0.0, f64::max) + 500.0;
        out.push(Target {
            target: "the read ends within timeout + 0.5 s wherever a hanging endpoint sits".into(),
            configuration: configuration.clone(),
            measured: format!("slowest read {worst:.0} ms (timeout {:.0} ms)", limit - 500.0),
            verdict: if worst <= limit { "met" } else { "not met" }.into(),
        });
    }
    if let Some(r) = rows.iter().find(|r| r.endpoints == 10000) {
        out.push(Target {
            target: "state written per interval ≤ 1 MB at 10 000 endpoints".into(),
            configuration,
            measured: format!(
                "{} B (most in one evaluation after the first: {} B)",
                r.written_bytes, r.written_max_bytes
            ),
            verdict: if r.written_max_bytes <= 1_000_000 { "met" } else { "not met" }.into(),
        });
    }
    out
}

fn targets(
    comparisons: &[Comparison],
    micro: &[Micro],
    wasm: &WasmSizes,
    state: &HashMap<&str, RowState>,
    rows: &[RowDef],
) -> Vec<Target> {
    let mut out = vec![];
    let find = |r: &str, b: &str| comparisons.iter().find(|c| c.row == r && c.baseline == b);
    let label = |k: &str| rows.iter().find(|r| r.key == k).map_or(k.to_string(), |r| r.label.to_string());
    for (row, none, noop) in [
        ("split", "none", "noop"),
        ("split_alt", "none", "noop"),
        ("split_cluster", "none", "noop"),
        ("pred_header", "none", "noop"),
        ("pred_json", "none_json", "noop_json"),
    ] {
        if !state.contains_key(row) {
            continue;
        }
        let available = state.get(row).is_some_and(|s| s.status == "ok");
        let mut push = |target: &str, e: Option<(Option<bool>, String)>| {
            let (verdict, measured) = match e {
                Some((v, m)) => (verdict(v), m),
                None if available => ("not measured".into(), "no baseline".into()),
                None => ("not measured".into(), "configuration not available".into()),
            };
            out.push(Target { target: target.into(), configuration: label(row), measured, verdict });
        };
        push(
            "CPU per request ≤ no-op wasm + 5 µs",
            find(row, noop).and_then(|c| c.cpu_delta_us).map(|e| (e.at_most(5.0), format!("{} µs", e.fmt(2)))),
        );
        push(
            "throughput ≥ 85 % of no filter (measured with wrk)",
            find(row, none).and_then(|c| c.throughput_ratio).map(|e| (e.at_least(0.85), format!("{} ×", e.fmt(3)))),
        );
        push(
            "throughput ≥ 85 % of no filter (Envoy-core capacity, 1 / CPU per request)",
            find(row, none).and_then(|c| c.capacity_ratio).map(|e| (e.at_least(0.85), format!("{} ×", e.fmt(3)))),
        );
        push(
            "throughput within 5 % of no-op wasm (measured with wrk)",
            find(row, noop).and_then(|c| c.throughput_ratio).map(|e| (e.at_least(0.95), format!("{} ×", e.fmt(3)))),
        );
        push(
            "throughput within 5 % of no-op wasm (Envoy-core capacity)",
            find(row, noop).and_then(|c| c.capacity_ratio).map(|e| (e.at_least(0.95), format!("{} ×", e.fmt(3)))),
        );
        push(
            "added p99 ≤ 50 µs at the fixed rate (vs no filter)",
            find(row, none).and_then(|c| {
                // Rounds where both fixed-rate slices ran without other processes, when there are enough.
                match c.p99_delta_quiet_us {
                    Some(q) if q.n >= 2 => Some((
                        q.at_most(50.0),
                        format!("{} µs (the {} rounds where both slices were quiet)", q.fmt(0), q.n),
                    )),
                    _ => c.p99_delta_us.map(|e| (e.at_most(50.0), format!("{} µs (all rounds)", e.fmt(0)))),
                }
            }),
        );
    }
    let split = micro.iter().find(|m| m.id.contains("bucket"));
    out.push(Target {
        target: "pure split decision ≤ 100 ns".into(),
        configuration: "Salt::bucket + arm_for (host)".into(),
        measured: split.map_or("not measured".into(), |m| {
            format!("{:.1} ns [{:.1}, {:.1}]", m.mean_ns, m.mean_lo_ns, m.mean_hi_ns)
        }),
        verdict: split.map_or("not measured".into(), |m| {
            verdict(if m.mean_hi_ns <= 100.0 {
                Some(true)
            } else if m.mean_lo_ns > 100.0 {
                Some(false)
            } else {
                None
            })
        }),
    });
    out.push(Target {
        target: ".wasm ≤ 300 KB".into(),
        configuration: "canary_filter.wasm".into(),
        measured: format!(
            "{} bytes ({:.1} KB, {:.1} KiB)",
            wasm.filter_bytes,
            wasm.filter_bytes as f64 / 1e3,
            wasm.filter_bytes as f64 / 1024.0
        ),
        verdict: verdict(Some(wasm.filter_bytes > 0 && wasm.filter_bytes <= 300_000)),
    });
    out
}
