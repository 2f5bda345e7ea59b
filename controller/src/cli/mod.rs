//! `canary`: the controller's command line. Commands other than `run` work
//! whether or not the daemon is running; they share its state directory and
//! take the same lock.

use std::path::PathBuf;

mod manual;
mod print;

use manual::{manual, Manual};
use print::{print_kube_status, print_status};

use crate::context::ProcessContext;
use crate::control::Controller;
use crate::http::daemon;
use crate::k8s::crd::{self, ResourceRef};
use crate::sink::EcdsFileSink;
use anyhow::Context;
use canary_core::FilterConfig;
use canary_judge::rollout::Command as RolloutCommand;
use canary_judge::spec::{GateMethod, RolloutSpec};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Progressive delivery of ML model versions on Envoy.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the gates decide ([`GateMethod`], which as a judge type knows no CLI).
#[derive(Clone, Copy, ValueEnum)]
enum Method {
    /// Confidence sequences and e-processes (the default engine).
    Anytime,
    /// Intervals at spent looks: pass, fail or inconclusive.
    Sequential,
    /// Point estimates against the tolerances at every evaluation.
    Threshold,
}

impl From<Method> for GateMethod {
    fn from(m: Method) -> GateMethod {
        match m {
            Method::Anytime => GateMethod::Anytime,
            Method::Sequential => GateMethod::Sequential,
            Method::Threshold => GateMethod::Threshold,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the rollout: evaluate every interval, advance, hold or roll back, until it ends.
    Run {
        /// The rollout spec (YAML). Needed to start; afterwards the stored copy is used.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// The rollout's state directory.
        #[arg(long, env = "CANARY_STATE_DIR")]
        state_dir: PathBuf,
        /// Accept a spec that differs from the one the rollout started with (recorded).
        #[arg(long)]
        accept_spec_change: bool,
        /// A file holding the operator token that the dashboard's controls
        /// (pause, resume, advance, rollback) require; else env CANARY_TOKEN;
        /// with neither, the controls are disabled.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Show the stage, weight, time and requests left, and the last decision.
    Status {
        #[arg(long, env = "CANARY_STATE_DIR", required_unless_present = "kube")]
        state_dir: Option<PathBuf>,
        /// A CanaryRollout (NAMESPACE/NAME): show its status from the API server.
        #[arg(long, conflicts_with = "state_dir")]
        kube: Option<ResourceRef>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
    /// Stop automatic progression until `resume`; failing gates still roll
    /// back (the safety net stays on) unless `--freeze`.
    Pause {
        #[command(flatten)]
        manual: Manual,
        /// Stop every automatic change, rollbacks by the gates too (recorded
        /// with the reason).
        #[arg(long)]
        freeze: bool,
    },
    /// Resume automatic progression.
    Resume(Manual),
    /// Move to the next stage now, without waiting for the gates.
    Advance(Manual),
    /// Send every user back to the champion now (0 % challenger).
    Rollback(Manual),
    /// Write canary analysis reports (JSON + HTML per stage and for the whole
    /// rollout) and print the Markdown summary.
    Report {
        #[arg(long, env = "CANARY_STATE_DIR")]
        state_dir: PathBuf,
        /// Folder for the report files (default: STATE_DIR/reports).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Summarise this stage instead of the whole rollout.
        #[arg(long)]
        stage: Option<String>,
    },
    /// Re-judge every recorded decision's evidence against another spec's
    /// gates and print where the decisions would have differed.
    Replay {
        #[arg(long, env = "CANARY_STATE_DIR")]
        state_dir: PathBuf,
        /// The spec whose gates (and, with the same stage weights, stage minimums) judge.
        #[arg(long)]
        spec: PathBuf,
        /// Judge with this method instead of the spec's `gates.method`.
        #[arg(long, value_enum)]
        method: Option<Method>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
    /// Decision-quality simulation: the real state machine on synthetic
    /// traffic with known truth, both gate methods side by side; prints the
    /// false-rollback and miss rates and the traffic a decision takes.
    Simulate {
        /// Seeded repetitions per scenario, traffic level and method.
        #[arg(long, default_value_t = 1000)]
        reps: u32,
        /// Responses per interval, both versions together, split by each
        /// stage's weight (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [2000u64, 50_000])]
        traffic: Vec<u64>,
        /// Evaluations before a rollout counts as undecided.
        #[arg(long, default_value_t = 400)]
        max_intervals: u32,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Stages and gates to simulate (default: the standard spec, see `canary_judge::simulate`).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Worker threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        /// The per-segment scenarios instead: K = 2, 5, 10 segments, a
        /// challenger identical or harmful (2x tolerance) in a 5 % segment;
        /// family-wise false rollback and detection (see
        /// `canary_judge::segment_calibration`; alpha from --spec, else 0.05).
        #[arg(long)]
        segments: bool,
    },
    /// Check a filter plugin configuration (JSON) with the filter's own rules.
    CheckConfig {
        /// The plugin configuration file.
        file: PathBuf,
    },
    /// Check a rollout spec (YAML).
    CheckSpec { file: PathBuf },
    /// What a spec's stages will take at a given traffic, from the engine
    /// itself: per stage the challenger's traffic, the time to
    /// `min_requests`, the median time to a decision for a challenger equal
    /// to the champion and for one 2x tolerance worse, and a warning where a
    /// stage cannot decide within its `max_duration`. With per-segment
    /// gates, also the smallest judged segment's challenger traffic and the
    /// time until it has `gates.segment_min_responses` (warned when beyond
    /// `max_duration`). `${NAME}` placeholders (as in
    /// controller/examples/rollout.yaml) are filled from the environment,
    /// else with neutral values.
    Plan {
        spec: PathBuf,
        /// Requests per second through the Envoys, both versions together.
        #[arg(long)]
        rps: f64,
        /// The champion's 5xx rate (0.003 = 0.3 %).
        #[arg(long, default_value_t = 0.003)]
        error_rate: f64,
        /// The champion's 504 rate.
        #[arg(long, default_value_t = 0.001)]
        timeout_rate: f64,
        /// Simulated rollouts per estimate.
        #[arg(long, default_value_t = 200)]
        runs: u32,
        /// A segment's share of the requests, e.g. `enterprise=0.05`
        /// (repeatable); none: equal shares over `filter.segment.values`.
        #[arg(long = "segment-share", value_name = "NAME=SHARE")]
        segment_share: Vec<String>,
    },
    /// Numeric prediction bin edges at the champion's quantiles: reads
    /// observed predictions (numbers separated by whitespace or commas) from
    /// FILE or stdin, prints `bins - 1` edges for `filter.prediction.bins`.
    /// Edges are fixed for a whole rollout: derive them before it starts.
    BinEdges {
        /// Bins wanted (2..=65); ties may give fewer.
        #[arg(long, default_value_t = 10)]
        bins: usize,
        /// The observed values; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Print the CanaryRollout CustomResourceDefinition (YAML; deploy/crd.yaml).
    Crd,
    /// Run as a Kubernetes controller: reconcile every CanaryRollout, one
    /// rollout (and state directory) per resource. Serves /metrics and /healthz.
    Operator {
        /// Parent of the state directories (`<root>/<namespace>/<name>`): a persistent volume.
        #[arg(long, env = "CANARY_STATE_ROOT")]
        state_root: PathBuf,
        /// Address of the /metrics and /healthz server.
        #[arg(long, env = "CANARY_LISTEN", default_value = "0.0.0.0:9090")]
        listen: String,
    },
    /// Validate a filter plugin configuration and write it as the ECDS file
    /// Envoy watches (atomically: temp file, then rename).
    Push {
        /// The plugin configuration file (JSON).
        file: PathBuf,
        /// Directory Envoy watches (`watched_directory`); canary.json is written there.
        #[arg(long, env = "CANARY_ECDS_DIR")]
        ecds_dir: PathBuf,
        /// Path of canary_filter.wasm as Envoy sees it.
        #[arg(long, env = "CANARY_WASM")]
        wasm: PathBuf,
    },
}

/// The name under which the binary is a kubectl plugin (`make install`
/// links it; kubectl finds `kubectl-canary` on PATH and runs it for
/// `kubectl canary …`).
const PLUGIN_NAME: &str = "kubectl-canary";
/// Commands that act on one CanaryRollout, named positionally as a plugin.
const PLUGIN_COMMANDS: &[&str] = &["status", "pause", "resume", "advance", "rollback"];

/// As a kubectl plugin, the rollout is a positional argument, the way
/// `kubectl argo rollouts pause NAME` takes it: `kubectl canary status
/// shop/recs`, or `kubectl canary pause recs -n shop`. Rewritten to
/// `--kube NAMESPACE/NAME`; everything else passes unchanged.
fn plugin_args(args: Vec<String>) -> Vec<String> {
    let Some(command) = args.get(1).filter(|c| PLUGIN_COMMANDS.contains(&c.as_str())) else {
        return args;
    };
    let (mut namespace, mut target, mut rest) = (None, None, vec![]);
    let mut words = args[2..].iter().cloned();
    while let Some(w) = words.next() {
        match w.as_str() {
            "-n" | "--namespace" => namespace = words.next(),
            _ if w.starts_with("--namespace=") => namespace = Some(w["--namespace=".len()..].to_string()),
            // A flag's value follows it (every flag of these commands but
            // `--freeze` takes one).
            "--freeze" => rest.push(w),
            _ if w.starts_with("--") && !w.contains('=') => {
                rest.push(w);
                rest.extend(words.next());
            }
            _ if !w.starts_with('-') && target.is_none() => target = Some(w),
            _ => rest.push(w),
        }
    }
    let mut out = vec![args[0].clone(), command.clone()];
    if let Some(t) = target {
        let t = match namespace {
            Some(ns) if !t.contains('/') => format!("{ns}/{t}"),
            _ => t,
        };
        out.extend(["--kube".to_string(), t]);
    }
    out.extend(rest);
    out
}

/// The command line, read as a kubectl plugin when invoked as `kubectl-canary`.
fn cli() -> Cli {
    let args: Vec<String> = std::env::args().collect();
    let invoked = args.first().and_then(|a| std::path::Path::new(a).file_name()).and_then(|n| n.to_str());
    if invoked != Some(PLUGIN_NAME) {
        return Cli::parse();
    }
    let matches = Cli::command().bin_name("kubectl canary").get_matches_from(plugin_args(args));
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `${NAME}` placeholders filled from the environment, else neutral
/// values (durations `1m`, URLs and paths that parse), so a template like
/// the demo's spec can be planned.
fn fill_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else { break };
        let name = &rest[start + 2..start + end];
        let value = std::env::var(name).unwrap_or_else(|_| match name {
            n if n.contains("DURATION") => "1m".into(),
            n if n.contains("ADMIN") || n.contains("WEBHOOK") || n.contains("URL") => "http://127.0.0.1:9901".into(),
            _ => "/tmp/canary".into(),
        });
        out.push_str(&value);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

fn read_config(file: &PathBuf) -> anyhow::Result<FilterConfig> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let config = FilterConfig::from_json(&bytes).with_context(|| format!("{} is refused", file.display()))?;
    config.validate().with_context(|| format!("{} is refused", file.display()))?;
    Ok(config)
}

async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.context("no Kubernetes client: set KUBECONFIG or run in a cluster")
}

/// The dashboard's operator token: `--token-file`, else `CANARY_TOKEN`.
fn daemon_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<crate::http::dashboard::Token>> {
    crate::http::dashboard::Token::load(file, std::env::var("CANARY_TOKEN").ok())
}

/// Runs the command line (the `canary` binary's whole `main`).
#[tokio::main]
pub async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let Cli { command } = cli();
    match command {
        Command::Run { spec, state_dir, accept_spec_change, token_file } => {
            let token = daemon_token(token_file.as_deref())?;
            let spec = spec.map(|p| RolloutSpec::load(&p)).transpose()?;
            let ctx = ProcessContext::default();
            let controller = Controller::open(&state_dir, spec, accept_spec_change, &ctx)?;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let store = controller.store.clone();
            let stopped = tokio::select! {
                r = daemon::run(controller, token) => { r?; false }
                _ = tokio::signal::ctrl_c() => true,
                _ = term.recv() => true,
            };
            if stopped {
                store.remove_daemon_files();
                // A rollback alert being retried gets a little longer (a
                // Kubernetes pod has 30 s between SIGTERM and SIGKILL).
                let left = ctx.alerts.drain_for(std::time::Duration::from_secs(10)).await;
                if left > 0 {
                    eprintln!("stopped with {left} alert(s) undelivered");
                }
            }
        }
        Command::Status { state_dir: _, kube: Some(r), output } => {
            let api: kube::Api<crd::CanaryRollout> = kube::Api::namespaced(kube_client().await?, &r.namespace);
            let obj = api.get_status(&r.name).await.with_context(|| format!("cannot read CanaryRollout {r}"))?;
            match obj.status {
                Some(s) => print_kube_status(&s, output)?,
                None => println!("{r}: no status yet (is the canary operator running?)"),
            }
        }
        Command::Status { state_dir, kube: None, output } => {
            let state_dir = state_dir.context("--state-dir or --kube is needed")?;
            let c = Controller::open(&state_dir, None, false, &ProcessContext::default())?;
            let s = c.status()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
                Output::Human => print_status(&s),
            }
        }
        Command::Report { state_dir, out, stage } => {
            let c = Controller::open(&state_dir, None, false, &ProcessContext::default())?;
            let now = crate::control::now_millis();
            let files = crate::store::reports::write_all(&c.store, &c.spec, out.as_deref(), now)?;
            let state = c.state()?;
            let log = c.store.decisions()?;
            let report = match &stage {
                Some(name) => {
                    let epoch = log
                        .iter()
                        .rev()
                        .find(|d| &d.from.stage_name == name)
                        .map(|d| d.from.epoch)
                        .with_context(|| format!("no decision for stage `{name}` in the log"))?;
                    canary_judge::report::stage_report(&c.spec, &state, &log, epoch, now)
                }
                None => canary_judge::report::rollout_report(&c.spec, &state, &log, now),
            };
            if let Some(r) = report {
                println!("{}", canary_judge::report::markdown(&r));
            }
            for f in files {
                eprintln!("wrote {}", f.display());
            }
        }
        Command::Replay { state_dir, spec, method, output } => {
            let store = crate::store::Store::open(&state_dir)?;
            let recorded = store.load_spec()?.with_context(|| format!("no rollout in {}", state_dir.display()))?;
            let state = store.load_state()?.with_context(|| format!("no rollout state in {}", state_dir.display()))?;
            let other = RolloutSpec::load(&spec)?;
            let r = canary_judge::replay::replay(
                &recorded,
                &state,
                &store.decisions()?,
                &other,
                method.map(GateMethod::from),
            );
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                Output::Human => print!("{}", canary_judge::replay::render(&r)),
            }
        }
        Command::Simulate { segments: true, reps, seed, spec, .. } => {
            use canary_judge::segment_calibration as sc;
            let alpha = match spec {
                Some(path) => RolloutSpec::load(&path)?.gates.alpha,
                None => 0.05,
            };
            let started = std::time::Instant::now();
            println!("{}", sc::table(&sc::grid(20_000, 40), alpha, reps, seed));
            eprintln!(
                "{reps} runs per row, seed {seed}, alpha {alpha}, base 1 %, tolerance 1 point, 20000 challenger responses per evaluation (1000 in the 5 % segment), at most 40 evaluations; {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        Command::Simulate { reps, traffic, max_intervals, seed, spec, threads, segments: false } => {
            use canary_judge::simulate;
            let mut s = simulate::Settings::standard(reps);
            if let Some(path) = spec {
                s.spec = RolloutSpec::load(&path)?;
                s.scenarios = simulate::standard_scenarios(&s.spec);
            }
            s.traffic = traffic;
            s.max_intervals = max_intervals;
            s.seed = seed;
            if let Some(t) = threads {
                s.threads = t;
            }
            let started = std::time::Instant::now();
            let rows = simulate::simulate(&s);
            println!("{}", simulate::table(&rows));
            eprintln!(
                "{reps} runs per row, seed {seed}, at most {max_intervals} intervals per rollout; {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        Command::Pause { manual: m, freeze } => {
            manual(if freeze { RolloutCommand::Freeze } else { RolloutCommand::Pause }, m).await?
        }
        Command::Resume(m) => manual(RolloutCommand::Resume, m).await?,
        Command::Advance(m) => manual(RolloutCommand::Advance, m).await?,
        Command::Rollback(m) => manual(RolloutCommand::Rollback, m).await?,
        Command::CheckConfig { file } => {
            let c = read_config(&file)?;
            println!(
                "ok: rollout {} epoch {} stage {}: {} at {}, {} otherwise",
                c.rollout, c.epoch, c.stage, c.challenger, c.challenger_weight_bp, c.champion
            );
        }
        Command::CheckSpec { file } => {
            let s = RolloutSpec::load(&file)?;
            let stages: Vec<String> =
                (0..s.stages.len()).map(|i| format!("{} {}", s.stage_name(i), s.stage_weight(i))).collect();
            println!("ok: rollout {}: {} → {}; stages {}", s.rollout, s.champion, s.challenger, stages.join(", "));
        }
        Command::Plan { spec, rps, error_rate, timeout_rate, runs, segment_share } => {
            anyhow::ensure!(
                rps.is_finite() && rps > 0.0,
                "--rps {rps} must be a positive number of requests per second"
            );
            let mut segment_shares = std::collections::BTreeMap::new();
            for pair in &segment_share {
                let parsed = pair.split_once('=').and_then(|(n, v)| Some((n.trim(), v.trim().parse::<f64>().ok()?)));
                let Some((name, share)) =
                    parsed.filter(|(n, v)| !n.is_empty() && v.is_finite() && *v > 0.0 && *v <= 1.0)
                else {
                    anyhow::bail!(
                        "--segment-share {pair}: expected NAME=SHARE with 0 < SHARE <= 1, e.g. enterprise=0.05"
                    );
                };
                segment_shares.insert(name.to_string(), share);
            }
            let text = std::fs::read_to_string(&spec).with_context(|| format!("cannot read {}", spec.display()))?;
            let spec = RolloutSpec::from_yaml(&fill_placeholders(&text))
                .with_context(|| format!("{} is refused", spec.display()))?;
            let a =
                canary_judge::plan::Assumptions { rps, error_rate, timeout_rate, runs: runs.max(10), segment_shares };
            print!("{}", canary_judge::plan::render(&canary_judge::plan::plan(&spec, &a), &a));
        }
        Command::BinEdges { bins, file } => {
            let text = match &file {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
                }
                None => std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?,
            };
            let values = text
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
                .enumerate()
                .map(|(i, t)| t.parse::<f64>().with_context(|| format!("value #{i} `{t}` is not a number")))
                .collect::<anyhow::Result<Vec<f64>>>()?;
            let edges = canary_judge::psi::quantile_edges(&values, bins)?;
            println!("{}", serde_json::json!({ "numeric": edges }));
        }
        Command::Crd => print!("{}", crd::crd_yaml()),
        Command::Operator { state_root, listen } => {
            let client = kube_client().await?;
            let ctx = ProcessContext::default();
            let metrics = ctx.metrics.clone();
            let app = axum::Router::new()
                .route("/healthz", axum::routing::get(|| async { "ok\n" }))
                .route("/metrics", axum::routing::get(move || async move { metrics.render(None) }));
            let listener =
                tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("canary operator: state in {}, /metrics on {}", state_root.display(), listener.local_addr()?);
            tokio::spawn(async move { axum::serve(listener, app).await });
            crate::k8s::reconcile::run(client, state_root, ctx).await?;
        }
        Command::Push { file, ecds_dir, wasm } => {
            let c = read_config(&file)?;
            let sink = EcdsFileSink::new(&ecds_dir, &wasm);
            sink.push(&c)?;
            println!("pushed {} to {}", EcdsFileSink::version_info(&c), sink.path().display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::plugin_args;

    fn rewritten(line: &str) -> String {
        plugin_args(line.split_whitespace().map(String::from).collect()).join(" ")
    }

    #[test]
    fn as_a_kubectl_plugin_the_rollout_is_positional() {
        let cases = [
            ("kubectl-canary status shop/recs", "kubectl-canary status --kube shop/recs"),
            (
                "kubectl-canary status recs -n shop --output json",
                "kubectl-canary status --kube shop/recs --output json",
            ),
            ("kubectl-canary pause --namespace=shop recs", "kubectl-canary pause --kube shop/recs"),
            ("kubectl-canary pause --freeze recs -n shop", "kubectl-canary pause --kube shop/recs --freeze"),
            (
                "kubectl-canary rollback shop/recs --reason bad --wait 5s",
                "kubectl-canary rollback --kube shop/recs --reason bad --wait 5s",
            ),
            ("kubectl-canary advance --reason ok shop/recs", "kubectl-canary advance --kube shop/recs --reason ok"),
            // Already in the canary form, or not a per-rollout command: unchanged.
            ("kubectl-canary status --kube shop/recs", "kubectl-canary status --kube shop/recs"),
            ("kubectl-canary crd", "kubectl-canary crd"),
            ("kubectl-canary", "kubectl-canary"),
        ];
        for (line, want) in cases {
            assert_eq!(rewritten(line), want, "{line}");
        }
    }
}
