//! How fast the controller reacts (`make bench`, issue: controller reaction):
//! real Envoy + the filter + two model backends + the controller daemon with
//! the file sink, under steady load. Per trial the challenger starts failing
//! 30 % of its requests at a random moment of the 1 % stage; measured:
//!
//! - fault start → rollback decision (the decision's timestamp in the log),
//! - rollback decision → the last request sent by a probe client for a user
//!   on the challenger that the challenger still answered (Envoy applying 0 %
//!   through ECDS). The probe sends back to back (a request every few ms),
//!   so the figure does not depend on how often the 1 % stage's load reaches
//!   the challenger.
//!
//! `--interval` is the controller's evaluation interval (60 s is the spec's
//! default). Writes `reaction.json` and `reaction.md` into `--out`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use canary_controller::control::now_millis;
use canary_tests::{client, decisions, get, rollout_spec, state, Daemon, Load, Rig, CHALLENGER};
use clap::Parser;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Parser)]
struct Args {
    /// Where reaction.json and reaction.md go.
    #[arg(long)]
    out: PathBuf,
    /// Evaluation intervals to measure, each with its own trials.
    #[arg(long, value_delimiter = ',', default_value = "60s,1s")]
    interval: Vec<String>,
    /// Trials per interval.
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// Seed of the fault moments.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Serialize)]
struct Trial {
    interval: String,
    fault_after_start_ms: u64,
    fault_to_decision_ms: u64,
    decision_to_last_challenger_request_ms: i64,
    /// The probe's last request answered by the challenger, after the decision.
    decision_to_last_probe_on_challenger_ms: i64,
    requests_served: u64,
}

#[derive(Serialize)]
struct Report {
    what: &'static str,
    trials: Vec<Trial>,
}

/// Error-rate gate only (the default sequential method): machine load cannot
/// trip it, a 30 % error rate trips it at the first look.
const GATES: &str = "  error_rate: { error_tolerance: 2 }";
const MIN_REQUESTS: u64 = 200;

async fn trial(interval: &str, fault_after: Duration, n: usize) -> Result<Trial> {
    let rig = Rig::start().await?;
    for b in [&rig.champion, &rig.challenger] {
        b.control(serde_json::json!({"latency_ms": 5.0, "latency_sigma": 0.1})).await?;
    }
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    let name = format!("reaction-{n}");
    // Stages long enough that the fault always lands in the 1 % stage.
    let spec = rollout_spec(&name, &rig.envoy, "1h", MIN_REQUESTS, GATES, "")
        .replace("interval: 200ms", &format!("interval: {interval}"));
    let load = Load::start(rig.envoy.url("/predict"), 32, 20_000, Duration::ZERO);
    let mut daemon = Daemon::start(&state_dir, Some(&spec))?;
    let started = Instant::now();
    let (probe, last_on_challenger, stop_probe) = probe(&rig).await?;
    tokio::time::sleep(fault_after.saturating_sub(started.elapsed())).await;
    let fault_at = now_millis();
    rig.challenger.control(serde_json::json!({"error_rate": 0.3})).await?;
    let limit = humantime::parse_duration(interval).context("--interval")? * 3 + Duration::from_secs(60);
    let status = daemon.wait_exit(limit).await.with_context(|| format!("no decision within {limit:?}"))?;
    if !status.success() || state(&state_dir)["phase"] != "rolled_back" {
        bail!("trial {n}: not rolled back:\n{}", daemon.output());
    }
    let rollback = decisions(&state_dir)
        .into_iter()
        .find(|d| d["action"] == "rollback")
        .context("no rollback decision in the log")?;
    let decided_at = rollback["at"].as_u64().context("decision without `at`")?;
    // Long enough for any straggler to arrive, then read when the last one did.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = rig.challenger.stats().await?.last_request_unix_ms;
    stop_probe.store(true, Ordering::Relaxed);
    let _ = probe.await;
    let last_probe = last_on_challenger.load(Ordering::Relaxed);
    let served = load.ok.load(std::sync::atomic::Ordering::Relaxed);
    load.stop().await;
    let t = Trial {
        interval: interval.to_string(),
        fault_after_start_ms: fault_after.as_millis() as u64,
        fault_to_decision_ms: decided_at.saturating_sub(fault_at),
        decision_to_last_challenger_request_ms: last as i64 - decided_at as i64,
        decision_to_last_probe_on_challenger_ms: last_probe as i64 - decided_at as i64,
        requests_served: served,
    };
    eprintln!(
        "reaction: interval {interval}, trial {n}: fault {:.1} s after start → decision {} ms later; decision → probe's last on the challenger {} ms, backend's last request {} ms ({:.1} s in all)",
        fault_after.as_secs_f64(),
        t.fault_to_decision_ms,
        t.decision_to_last_probe_on_challenger_ms,
        t.decision_to_last_challenger_request_ms,
        started.elapsed().as_secs_f64()
    );
    Ok(t)
}

/// Finds a user the filter sends to the challenger, then asks for it back to
/// back, recording when the last request that the challenger answered was sent.
async fn probe(rig: &Rig) -> Result<(tokio::task::JoinHandle<()>, Arc<AtomicU64>, Arc<AtomicBool>)> {
    let c = client();
    let url = rig.envoy.url("/predict");
    let mut user = None;
    for i in 0..5000 {
        let u = format!("probe-{i}");
        if get(&c, &url, &[("x-user-id", &u)]).await?.version.as_deref() == Some(CHALLENGER) {
            user = Some(u);
            break;
        }
    }
    let user = user.context("no user on the challenger among 5 000 at 1 %")?;
    let (last, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let (l, s) = (last.clone(), stop.clone());
    let task = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            let sent = now_millis();
            if let Ok(r) = get(&c, &url, &[("x-user-id", &user)]).await {
                if r.version.as_deref() == Some(CHALLENGER) {
                    l.store(sent, Ordering::Relaxed);
                }
            }
        }
    });
    Ok((task, last, stop))
}

fn markdown(r: &Report) -> String {
    let mut md = String::from(
        "## Controller reaction (file sink)\n\nOne row per trial: the challenger starts failing 30 % of its requests at a random moment of the 1 % stage (error-rate gate, sequential method). *Fault → decision* is read from the decision log; *decision → 0 %* is when a probe client, asking back to back for one user on the challenger, sent its last request that the challenger answered, after the decision was logged (Envoy applying the pushed 0 % configuration; negative: already before the log entry was written); *backend's last* is the last request the challenger backend saw from any client.\n\n| interval | fault after start (s) | fault → decision (ms) | decision → 0 % challenger, probe (ms) | backend's last request (ms) | requests served |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for t in &r.trials {
        md.push_str(&format!(
            "| {} | {:.1} | {} | {} | {} | {} |\n",
            t.interval,
            t.fault_after_start_ms as f64 / 1000.0,
            t.fault_to_decision_ms,
            t.decision_to_last_probe_on_challenger_ms,
            t.decision_to_last_challenger_request_ms,
            t.requests_served
        ));
    }
    let worst = r.trials.iter().map(|t| t.decision_to_last_probe_on_challenger_ms).max().unwrap_or(0);
    md.push_str(&format!(
        "\nTarget: rollback decision → 0 % challenger ≤ 100 ms: worst {worst} ms over {} trials — {}.\n",
        r.trials.len(),
        if worst <= 100 { "met" } else { "not met" }
    ));
    md
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    // The fault moments are reproducible from `--seed`.
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut trials = vec![];
    for interval in &args.interval {
        let every = humantime::parse_duration(interval).with_context(|| format!("--interval {interval}"))?;
        for n in 0..args.trials {
            // Anywhere in the first evaluation interval after the first look.
            let span = every.as_millis().max(1) as u64;
            let fault_after = Duration::from_secs(3) + Duration::from_millis(rng.random_range(0..span));
            trials.push(trial(interval, fault_after, n).await?);
        }
    }
    let report = Report { what: "controller reaction, file sink", trials };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.out.join("reaction.json"), json)?;
    let md = markdown(&report);
    std::fs::write(args.out.join("reaction.md"), &md)?;
    print!("{md}");
    Ok(())
}
