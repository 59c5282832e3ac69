//! `driftgate replay`: the same input gives identical events and history, whether it comes
//! as JSONL or as an Avro object container file.

use driftgate::cli::demo::{example_pacts, Fleet};
use driftgate::cli::replay::{replay, write_avro};
use driftgate_core::engine::Input;
use std::process::Command;

fn fleet_file(dir: &std::path::Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let records: Vec<_> = Fleet::new(3, 1, true)
        .filter_map(|i| match i {
            Input::Telemetry(t) => Some(*t),
            _ => None,
        })
        .take(n)
        .collect();
    let jsonl = dir.join("t.jsonl");
    let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(&jsonl, text).unwrap();
    let avro = dir.join("t.avro");
    write_avro(&avro, &records).unwrap();
    (jsonl, avro)
}

#[test]
fn replay_is_deterministic_across_runs_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, avro) = fleet_file(dir.path(), 120_000);
    let mut outputs = Vec::new();
    for (i, input) in [&jsonl, &jsonl, &avro].iter().enumerate() {
        let ev = dir.path().join(format!("ev{i}.jsonl"));
        let hi = dir.path().join(format!("hi{i}.jsonl"));
        let s = replay(example_pacts(), input, None, Some(&ev), Some(&hi), None).unwrap();
        assert_eq!(s.records, 120_000);
        outputs.push((std::fs::read(&ev).unwrap(), std::fs::read(&hi).unwrap()));
    }
    assert!(!outputs[0].0.is_empty(), "the scenario produces enforcement events");
    assert_eq!(outputs[0], outputs[1], "same JSONL input, different output");
    assert_eq!(outputs[0], outputs[2], "JSONL and Avro inputs disagree");
    let (n, _) = driftgate_core::model::history::verify(outputs[0].1.as_slice()).unwrap();
    assert_eq!(
        n as usize,
        outputs[0].1.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(),
        "every history line verifies"
    );
}

#[test]
fn replay_command_runs_with_overrides_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, _) = fleet_file(dir.path(), 20_000);
    let ovr = dir.path().join("o.jsonl");
    std::fs::write(
        &ovr,
        r#"{"override_id":"k1","agent_id":"fin-02","kind":"emergency_kill","principal":"bob","reason":"incident","ticket":"INC-1","issued_at":1772413200000000,"expires_at":1772416800000000,"expected_seq":0}
{"override_id":"k2","agent_id":"fin-05","kind":"loosen","lane":"normal","principal":"bob","reason":"no expiry","ticket":"INC-2","issued_at":1772413200000000}
"#,
    )
    .unwrap();
    let ev = dir.path().join("ev.jsonl");
    let hi = dir.path().join("hi.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_driftgate"))
        .arg("replay")
        .arg("--pact")
        .args(
            std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        )
        .args(["--input", jsonl.to_str().unwrap(), "--overrides", ovr.to_str().unwrap()])
        .args(["--events-out", ev.to_str().unwrap(), "--history-out", hi.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("replayed 20002 records"));
    let events = std::fs::read_to_string(&ev).unwrap();
    assert!(
        events.lines().any(|l| l.contains("\"agent_id\":\"fin-02\"") && l.contains("\"lane_to\":\"block\"")),
        "kill applied"
    );
    assert!(
        events.lines().any(|l| l.contains("\"agent_id\":\"fin-02\"") && l.contains("override_expired")),
        "kill expired"
    );
    let history = std::fs::read_to_string(&hi).unwrap();
    assert!(
        history.contains("override_rejected") && history.contains("expires_at` is mandatory"),
        "no-expiry override rejected and recorded"
    );
}

#[test]
fn late_records_are_set_aside_with_their_reason_and_recorded_in_the_history() {
    let dir = tempfile::tempdir().unwrap();
    // In-order telemetry, then one record 10 minutes behind: beyond the watermark (5 s of
    // out-of-orderness) and the allowed lateness (60 s).
    let mut inputs: Vec<driftgate_core::model::telemetry::Telemetry> = Fleet::new(3, 1, false)
        .filter_map(|i| if let driftgate_core::engine::Input::Telemetry(t) = i { Some(*t) } else { None })
        .take(2_000)
        .collect();
    let max = inputs.iter().map(|t| t.occurred_at).max().unwrap();
    let mut late = inputs[0].clone();
    late.event_id = "late-1".into();
    late.occurred_at = max - 600_000_000;
    inputs.push(late.clone());
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        inputs.iter().map(|t| serde_json::to_string(t).unwrap() + "\n").collect::<String>(),
    )
    .unwrap();
    let (hi, lo) = (dir.path().join("hi.jsonl"), dir.path().join("late.jsonl"));
    let s = replay(example_pacts(), &input, None, None, Some(&hi), Some(&lo)).unwrap();
    assert_eq!(s.late, 1);
    let late_records: Vec<serde_json::Value> =
        std::fs::read_to_string(&lo).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(late_records.len(), 1);
    let r = &late_records[0];
    assert_eq!(
        (r["id"].as_str(), r["agent_id"].as_str(), r["occurred_at"].as_i64()),
        (Some("late-1"), Some(late.agent_id.as_str()), Some(late.occurred_at))
    );
    assert_eq!(r["watermark"].as_i64(), Some(max - 5_000_000));
    assert!(r["reason"].as_str().unwrap().contains("595 s behind the watermark"), "{r}");
    let history = std::fs::read_to_string(&hi).unwrap();
    let in_history: Vec<serde_json::Value> = history
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|h| h["kind"] == "late")
        .collect();
    assert_eq!(in_history.len(), 1);
    assert_eq!(in_history[0]["detail"]["id"], "late-1");
}

#[test]
fn a_replay_with_pact_changes_shadows_promotes_and_rolls_back_at_their_event_times_the_same_way_every_time() {
    use driftgate_core::model::pact_change::{PactChange, PactMode};
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, _) = fleet_file(dir.path(), 60_000);
    // The next version of finance-quality also degrades refusals; shadowed at 02:00, promoted at 03:00,
    // rolled back at 05:00 of the simulated day.
    let v1 = &example_pacts()[0];
    let v2 = v1.source().replace(&format!("version: {}", v1.version()), &format!("version: {}", v1.version() + 1))
        + "  - id: no-refusals\n    metric: { kind: bernoulli, value: outcome == \"refused\" }\n    test: { kind: limit, zero_tolerance: true }\n    severity: high\n    consequence: degrade\n";
    let hour = 3_600_000_000i64;
    let change = |id: &str, mode, h: i64, document: Option<String>| PactChange {
        change_id: id.into(),
        mode,
        pact_id: example_pacts()[0].id().into(),
        document,
        principal: "alice".into(),
        reason: "review".into(),
        ticket: "CHG-1".into(),
        issued_at: driftgate::cli::demo::DAY0 + h * hour,
        channel: "replay".into(),
    };
    let changes = [
        change("c1", PactMode::Shadow, 2, Some(v2)),
        change("c2", PactMode::Promote, 3, None),
        change("c3", PactMode::Rollback, 5, None),
    ];
    let file = dir.path().join("changes.jsonl");
    std::fs::write(
        &file,
        changes.iter().map(|c| serde_json::to_string(c).unwrap() + "\n").collect::<String>(),
    )
    .unwrap();
    let mut runs = Vec::new();
    for i in 0..2 {
        let (ev, hi) = (dir.path().join(format!("ev{i}")), dir.path().join(format!("hi{i}")));
        let opts = driftgate::cli::replay::ReplayOptions {
            pact_changes: Some(&file),
            events_out: Some(&ev),
            history_out: Some(&hi),
            ..Default::default()
        };
        driftgate::cli::replay::replay_with(example_pacts(), &jsonl, &opts).unwrap();
        runs.push((std::fs::read_to_string(&ev).unwrap(), std::fs::read_to_string(&hi).unwrap()));
    }
    assert_eq!(runs[0], runs[1], "the same changes at the same event times, the same outputs");
    let history: Vec<driftgate_core::model::history::Record> =
        runs[0].1.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<String> = history
        .iter()
        .filter(|r| r.detail.get("change").is_some())
        .map(|r| format!("{:?}@{}", r.kind, (r.at_micros - driftgate::cli::demo::DAY0) / hour))
        .collect();
    assert_eq!(kinds, ["PactShadowed@2", "PactPromoted@3", "PactRolledBack@5"]);
    // Refusals are degraded by the new version while it enforces, and only then.
    let events: Vec<driftgate_core::model::enforcement::EnforcementEvent> =
        runs[0].0.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let v2_events: Vec<_> = events.iter().filter(|e| e.clause_id.as_deref() == Some("no-refusals")).collect();
    assert!(!v2_events.is_empty(), "version 2's clause enforced");
    let enforced = driftgate::cli::demo::DAY0 + 3 * hour..driftgate::cli::demo::DAY0 + 5 * hour;
    assert!(v2_events.iter().all(|e| enforced.contains(&e.effective_at)), "{v2_events:?}");
    assert!(history.iter().any(|r| r.kind == driftgate_core::model::history::RecordKind::ShadowDecision));
}

#[test]
fn malformed_records_stop_a_replay_or_go_to_the_dead_letter_file_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, _) = fleet_file(dir.path(), 2_000);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(10, r#"{"agent_id":"fin-01","latency_ms":"#);
    lines.insert(500, r#"{"event_id":"x","agent_id":"fin-01"}"#);
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let pacts: Vec<_> = driftgate::cli::demo::EXAMPLE_PACTS
        .iter()
        .map(|(f, _)| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(f))
        .collect();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_driftgate"))
            .arg("replay")
            .arg("--pact")
            .args(&pacts)
            .args(["--input", bad.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.jsonl: line 11"), "{err}");

    let dlq = dir.path().join("dlq.jsonl");
    let ev = dir.path().join("ev.jsonl");
    let out = run(&["--dead-letter", dlq.to_str().unwrap(), "--events-out", ev.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("replayed 2000 records") && err.contains("2 malformed"), "{err}");
    let dead: Vec<serde_json::Value> =
        std::fs::read_to_string(&dlq).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(dead.len(), 2);
    assert!(dead[0]["at"].as_str().unwrap().ends_with("bad.jsonl: line 11"), "{:?}", dead[0]);
    assert_eq!(dead[0]["record"], lines[10]);
    assert!(dead[1]["at"].as_str().unwrap().ends_with("bad.jsonl: line 501"), "{:?}", dead[1]);
    assert!(!dead[1]["reason"].as_str().unwrap().is_empty());
    // Nothing else is lost: the valid records give the events of the clean file.
    let clean_ev = dir.path().join("clean.jsonl");
    replay(example_pacts(), &jsonl, None, Some(&clean_ev), None, None).unwrap();
    assert_eq!(std::fs::read(&ev).unwrap(), std::fs::read(&clean_ev).unwrap());
}
