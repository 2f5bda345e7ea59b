//! What a run produced: `results.json` (everything, per slice too),
//! `results.md` (tables) and `chart.svg` (drawn by hand from the numbers).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::Estimate;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: u64,
    pub cpu_model: String,
    pub kernel: String,
    pub envoy_cpu: usize,
    pub load_cpu: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    pub envoy: String,
    pub rustc: String,
    pub wasm_toolchain: String,
    pub git_commit: String,
    /// Uncommitted changes in the work tree when the run started.
    pub git_dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub mode: String,
    pub rounds: usize,
    pub saturation_slice_s: u64,
    pub fixed_rate_slice_s: u64,
    pub warmup_s: u64,
    pub pause_between_slices_ms: u64,
    pub envoy_concurrency: u32,
    pub wrk_threads: u32,
    pub wrk_connections: usize,
    pub fixed_rate_rps: f64,
    pub fixed_rate_rule: String,
    pub fixed_rate_connections: usize,
    pub order: String,
    /// A slice during which other processes used more cores than this is measured again…
    pub foreign_threshold_cores: f64,
    /// …at most this many times.
    pub max_retries: usize,
    /// Niceness the bench ran at (e.g. under `nice make bench`). Tried at -10
    /// on the shared development machine: it did not keep other sessions'
    /// work off Envoy's core (they run in other cgroups), so it is not a knob.
    #[serde(default)]
    pub niceness: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WasmSizes {
    pub filter_bytes: u64,
    pub noop_bytes: u64,
}

/// One configuration's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigResult {
    pub key: String,
    pub label: String,
    /// What Envoy runs: template and filter.
    pub envoy: String,
    /// Upstream answer (`/small` or `/json`).
    pub path: String,
    pub plugin_config: Option<String>,
    /// `ok`, `not available` or `failed`.
    pub status: String,
    pub reason: Option<String>,
    pub pid: Option<u32>,
    pub rss_kib_after_warmup: Option<u64>,
    pub rss_kib_at_end: Option<u64>,
    pub throughput_rps: Option<Estimate>,
    pub cpu_us_per_request: Option<Estimate>,
    pub cpu_us_per_request_fixed_rate: Option<Estimate>,
    /// Envoy CPU seconds per wall second during saturation slices (≈1: Envoy is the bottleneck).
    pub envoy_cpu_utilisation: Option<Estimate>,
    /// The same during fixed-rate slices.
    pub envoy_cpu_utilisation_fixed_rate: Option<Estimate>,
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    pub latency_p999_us: Option<f64>,
    /// p99 from the scheduled send time (includes waiting for a free connection).
    pub latency_p99_from_schedule_us: Option<f64>,
    /// The same, over the fixed-rate slices during which other processes used
    /// no more than the threshold only.
    pub latency_quiet_p50_us: Option<f64>,
    pub latency_quiet_p99_us: Option<f64>,
    pub quiet_fixed_rate_slices: usize,
    /// What one Envoy core could serve at this CPU cost: 1 s / CPU per request
    /// (saturated). Unlike the measured throughput, other processes on the
    /// machine barely move it.
    pub capacity_rps: Option<Estimate>,
    pub fixed_rate_achieved_rps: Option<Estimate>,
    /// Busy share of the load generator's core during saturation slices.
    pub load_core_busy: Option<Estimate>,
    /// Share of Envoy's core taken by the hypervisor (steal) during saturation slices.
    pub envoy_core_steal: Option<Estimate>,
    pub errors: u64,
    pub requests: u64,
}

/// One configuration against a baseline, from per-round differences and ratios.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub row: String,
    pub baseline: String,
    pub rounds: usize,
    pub cpu_delta_us: Option<Estimate>,
    pub cpu_ratio: Option<Estimate>,
    pub throughput_ratio: Option<Estimate>,
    pub p50_delta_us: Option<Estimate>,
    pub p99_delta_us: Option<Estimate>,
    /// Baseline CPU per request / this one's: the ratio of Envoy-core capacities.
    pub capacity_ratio: Option<Estimate>,
    /// Δ p99 over the rounds where both fixed-rate slices were quiet.
    pub p99_delta_quiet_us: Option<Estimate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Micro {
    pub id: String,
    pub mean_ns: f64,
    pub mean_lo_ns: f64,
    pub mean_hi_ns: f64,
    pub median_ns: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub target: String,
    pub configuration: String,
    pub measured: String,
    /// `met`, `not met`, `inconclusive` (the interval straddles the limit) or `not measured`.
    pub verdict: String,
}

/// One load slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slice {
    pub round: usize,
    pub row: String,
    /// `saturation` or `fixed_rate`.
    pub kind: String,
    pub requests: u64,
    pub errors: u64,
    pub duration_s: f64,
    pub throughput_rps: f64,
    pub envoy_cpu_s: f64,
    pub cpu_us_per_request: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p99_from_schedule_us: Option<f64>,
    pub envoy_core_busy: f64,
    pub envoy_core_steal: f64,
    pub load_core_busy: f64,
    /// Cores used by processes other than the bench's during the slice.
    pub foreign_cores: f64,
    /// 1 unless the slice was measured again because of foreign load.
    pub attempts: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub date: String,
    pub wall_seconds: f64,
    pub machine: Machine,
    pub versions: Versions,
    pub settings: Settings,
    pub wasm: WasmSizes,
    pub configurations: Vec<ConfigResult>,
    pub comparisons: Vec<Comparison>,
    pub micro: Vec<Micro>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    pub slices: Vec<Slice>,
    /// One controller evaluation cycle per number of simulated endpoints.
    #[serde(default)]
    pub controller_scale: Vec<crate::scale::ScaleRow>,
}

fn est(e: &Option<Estimate>, decimals: usize) -> String {
    e.as_ref().map_or("–".into(), |e| e.fmt(decimals))
}

fn num(x: Option<f64>, decimals: usize) -> String {
    x.map_or("–".into(), |x| format!("{x:.decimals$}"))
}

fn pct(e: &Option<Estimate>) -> String {
    e.as_ref().map_or("–".into(), |e| {
        let scaled =
            Estimate { mean: e.mean * 100.0, lo: e.lo.map(|x| x * 100.0), hi: e.hi.map(|x| x * 100.0), n: e.n };
        format!("{} %", scaled.fmt(1))
    })
}

impl Results {
    fn config(&self, key: &str) -> Option<&ConfigResult> {
        self.configurations.iter().find(|c| c.key == key)
    }

    fn label(&self, key: &str) -> String {
        self.config(key).map_or(key.to_string(), |c| c.label.clone())
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.settings;
        let _ = writeln!(md, "# Filter cost on the request path — {} ({})\n", self.date, s.mode);
        let _ = writeln!(
            md,
            "Machine: {} cores, {}, Linux {}. Envoy pinned to core {}, load generator and upstream to core {}.  ",
            self.machine.nproc,
            self.machine.cpu_model,
            self.machine.kernel,
            self.machine.envoy_cpu,
            self.machine.load_cpu
        );
        let _ = writeln!(md, "Envoy: `{}`.  ", self.versions.envoy);
        let _ = writeln!(
            md,
            "rustc (host): `{}`; wasm toolchain: `{}`; commit `{}`{}.  ",
            self.versions.rustc,
            if self.versions.wasm_toolchain.is_empty() { "not recorded" } else { &self.versions.wasm_toolchain },
            self.versions.git_commit,
            if self.versions.git_dirty { " (work tree had uncommitted changes)" } else { "" }
        );
        let _ = writeln!(
            md,
            "Settings: {} rounds; per round every configuration gets a {} s saturation slice (wrk, {} thread, {} connections) and a {} s fixed-rate slice ({:.0} req/s open loop, {} connections; {}); {}; {} s warm-up each; {} ms pause between slices; a slice is measured again (up to {} times) when other processes used more than {} cores meanwhile; Envoy `--concurrency {}`; niceness {}. Run took {:.0} s.\n",
            s.rounds,
            s.saturation_slice_s,
            s.wrk_threads,
            s.wrk_connections,
            s.fixed_rate_slice_s,
            s.fixed_rate_rps,
            s.fixed_rate_connections,
            s.fixed_rate_rule,
            s.order,
            s.warmup_s,
            s.pause_between_slices_ms,
            s.max_retries,
            s.foreign_threshold_cores,
            s.envoy_concurrency,
            s.niceness,
            self.wall_seconds
        );
        let _ = writeln!(md, "## Per configuration\n");
        let _ = writeln!(
            md,
            "Means over rounds with 95 % t-intervals in brackets. CPU = Envoy's utime+stime over the slice / requests served; capacity = 1 s / that (what one Envoy core could serve). Latency pooled over all fixed-rate slices (request write → last response byte); the quiet column pools only the slices during which other processes used no more than the threshold.\n"
        );
        let _ = writeln!(
            md,
            "| configuration | status | throughput (req/s) | capacity (req/s) | Envoy CPU µs/req (saturated) | Envoy CPU µs/req (fixed rate) | Envoy core use sat. / fixed | p50 µs | p99 µs | p99.9 µs | quiet slices: p50 / p99 µs (n) | RSS MiB |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for c in &self.configurations {
            let status = match &c.reason {
                Some(r) if c.status != "ok" => format!("{}: {}", c.status, r.replace('\n', " ").replace('|', "\\|")),
                _ => c.status.clone(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.label,
                status,
                est(&c.throughput_rps, 0),
                est(&c.capacity_rps, 0),
                est(&c.cpu_us_per_request, 2),
                est(&c.cpu_us_per_request_fixed_rate, 2),
                match (c.envoy_cpu_utilisation, c.envoy_cpu_utilisation_fixed_rate) {
                    (Some(a), Some(b)) => format!("{:.0} % / {:.0} %", a.mean * 100.0, b.mean * 100.0),
                    _ => "–".into(),
                },
                num(c.latency_p50_us, 0),
                num(c.latency_p99_us, 0),
                num(c.latency_p999_us, 0),
                if c.quiet_fixed_rate_slices > 0 {
                    format!(
                        "{} / {} ({})",
                        num(c.latency_quiet_p50_us, 0),
                        num(c.latency_quiet_p99_us, 0),
                        c.quiet_fixed_rate_slices
                    )
                } else {
                    "–".into()
                },
                num(c.rss_kib_after_warmup.map(|k| k as f64 / 1024.0), 1),
            );
        }
        let _ = writeln!(md, "\n## Overhead, paired within each round\n");
        let _ = writeln!(
            md,
            "Per round: the configuration's value minus (or divided by) the baseline's from the same round, then the mean and 95 % t-interval of those per-round numbers over the rounds.\n"
        );
        let _ = writeln!(
            md,
            "| configuration | vs baseline | Δ CPU µs/req | CPU ratio | throughput ratio (wrk) | capacity ratio | Δ p50 µs | Δ p99 µs | Δ p99 µs, quiet rounds |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for c in &self.comparisons {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                self.label(&c.row),
                self.label(&c.baseline),
                est(&c.cpu_delta_us, 2),
                est(&c.cpu_ratio, 3),
                pct(&c.throughput_ratio),
                pct(&c.capacity_ratio),
                est(&c.p50_delta_us, 0),
                est(&c.p99_delta_us, 0),
                c.p99_delta_quiet_us.as_ref().map_or("–".into(), |e| format!("{} (n={})", e.fmt(0), e.n)),
            );
        }
        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(md, "| target | configuration | measured | verdict |");
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        for t in &self.targets {
            let _ = writeln!(md, "| {} | {} | {} | **{}** |", t.target, t.configuration, t.measured, t.verdict);
        }
        let _ = writeln!(md, "\n## Controller scale (steady state, simulated admin endpoints)\n");
        if self.controller_scale.is_empty() {
            let _ = writeln!(md, "Not measured in this run.");
        } else {
            md.push_str(&scale_markdown(&self.controller_scale));
        }
        let _ = writeln!(md, "\n## Pure core (host, criterion)\n");
        if self.micro.is_empty() {
            let _ = writeln!(md, "Not measured in this run.");
        } else {
            let _ = writeln!(md, "| benchmark | mean ns [95 % CI] | median ns |");
            let _ = writeln!(md, "| --- | --- | --- |");
            for m in &self.micro {
                let _ = writeln!(
                    md,
                    "| `{}` | {:.1} [{:.1}, {:.1}] | {:.1} |",
                    m.id, m.mean_ns, m.mean_lo_ns, m.mean_hi_ns, m.median_ns
                );
            }
        }
        let _ = writeln!(md, "\n## Sizes\n");
        let _ = writeln!(
            md,
            "- `canary_filter.wasm`: {} bytes ({:.1} KB); `canary_noop_filter.wasm`: {} bytes ({:.1} KB).",
            self.wasm.filter_bytes,
            self.wasm.filter_bytes as f64 / 1000.0,
            self.wasm.noop_bytes,
            self.wasm.noop_bytes as f64 / 1000.0
        );
        let rss = |k: &str| self.config(k).and_then(|c| c.rss_kib_after_warmup);
        if let (Some(none), Some(noop)) = (rss("none"), rss("noop")) {
            let filter = rss("split");
            let _ = writeln!(
                md,
                "- Envoy VmRSS after warm-up: no filter {:.1} MiB; no-op wasm {:.1} MiB (+{:.1}); canary filter {} (V8 with one VM for the main thread and one for the worker).",
                none as f64 / 1024.0,
                noop as f64 / 1024.0,
                (noop as f64 - none as f64) / 1024.0,
                filter.map_or("not available".into(), |f| format!(
                    "{:.1} MiB (+{:.1} vs no filter, {:+.1} vs no-op)",
                    f as f64 / 1024.0,
                    (f as f64 - none as f64) / 1024.0,
                    (f as f64 - noop as f64) / 1024.0
                ))
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        let _ = writeln!(md, "\n![chart](chart.svg)");
        md
    }

    /// Three panels — CPU per request, throughput, fixed-rate latency — one
    /// bar per configuration, whiskers for the 95 % intervals, dashed lines
    /// for the targets.
    pub fn svg(&self) -> String {
        let rows: Vec<&ConfigResult> = self.configurations.iter().collect();
        let (label_w, panel_w, gap, row_h, top) = (290.0, 250.0, 45.0, 30.0, 78.0);
        let width = label_w + 3.0 * panel_w + 2.0 * gap + 90.0;
        let axis_bottom = top + rows.len() as f64 * row_h;
        let height = axis_bottom + 94.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="24" font-size="16" font-weight="bold">canary filter: cost on Envoy's request path — {} ({} run, {} rounds)</text>"#,
            xml(&self.date),
            xml(&self.settings.mode),
            self.settings.rounds
        );
        let colour = |key: &str| match key {
            k if k.starts_with("none") => "#9e9e9e",
            k if k.starts_with("noop") => "#5b8bd0",
            "native" => "#5aa469",
            _ => "#e08a2e",
        };
        let cfg = |k: &str| self.config(k);
        let mean_of = |k: &str, f: fn(&ConfigResult) -> Option<Estimate>| cfg(k).and_then(f).map(|e| e.mean);
        let cpu_target = mean_of("noop", |c| c.cpu_us_per_request).map(|m| (m + 5.0, "no-op + 5 µs".to_string()));
        let thr_target =
            mean_of("none", |c| c.throughput_rps).map(|m| (m * 0.85 / 1e3, "85 % of no filter".to_string()));
        let p99_target =
            cfg("none").and_then(|c| c.latency_p99_us).map(|m| (m + 50.0, "no-filter p99 + 50 µs".to_string()));
        struct Panel<'a> {
            title: &'a str,
            get: Getter<'a>,
            log: bool,
            target: Option<(f64, String)>,
            /// A second value drawn as a diamond (throughput: the capacity).
            marker: Option<Marker<'a>>,
        }
        let panels = [
            Panel {
                title: "Envoy CPU µs per request (saturated)",
                get: Box::new(|c: &ConfigResult| c.cpu_us_per_request.map(|e| (e.mean, e.lo, e.hi))),
                log: false,
                target: cpu_target,
                marker: None,
            },
            Panel {
                title: "Throughput (bar) and ◆ capacity, k req/s",
                get: Box::new(|c: &ConfigResult| {
                    c.throughput_rps.map(|e| (e.mean / 1e3, e.lo.map(|x| x / 1e3), e.hi.map(|x| x / 1e3)))
                }),
                log: false,
                target: thr_target,
                marker: Some(Box::new(|c: &ConfigResult| c.capacity_rps.map(|e| e.mean / 1e3))),
            },
            Panel {
                title: "Fixed rate: p50 (bar), p99 (tick), µs",
                get: Box::new(|c: &ConfigResult| c.latency_p50_us.map(|p50| (p50, None, c.latency_p99_us))),
                log: true,
                target: p99_target,
                marker: None,
            },
        ];
        for (i, panel) in panels.iter().enumerate() {
            let x0 = label_w + i as f64 * (panel_w + gap);
            let data_max = rows
                .iter()
                .filter_map(|c| (panel.get)(c))
                .map(|(m, _, hi)| hi.unwrap_or(m).max(m))
                .chain(panel.target.as_ref().map(|t| t.0))
                .chain(rows.iter().filter_map(|c| panel.marker.as_ref().and_then(|m| m(c))))
                .fold(0.0_f64, f64::max)
                .max(1e-9);
            let (ticks, scale): (Vec<f64>, Box<dyn Fn(f64) -> f64>) = if panel.log {
                let lo = 50.0_f64;
                let mut ticks = vec![];
                let mut decade = 10.0_f64;
                'outer: loop {
                    for m in [1.0, 2.0, 5.0] {
                        let t = decade * m;
                        if t >= lo {
                            ticks.push(t);
                        }
                        if t >= data_max * 1.05 {
                            break 'outer;
                        }
                    }
                    decade *= 10.0;
                }
                let hi = ticks.last().copied().unwrap_or(lo * 10.0);
                (ticks, Box::new(move |v: f64| panel_w * ((v.max(lo) / lo).ln() / (hi / lo).ln())))
            } else {
                let step = nice_step(data_max * 1.05 / 4.0);
                let n = (data_max * 1.05 / step).ceil().max(1.0);
                let max = step * n;
                ((0..=n as usize).map(|k| k as f64 * step).collect(), Box::new(move |v: f64| panel_w * v / max))
            };
            let _ = writeln!(s, r#"<text x="{x0:.0}" y="58" font-weight="bold">{}</text>"#, xml(panel.title));
            for t in &ticks {
                let x = x0 + scale(*t);
                // On the log axis only 1× and 5× a power of ten are labelled.
                let mantissa = *t / 10f64.powf(t.log10().floor());
                let span = ticks.last().copied().unwrap_or(1.0) / ticks.first().copied().unwrap_or(1.0);
                let label =
                    !panel.log || (mantissa - 1.0).abs() < 1e-9 || ((mantissa - 5.0).abs() < 1e-9 && span <= 100.0);
                let _ = writeln!(
                    s,
                    r##"<line x1="{x:.1}" y1="{:.0}" x2="{x:.1}" y2="{axis_bottom:.0}" stroke="#e4e4e4"/><text x="{x:.1}" y="{:.0}" text-anchor="middle" fill="#555" font-size="11">{}</text>"##,
                    top - 6.0,
                    axis_bottom + 14.0,
                    if label { short(*t) } else { String::new() }
                );
            }
            let _ = writeln!(
                s,
                r##"<line x1="{x0:.0}" y1="{:.0}" x2="{x0:.0}" y2="{axis_bottom:.0}" stroke="#444"/>"##,
                top - 6.0
            );
            for (r, c) in rows.iter().enumerate() {
                let y = top + r as f64 * row_h;
                let Some((mean, lo, hi)) = (panel.get)(c) else {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" fill="#999" font-style="italic">{}</text>"##,
                        x0 + 4.0,
                        y + row_h / 2.0 + 4.0,
                        if c.status == "ok" { "–" } else { "not available" }
                    );
                    continue;
                };
                let w = scale(mean);
                let _ = writeln!(
                    s,
                    r#"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"/>"#,
                    y + 6.0,
                    row_h - 12.0,
                    colour(&c.key)
                );
                let ym = y + row_h / 2.0;
                match (lo, hi) {
                    (Some(lo), Some(hi)) => {
                        let (xl, xh) = (x0 + scale(lo.max(0.0)), x0 + scale(hi));
                        let _ = writeln!(
                            s,
                            r##"<path d="M{xl:.1},{ym:.1}H{xh:.1}M{xl:.1},{:.1}V{:.1}M{xh:.1},{:.1}V{:.1}" stroke="#000" fill="none"/>"##,
                            ym - 5.0,
                            ym + 5.0,
                            ym - 5.0,
                            ym + 5.0
                        );
                    }
                    (None, Some(hi)) => {
                        let xh = x0 + scale(hi);
                        let _ = writeln!(
                            s,
                            r##"<path d="M{xh:.1},{:.1}V{:.1}" stroke="#000" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#333" font-size="11">{}</text>"##,
                            y + 4.0,
                            y + row_h - 4.0,
                            xh + 3.0,
                            ym + 4.0,
                            short(hi)
                        );
                    }
                    _ => {}
                }
                if let Some(v) = panel.marker.as_ref().and_then(|m| m(c)) {
                    let x = x0 + scale(v);
                    let _ = writeln!(s, r##"<path d="M{x:.1},{:.1}l5,6l-5,6l-5,-6z" fill="#333"/>"##, ym - 6.0);
                }
                if w > 34.0 {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" fill="#fff" font-size="11">{}</text>"##,
                        x0 + 3.0,
                        ym + 4.0,
                        short(mean)
                    );
                }
            }
            if let Some((v, label)) = &panel.target {
                let x = x0 + scale(*v);
                let _ = writeln!(
                    s,
                    r##"<line x1="{x:.1}" y1="{:.0}" x2="{x:.1}" y2="{axis_bottom:.0}" stroke="#c0392b" stroke-dasharray="4 3"/><text x="{x:.1}" y="{:.0}" text-anchor="middle" fill="#c0392b" font-size="11">target: {}</text>"##,
                    top - 6.0,
                    top - 9.0,
                    xml(label)
                );
            }
        }
        for (r, c) in rows.iter().enumerate() {
            let y = top + r as f64 * row_h + row_h / 2.0 + 4.0;
            let _ = writeln!(s, r#"<text x="10" y="{y:.1}">{}</text>"#, xml(&c.label));
        }
        let envoy_version = self
            .versions
            .envoy
            .split('/')
            .find(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit() || c == '.'))
            .unwrap_or("?");
        let footer = [
            format!(
                "{} cores ({}), Envoy {envoy_version} --concurrency 1 pinned to core {}, wrk + upstream + fixed-rate client on core {}.",
                self.machine.nproc, self.machine.cpu_model, self.machine.envoy_cpu, self.machine.load_cpu
            ),
            format!(
                "Per round: {} s wrk slice ({} connections) and {} s open-loop slice at {:.0} req/s per configuration, interleaved; whiskers: 95 % t-interval over {} rounds.",
                self.settings.saturation_slice_s,
                self.settings.wrk_connections,
                self.settings.fixed_rate_slice_s,
                self.settings.fixed_rate_rps,
                self.settings.rounds
            ),
            format!(
                "Other processes used {:.2} cores on average during the kept slices (threshold {} cores): see results.md for what that does to throughput and latency.",
                self.slices.iter().map(|s| s.foreign_cores).sum::<f64>() / self.slices.len().max(1) as f64,
                self.settings.foreign_threshold_cores
            ),
        ];
        for (k, line) in footer.iter().enumerate() {
            let _ = writeln!(
                s,
                r##"<text x="10" y="{:.0}" fill="#555" font-size="11">{}</text>"##,
                axis_bottom + 40.0 + 16.0 * k as f64,
                xml(line)
            );
        }
        let _ = writeln!(s, "</svg>");
        s
    }
}

/// A bar: value, and the interval (low, high) or, for latency, the p99 tick.
type Bar = (f64, Option<f64>, Option<f64>);
type Getter<'a> = Box<dyn Fn(&ConfigResult) -> Option<Bar> + 'a>;
type Marker<'a> = Box<dyn Fn(&ConfigResult) -> Option<f64> + 'a>;

/// 1, 2, 2.5 or 5 × a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1e-12).log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

fn short(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The controller scale rows as Markdown (also `canary-bench scale --markdown`).
pub fn scale_markdown(rows: &[crate::scale::ScaleRow]) -> String {
    let mut md = String::new();
    let Some(first) = rows.first() else { return md };
    let _ = writeln!(
        md,
        "`Controller::tick` (admin source, 64 endpoints at a time, timeout {:.0} ms, interval {:.0} ms) in a fresh process per size, {} consecutive evaluations; the endpoints serve a recorded real Envoy answer, two hang (first and last in the list), one answers garbage. Row = evaluation {}; peak = VmHWM reset before the evaluation (process peak over all evaluations in brackets); written = bytes written into the state directory by that evaluation (most by one evaluation after the first in brackets).\n",
        first.timeout_ms,
        first.interval_ms,
        first.evaluations.len(),
        crate::scale::STEADY
    );
    let _ = writeln!(
        md,
        "| endpoints | CPU ms | wall ms | read ms | peak MiB | written B | state.json B | tracker B | read, one hanging first / last ms |"
    );
    let _ = writeln!(md, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.1} ({:.1}) | {} ({}) | {} | {} | {:.0} / {:.0} |",
            r.endpoints,
            r.cpu_ms,
            r.wall_ms,
            r.read_ms,
            r.peak_rss_mib,
            r.process_peak_rss_mib,
            r.written_bytes,
            r.written_max_bytes,
            r.state_json_bytes,
            r.tracker_bytes,
            r.read_hang_first_ms,
            r.read_hang_last_ms
        );
    }
    let _ = writeln!(md, "\nEvery evaluation (CPU ms / peak MiB / written B):\n");
    for r in rows {
        let cells: Vec<String> = r
            .evaluations
            .iter()
            .map(|e| format!("{:.0}/{:.0}/{}", e.cpu_ms, e.peak_rss_mib, e.written_bytes))
            .collect();
        let _ = writeln!(md, "- {} endpoints: {}", r.endpoints, cells.join(", "));
    }
    md
}
