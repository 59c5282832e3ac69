//! Backtest reports: the demo's report in a real browser, its data section against a golden
//! file, `--compare` diffs of pact changes, the command line with labels and overrides, and
//! a report over 1M records within its limits.
//!
//! Regenerate the golden file with
//! `UPDATE_GOLDEN=1 cargo test --profile test-release -p driftgate --test it -- report::demo_report_data`.

use crate::support::browser;
use driftgate::cli::demo::{self, example_pacts, Fleet};
use driftgate::cli::replay::{replay_records, ReplayOptions, ReportRequest};
use driftgate::report::{DiffKind, Limits, ReportData, DATA_ELEMENT_ID};
use driftgate_core::engine::Input;
use driftgate_core::model::lane::Lane;
use driftgate_core::model::telemetry::Telemetry;
use driftgate_core::pact::{parse_pact, Pact};
use std::path::{Path, PathBuf};
use std::process::Command;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/demo_report_data.json");

/// The data section of a report page.
fn data_of(html: &str) -> ReportData {
    let open = format!(r#"<script type="application/json" id="{DATA_ELEMENT_ID}">"#);
    let start = html.find(&open).expect("the page has a data section") + open.len();
    let len = html[start..].find("</script>").expect("the data section is closed");
    serde_json::from_str(&html[start..start + len].replace("<\\/", "</"))
        .expect("the data section is ReportData")
}

fn artifacts() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/report-test");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn demo_page() -> String {
    let mut run = demo::run_with(true);
    demo::html_report(&mut run)
}

#[test]
fn demo_report_data_matches_the_golden_file_and_the_engine() {
    let html = demo_page();
    let data = data_of(&html);
    let got = serde_json::to_string_pretty(&data).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN).expect("golden file exists (UPDATE_GOLDEN=1 to create)");
    assert_eq!(got, want, "the demo report's data differs from the golden file");

    // The figures are the engine's, recomputed here from an untraced run.
    let run = demo::run();
    assert_eq!(data.events.len(), run.events.len());
    assert_eq!(
        data.events.iter().map(|r| &r.event).collect::<Vec<_>>(),
        run.events.iter().collect::<Vec<_>>()
    );
    let s = run.engine.stats();
    assert_eq!(
        (data.figures.high_risk_fresh, data.figures.high_risk_decisions),
        (s.high_risk_fresh, s.high_risk_decisions)
    );
    assert_eq!(data.summary.telemetry, run.telemetry);
    assert_eq!(data.summary.agents, 50);
    // Detections: fin-07's drift and sup-04's PII breach, in both scopes.
    let detections: Vec<_> = run
        .events
        .iter()
        .filter(|e| matches!(e.reason.code.as_str(), "drift_verified" | "zero_tolerance_breach"))
        .collect();
    assert_eq!(detections.len(), 4);
    assert_eq!(data.figures.detections, 4);
    let mean = detections
        .iter()
        .map(|e| (e.effective_at - e.detection.as_ref().unwrap().change_point_at) as f64 / 1e6)
        .sum::<f64>()
        / 4.0;
    let got = data.figures.mean_control_delay_seconds.unwrap();
    assert!((got - mean).abs() < 1e-6, "{got} vs {mean}");
    // Every decision is tied to its history record.
    for row in &data.events {
        let (hash, pos) = row.history.as_ref().expect("a history record");
        let rec = &run.history[*pos as usize];
        assert_eq!((&rec.hash, rec.detail["event_id"].as_str()), (hash, Some(row.event.event_id.as_str())));
    }
    // Telemetry-caused events carry their record.
    let pii = data.events.iter().find(|r| r.event.reason.code == "zero_tolerance_breach").unwrap();
    assert_eq!(pii.causing_record.as_ref().unwrap()["pii_detected"], true);
    // Labels: every scripted incident caught, nothing else.
    let l = data.labels.as_ref().unwrap();
    assert_eq!((l.false_alarms, l.missed), (0, 0), "{l:?}");
    assert!(l.true_alarms >= 4);
}

#[test]
fn demo_report_in_a_real_browser_shows_the_figures_plots_and_timeline_offline() {
    let dir = artifacts();
    let page = dir.join("demo-report.html");
    let html = demo_page();
    std::fs::write(&page, &html).unwrap();
    let data = data_of(&html);
    let load = browser::load(&page);
    let dom = &load.dom;
    assert!(load.console.is_empty(), "console messages: {:?}", load.console);
    assert!(load.page_requests.is_empty(), "the page reached for the network: {:?}", load.page_requests);

    // The four figures, with the values the engine computed.
    let f = &data.figures;
    let value = |id: &str| {
        let at = dom.find(&format!(r#"id="{id}""#)).unwrap_or_else(|| panic!("figure {id} missing"));
        let rest = &dom[at..];
        let v = rest.split(r#"data-value=""#).nth(1).unwrap();
        v[..v.find('"').unwrap()].to_string()
    };
    assert_eq!(value("fig-routed"), format!("{}", f.routed_share.unwrap()));
    assert_eq!(value("fig-delay"), format!("{}", f.mean_control_delay_seconds.unwrap()));
    assert_eq!(value("fig-bypass"), format!("{}", f.bypass_overrides as f64));
    assert_eq!(value("fig-fresh"), format!("{}", f.fresh_share.unwrap()));
    assert!(dom.contains(&format!("({} of {})", f.high_risk_fresh, f.high_risk_decisions)));

    // One plot per enforcement event.
    let events = dom.matches(r#"<details class="event""#).count();
    let plots = dom.matches(r#"<svg class="plot "#).count();
    assert_eq!(events, data.summary.events as usize);
    assert_eq!(plots, events);
    for row in &data.events {
        assert!(dom.contains(&format!(r#"data-event="{}""#, row.event.event_id)));
    }
    // Detections plot their statistic; the others the agent's lanes.
    let stat_plots = dom.matches(r#"<svg class="plot stat""#).count();
    assert!(stat_plots >= 4, "{stat_plots}");

    // The timeline lists the degraded, blocked and reviewed agents, and no healthy one.
    let rows: Vec<(&str, &str)> = dom
        .split(r#"<tr class="agent" data-agent=""#)
        .skip(1)
        .map(|r| {
            let agent = &r[..r.find('"').unwrap()];
            let worst = r.split(r#"data-worst=""#).nth(1).unwrap();
            (agent, &worst[..worst.find('"').unwrap()])
        })
        .collect();
    for want in [
        ("fin-07", "degrade"),
        ("sup-04", "block"),
        ("res-11", "review"),
        ("sup-09", "review"),
        ("fin-03", "watch"),
    ] {
        assert!(rows.contains(&want), "{want:?} not in the timeline {rows:?}");
    }
    assert_eq!(rows.len(), 5, "{rows:?}");

    let png = dir.join("demo-report.png");
    browser::screenshot(&page, &png, 1100, 1500);
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000, "screenshot at {}", png.display());
}

#[test]
fn the_browser_checks_catch_console_errors_and_network_access() {
    // The checks above can fail: a page that logs an error and loads an image from the
    // network is caught by both.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        r#"<!DOCTYPE html><html><body><img src="http://driftgate-test.invalid/x.png"><script>console.error("boom")</script></body></html>"#,
    )
    .unwrap();
    let load = browser::load(&page);
    assert!(load.console.iter().any(|l| l.contains("boom")), "{:?}", load.console);
    assert_eq!(load.page_requests, ["http://driftgate-test.invalid/x.png"]);
}

fn telemetry_until(until: i64) -> impl Iterator<Item = anyhow::Result<Telemetry>> {
    Fleet::new(7, 1, true)
        .filter_map(|i| match i {
            Input::Telemetry(t) => Some(*t),
            _ => None,
        })
        .take_while(move |t| t.occurred_at < until)
        .map(Ok)
}

fn finance(edit: impl Fn(String) -> String) -> Pact {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/finance-citations.yaml"),
    )
    .unwrap();
    let text = edit(text.replace("version: 3", "version: 4"));
    parse_pact(&text, "finance-v4.yaml").unwrap()
}

/// A report over the demo's telemetry until `hour` o'clock, compared with `new`.
fn compare(new: Pact, hour: i64) -> ReportData {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.html");
    let until = demo::DAY0 + hour * 3_600_000_000;
    let opts = ReplayOptions {
        report: Some(ReportRequest {
            out: &out,
            labels: vec![],
            compare: vec![new],
            limits: Limits::default(),
        }),
        ..ReplayOptions::default()
    };
    replay_records(example_pacts(), "fleet", &|| Ok(Box::new(telemetry_until(until))), &opts).unwrap();
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains(r#"<section id="compare">"#));
    data_of(&html)
}

#[test]
fn compare_shows_a_changed_consequence_as_events_replaced() {
    let data = compare(finance(|t| t.replacen("consequence: degrade", "consequence: block", 1)), 12);
    let c = data.compare.unwrap();
    assert_eq!(c.pacts, [("finance-quality".to_string(), 3, 4)]);
    let rows: Vec<_> =
        c.rows.iter().map(|r| (r.kind, r.agent_id.as_str(), r.reason.as_str(), r.lane_to)).collect();
    // Both scopes of fin-07's drift: degrade disappears, block appears, at the same time.
    assert_eq!(
        rows.iter()
            .filter(|r| **r == (DiffKind::Disappeared, "fin-07", "drift_verified", Lane::Degrade))
            .count(),
        2
    );
    assert_eq!(
        rows.iter().filter(|r| **r == (DiffKind::Appeared, "fin-07", "drift_verified", Lane::Block)).count(),
        2
    );
    let at = |k: DiffKind| c.rows.iter().find(|r| r.kind == k).and_then(|r| r.old_at.or(r.new_at));
    assert_eq!(at(DiffKind::Appeared), at(DiffKind::Disappeared));
    assert!(c.rows.iter().all(|r| r.agent_id == "fin-07"), "{:?}", c.rows);
    assert_eq!(c.unchanged + 2, c.events.0);
}

#[test]
fn compare_shows_a_lower_false_alarm_rate_as_a_later_detection() {
    let data =
        compare(finance(|t| t.replacen("false_alarm_rate: 1.0e-6", "false_alarm_rate: 1.0e-9", 1)), 14);
    let c = data.compare.unwrap();
    let drift: Vec<_> = c.rows.iter().filter(|r| r.reason == "drift_verified").collect();
    assert_eq!(drift.len(), 2, "{:?}", c.rows);
    for r in drift {
        assert_eq!((r.kind, r.agent_id.as_str()), (DiffKind::Moved, "fin-07"));
        assert!(r.new_at > r.old_at, "a stricter rate detects later: {r:?}");
    }
    let (old, new) = (&data.figures, &c.new_figures);
    assert!(new.mean_control_delay_events > old.mean_control_delay_events, "{old:?} {new:?}");
}

#[test]
fn replay_command_writes_a_report_with_labels_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.jsonl");
    let noon = demo::DAY0 + 12 * 3_600_000_000;
    let text: String =
        telemetry_until(noon).map(|t| serde_json::to_string(&t.unwrap()).unwrap() + "\n").collect();
    // One malformed record, which goes to the dead-letter file and is counted in the report.
    std::fs::write(&input, "{\"agent_id\": 7}\n".to_string() + &text).unwrap();
    let dlq = dir.path().join("dlq.jsonl");
    let ovr = dir.path().join("o.jsonl");
    std::fs::write(
        &ovr,
        r#"{"override_id":"l1","agent_id":"fin-05","kind":"loosen","lane":"normal","principal":"bob","reason":"vendor test","ticket":"T-1","issued_at":1772413200000000,"expires_at":1772416800000000,"expected_seq":0}
"#,
    )
    .unwrap();
    let labels = dir.path().join("labels.jsonl");
    std::fs::write(
        &labels,
        "{\"agent_id\":\"sup-09\",\"from\":\"2026-03-02T11:00:00Z\",\"note\":\"new tool\"}\n",
    )
    .unwrap();
    let report = dir.path().join("r.html");
    let out = Command::new(env!("CARGO_BIN_EXE_driftgate"))
        .arg("replay")
        .arg("--pact")
        .args(
            demo::EXAMPLE_PACTS.iter().map(|(f, _)| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(f)),
        )
        .args(["--input", input.to_str().unwrap(), "--overrides", ovr.to_str().unwrap()])
        .args(["--report", report.to_str().unwrap(), "--labels", labels.to_str().unwrap()])
        .args(["--dead-letter", dlq.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = data_of(&std::fs::read_to_string(&report).unwrap());
    assert_eq!(data.input, "t.jsonl");
    assert_eq!(data.figures.bypass_overrides, 1, "the loosening override bypassed policy");
    assert_eq!(data.summary.overrides_accepted, 1);
    assert_eq!(data.summary.dead_lettered, 1);
    assert_eq!(std::fs::read_to_string(&dlq).unwrap().lines().count(), 1);
    let l = data.labels.unwrap();
    // fin-07's drift (and its model change) were not labelled here: false alarms by this
    // file's account; sup-09's new tool was.
    assert_eq!(l.missed, 0);
    assert!(l.true_alarms >= 1 && l.false_alarms >= 2, "{l:?}");
    let fin07 =
        data.events.iter().find(|r| r.event.agent_id == "fin-07" && r.event.reason.code == "drift_verified");
    assert_eq!(fin07.and_then(|r| r.incident), Some(false));

    // Labels need a report, and a bad labels file names its line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"agent_id\":\"a\",\"from\":\"noon\"}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_driftgate"))
        .args([
            "replay",
            "--pact",
            "x.yaml",
            "--input",
            input.to_str().unwrap(),
            "--labels",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--report"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_driftgate"))
        .arg("replay")
        .arg("--pact")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/no-pii.yaml"))
        .args([
            "--input",
            input.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--labels",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.jsonl: line 1") && err.contains("RFC 3339"), "{err}");
}

#[test]
fn a_report_over_a_million_records_keeps_to_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.html");
    let limits = Limits { max_events: 6, expanded_events: 2 };
    let opts = ReplayOptions {
        report: Some(ReportRequest { out: &out, labels: vec![], compare: vec![], limits }),
        ..ReplayOptions::default()
    };
    let source = || -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Telemetry>>>> {
        Ok(Box::new(
            Fleet::new(7, 7, true)
                .filter_map(|i| match i {
                    Input::Telemetry(t) => Some(Ok(*t)),
                    _ => None,
                })
                .take(1_000_000),
        ))
    };
    let s = replay_records(example_pacts(), "fleet", &source, &opts).unwrap();
    assert_eq!(s.records, 1_000_000);
    let html = std::fs::read_to_string(&out).unwrap();
    let data = data_of(&html);
    assert_eq!(data.summary.records, 1_000_000);
    assert!(data.summary.events > 6, "enough events to reach the limit: {}", data.summary.events);
    assert_eq!(data.events.len(), 6);
    assert_eq!(data.events_omitted, data.summary.events - 6);
    assert!(html.contains(r#"id="events-omitted""#));
    assert_eq!(html.matches(r#"<details class="event""#).count(), 6);
    assert_eq!(html.matches(" open><summary>").count(), 2, "only the first events are expanded");
    assert!(html.len() < 400_000, "{} bytes", html.len());
}
