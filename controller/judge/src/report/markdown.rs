//! The Markdown summary (stdout, alerts): the same facts as the HTML page.

use std::fmt::Write as _;

use super::format::*;
use super::model::*;
use crate::gates::{GateKind, GateResult};

/// The Markdown summary (stdout, alerts): the same facts as the HTML page.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## canary {} — {}: recommend **{}**\n", r.rollout, scope_title(r), r.recommendation.action);
    let _ = writeln!(s, "{}\n", r.recommendation.summary);
    for reason in &r.recommendation.reasons {
        let _ = writeln!(s, "- {}", readable(reason));
    }
    if !r.worse.is_empty() {
        let _ = writeln!(s, "\nThe challenger is worse on: **{}**.", r.worse.join(", "));
    }
    let _ = writeln!(
        s,
        "\n| metric | {} (champion) | {} (challenger) | difference | |\n| --- | --- | --- | --- | --- |",
        r.champion, r.challenger
    );
    for row in &r.comparison {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            row.metric,
            fmt_est(&row.champion, &row.unit),
            fmt_est(&row.challenger, &row.unit),
            fmt_est(&row.difference, diff_unit(&row.unit)),
            if row.challenger_worse { "**worse**" } else { "" }
        );
    }
    let _ = writeln!(s, "\n{}", worse_rule());
    if !r.gates.is_empty() {
        let _ = writeln!(
            s,
            "\n| gate | outcome | champion | challenger | limit | interval | look (confidence) | needed | detail |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for g in &r.gates {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                gate_label(g),
                outcome_name(g.outcome),
                gate_champion(g),
                gate_value(g, g.challenger),
                gate_value(g, g.threshold),
                gate_interval(g),
                gate_look(g),
                g.needed.map_or("—".to_string(), |n| format!("~{n} more")),
                readable(&g.detail)
            );
        }
    }
    if r.gates.iter().any(|g| g.segment.is_some()) {
        s.push_str(&segment_verdicts_md(&r.gates));
    }
    if !r.timeline.is_empty() {
        let _ = writeln!(s, "\n| # | at (UTC) | action | from → to | reasons |\n| --- | --- | --- | --- | --- |");
        for e in &r.timeline {
            let _ = writeln!(
                s,
                "| {} | {} | {}{} | {} ({}) → {} ({}) | {} |",
                e.seq,
                e.at_iso,
                e.action.word(),
                if e.manual { " (operator)" } else { "" },
                e.from.stage_name,
                e.from.weight,
                e.to.stage_name,
                e.to.weight,
                readable(&e.reasons.join("; "))
            );
        }
    }
    let _ = writeln!(s, "\n{}", inputs_line(r));
    s
}

/// The per-segment verdicts of the gates with `segments`, as a Markdown
/// table, the worst segment marked.
pub(super) fn segment_verdicts_md(gates: &[GateResult]) -> String {
    let worst = crate::segments::worst(gates);
    let mut s = String::from(
        "\n### Segments judged by the gates\n\n| gate | segment | outcome | champion | challenger | limit | responses (champion / challenger) | |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (i, g) in gates.iter().enumerate() {
        let Some(seg) = &g.segment else { continue };
        let _ = writeln!(
            s,
            "| {} | {seg} | {} | {} | {} | {} | {} / {}{} | {} |",
            g.gate.id(),
            outcome_name(g.outcome),
            gate_champion(g),
            gate_value(g, g.challenger),
            gate_value(g, g.threshold),
            g.champion_n,
            g.challenger_n,
            if g.gate == GateKind::Labels { " labels" } else { "" },
            if Some(i) == worst { "**worst**" } else { "" }
        );
    }
    s
}
