//! `canary plan`: what a spec's stages will take at a given traffic, from the
//! engine itself. Per stage: the challenger's traffic, the time to
//! `min_requests`, the expected (median) time to a decision for a challenger
//! equal to the champion and for one 2 × tolerance worse — simulated with
//! the gates' own e-processes ([`crate::calibration`]) at the stage's split
//! and evaluation interval — and a warning where a stage cannot decide
//! within its `max_duration`. Pure: spec and assumptions in, rows out.

use std::time::Duration;

use crate::anytime;
use crate::calibration::{self, RateCell, Truth};
use crate::spec::{AdvanceWhen, RolloutSpec};

/// What the plan assumes about traffic and the champion.
#[derive(Debug, Clone, Copy)]
pub struct Assumptions {
    /// Requests per second through the Envoys, both versions together.
    pub rps: f64,
    /// The champion's 5xx rate (0.003 = 0.3 %).
    pub error_rate: f64,
    /// The champion's 504 rate.
    pub timeout_rate: f64,
    /// Simulated runs per estimate.
    pub runs: u32,
}

/// One stage of the plan.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub name: String,
    pub weight_percent: f64,
    pub challenger_rps: f64,
    pub min_requests: u64,
    pub to_min_requests: Duration,
    pub advance_when: AdvanceWhen,
    /// Median time to the stage's decision with an equal challenger (`None`:
    /// not within `max_duration` in most runs).
    pub equal: Option<Duration>,
    /// Median time to a rollback of a challenger 2 × tolerance worse.
    pub harmful: Option<Duration>,
    pub max_duration: Duration,
    pub warnings: Vec<String>,
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e9))
}

/// The plan of every stage but the last (100 %).
pub fn plan(spec: &RolloutSpec, a: Assumptions) -> Vec<StagePlan> {
    let interval = spec.interval.as_secs_f64().max(0.001);
    let alpha = spec.gates.alpha;
    let rates: Vec<(&str, f64, f64)> = [
        spec.gates.error_rate.as_ref().map(|g| ("error_rate", a.error_rate, g.error_tolerance / 100.0)),
        spec.gates.timeouts.as_ref().map(|g| ("timeouts", a.timeout_rate, g.timeout_tolerance / 100.0)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut out = vec![];
    for i in 0..spec.stages.len().saturating_sub(1) {
        let stage = &spec.stages[i];
        let weight = stage.weight_percent.unwrap_or(0.0);
        let share = (weight / 100.0).clamp(1e-4, 0.9999);
        let challenger_rps = a.rps * share;
        let slower_rps = challenger_rps.min(a.rps - challenger_rps).max(1e-9);
        let min_requests = spec.min_requests(i);
        let to_min = min_requests as f64 / slower_rps;
        let max_duration = spec.max_duration(i);
        let looks = ((max_duration.as_secs_f64() / interval).ceil() as u32).clamp(1, 400);
        // Looks coarser than the interval when the stage is long: the
        // simulation stays bounded; the verdict is the same or later.
        let step = (max_duration.as_secs_f64() / interval / f64::from(looks)).max(1.0);
        let per_look = (challenger_rps * interval * step).ceil().max(1.0) as u64;
        let median = |base: f64, tol: f64, truth: Truth| {
            let cell = RateCell { base, tol, share, truth, per_look, max_looks: looks };
            let o = calibration::run_rate(cell, alpha, a.runs, 2026 + i as u64);
            o.median_to_decision().map(|n| n as f64 / challenger_rps)
        };
        let policy = spec.advance_when(i);
        let floor = stage.min_duration.as_secs_f64().max(to_min);
        let mut warnings = vec![];
        let equal = match policy {
            AdvanceWhen::NoHarm => Some(floor),
            AdvanceWhen::Proven => rates.iter().try_fold(floor, |acc, &(gate, base, tol)| match median(base, tol, Truth::Equal) {
                Some(t) => Some(acc.max(t)),
                None => {
                    warnings.push(format!(
                        "{gate}: an equal challenger is not proven within max_duration ({}) in most runs at this traffic",
                        humantime::format_duration(max_duration)
                    ));
                    None
                }
            }),
        };
        if policy == AdvanceWhen::Proven {
            if let Some(g) = &spec.gates.latency {
                let n = anytime::samples_for_upper_bound(g.quantile, alpha / 2.0);
                let t = n as f64 / slower_rps;
                if t > max_duration.as_secs_f64() {
                    warnings.push(format!(
                        "latency: an upper bound of p{} needs {n} samples per version (~{}), beyond max_duration",
                        g.quantile * 100.0,
                        humantime::format_duration(seconds(t.round()))
                    ));
                }
            }
        }
        let harmful =
            rates.iter().filter_map(|&(_, base, tol)| median(base, tol, Truth::TwiceTolerance)).reduce(f64::min);
        if let Some(t) = equal.filter(|t| *t > max_duration.as_secs_f64()) {
            warnings.push(format!(
                "decides in ~{} but max_duration is {}",
                humantime::format_duration(seconds(t.round())),
                humantime::format_duration(max_duration)
            ));
        }
        out.push(StagePlan {
            name: spec.stage_name(i),
            weight_percent: weight,
            challenger_rps,
            min_requests,
            to_min_requests: seconds(to_min),
            advance_when: policy,
            equal: equal.map(seconds),
            harmful: harmful.map(seconds),
            max_duration,
            warnings,
        });
    }
    out
}

/// The plan as a table.
pub fn render(rows: &[StagePlan], a: Assumptions) -> String {
    let t = |d: Option<Duration>| {
        d.map_or("not within max_duration".to_string(), |d| {
            humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
        })
    };
    let mut s = format!(
        "plan at {} req/s, champion 5xx {:.2}%, 504 {:.2}% (medians of {} simulated runs per cell)\n\n",
        a.rps,
        a.error_rate * 100.0,
        a.timeout_rate * 100.0,
        a.runs
    );
    s.push_str("| stage | weight | challenger req/s | min_requests (time) | advance_when | equal challenger decided | 2x tolerance rolled back | max_duration |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {}% | {:.1} | {} ({}) | {} | {} | {} | {} |\n",
            r.name,
            r.weight_percent,
            r.challenger_rps,
            r.min_requests,
            t(Some(r.to_min_requests)),
            r.advance_when,
            t(r.equal),
            t(r.harmful),
            humantime::format_duration(r.max_duration)
        ));
    }
    for r in rows {
        for w in &r.warnings {
            s.push_str(&format!("warning: {}: {w}\n", r.name));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
rollout: r
champion: v1
challenger: v2
interval: 10s
stages:
  - { weight_percent: 1, min_duration: 20s, min_requests: 150 }
  - { weight_percent: 50, min_duration: 20s, min_requests: 150 }
  - { weight_percent: 100 }
gates:
  error_rate: { error_tolerance: 1 }
  latency: { latency_tolerance_multiplier: 1.5, quantile: 0.95 }
  timeouts: { timeout_tolerance: 1 }
envoy: { admin: ["http://a"], ecds_dir: /x, wasm: /y }
"#;

    #[test]
    fn the_plan_of_the_issue_traffic() {
        // The issue's case 7: 200 req/s, gates error 1 pp, p95 × 1.5, timeouts 1 pp.
        let spec = RolloutSpec::from_yaml(SPEC).unwrap();
        let a = Assumptions { rps: 200.0, error_rate: 0.003, timeout_rate: 0.001, runs: 60 };
        let rows = plan(&spec, a);
        assert_eq!(rows.len(), 2);
        let one = &rows[0];
        assert_eq!((one.advance_when, one.min_requests), (AdvanceWhen::NoHarm, 150));
        // 150 challenger responses at 2 req/s: 75 s; a healthy challenger leaves within 5 minutes.
        assert_eq!(one.to_min_requests.as_secs(), 75);
        assert!(one.equal.is_some_and(|t| t <= Duration::from_secs(300)), "{one:?}");
        assert!(one.harmful.is_some(), "{one:?}");
        let half = &rows[1];
        assert_eq!(half.advance_when, AdvanceWhen::Proven);
        assert!(half.equal.is_some_and(|t| t >= Duration::from_secs(20)), "{half:?}");
        let text = render(&rows, a);
        assert!(text.contains("| 1pct | 1% | 2.0 | 150 (1m 15s) | no_harm |"), "{text}");
    }

    #[test]
    fn a_stage_too_short_for_its_proof_is_warned_about() {
        let spec = RolloutSpec::from_yaml(&SPEC.replace(
            "{ weight_percent: 50, min_duration: 20s, min_requests: 150 }",
            "{ weight_percent: 50, min_duration: 20s, min_requests: 150, max_duration: 30s }",
        ))
        .unwrap();
        let rows = plan(&spec, Assumptions { rps: 2.0, error_rate: 0.003, timeout_rate: 0.001, runs: 30 });
        assert!(!rows[1].warnings.is_empty(), "{:?}", rows[1]);
    }
}
