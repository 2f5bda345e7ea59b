//! How the CLI prints a rollout's status and decisions for people (the
//! `--output json` forms are the serialized values).

use canary_judge::wire_name;

use super::Output;
use crate::control::Status;
use crate::k8s::crd;

fn ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms / 100 * 100)).to_string()
}

pub(super) fn print_status(s: &Status) {
    println!(
        "rollout {}: {}, stage {}/{} {} — challenger {} at {}, epoch {}",
        s.rollout,
        s.phase,
        s.stage + 1,
        s.stages,
        s.stage_name,
        s.challenger,
        canary_core::Weight::from_bp(u64::from(s.weight_bp)).unwrap_or_default(),
        s.epoch
    );
    if let Some(e) = s.in_stage_ms {
        let left = s.time_left_ms.map_or(String::new(), |l| format!(", {} left of the minimum", ms(l)));
        println!("  in stage for {}{left}", ms(e));
    }
    if let Some((a, b)) = s.requests_left {
        let what = if s.shadow_stage { "shadow calls" } else { "challenger" };
        println!("  responses still needed before judging: {a} champion, {b} {what}");
    }
    match &s.last_decision {
        Some(d) => {
            print_decision(d.seq, &wire_name(&d.action), d.manual, &d.reasons);
            for g in &d.gates {
                print_gate(&wire_name(&g.gate), &wire_name(&g.outcome), &g.detail);
            }
            let rate = |(errors, n): (u64, u64)| {
                if n == 0 {
                    "-".to_string()
                } else {
                    format!("{:.2}% ({errors}/{n})", errors as f64 * 100.0 / n as f64)
                }
            };
            for seg in &s.segments {
                println!(
                    "    segment {}: 5xx {} {}, {} {}",
                    seg.segment,
                    s.champion,
                    rate(seg.champion),
                    s.challenger,
                    rate(seg.challenger)
                );
            }
        }
        None => println!("  no decision yet"),
    }
    match s.daemon_pid {
        Some(pid) => println!("  daemon running (pid {pid}); state in {}", s.state_dir),
        None => println!("  daemon not running; state in {}", s.state_dir),
    }
}

pub(super) fn print_kube_status(s: &crd::CanaryRolloutStatus, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!(
        "{}, stage {}/{} {} — challenger at {}, epoch {}",
        or(&s.phase),
        s.stage.map_or(0, |i| i + 1),
        s.stages.unwrap_or(0),
        or(&s.stage_name),
        or(&s.weight),
        s.epoch.unwrap_or(0)
    );
    if let Some(d) = &s.last_decision {
        print_decision(d.seq, &d.action, d.manual, &d.reasons);
    }
    for g in &s.gates {
        print_gate(&g.gate, &g.outcome, &g.detail);
    }
    if let Some(c) = &s.last_command {
        println!("  last command {} ({}): {}", c.id, c.command, c.result);
    }
    if !s.missing_sinks.is_empty() {
        println!("  sinks missing the current configuration: {}", s.missing_sinks.join(", "));
    }
    if let Some(m) = &s.message {
        println!("  {m}");
    }
    Ok(())
}

/// The status's "last decision" line (local state or a CanaryRollout's status).
fn print_decision(seq: u64, action: &str, manual: bool, reasons: &[String]) {
    println!("  last decision #{seq} ({action}{}): {}", if manual { ", manual" } else { "" }, reasons.join("; "));
}

/// One gate of the last decision.
fn print_gate(gate: &str, outcome: &str, detail: &str) {
    println!("    {gate}: {outcome} — {detail}");
}
