//! `driftgate history verify` through the binary.

use driftgate_core::model::history::{write_jsonl, Chain, Entry, RecordKind};
use std::process::Command;

fn write_log(path: &std::path::Path, n: usize) {
    let mut c = Chain::default();
    let recs: Vec<_> = (0..n)
        .map(|i| {
            c.append(Entry {
                kind: if i % 2 == 0 { RecordKind::Decision } else { RecordKind::OverrideAccepted },
                at_micros: i as i64 * 1_000_000,
                agent_id: Some("fin-07".into()),
                pact_id: Some("finance-citations".into()),
                pact_version: Some(3),
                clause_id: Some("verified-citations".into()),
                detail: serde_json::json!({"lane_to": "degrade", "n": i}),
            })
        })
        .collect();
    write_jsonl(std::fs::File::create(path).unwrap(), &recs).unwrap();
}

fn verify(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_driftgate")).args(["history", "verify"]).arg(path).output().unwrap()
}

#[test]
fn intact_log_passes_and_tampered_log_fails_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    write_log(&path, 8);
    let ok = verify(&path);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("8 records"));

    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(2, 3);
    std::fs::write(&path, lines.join("\n")).unwrap();
    let bad = verify(&path);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("line 3") && err.contains("chain broken"), "{err}");
}
