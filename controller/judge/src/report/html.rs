//! The self-contained HTML page: inline CSS and SVG, no network fetch; its
//! tables (metrics, per-segment verdicts).

use std::fmt::Write as _;

use super::format::*;
use super::model::*;
use super::svg::*;
use crate::gates::{GateKind, GateResult};

/// The per-segment verdicts of the gates with `segments` as an HTML table,
/// the worst segment's row highlighted.
pub(super) fn segment_verdicts_html(gates: &[GateResult]) -> String {
    let worst = crate::segments::worst(gates);
    let mut b = String::from("<h2>Segments judged by the gates</h2><table class=\"segments\"><tr><th>gate</th><th>segment</th><th>outcome</th><th>champion</th><th>challenger</th><th>limit</th><th>responses (champion / challenger)</th><th></th></tr>");
    for (i, g) in gates.iter().enumerate() {
        let Some(seg) = &g.segment else { continue };
        let o = outcome_name(g.outcome);
        let is_worst = Some(i) == worst;
        let _ = write!(
            b,
            "<tr{}><td>{}</td><td>{}</td><td class=\"{o}\">{o}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}{}</td><td>{}</td></tr>",
            if is_worst { " class=\"worse\"" } else { "" },
            g.gate.id(),
            esc(seg),
            esc(&gate_champion(g)),
            esc(&gate_value(g, g.challenger)),
            esc(&gate_value(g, g.threshold)),
            g.champion_n,
            g.challenger_n,
            if g.gate == GateKind::Labels { " labels" } else { "" },
            if is_worst { "<b>worst</b>" } else { "" }
        );
    }
    b.push_str("</table><p class=\"muted\">Each segment's challenger against the same segment's champion; a gate with K segments spends alpha/2 on all traffic and alpha/(2K) on each segment (Bonferroni), so the family's chance of a wrong verdict stays within alpha. The worst segment: a failed one, else the least room left before its limit.</p>");
    b
}

pub(super) fn table(rows: &[MetricRow], champion: &str, challenger: &str) -> String {
    let mut t = format!(
        "<table><tr><th>metric</th><th>{} (champion)</th><th>{} (challenger)</th><th>difference</th></tr>",
        esc(champion),
        esc(challenger)
    );
    for r in rows {
        let _ = write!(
            t,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if r.challenger_worse { "worse" } else { "" },
            esc(&r.metric),
            esc(&fmt_est(&r.champion, &r.unit)),
            esc(&fmt_est(&r.challenger, &r.unit)),
            esc(&fmt_est(&r.difference, diff_unit(&r.unit)))
        );
    }
    t.push_str("</table>");
    t
}

/// The self-contained HTML page.
pub fn html(r: &Report) -> String {
    let order = [r.champion.as_str(), r.challenger.as_str()];
    let title = scope_title(r);
    let mut b = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Canary analysis: {}, rollout {} — {}</title><style>\
body{{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#111;max-width:1000px}}table{{border-collapse:collapse;margin:8px 0 16px}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.worse td{{background:#fee2e2}}.pass{{color:#15803d}}.fail{{color:#b91c1c;font-weight:bold}}\
.no_data{{color:#92400e}}.inconclusive{{color:#a16207}}.rec{{font-size:18px;padding:8px 12px;border-radius:6px;background:#eef2ff;display:inline-block}}.muted{{color:#666}}code{{font-size:12px}}\
svg.forest{{display:block}}td.detail{{min-width:300px;font-size:12px}}</style></head><body>",
        esc(&title),
        esc(&r.rollout),
        esc(&r.recommendation.action)
    );
    let _ = write!(b, "<h1>Canary analysis: {}, rollout {}</h1>", esc(&title), esc(&r.rollout));
    let _ = write!(
        b,
        "<p class=\"rec\">Recommendation: <b>{}</b></p><p>{}</p><ul>",
        esc(&r.recommendation.action),
        esc(&r.recommendation.summary)
    );
    for reason in &r.recommendation.reasons {
        let _ = write!(b, "<li>{}</li>", esc(&readable(reason)));
    }
    b.push_str("</ul>");
    if !r.worse.is_empty() {
        let _ = write!(b, "<p>The challenger is worse on: <b>{}</b> (highlighted).</p>", esc(&r.worse.join(", ")));
    }
    b.push_str("<h2>Champion vs challenger</h2>");
    b.push_str(&table(&r.comparison, &r.champion, &r.challenger));
    let _ = write!(b, "<p class=\"muted\">Intervals: {:.0} % (Wilson for rates, Newcombe for their difference, order statistics for latency quantiles, normal / Welch for label means). {}</p>", CONFIDENCE * 100.0, esc(&worse_rule()));
    if !r.gates.is_empty() {
        b.push_str("<h2>Gates</h2><table><tr><th>gate</th><th>outcome</th><th>champion</th><th>challenger</th><th>limit</th><th>interval against the limit</th><th>interval</th><th>look (confidence)</th><th>needed</th><th>detail</th></tr>");
        for g in &r.gates {
            let o = outcome_name(g.outcome);
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"{o}\">{o}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"detail\">{}</td></tr>",
                esc(&gate_label(g)),
                esc(&gate_champion(g)),
                esc(&gate_value(g, g.challenger)),
                esc(&gate_value(g, g.threshold)),
                forest_svg(g),
                esc(&gate_interval(g)),
                esc(&gate_look(g)),
                g.needed.map_or("—".to_string(), |n| format!("~{n} more")),
                esc(&readable(&g.detail))
            );
        }
        b.push_str("</table>");
        b.push_str("<p class=\"muted\">Sequential gates judge intervals at looks on a geometric sample-size schedule with alpha spending: fail when the interval is wholly worse than the tolerance, pass when wholly within it, inconclusive (hold) otherwise; \"needed\" is about how many more samples per version a verdict likely needs.</p>");
    }
    if r.gates.iter().any(|g| g.segment.is_some()) {
        b.push_str(&segment_verdicts_html(&r.gates));
    }
    if !r.segments.is_empty() {
        b.push_str("<h2>Segments</h2>");
        for s in &r.segments {
            let _ = write!(b, "<h3>{}</h3>{}", esc(&s.segment), table(&s.rows, &r.champion, &r.challenger));
        }
    }
    if !r.stages.is_empty() {
        b.push_str("<h2>Stages</h2>");
        for s in &r.stages {
            let _ = write!(
                b,
                "<h3>{} — {}</h3>{}",
                esc(&s.stage),
                s.action.word(),
                table(&s.comparison, &r.champion, &r.challenger)
            );
        }
    }
    b.push_str("<h2>Latency distributions</h2>");
    b.push_str(&latency_svg(&r.distributions.latency_us, order));
    b.push_str("<h2>Prediction distributions</h2>");
    b.push_str(&predictions_svg(&r.distributions.prediction_bins, &r.distributions.predictions, order));
    b.push_str("<h2>Decision timeline</h2><table><tr><th>#</th><th>at (UTC)</th><th>action</th><th>from → to</th><th>reasons</th></tr>");
    for t in &r.timeline {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{} ({}) → {} ({})</td><td>{}</td></tr>",
            t.seq,
            esc(&t.at_iso),
            t.action.word(),
            if t.manual { " (operator)" } else { "" },
            esc(&t.from.stage_name),
            t.from.weight,
            esc(&t.to.stage_name),
            t.to.weight,
            esc(&readable(&t.reasons.join("; ")))
        );
    }
    b.push_str("</table><h2>Inputs</h2>");
    let _ = write!(b, "<p>{}</p>", esc(&inputs_line(r)));
    let _ = write!(
        b,
        "<details><summary>filter configuration</summary><pre>{}</pre></details>",
        esc(&serde_json::to_string_pretty(&r.inputs.filter_config).unwrap_or_default())
    );
    b.push_str("</body></html>\n");
    b
}
