//! The report page: one HTML file with inline CSS and SVG, no script and no external
//! reference, so it opens offline and can be mailed or attached to a ticket as is. A
//! Content-Security-Policy forbids every fetch, so a page that tried would show it.

use super::svg::{esc, lane_colour, lane_plot, statistic_plot, timeline_plot};
use super::{DiffKind, EventRow, Figures, Report, ReportData};
use driftgate_core::model::lane::Lane;
use driftgate_core::timefmt::rfc3339;
use std::fmt::Write;

/// The id of the `<script type="application/json">` element holding [`ReportData`].
pub const DATA_ELEMENT_ID: &str = "driftgate-report-data";

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1000px;padding:16px 24px;color:#1d2430;background:#fff}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.meta{color:#5b6575;margin:0}
.cols{display:grid;grid-template-columns:1.1fr 1fr 1fr;gap:18px}.cols h3{font-size:14px;margin:4px 0}
.figures{display:grid;grid-template-columns:repeat(4,1fr);gap:12px}
.figure{border:1px solid #dde2ea;border-radius:8px;padding:10px 12px;background:#f7f9fc}
.figure .big{font-size:24px;font-weight:600}.figure .what{color:#445;font-size:12.5px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#5b6575;font-weight:500}td.n{text-align:right;font-variant-numeric:tabular-nums}
.lane{display:inline-block;padding:0 6px;border-radius:4px;font-size:12px}
details.event{border:1px solid #dde2ea;border-radius:6px;margin:6px 0;padding:4px 10px}
details.event>summary{cursor:pointer;font-variant-numeric:tabular-nums}
pre{background:#f3f5f8;padding:6px 8px;border-radius:4px;overflow-x:auto;font-size:12px;white-space:pre-wrap;word-break:break-all}
code{font-size:12px}.muted{color:#6b7585}.ok{color:#1f7a3a}.bad{color:#b02a2a}
svg.plot,svg.timeline-plot{width:100%;height:auto;max-width:960px;display:block}
svg .frame{fill:none;stroke:#c9d0da}svg .grid{stroke:#edf0f4}svg .tick{stroke:#8a94a3}
svg .lbl{font-size:11px;fill:#4a5463;font-family:system-ui,sans-serif}
svg .statistic{fill:none;stroke:#2f6fdb;stroke-width:1.6}svg .threshold{fill:none;stroke:#d9534f;stroke-width:1.2;stroke-dasharray:5 3}
svg .mk-cp{stroke:#e08a1e;stroke-width:1.4;stroke-dasharray:3 3}svg .mk-first{stroke:#7a5bc4;stroke-width:1.2;stroke-dasharray:1 2}
svg .mk-ver{stroke:#b02a2a;stroke-width:1.6}svg .decision{fill:#b02a2a}
"#;

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1} %", v * 100.0))
}

fn num(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v}"))
}

fn lane_badge(l: Lane) -> String {
    format!(r#"<span class="lane" style="background:{}">{}</span>"#, lane_colour(l), l.as_str())
}

fn duration(secs: f64) -> String {
    let s = secs.round() as i64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

fn figure(s: &mut String, id: &str, value: Option<f64>, big: &str, what: &str) {
    let _ = write!(
        s,
        r#"<div class="figure" id="{id}" data-value="{}"><div class="big">{}</div><div class="what">{}</div></div>"#,
        num(value),
        esc(big),
        esc(what)
    );
}

fn figures(s: &mut String, f: &Figures) {
    s.push_str(r#"<div class="figures">"#);
    figure(
        s,
        "fig-routed",
        f.routed_share,
        &pct(f.routed_share),
        &format!("of workflows under pact-aware routing ({} of {})", f.routed_workflows, f.workflows),
    );
    figure(
        s,
        "fig-delay",
        f.mean_control_delay_seconds,
        &f.mean_control_delay_seconds.map_or("–".into(), duration),
        &format!(
            "mean time from the estimated change point to the enforced lane change ({}; over {} lane changes by detection, each scope counted)",
            f.mean_control_delay_events.map_or("–".into(), |e| format!("{e:.1} events")),
            f.detections
        ),
    );
    figure(
        s,
        "fig-bypass",
        Some(f.bypass_overrides as f64),
        &f.bypass_overrides.to_string(),
        "overrides that bypassed policy (loosening)",
    );
    figure(
        s,
        "fig-fresh",
        f.fresh_share,
        &pct(f.fresh_share),
        &format!(
            "of high-risk actions backed by fresh evidence ({} of {})",
            f.high_risk_fresh, f.high_risk_decisions
        ),
    );
    s.push_str("</div>");
}

fn row(s: &mut String, k: &str, v: &str) {
    let _ = write!(s, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
}

fn summary(s: &mut String, d: &ReportData) {
    let m = &d.summary;
    s.push_str(r#"<section id="summary"><h2>Summary</h2><div class="cols"><div><h3>Input</h3><table>"#);
    row(s, "input records", &m.records.to_string());
    row(s, "telemetry events", &m.telemetry.to_string());
    row(s, "agents", &m.agents.to_string());
    row(s, "workflows", &esc(&m.workflows.join(", ")));
    row(s, "enforcement events", &m.events.to_string());
    row(s, "late records", &m.late.to_string());
    row(s, "dead-lettered records", &m.dead_lettered.to_string());
    row(s, "observations refused by a detector", &m.invalid_observations.to_string());
    row(s, "overrides accepted / rejected", &format!("{} / {}", m.overrides_accepted, m.overrides_rejected));
    s.push_str(
        "</table></div><div><h3>Pacts</h3><table><tr><th>pact</th><th>version</th><th>clauses</th><th>role</th></tr>",
    );
    for p in &m.pacts {
        let _ = write!(
            s,
            r#"<tr class="pact"><td>{}</td><td class="n">{}</td><td class="n">{}</td><td>{}</td></tr>"#,
            esc(&p.id),
            p.version,
            p.clauses,
            if p.active { "enforcing" } else { "shadow or replaced" }
        );
    }
    s.push_str("</table></div><div><h3>Enforcement events</h3><table>");
    for (lane, n) in &m.events_by_lane {
        let _ = write!(s, r#"<tr><th>lane {}</th><td class="n">{n}</td></tr>"#, esc(lane));
    }
    for (reason, n) in &m.events_by_reason {
        let _ = write!(s, r#"<tr><th><code>{}</code></th><td class="n">{n}</td></tr>"#, esc(reason));
    }
    s.push_str("</table></div></div>");
    if let Some(l) = &d.labels {
        let _ = write!(
            s,
            r#"<h3>Against the labelled incidents</h3><table id="labels" data-false-alarms="{}" data-true-alarms="{}" data-missed="{}">"#,
            l.false_alarms, l.true_alarms, l.missed
        );
        row(s, "alarms in a labelled incident", &l.true_alarms.to_string());
        row(s, "false alarms (outside every incident)", &l.false_alarms.to_string());
        row(s, "incidents missed", &l.missed.to_string());
        s.push_str("</table><table><tr><th>agent</th><th>from</th><th>until</th><th>first alarm</th><th>note</th></tr>");
        for (lab, at) in l.incidents.iter().zip(&l.detected_at) {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&lab.agent_id),
                rfc3339(lab.from),
                lab.until.map(rfc3339).unwrap_or_default(),
                at.map_or(r#"<span class="bad">missed</span>"#.to_string(), rfc3339),
                esc(&lab.note)
            );
        }
        s.push_str("</table>");
    }
    s.push_str("</section>");
}

fn timeline(s: &mut String, d: &ReportData, range: (i64, i64)) {
    s.push_str(r#"<section id="timeline"><h2>Lane timeline</h2>"#);
    if d.timeline.is_empty() {
        s.push_str("<p>No agent left <code>normal</code>.</p></section>");
        return;
    }
    s.push_str(r#"<p class="muted">Each agent that left <code>normal</code>: the upper bar is its lane for all but high-risk actions, the lower bar for high-risk actions. "#);
    for l in [Lane::Watch, Lane::Degrade, Lane::Review, Lane::Block] {
        s.push_str(&lane_badge(l));
        s.push(' ');
    }
    s.push_str("</p>");
    s.push_str(&timeline_plot(&d.timeline, range));
    s.push_str("<table><tr><th>agent</th><th>strictest lane</th><th>lane changes</th><th>last lane (all / high-risk)</th></tr>");
    for t in &d.timeline {
        let last = |scope| {
            t.spans
                .iter()
                .rev()
                .find(|sp| sp.scope == scope)
                .map_or("normal".to_string(), |sp| sp.lane.as_str().to_string())
        };
        let _ = write!(
            s,
            r#"<tr class="agent" data-agent="{}" data-worst="{}"><td>{}</td><td>{}</td><td class="n">{}</td><td>{} / {}</td></tr>"#,
            esc(&t.agent_id),
            t.worst.as_str(),
            esc(&t.agent_id),
            lane_badge(t.worst),
            t.spans.len(),
            last(driftgate_core::model::lane::Scope::All),
            last(driftgate_core::model::lane::Scope::HighRisk)
        );
    }
    s.push_str("</table></section>");
}

fn compare(s: &mut String, d: &ReportData) {
    let Some(c) = &d.compare else { return };
    s.push_str(r#"<section id="compare"><h2>Compared with the new pact versions</h2><table>"#);
    for (id, old, new) in &c.pacts {
        let _ = write!(s, "<tr><th>pact {}</th><td>v{old} → v{new}</td></tr>", esc(id));
    }
    let _ = write!(
        s,
        r#"<tr><th>events (current → new)</th><td>{} → {}</td></tr><tr><th>unchanged</th><td>{}</td></tr></table>"#,
        c.events.0, c.events.1, c.unchanged
    );
    let (a, b) = (&d.figures, &c.new_figures);
    s.push_str("<table><tr><th>figure</th><th>current</th><th>new</th></tr>");
    let rows = [
        ("workflows under pact-aware routing", pct(a.routed_share), pct(b.routed_share)),
        (
            "mean change point → control (event time)",
            a.mean_control_delay_seconds.map_or("–".into(), duration),
            b.mean_control_delay_seconds.map_or("–".into(), duration),
        ),
        (
            "mean change point → control (events)",
            a.mean_control_delay_events.map_or("–".into(), |e| format!("{e:.1}")),
            b.mean_control_delay_events.map_or("–".into(), |e| format!("{e:.1}")),
        ),
        ("detections", a.detections.to_string(), b.detections.to_string()),
        ("overrides that bypassed policy", a.bypass_overrides.to_string(), b.bypass_overrides.to_string()),
        ("high-risk actions with fresh evidence", pct(a.fresh_share), pct(b.fresh_share)),
    ];
    for (k, x, y) in rows {
        let _ = write!(s, "<tr><th>{k}</th><td>{x}</td><td>{y}</td></tr>");
    }
    s.push_str("</table>");
    if c.rows.is_empty() {
        s.push_str("<p>The new versions change no enforcement event on this input.</p>");
    } else {
        let _ = write!(
            s,
            r#"<details id="diff" {}><summary>{} differences</summary><table><tr><th>change</th><th>agent</th><th>scope</th><th>clause</th><th>reason</th><th>lane</th><th>current</th><th>new</th><th>shift</th></tr>"#,
            if c.rows.len() <= 50 { "open" } else { "" },
            c.rows.len()
        );
        for r in &c.rows {
            let kind = match r.kind {
                DiffKind::Appeared => "appeared",
                DiffKind::Disappeared => "disappeared",
                DiffKind::Moved => "moved",
            };
            let shift = match (r.old_at, r.new_at) {
                (Some(o), Some(n)) => format!("{:+.0} s", (n - o) as f64 / 1e6),
                _ => String::new(),
            };
            let _ = write!(
                s,
                r#"<tr class="diff {kind}" data-agent="{}"><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{shift}</td></tr>"#,
                esc(&r.agent_id),
                esc(&r.agent_id),
                r.scope.as_str(),
                esc(&format!(
                    "{}/{}",
                    r.pact_id.as_deref().unwrap_or("-"),
                    r.clause_id.as_deref().unwrap_or("-")
                )),
                esc(&r.reason),
                lane_badge(r.lane_to),
                r.old_at.map(rfc3339).unwrap_or_default(),
                r.new_at.map(rfc3339).unwrap_or_default()
            );
        }
        s.push_str("</table></details>");
    }
    s.push_str("</section>");
}

fn event(s: &mut String, r: &Report, i: usize, item: &EventRow, range: (i64, i64)) {
    let e = &item.event;
    let _ = write!(
        s,
        r#"<details class="event" id="ev-{id}" data-event="{id}" data-agent="{agent}" data-reason="{code}"{open}><summary>{at} · <b>{agent}</b> · {scope} · {from} → {to} · <code>{code}</code>{label}</summary>"#,
        id = esc(&e.event_id),
        agent = esc(&e.agent_id),
        code = esc(&e.reason.code),
        open = if i < r.expanded_events { " open" } else { "" },
        at = rfc3339(e.effective_at),
        scope = e.scope.as_str(),
        from = lane_badge(e.lane_from),
        to = lane_badge(e.lane_to),
        label = match item.incident {
            Some(true) => r#" · <span class="ok">labelled incident</span>"#,
            Some(false) => r#" · <span class="bad">false alarm</span>"#,
            None => "",
        }
    );
    match r.traces.get(&e.event_id) {
        Some(t) if !t.points.is_empty() => {
            s.push_str(&statistic_plot(&e.event_id, t, e.detection.as_ref(), e.effective_at))
        }
        _ => {
            let tl = r.data.timeline.iter().find(|t| t.agent_id == e.agent_id);
            s.push_str(&lane_plot(&e.event_id, tl, e.effective_at, range));
        }
    }
    s.push_str("<table>");
    row(s, "reason", &esc(&e.reason.text));
    if let (Some(p), Some(c)) = (&e.pact_id, &e.clause_id) {
        let seg = e
            .segment
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| format!(" (segment {})", esc(s)))
            .unwrap_or_default();
        row(
            s,
            "clause",
            &format!(
                "<code>{}</code> v{} / <code>{}</code>{seg}",
                esc(p),
                e.pact_version.unwrap_or(0),
                esc(c)
            ),
        );
    }
    if let Some(d) = &e.detection {
        row(
            s,
            "baseline → observed",
            &format!("<code>{}</code> → <code>{}</code>", esc(&d.baseline), esc(&d.observed)),
        );
        row(
            s,
            "detector",
            &format!(
                "{}: statistic {:.3} ≥ threshold {:.3}{} over {} events",
                esc(&d.detector),
                d.statistic,
                d.threshold,
                d.false_alarm_rate.map(|a| format!(" (false-alarm rate {a})")).unwrap_or_default(),
                d.n
            ),
        );
        row(
            s,
            "change point (est.) / first post-change / verified",
            &format!(
                "{} / {} / {}",
                rfc3339(d.change_point_at),
                rfc3339(d.first_post_change_at),
                rfc3339(d.verified_at)
            ),
        );
    }
    if let Some(ev) = &e.evidence {
        row(
            s,
            "evidence",
            &format!(
                "fresh as of {}{}; {} of {} clean events for re-verification",
                rfc3339(ev.fresh_as_of),
                if ev.stale { " (stale)" } else { "" },
                ev.clean_events,
                ev.required_clean_events
            ),
        );
    }
    if let Some(o) = &e.override_info {
        row(
            s,
            "override",
            &format!(
                "{} <code>{}</code> by {} ({}), expires {}",
                esc(&o.kind),
                esc(&o.override_id),
                esc(&o.principal),
                esc(&o.ticket),
                rfc3339(o.expires_at)
            ),
        );
    }
    row(
        s,
        "caused by",
        &format!(
            "{} <code>{}</code> at {}",
            esc(&e.causation.kind),
            esc(&e.causation.id),
            rfc3339(e.causation.at)
        ),
    );
    if let Some(rec) = &item.causing_record {
        let text = serde_json::to_string(rec).unwrap_or_default();
        row(s, "causing record", &format!("<pre>{}</pre>", esc(&text)));
    }
    match &item.history {
        Some((hash, pos)) => {
            row(s, "history record", &format!(r#"<code class="hash">{}</code> (position {pos})"#, esc(hash)))
        }
        None => row(s, "history record", "not recorded"),
    }
    let _ = write!(
        s,
        "<tr><th>event</th><td><code>{}</code> (seq {}, action {})</td></tr>",
        esc(&e.event_id),
        e.seq,
        esc(&e.action)
    );
    s.push_str("</table></details>");
}

/// The page.
pub fn render(r: &Report) -> String {
    let d = &r.data;
    let range = d.summary.time_range.unwrap_or((0, 1));
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'"><title>{}</title><style>{CSS}</style></head><body>"#,
        esc(&d.title)
    );
    let _ = write!(s, "<header><h1>{}</h1>", esc(&d.title));
    let _ = write!(
        s,
        r#"<p class="meta">{} · input <code>{}</code> · {} · pacts {}</p></header>"#,
        esc(&d.generator),
        esc(&d.input),
        d.summary.time_range.map_or("no telemetry".into(), |(a, b)| format!(
            "{} to {}",
            rfc3339(a),
            rfc3339(b)
        )),
        esc(&d
            .summary
            .pacts
            .iter()
            .map(|p| format!("{} v{}", p.id, p.version))
            .collect::<Vec<_>>()
            .join(", "))
    );
    s.push_str(r#"<section id="figures"><h2>Headline figures</h2>"#);
    figures(&mut s, &d.figures);
    s.push_str("</section>");
    timeline(&mut s, d, range);
    summary(&mut s, d);
    compare(&mut s, d);
    let _ = write!(s, r#"<section id="events"><h2>Enforcement events ({})</h2>"#, d.summary.events);
    s.push_str(r#"<p class="muted">Each event with its clause's detector statistic against the threshold around the decision (events that cite no clause show the agent's lanes instead). Click an event to expand it.</p>"#);
    for (i, row) in d.events.iter().enumerate() {
        event(&mut s, r, i, row, range);
    }
    if d.events_omitted > 0 {
        let _ = write!(
            s,
            r#"<p id="events-omitted">{} later events are not shown; write them with <code>--events-out</code>.</p>"#,
            d.events_omitted
        );
    }
    if r.untraced > 0 || r.untraced_keys > 0 {
        let _ = write!(
            s,
            r#"<p class="muted" id="trace-limits">Trace limits reached: {} events beyond the first {} traced, and {} clause keys beyond the first {} traced, have no statistic plot; they show the agent's lanes.</p>"#,
            r.untraced, r.trace_limits.max_traces, r.untraced_keys, r.trace_limits.max_keys
        );
    }
    s.push_str("</section>");
    let json = serde_json::to_string(d).unwrap_or_default().replace("</", "<\\/");
    let _ =
        write!(s, r#"<script type="application/json" id="{DATA_ELEMENT_ID}">{json}</script></body></html>"#);
    s.push('\n');
    s
}
