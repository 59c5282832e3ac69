//! The report's plots, written as SVG text.
//!
//! Hand-written rather than drawn with a plotting crate: the plots are a few lines, rules and
//! rectangles, and writing them directly keeps the output byte-for-byte deterministic, free
//! of font files, and small (a plotting crate's SVG backend emits one element per glyph
//! path and pulls in font loading). Text uses the page's CSS font.

use super::{AgentTimeline, LaneSpan};
use driftgate_core::engine::ClauseTrace;
use driftgate_core::model::enforcement::Detection;
use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::timefmt::rfc3339;
use std::fmt::Write;

/// Escapes text for HTML and SVG.
pub(super) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The colour of a lane (also used by the page's CSS).
pub(super) fn lane_colour(l: Lane) -> &'static str {
    match l {
        Lane::Normal => "#cfe8d4",
        Lane::Watch => "#f5d76e",
        Lane::Degrade => "#f0a04b",
        Lane::Review => "#a98bd1",
        Lane::Block => "#d9534f",
    }
}

/// `HH:MM:SS` of an event time, or the full date when the plot spans more than a day.
fn tick_label(t: i64, span: i64) -> String {
    let s = rfc3339(t);
    if span > 86_400_000_000 {
        s.get(..16).unwrap_or(&s).replace('T', " ")
    } else {
        s.get(11..19).unwrap_or(&s).to_string()
    }
}

/// A linear map from data to pixels.
#[derive(Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    px0: f64,
    px1: f64,
}

impl Axis {
    fn at(&self, v: f64) -> f64 {
        let f = if self.hi > self.lo { (v - self.lo) / (self.hi - self.lo) } else { 0.5 };
        self.px0 + f.clamp(0.0, 1.0) * (self.px1 - self.px0)
    }
}

const W: f64 = 680.0;
const H: f64 = 210.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 40.0;

/// The tick step for a time span: the smallest round step (1 s to 1 day) that gives at most
/// six ticks.
fn tick_step(span: i64) -> i64 {
    const S: i64 = 1_000_000;
    const STEPS: [i64; 16] = [
        S,
        5 * S,
        10 * S,
        30 * S,
        60 * S,
        300 * S,
        600 * S,
        900 * S,
        1800 * S,
        3600 * S,
        7200 * S,
        10800 * S,
        21600 * S,
        43200 * S,
        86400 * S,
        7 * 86400 * S,
    ];
    STEPS.into_iter().find(|st| span / st <= 6).unwrap_or(span.max(1) / 4 + 1)
}

/// Ticks at round times (multiples of the step, in UTC) along the x axis.
fn x_ticks(out: &mut String, x: Axis, y_base: f64) {
    let (lo, hi) = (x.lo as i64, x.hi as i64);
    let step = tick_step(hi - lo);
    let mut t = lo.div_euclid(step) * step;
    if t < lo {
        t += step;
    }
    while t <= hi {
        let px = x.at(t as f64);
        // Labels at the ends of the axis would be cut in half by the plot's edge.
        let anchor = if px < x.px0 + 24.0 {
            "start"
        } else if px > x.px1 - 24.0 {
            "end"
        } else {
            "middle"
        };
        let _ = write!(
            out,
            r#"<line x1="{px:.1}" y1="{y_base:.1}" x2="{px:.1}" y2="{:.1}" class="tick"/><text x="{px:.1}" y="{:.1}" text-anchor="{anchor}" class="lbl">{}</text>"#,
            y_base + 4.0,
            y_base + 16.0,
            esc(&tick_label(t, hi - lo))
        );
        t += step;
    }
}

fn polyline(points: impl Iterator<Item = (f64, f64)>) -> String {
    let mut s = String::new();
    for (i, (x, y)) in points.enumerate() {
        let _ = write!(s, "{}{x:.1},{y:.1}", if i == 0 { "" } else { " " });
    }
    s
}

/// The detector statistic of the clause behind `event_id` against its threshold, with the
/// estimated change point, the first post-change event and the verifying event marked.
pub(super) fn statistic_plot(
    event_id: &str,
    trace: &ClauseTrace,
    det: Option<&Detection>,
    at: i64,
) -> String {
    let pts = &trace.points;
    let mut t_lo = pts.first().map_or(at, |p| p.at).min(at);
    let mut t_hi = pts.last().map_or(at, |p| p.at).max(at);
    let marks: Vec<(i64, &str, &str)> = det
        .map(|d| {
            vec![
                (d.change_point_at, "change point (est.)", "mk-cp"),
                (d.first_post_change_at, "first post-change event", "mk-first"),
                (d.verified_at, "verified", "mk-ver"),
            ]
        })
        .unwrap_or_else(|| vec![(at, "decision", "mk-ver")]);
    for (t, _, _) in &marks {
        t_lo = t_lo.min(*t);
        t_hi = t_hi.max(*t);
    }
    if t_hi == t_lo {
        t_hi = t_lo + 1_000_000;
    }
    let finite = |v: f64| v.is_finite().then_some(v);
    let vals = pts.iter().flat_map(|p| [finite(p.statistic), finite(p.threshold)]).flatten();
    let (y_lo, mut y_hi) = vals.fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    if y_hi <= y_lo {
        y_hi = y_lo + 1.0;
    }
    y_hi += (y_hi - y_lo) * 0.08;
    let x = Axis { lo: t_lo as f64, hi: t_hi as f64, px0: LEFT, px1: W - RIGHT };
    let y = Axis { lo: y_lo, hi: y_hi, px0: H - BOTTOM, px1: TOP };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="plot stat" data-event="{}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="detector statistic against threshold">"#,
        esc(event_id)
    );
    let _ = write!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" class="frame"/>"#,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for i in 0..=3 {
        let v = y_lo + (y_hi - y_lo) * i as f64 / 3.0;
        let py = y.at(v);
        let _ = write!(
            s,
            r#"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" class="grid"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="lbl">{v:.1}</text>"#,
            W - RIGHT,
            LEFT - 4.0,
            py + 4.0
        );
    }
    x_ticks(&mut s, x, H - BOTTOM);
    for (t, label, class) in &marks {
        let px = x.at(*t as f64);
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" class="{class}"><title>{} at {}</title></line>"#,
            H - BOTTOM,
            esc(label),
            rfc3339(*t)
        );
    }
    let th = polyline(
        pts.iter().filter(|p| p.threshold.is_finite()).map(|p| (x.at(p.at as f64), y.at(p.threshold))),
    );
    let st = polyline(
        pts.iter().filter(|p| p.statistic.is_finite()).map(|p| (x.at(p.at as f64), y.at(p.statistic))),
    );
    let _ = write!(
        s,
        r#"<polyline points="{th}" class="threshold"/><polyline points="{st}" class="statistic"/>"#
    );
    if let Some(p) = trace.decision.and_then(|d| pts.get(d)) {
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" class="decision"><title>statistic {:.3} / threshold {:.3} at {}</title></circle>"#,
            x.at(p.at as f64),
            y.at(if p.statistic.is_finite() { p.statistic } else { y_hi }),
            p.statistic,
            p.threshold,
            rfc3339(p.at)
        );
    }
    let legend = [
        ("statistic", "statistic"),
        ("threshold", "threshold"),
        ("mk-cp", "change point"),
        ("mk-first", "first post-change"),
        ("mk-ver", "verified"),
    ];
    for (i, (class, text)) in legend.iter().enumerate() {
        let lx = LEFT + i as f64 * 122.0;
        let ly = H - 8.0;
        let _ = write!(
            s,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" class="{class}"/><text x="{:.1}" y="{ly:.1}" class="lbl">{text}</text>"#,
            ly - 4.0,
            lx + 16.0,
            ly - 4.0,
            lx + 20.0
        );
    }
    s.push_str("</svg>");
    s
}

/// The lanes of one agent around an event that cites no clause (an override, a model or
/// scope change), so every event has a picture of what it did.
pub(super) fn lane_plot(
    event_id: &str,
    timeline: Option<&AgentTimeline>,
    at: i64,
    range: (i64, i64),
) -> String {
    let spans: &[LaneSpan] = timeline.map_or(&[], |t| &t.spans);
    let h = 96.0;
    let x =
        Axis { lo: range.0 as f64, hi: range.1.max(range.0 + 1) as f64, px0: LEFT + 40.0, px1: W - RIGHT };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="plot lanes" data-event="{}" viewBox="0 0 {W} {h}" width="{W}" height="{h}" role="img" aria-label="lanes of the agent">"#,
        esc(event_id)
    );
    for (row, scope) in Scope::BOTH.iter().enumerate() {
        let y0 = 8.0 + row as f64 * 26.0;
        let _ =
            write!(s, r#"<text x="{LEFT:.1}" y="{:.1}" class="lbl">{}</text>"#, y0 + 15.0, scope.as_str());
        lane_rects(&mut s, spans.iter().filter(|sp| sp.scope == *scope), x, y0, 20.0, range.1);
    }
    let px = x.at(at as f64);
    let _ = write!(
        s,
        r#"<line x1="{px:.1}" y1="4" x2="{px:.1}" y2="60" class="mk-ver"><title>this event at {}</title></line>"#,
        rfc3339(at)
    );
    x_ticks(&mut s, x, 60.0);
    s.push_str("</svg>");
    s
}

fn lane_rects<'a>(
    s: &mut String,
    spans: impl Iterator<Item = &'a LaneSpan>,
    x: Axis,
    y0: f64,
    hgt: f64,
    end: i64,
) {
    for sp in spans {
        let (a, b) = (x.at(sp.from as f64), x.at(sp.until.unwrap_or(end) as f64));
        let _ = write!(
            s,
            r#"<rect x="{a:.1}" y="{y0:.1}" width="{:.1}" height="{hgt:.1}" fill="{}"><title>{} {} from {}{}</title></rect>"#,
            (b - a).max(1.0),
            lane_colour(sp.lane),
            sp.scope.as_str(),
            sp.lane.as_str(),
            rfc3339(sp.from),
            sp.until.map(|u| format!(" until {}", rfc3339(u))).unwrap_or_default()
        );
    }
}

/// Every agent that left `normal`, one row each, over the replay's time range.
pub(super) fn timeline_plot(timeline: &[AgentTimeline], range: (i64, i64)) -> String {
    let row_h = 22.0;
    let h = 30.0 + timeline.len() as f64 * row_h;
    let x = Axis { lo: range.0 as f64, hi: range.1.max(range.0 + 1) as f64, px0: 90.0, px1: W - RIGHT };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="timeline-plot" viewBox="0 0 {W} {h:.0}" width="{W}" height="{h:.0}" role="img" aria-label="lane timeline">"#
    );
    for (i, t) in timeline.iter().enumerate() {
        let y0 = 4.0 + i as f64 * row_h;
        let _ = write!(s, r#"<text x="4" y="{:.1}" class="lbl">{}</text>"#, y0 + 13.0, esc(&t.agent_id));
        // Top half: all but high-risk; bottom half: high-risk.
        lane_rects(&mut s, t.spans.iter().filter(|sp| sp.scope == Scope::All), x, y0, 9.0, range.1);
        lane_rects(
            &mut s,
            t.spans.iter().filter(|sp| sp.scope == Scope::HighRisk),
            x,
            y0 + 9.5,
            9.0,
            range.1,
        );
    }
    x_ticks(&mut s, x, h - 26.0);
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftgate_core::engine::TracePoint;

    #[test]
    fn ticks_fall_on_round_times() {
        assert_eq!(tick_step(86_400_000_000), 21_600_000_000, "a day: every 6 h");
        assert_eq!(tick_step(40 * 60_000_000), 600_000_000, "40 min: every 10 min");
        let mut s = String::new();
        let x = Axis { lo: 1_772_445_120_000_000.0, hi: 1_772_448_000_000_000.0, px0: 0.0, px1: 100.0 };
        x_ticks(&mut s, x, 0.0);
        assert_eq!(s.matches("class=\"lbl\"").count(), 5, "09:52 to 10:40: 10:00 to 10:40 every 10 min: {s}");
        assert!(s.contains(">10:00:00<") && s.contains(">10:40:00<") && !s.contains(">09:50:00<"), "{s}");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn a_statistic_plot_places_the_threshold_and_the_marks_inside_its_frame() {
        let points: Vec<TracePoint> = (0..10)
            .map(|i| TracePoint { at: i * 1_000_000, n: i as u64 + 1, statistic: i as f64, threshold: 9.0 })
            .collect();
        let trace = ClauseTrace { event_id: "e".into(), points, decision: Some(9) };
        let det = Detection {
            detector: "d".into(),
            statistic: 9.0,
            threshold: 9.0,
            false_alarm_rate: None,
            baseline: "0".into(),
            observed: "1".into(),
            n: 5,
            change_point_at: 4_500_000,
            first_post_change_at: 5_000_000,
            verified_at: 9_000_000,
        };
        let svg = statistic_plot("e", &trace, Some(&det), 9_000_000);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // The change point sits at 4.5/9 of the plot's width.
        let want = LEFT + 0.5 * (W - LEFT - RIGHT);
        assert!(svg.contains(&format!(r#"x1="{want:.1}""#)), "{svg}");
        // The threshold (9) is below the top of the frame: the axis is padded by 8 %.
        let th_y = (H - BOTTOM) + (9.0 / 9.72) * (TOP - (H - BOTTOM));
        assert!(svg.contains(&format!("{:.1},{th_y:.1}", W - RIGHT)), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2);
    }

    #[test]
    fn infinite_thresholds_are_left_out_rather_than_drawn_off_the_scale() {
        let points = vec![
            TracePoint { at: 0, n: 1, statistic: 1.0, threshold: f64::INFINITY },
            TracePoint { at: 1_000_000, n: 2, statistic: 2.0, threshold: 3.0 },
        ];
        let trace = ClauseTrace { event_id: "e".into(), points, decision: Some(1) };
        let svg = statistic_plot("e", &trace, None, 1_000_000);
        assert!(!svg.contains("inf") && !svg.contains("NaN"), "{svg}");
    }
}
