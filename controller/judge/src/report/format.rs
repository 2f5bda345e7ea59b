//! How the report's numbers and gate results read for people, shared by the
//! Markdown and the HTML: rounding (three significant digits, units, pp),
//! gate values, intervals and labels, the scope title and the rule for
//! "worse", HTML escaping, and the check that no unreadable number slips
//! into a report (`unreadable_numbers`).

use super::model::*;
use crate::gates::{GateResult, Outcome};

/// "stage 5pct (5%)" or "whole rollout".
pub(super) fn scope_title(r: &Report) -> String {
    r.stage.as_ref().map_or_else(|| "whole rollout".to_string(), |st| format!("stage {st}"))
}

/// What the highlighting means, in the report's own words.
pub(super) fn worse_rule() -> String {
    format!(
        "Highlighted as worse: the {:.0} % interval of the difference lies wholly on the worse side (for latency \
         quantiles, the versions' intervals do not overlap) and the difference is at least {MIN_RATE_DIFFERENCE_PP} pp \
         for rates, {MIN_LATENCY_DIFFERENCE_MS} ms and {:.0} % of the champion's for latency, {MIN_LABEL_DIFFERENCE} for label means.",
        CONFIDENCE * 100.0,
        MIN_LATENCY_RATIO * 100.0
    )
}

pub(super) fn inputs_line(r: &Report) -> String {
    format!(
        "Generated {} · epoch {} · window {:.1} s · decisions #{}–#{} · spec sha256 {} · filter configuration sha256 {}",
        r.generated_at_iso,
        r.inputs.epoch,
        r.inputs.window_ms as f64 / 1000.0,
        r.inputs.decisions.first().copied().unwrap_or(0),
        r.inputs.decisions.last().copied().unwrap_or(0),
        r.inputs.spec_sha256,
        r.inputs.filter_config_sha256
    )
}

/// Text recorded by the gates (reasons, details) as people read it: any
/// number with more than four decimals rounded to three significant digits.
pub(super) fn readable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        let len = from.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(from.len());
        let number = from[..len].trim_end_matches('.');
        let decimals = number.split_once('.').map_or(0, |(_, d)| d.len());
        match number.parse::<f64>() {
            Ok(x) if decimals > 0 && x >= 1e12 => out.push_str(&format!("{x:.1e}")),
            Ok(x) if decimals > 4 => out.push_str(&round3(x)),
            _ => out.push_str(number),
        }
        rest = &from[number.len()..];
    }
    out.push_str(rest);
    out
}

pub(super) fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::Inconclusive => "inconclusive",
        Outcome::NoData => "no_data",
    }
}

/// How a gate's numbers read for people: the factor from the gate's own
/// units (shares, microseconds) and the unit shown (its descriptor's).
pub(super) fn gate_units(g: &GateResult) -> (f64, &'static str) {
    let d = g.gate.descriptor();
    (d.scale, d.unit)
}

/// Whether the gate is judged on challenger − champion (rates, label means).
pub(super) fn judged_on_difference(g: &GateResult) -> bool {
    g.gate.descriptor().difference
}

/// One of a gate's values, rounded, with its unit.
pub(super) fn gate_value(g: &GateResult, x: Option<f64>) -> String {
    let (k, unit) = gate_units(g);
    x.filter(|v| v.is_finite()).map_or("—".to_string(), |v| format!("{}{unit}", round3(v * k)))
}

/// The gate's id, with the segment it judges alone if any.
pub(super) fn gate_label(g: &GateResult) -> String {
    match &g.segment {
        Some(seg) => format!("{} · segment {seg}", g.gate.id()),
        None => g.gate.id().to_string(),
    }
}

/// The champion's column: PSI compares the challenger with the champion,
/// which is the reference and has no value of its own.
pub(super) fn gate_champion(g: &GateResult) -> String {
    if g.gate.descriptor().reference {
        "reference".into()
    } else {
        gate_value(g, g.champion)
    }
}

/// A difference in the gate's units: percentage points for rates.
pub(super) fn gate_diff(g: &GateResult, x: f64) -> String {
    let (k, unit) = gate_units(g);
    let unit = if unit == "%" { " pp" } else { unit };
    format!("{}{unit}", signed(x * k))
}

/// The interval a sequential gate judged, in the gate's units.
pub(super) fn gate_interval(g: &GateResult) -> String {
    let (k, unit) = gate_units(g);
    match (g.difference_interval, g.champion_interval, g.challenger_interval) {
        (Some(i), _, _) => format!(
            "Δ {} [{}, {}]",
            gate_diff(g, g.difference.unwrap_or(f64::NAN)),
            signed(i.low * k),
            gate_diff(g, i.high)
        ),
        (None, Some(a), Some(b)) => format!(
            "challenger [{}, {}]{unit}, champion [{}, {}]{unit}",
            round3(b.low * k),
            round3(b.high * k),
            round3(a.low * k),
            round3(a.high * k)
        ),
        (None, None, Some(b)) => format!("[{}, {}]{unit}", round3(b.low * k), round3(b.high * k)),
        _ => "—".into(),
    }
}

pub(super) fn gate_look(g: &GateResult) -> String {
    match (g.look, g.confidence) {
        (Some(k), Some(c)) => format!("{k} ({:.2}%){}", c * 100.0, if g.carried { ", carried" } else { "" }),
        _ => "—".into(),
    }
}

/// Three significant digits, at most four decimals, no trailing zeros.
pub(super) fn round3(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let decimals = if x == 0.0 { 0 } else { (2 - x.abs().log10().floor() as i32).clamp(0, 4) as usize };
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// [`round3`] with a sign.
pub(super) fn signed(x: f64) -> String {
    let s = round3(x);
    if x > 0.0 && s != "0" {
        format!("+{s}")
    } else {
        s
    }
}

/// A value in a row's unit: shares as %, differences of shares as pp.
pub(super) fn fmt_num(x: f64, unit: &str) -> String {
    match unit {
        "share" => format!("{}%", round3(x * 100.0)),
        "pp" => format!("{} pp", signed(x * 100.0)),
        "ms" => format!("{} ms", round3(x)),
        "Δ ms" => format!("{} ms", signed(x)),
        "Δ" => signed(x),
        _ => round3(x),
    }
}

/// The unit of a row's difference.
pub(super) fn diff_unit(unit: &str) -> &'static str {
    match unit {
        "share" => "pp",
        "ms" => "Δ ms",
        _ => "Δ",
    }
}

pub(super) fn fmt_est(e: &Estimate, unit: &str) -> String {
    match (e.value, e.interval) {
        (Some(v), Some(i)) => format!("{} [{} – {}]", fmt_num(v, unit), fmt_num(i.low, unit), fmt_num(i.high, unit)),
        (Some(v), None) => fmt_num(v, unit),
        _ => "—".into(),
    }
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Numbers a reviewer should not have to read: raw epoch milliseconds
/// (13 digits) and floats with more than four decimals; hashes are skipped.
/// Reports hold themselves to this (their tests and the browser tests check it).
pub fn unreadable_numbers(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .filter(|w| w.len() < 40 && w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .filter(|w| {
            let w = w.trim_end_matches('.');
            let (int, dec) = w.split_once('.').unwrap_or((w, ""));
            int.chars().all(|c| c.is_ascii_digit())
                && dec.chars().all(|c| c.is_ascii_digit())
                && (int.len() >= 13 || dec.len() > 4)
        })
        .map(str::to_string)
        .collect()
}
