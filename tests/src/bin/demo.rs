//! `make demo`: a complete local rollout, for real. Two model backends (the
//! champion v1 and the challenger v2, with long-tailed latency, a small error
//! rate and predictions), one Envoy running the filter, a load generator with
//! many distinct users, delayed ground-truth labels, and the controller
//! daemon running `controller/examples/rollout.yaml` with stages compressed
//! to `--stage-seconds`. A live status line shows stage, weight, requests per
//! version, gate values and decisions; stage reports go to the output folder.
//! `--scenario faulty` degrades the challenger once it reaches 20 % and the
//! controller rolls it back, with the alert shown. Every process started is
//! stopped at the end, on error and on Ctrl-C.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use canary_tests::{
    client, get, render_template, root, wasm_path, Backend, Daemon, Envoy, EnvoyOptions, Receiver, CHALLENGER, CHAMPION,
};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// The challenger is as good as the champion: it is promoted.
    Healthy,
    /// The challenger degrades at 20 % (errors, latency, accuracy): rolled back.
    Faulty,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "healthy")]
    scenario: Scenario,
    /// Minimum duration of each stage, in seconds.
    #[arg(long, default_value_t = 20.0)]
    stage_seconds: f64,
    /// Concurrent clients of the load generator.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Output folder (spec, state, decision log, reports); default out/demo-<scenario>-<time>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The rollout spec template.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Use your own champion model server on 127.0.0.1:PORT instead of starting one.
    #[arg(long)]
    champion_port: Option<u16>,
    /// Use your own challenger model server on 127.0.0.1:PORT.
    #[arg(long)]
    challenger_port: Option<u16>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("demo: cannot watch signals: {e}");
            std::process::exit(1);
        }
    };
    // Returning from `run` (or dropping it) stops every process it started.
    let code = tokio::select! {
        r = run(&args) => match r {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("\ndemo failed: {e:#}");
                1
            }
        },
        _ = tokio::signal::ctrl_c() => { eprintln!("\ninterrupted: stopping every process started"); 130 }
        _ = term.recv() => { eprintln!("\nterminated: stopping every process started"); 143 }
    };
    std::process::exit(code);
}

/// The backends: realistic enough that the gates compute something real.
fn backend(version: &str, port: Option<u16>) -> Result<Option<Backend>> {
    if port.is_some() {
        return Ok(None);
    }
    let seed = if version == CHAMPION { "1" } else { "2" };
    let args = ["--latency-ms", "8", "--latency-sigma", "0.5", "--error-rate", "0.003", "--seed", seed];
    Ok(Some(Backend::start(version, &args)?))
}

fn step(msg: &str) {
    println!("• {msg}");
}

async fn run(args: &Args) -> Result<bool> {
    let started = Instant::now();
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let out = args.out.clone().unwrap_or_else(|| {
        root().join("out").join(format!("demo-{}-{unix}", format!("{:?}", args.scenario).to_lowercase()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let wasm = wasm_path()?;
    println!(
        "canary demo — scenario {:?}, stages of {} s; output in {}",
        args.scenario,
        args.stage_seconds,
        out.display()
    );

    let champion = backend(CHAMPION, args.champion_port)?;
    let challenger = backend(CHALLENGER, args.challenger_port)?;
    let (p1, p2) = (
        champion.as_ref().map(|b| b.port).or(args.champion_port).unwrap_or_default(),
        challenger.as_ref().map(|b| b.port).or(args.challenger_port).unwrap_or_default(),
    );
    step(&format!(
        "model servers: {CHAMPION} (champion) on :{p1}, {CHALLENGER} (challenger) on :{p2}{}",
        if champion.is_some() { " — log-normal latency (median 8 ms, long tail), 0.3 % errors" } else { "" }
    ));
    let opts = EnvoyOptions {
        champion: CHAMPION.into(),
        challenger: CHALLENGER.into(),
        champion_port: p1,
        challenger_port: p2,
        concurrency: 2,
        template: "sidecar.yaml".into(),
    };
    let envoy = Envoy::start(&opts).await.context("Envoy did not start")?;
    step(&format!(
        "Envoy {} with {} ({} bytes): traffic http://127.0.0.1:{}/  admin http://127.0.0.1:{}",
        envoy.proc.pid(),
        wasm.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        std::fs::metadata(&wasm)?.len(),
        envoy.listen_port,
        envoy.admin_port
    ));
    let receiver = Receiver::start().await?;

    let template = args.spec.clone().unwrap_or_else(|| root().join("controller/examples/rollout.yaml"));
    let spec = render_template(
        &template,
        &[
            ("STAGE_DURATION", format!("{}ms", (args.stage_seconds * 1000.0) as u64)),
            ("ADMIN", format!("http://127.0.0.1:{}", envoy.admin_port)),
            ("ECDS_DIR", envoy.sink.path().parent().map(|p| p.display().to_string()).unwrap_or_default()),
            ("WASM", wasm.display().to_string()),
            ("WEBHOOK", receiver.url.clone()),
        ],
    )?;
    let state_dir = out.join("state");
    std::fs::write(out.join("spec.yaml"), &spec)?;
    let mut daemon = Daemon::start(&state_dir, Some(&spec))?;
    step(&format!(
        "controller daemon (pid {}) running {}; state in {}",
        daemon.proc.pid(),
        template.display(),
        state_dir.display()
    ));
    let addr_file = state_dir.join("daemon.addr");
    for _ in 0..100 {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            step(&format!(
                "dashboard: http://{}/ (live; read-only: the demo gives the daemon no operator token)",
                addr.trim()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Load with many distinct users, and delayed labels for what they got.
    let stop = Arc::new(AtomicBool::new(false));
    let fault = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (label_tx, label_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = vec![];
    for w in 0..args.clients {
        tasks.push(tokio::spawn(load_worker(
            envoy.url("/predict"),
            w as u64,
            stop.clone(),
            sent.clone(),
            label_tx.clone(),
        )));
    }
    drop(label_tx);
    tasks.push(tokio::spawn(labeler(state_dir.clone(), label_rx, fault.clone(), args.scenario)));
    step(&format!("load: {} clients, users drawn from 200 000; labels arrive 1 s after each answer", args.clients));
    println!();

    let tty = std::io::stdout().is_terminal();
    let mut shown_seq = 0u64;
    let mut shown_alerts = 0;
    let mut last_line = String::new();
    let deadline = started + Duration::from_secs(args.timeout_seconds);
    let phase = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let state = canary_tests::state(&state_dir);
        let seen = shown_seq;
        for d in canary_tests::decisions(&state_dir).iter().filter(|d| d["seq"].as_u64() > Some(seen)) {
            shown_seq = d["seq"].as_u64().unwrap_or(shown_seq);
            if d["action"] != "hold" {
                if tty {
                    print!("\r\x1b[2K");
                }
                println!("[{:6.1}s] {}", started.elapsed().as_secs_f64(), describe(d));
            }
        }
        for a in receiver.bodies().iter().skip(shown_alerts) {
            shown_alerts += 1;
            if tty {
                print!("\r\x1b[2K");
            }
            println!("ALERT (webhook received): {}", a["text"].as_str().unwrap_or_default().replace('\n', "\n    "));
        }
        if args.scenario == Scenario::Faulty
            && state["stage"].as_u64() >= Some(2)
            && !fault.swap(true, Ordering::SeqCst)
        {
            if let Some(c) = &challenger {
                c.control(serde_json::json!({"error_rate": 0.06, "latency_ms": 24, "prediction_shift": 0.15})).await?;
            }
            if tty {
                print!("\r\x1b[2K");
            }
            println!(
                "[{:6.1}s] fault injected: the challenger now fails 6 % of requests, 3x slower, shifted predictions, less accurate",
                started.elapsed().as_secs_f64()
            );
        }
        let line = status_line(&state, started, sent.load(Ordering::Relaxed));
        if tty {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else if line != last_line && shown_seq.is_multiple_of(10) {
            println!("{line}");
        }
        last_line = line;
        let phase = state["phase"].as_str().unwrap_or("").to_string();
        if phase == "promoted" || phase == "rolled_back" {
            break phase;
        }
        if let Some(status) = daemon.proc.exited() {
            bail!("the controller exited ({status}) before the rollout ended:\n{}", daemon.output());
        }
        if Instant::now() > deadline {
            bail!("the rollout did not end within {} s; see {}", args.timeout_seconds, state_dir.display());
        }
    };
    if tty {
        println!();
    }
    // The daemon posts a rollback's alert after writing the stage reports,
    // so it can arrive after the state says rolled back: wait for it.
    if phase == "rolled_back" {
        let until = Instant::now() + Duration::from_secs(10);
        while receiver.bodies().len() <= shown_alerts && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for a in receiver.bodies().iter().skip(shown_alerts) {
            println!("ALERT (webhook received): {}", a["text"].as_str().unwrap_or_default().replace('\n', "\n    "));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = daemon.wait_exit(Duration::from_secs(10)).await;
    for t in tasks {
        t.abort();
    }
    let reports = write_reports(&out, &state_dir)?;
    let elapsed = started.elapsed().as_secs_f64();
    let expected = match args.scenario {
        Scenario::Healthy => "promoted",
        Scenario::Faulty => "rolled_back",
    };
    println!(
        "\nrollout {} after {elapsed:.0} s ({} requests sent). Stage reports: {}",
        phase.replace('_', " "),
        sent.load(Ordering::Relaxed),
        reports.display()
    );
    println!("decision log: {}", state_dir.join("decisions.jsonl").display());
    println!("stopping Envoy (pid {}), the controller and the model servers", envoy.proc.pid());
    if phase != expected {
        eprintln!("expected the {:?} scenario to end {expected}, it ended {phase}", args.scenario);
    }
    Ok(phase == expected)
}

/// One decision in a line.
fn describe(d: &serde_json::Value) -> String {
    let w = |t: &serde_json::Value| t["weight"].as_u64().unwrap_or(0) as f64 / 100.0;
    format!(
        "#{} {} {} ({}%) → {} ({}%): {}",
        d["seq"],
        d["action"].as_str().unwrap_or("?").to_uppercase(),
        d["from"]["stage_name"].as_str().unwrap_or("?"),
        w(&d["from"]),
        d["to"]["stage_name"].as_str().unwrap_or("?"),
        w(&d["to"]),
        d["reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join("; "))
            .unwrap_or_default()
    )
}

/// The live status line: stage, weight, requests per version, gates, last decision.
fn status_line(state: &serde_json::Value, started: Instant, sent: u64) -> String {
    let d = &state["last_decision"];
    let stage = d["to"]["stage_name"].as_str().unwrap_or("-");
    let weight = d["to"]["weight"].as_u64().unwrap_or(0) as f64 / 100.0;
    let w = &d["window"];
    let n = |v: &str| w[v]["responses"].as_array().map_or(0, |r| r.iter().filter_map(|x| x.as_u64()).sum::<u64>());
    let mut gates = vec![];
    for g in d["gates"].as_array().into_iter().flatten() {
        let name = g["gate"].as_str().unwrap_or("?");
        let fmt = |x: &serde_json::Value| match (name, x.as_f64()) {
            ("latency", Some(v)) => format!("{:.0}ms", v / 1000.0),
            ("error_rate" | "timeouts", Some(v)) => format!("{:.2}%", v * 100.0),
            (_, Some(v)) => format!("{v:.3}"),
            _ => "-".into(),
        };
        if name == "prediction" {
            // PSI compares the challenger with the champion: one value, against its limit.
            let outcome = g["outcome"].as_str().unwrap_or("");
            let limit = g["threshold"].as_f64().map_or(String::new(), |_| format!(" (< {})", fmt(&g["threshold"])));
            gates.push(format!("psi {}{limit} {outcome}", fmt(&g["challenger"])));
            continue;
        }
        gates.push(format!(
            "{name} {}/{} {}",
            fmt(&g["champion"]),
            fmt(&g["challenger"]),
            g["outcome"].as_str().unwrap_or("")
        ));
    }
    format!(
        "[{:6.1}s] {stage} ({weight}%) | {CHAMPION} {} / {CHALLENGER} {} responses | {} | #{} {} | {sent} sent",
        started.elapsed().as_secs_f64(),
        n("champion"),
        n("challenger"),
        if gates.is_empty() { "gates: -".to_string() } else { gates.join(", ") },
        d["seq"],
        d["reasons"][0].as_str().unwrap_or("").chars().take(70).collect::<String>()
    )
}

async fn load_worker(
    url: String,
    worker: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    labels: tokio::sync::mpsc::UnboundedSender<(String, String, Instant)>,
) {
    let c = client();
    let mut x = worker.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while !stop.load(Ordering::Relaxed) {
        // xorshift: a spread of users without a shared RNG.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = format!("user-{}", x % 200_000);
        if let Ok(r) = get(&c, &url, &[("x-user-id", &user)]).await {
            sent.fetch_add(1, Ordering::Relaxed);
            if let (Some(v), Some(s)) = (r.version, r.stage) {
                let _ = labels.send((v, s, Instant::now()));
            }
        }
    }
}

/// Simulated ground truth: each answer is correct with the version's accuracy,
/// known 1 s later, posted in batches to the daemon's `POST /labels`.
async fn labeler(
    state_dir: PathBuf,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, String, Instant)>,
    fault: Arc<AtomicBool>,
    scenario: Scenario,
) {
    let c = client();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut pending: Vec<(String, String, Instant)> = vec![];
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        while let Ok(x) = rx.try_recv() {
            pending.push(x);
        }
        let Ok(addr) = std::fs::read_to_string(state_dir.join("daemon.addr")) else { continue };
        let due = Instant::now() - Duration::from_secs(1);
        let (ready, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(_, _, at)| *at <= due);
        pending = later;
        if ready.is_empty() {
            continue;
        }
        let batch: Vec<serde_json::Value> = ready
            .iter()
            .map(|(version, stage, _)| {
                let accuracy = match (version.as_str(), scenario, fault.load(Ordering::Relaxed)) {
                    (CHALLENGER, Scenario::Faulty, true) => 0.75,
                    _ => 0.90,
                };
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let correct = (rng % 10_000) as f64 / 10_000.0 < accuracy;
                serde_json::json!({"version": version, "stage": stage, "correct": correct})
            })
            .collect();
        let _ = c.post(format!("http://{}/labels", addr.trim())).json(&batch).send().await;
    }
}

/// The controller's reports (`canary report`): per stage that ended and for
/// the whole rollout, as HTML and JSON, plus each one's Markdown summary and
/// an index (`README.md`) linking them.
fn write_reports(out: &Path, state_dir: &Path) -> Result<PathBuf> {
    use canary_controller::store::reports;
    use canary_judge::report;
    let dir = out.join("reports");
    let c = canary_controller::control::Controller::open(state_dir, None, false, &Default::default())?;
    let now = canary_controller::control::now_millis();
    reports::write_all(&c.store, &c.spec, Some(&dir), now)?;
    let state = c.state()?;
    let log = c.store.decisions()?;
    let mut index = String::from("# Rollout reports\n\n");
    let mut epochs: Vec<u64> =
        log.iter().filter(|d| d.action != canary_judge::rollout::Action::Hold).map(|d| d.from.epoch).collect();
    epochs.dedup();
    for epoch in epochs {
        let Some(r) = report::stage_report(&c.spec, &state, &log, epoch, now) else { continue };
        let stem = reports::stage_stem(r.stage_index.unwrap_or(0), r.stage.as_deref().unwrap_or("stage"), epoch);
        std::fs::write(dir.join(format!("{stem}.md")), report::markdown(&r))?;
        index.push_str(&format!(
            "- {}: {} — [summary]({stem}.md), [report]({stem}.html), [JSON]({stem}.json)\n",
            r.stage.as_deref().unwrap_or("?"),
            r.recommendation.action
        ));
    }
    if let Some(r) = report::rollout_report(&c.spec, &state, &log, now) {
        std::fs::write(dir.join("rollout.md"), report::markdown(&r))?;
        index.push_str(&format!(
            "- whole rollout: {} — [summary](rollout.md), [report](rollout.html), [JSON](rollout.json)\n",
            r.recommendation.action
        ));
    }
    std::fs::write(dir.join("README.md"), index)?;
    Ok(dir)
}
