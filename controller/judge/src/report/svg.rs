//! The report's inline SVG plots: a gate's forest plot (the numbers in
//! `Forest`, which the dashboard draws too), latency distributions over a
//! log-scaled axis, prediction distributions as grouped bars.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::format::*;
use crate::gates::{GateResult, Outcome};
use crate::window::Bucket;

/// What a gate's "forest plot" shows, in the units people read (%, pp, ms):
/// the estimate the gate judged, its interval (sequential gates), and the
/// limit it is held to. Difference gates (rates, label means) are judged on
/// challenger − champion, drawn around 0; the others on the challenger's
/// value (latency quantile, PSI, agreement). The report and the dashboard
/// draw the same numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forest {
    pub point: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub limit: Option<f64>,
    /// Drawn around 0 (a difference).
    pub difference: bool,
    /// "pp", "ms", "%" or "".
    pub unit: &'static str,
}

/// The forest plot of a gate, if it has an estimate.
pub fn forest(g: &GateResult) -> Option<Forest> {
    let (k, unit) = gate_units(g);
    let difference = judged_on_difference(g);
    let (point, interval, limit) = if difference {
        (g.difference, g.difference_interval, g.threshold.zip(g.champion).map(|(t, c)| t - c))
    } else {
        (g.challenger, g.challenger_interval, g.threshold)
    };
    let unit = match unit.trim() {
        "%" if difference => "pp",
        u => u,
    };
    Some(Forest {
        point: point.filter(|p| p.is_finite())? * k,
        low: interval.map(|i| i.low * k),
        high: interval.map(|i| i.high * k),
        limit: limit.map(|l| l * k),
        difference,
        unit,
    })
}

/// A gate's interval against its limit, as a small "forest plot": the
/// limit as a dashed line, the interval as a bar, the estimate as a dot
/// coloured by the outcome. Difference gates are drawn around 0.
pub(super) fn forest_svg(g: &GateResult) -> String {
    let Some(f) = forest(g) else { return "—".into() };
    let with_unit = |x: f64| {
        let sep = if f.unit == "%" || f.unit.is_empty() { "" } else { " " };
        format!("{}{sep}{}", if f.difference { signed(x) } else { round3(x) }, f.unit)
    };
    let mut xs = vec![f.point];
    xs.extend(f.low.into_iter().chain(f.high).chain(f.limit));
    if f.difference {
        xs.push(0.0);
    }
    let xs: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = (hi - lo).max(1e-9);
    let (lo, hi) = (lo - span * 0.1, hi + span * 0.1);
    let (w, h) = (220.0, 34.0);
    let x = |v: f64| 6.0 + (v - lo) / (hi - lo) * (w - 12.0);
    let colour = match g.outcome {
        Outcome::Pass => "#15803d",
        Outcome::Fail => "#b91c1c",
        Outcome::Inconclusive => "#a16207",
        Outcome::NoData => "#6b7280",
    };
    let mut svg = format!(
        "<svg class=\"forest\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{} against its limit\">\
         <line x1=\"6\" y1=\"14\" x2=\"{}\" y2=\"14\" stroke=\"#ddd\"/>",
        esc(g.gate.id()),
        w - 6.0
    );
    if f.difference {
        let _ = write!(svg, "<line x1=\"{0:.1}\" y1=\"4\" x2=\"{0:.1}\" y2=\"24\" stroke=\"#999\"/>", x(0.0));
    }
    if let Some(l) = f.limit {
        let _ = write!(
            svg,
            "<line x1=\"{0:.1}\" y1=\"2\" x2=\"{0:.1}\" y2=\"26\" stroke=\"#b91c1c\" stroke-dasharray=\"3,2\"/>\
             <text x=\"{0:.1}\" y=\"33\" font-size=\"9\" text-anchor=\"{2}\" fill=\"#b91c1c\">limit {1}</text>",
            x(l),
            esc(&with_unit(l)),
            match x(l) {
                at if at > w * 0.7 => "end",
                at if at < w * 0.3 => "start",
                _ => "middle",
            }
        );
    }
    if let (Some(low), Some(high)) = (f.low, f.high) {
        let _ = write!(
            svg,
            "<line x1=\"{:.1}\" y1=\"14\" x2=\"{:.1}\" y2=\"14\" stroke=\"{colour}\" stroke-width=\"4\" stroke-linecap=\"round\"/>",
            x(low),
            x(high)
        );
    }
    let _ = write!(
        svg,
        "<circle cx=\"{:.1}\" cy=\"14\" r=\"4\" fill=\"{colour}\" stroke=\"#fff\"><title>{}</title></circle></svg>",
        x(f.point),
        esc(&gate_interval(g))
    );
    svg
}

pub(super) const COLORS: [&str; 2] = ["#2563eb", "#dc2626"];

/// Latency distributions as step lines over a log-scaled axis: x the
/// latency (ms, log scale), y each version's share of responses per bucket,
/// with both axes labelled and a legend.
pub(super) fn latency_svg(d: &BTreeMap<String, Vec<Bucket>>, order: [&str; 2]) -> String {
    let (w, h, left, right, top, bottom) = (680.0, 260.0, 64.0, 16.0, 34.0, 46.0);
    let all: Vec<&Bucket> = d.values().flatten().filter(|b| b.count > 0).collect();
    if all.is_empty() {
        return "<p class=\"muted\">no latency samples</p>".into();
    }
    let lo = all.iter().map(|b| b.lower.max(1.0)).fold(f64::INFINITY, f64::min).log10();
    let hi = all.iter().map(|b| (b.lower + b.width).max(1.0)).fold(0.0, f64::max).log10().max(lo + 0.1);
    let x = |v: f64| left + (v.max(1.0).log10() - lo) / (hi - lo) * (w - left - right);
    let mut svg = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"latency distributions\">"
    );
    let max_share = order
        .iter()
        .filter_map(|v| d.get(*v))
        .flat_map(|bs| {
            let n: u64 = bs.iter().map(|b| b.count).sum();
            bs.iter().map(move |b| b.count as f64 / n.max(1) as f64)
        })
        .fold(0.0, f64::max)
        .max(1e-9);
    let y = |share: f64| h - bottom - share / max_share * (h - top - bottom);
    // The y axis: share of each version's responses in a bucket.
    for i in 0..=4 {
        let share = max_share * i as f64 / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#eee\"/>\
             <text x=\"{2}\" y=\"{3:.1}\" font-size=\"11\" text-anchor=\"end\">{4}%</text>",
            y(share),
            w - right,
            left - 6.0,
            y(share) + 4.0,
            round3(share * 100.0)
        );
    }
    let _ = write!(
        svg,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" font-size=\"11\" text-anchor=\"middle\">share of responses per bucket</text>",
        (top + h - bottom) / 2.0
    );
    for (i, v) in order.iter().enumerate() {
        let Some(bs) = d.get(*v) else { continue };
        let n: u64 = bs.iter().map(|b| b.count).sum();
        let mut path = String::new();
        for b in bs {
            let share = b.count as f64 / n.max(1) as f64;
            let _ =
                write!(path, "M{:.1},{:.1}H{:.1} ", x(b.lower), y(share), x(b.lower + b.width).max(x(b.lower) + 1.0));
        }
        let _ = write!(svg, "<path d=\"{path}\" stroke=\"{}\" stroke-width=\"2\" fill=\"none\"/>", COLORS[i]);
        // Legend.
        let lx = left + 190.0 * i as f64;
        let _ = write!(
            svg,
            "<line x1=\"{lx}\" y1=\"14\" x2=\"{}\" y2=\"14\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"18\" font-size=\"12\">{} ({}, {n} responses)</text>",
            lx + 18.0,
            COLORS[i],
            lx + 24.0,
            esc(v),
            ["champion", "challenger"][i]
        );
    }
    // The x axis: latency, log scale, ticks at 1-2-5.
    let ticks = (0..8).flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)));
    for t in ticks {
        if t.log10() >= lo && t.log10() <= hi {
            let _ = write!(
                svg,
                "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#888\"/>\
                 <text x=\"{0:.1}\" y=\"{3}\" font-size=\"11\" text-anchor=\"middle\">{4}</text>",
                x(t),
                h - bottom,
                h - bottom + 4.0,
                h - bottom + 16.0,
                round3(t / 1000.0)
            );
        }
    }
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#888\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{0}\" stroke=\"#888\"/>\
         <text x=\"{2:.1}\" y=\"{3}\" font-size=\"11\" text-anchor=\"middle\">latency (ms, log scale)</text></svg>",
        h - bottom,
        w - right,
        (left + w - right) / 2.0,
        h - 8.0
    );
    svg
}

/// Prediction distributions as grouped bars (share of each version's answers).
pub(super) fn predictions_svg(bins: &[String], d: &BTreeMap<String, Vec<u64>>, order: [&str; 2]) -> String {
    if bins.is_empty() {
        return "<p class=\"muted\">no prediction counters (the filter is not reading predictions)</p>".into();
    }
    let (w, h, pad) = (640.0, 220.0, 40.0);
    let slot = (w - 2.0 * pad) / bins.len() as f64;
    let shares: Vec<Vec<f64>> = order
        .iter()
        .map(|v| {
            let c = d.get(*v).cloned().unwrap_or_default();
            let n: u64 = c.iter().sum();
            c.iter().map(|x| *x as f64 / n.max(1) as f64).collect()
        })
        .collect();
    let max = shares.iter().flatten().copied().fold(0.0, f64::max).max(1e-9);
    let mut svg = format!("<svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"prediction distributions\">");
    for (i, s) in shares.iter().enumerate() {
        for (j, share) in s.iter().enumerate() {
            let bh = share / max * (h - 2.0 * pad);
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {:.2}%</title></rect>",
                pad + j as f64 * slot + 2.0 + i as f64 * (slot - 4.0) / 2.0,
                h - pad - bh,
                (slot - 4.0) / 2.0,
                bh,
                COLORS[i],
                esc(order[i]),
                esc(&bins[j]),
                share * 100.0
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"16\" fill=\"{}\" font-size=\"12\">{}</text>",
            pad + 140.0 * i as f64,
            COLORS[i],
            esc(order[i])
        );
    }
    for (j, b) in bins.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            pad + (j as f64 + 0.5) * slot,
            h - 10.0,
            esc(b)
        );
    }
    svg.push_str("</svg>");
    svg
}
