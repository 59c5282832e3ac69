//! `driftgate eval` end to end through the binary: scoring and bad input.

use std::io::Write;
use std::process::Command;

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_driftgate")).arg("eval").args(args).output().expect("run driftgate")
}

#[test]
fn corrupt_line_exits_nonzero_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, r#"{{"rep":"c00","seq":0,"value":1,"change_at":5}}"#).unwrap();
    writeln!(f, r#"{{"rep":"c00","seq":1,"value":0,"change_at":5}}"#).unwrap();
    writeln!(f, r#"{{"rep":"c00","seq":2,"value":"#).unwrap();
    drop(f);
    let out = eval(&["--metric", "bernoulli", "--input", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "stderr: {err}");
}

#[test]
fn invalid_values_are_named_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    std::fs::write(&path, "{\"rep\":\"n0\",\"seq\":0,\"value\":1,\"change_at\":null}\n{\"rep\":\"n0\",\"seq\":1,\"value\":7,\"change_at\":null}\n").unwrap();
    let out = eval(&["--metric", "bernoulli", "--input", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

/// A hand-checkable scoring case with gzip input: a known-parameter CUSUM (h = 2) on 0/1
/// data alarms exactly where the arithmetic says.
#[test]
fn scoring_matches_hand_computation_on_gzip_input() {
    // cusum p0=0.1, p1=0.9: llr(1) = ln 9 = 2.197 > h=2, llr(0) = -2.197.
    // Rep c0 (change at 3): 0 0 1 -> alarm at seq 2 (< 3): false alarm; reset; 0 1 -> alarm
    // at seq 4: delay 1. Rep n0: 0 0 0 0 1 -> alarm at 4: false alarm.
    // In-control events: c0: 3, n0: 5 -> 2 false alarms / 8 events = 25,000 per 100k.
    let mut lines = String::new();
    for (seq, v) in [0, 0, 1, 0, 1].iter().enumerate() {
        lines += &format!("{{\"rep\":\"c0\",\"seq\":{seq},\"value\":{v},\"change_at\":3}}\n");
    }
    for (seq, v) in [0, 0, 0, 0, 1].iter().enumerate() {
        lines += &format!("{{\"rep\":\"n0\",\"seq\":{seq},\"value\":{v},\"change_at\":null}}\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl.gz");
    let mut gz =
        flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    gz.write_all(lines.as_bytes()).unwrap();
    gz.finish().unwrap();
    let out = eval(&[
        "--metric",
        "bernoulli",
        "--input",
        path.to_str().unwrap(),
        "--detector",
        "cusum",
        "--json",
        "--options",
        r#"{"p0":0.1,"p1":0.9,"threshold":2.0}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
    let mut want = vec![
        "metric",
        "detector",
        "false_alarm_rate",
        "reps_change",
        "reps_nochange",
        "mean_delay",
        "median_delay",
        "p90_delay",
        "missed",
        "false_alarms_per_100k",
        "updates_per_sec",
    ];
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(v["reps_change"], 1);
    assert_eq!(v["reps_nochange"], 1);
    assert_eq!(v["mean_delay"], 1.0);
    assert_eq!(v["missed"], 0);
    assert_eq!(v["false_alarms_per_100k"], 25000.0);
}
