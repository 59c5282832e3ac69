//! Pact validation: the examples are valid, the published schema matches the parser, and
//! invalid pacts are refused with `file:line:column` and a plain reason.

use driftgate_core::pact::{load_pact, pact_json_schema, parse_pact};
use std::process::Command;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_example_pact_is_valid() {
    let dir = root().join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            load_pact(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 5, "expected the example pacts, found {n}");
}

#[test]
fn published_schema_matches_the_parser() {
    let published =
        std::fs::read_to_string(root().join("schemas/pact.schema.json")).expect("schemas/pact.schema.json");
    assert_eq!(
        published,
        pact_json_schema(),
        "regenerate with: driftgate pact-schema > schemas/pact.schema.json"
    );
}

const GOOD: &str = r#"pact: t
version: 1
applies_to:
  agents: ["*"]
clauses:
  - id: c1
    metric:
      kind: bernoulli
      value: citations.verified > 0
    test:
      kind: drift
      detector: auto
      false_alarm_rate: 1.0e-6
    severity: high
    consequence: degrade
    freshness: { max_age: 30m, min_events: 5 }
"#;

fn refused(text: &str) -> driftgate_core::pact::PactError {
    parse_pact(text, "p.yaml").expect_err("must be refused")
}

#[test]
fn the_reference_pact_is_valid() {
    parse_pact(GOOD, "p.yaml").unwrap();
}

#[test]
fn unknown_field_is_located() {
    let e = refused(&GOOD.replace("    severity: high\n", "    severity: high\n    severty: low\n"));
    // Line 15 is exactly where `severty:` was inserted.
    assert_eq!((e.line, e.column), (15, 5), "{e}");
    assert!(e.message.contains("unknown field `severty`"), "{e}");
    assert!(e.to_string().starts_with("p.yaml:15:5: "), "{e}");
}

#[test]
fn bad_predicate_is_located_with_its_column() {
    let e = refused(&GOOD.replace("citations.verified > 0", "citations.verifed > 0"));
    // The metric block (line 8), with the column inside the expression.
    assert_eq!(e.line, 8, "{e}");
    assert!(
        e.message
            .contains("at column 1: unknown field `citations.verifed` (did you mean `citations.verified`?)"),
        "{e}"
    );
    let e = refused(&GOOD.replace("citations.verified > 0", "latency_ms"));
    assert!(e.message.contains("a bernoulli metric needs a boolean value"), "{e}");
}

#[test]
fn missing_consequence_is_located() {
    let e = refused(&GOOD.replace("    consequence: degrade\n", ""));
    assert!(e.message.contains("missing field `consequence`"), "{e}");
    assert_eq!(e.line, 6, "{e}");
}

#[test]
fn negative_window_is_located() {
    let e = refused(&GOOD.replace("max_age: 30m", "max_age: -30m"));
    assert_eq!(e.line, 16, "{e}");
    assert!(e.message.contains("negative duration"), "{e}");
}

#[test]
fn unknown_detector_is_located() {
    let e = refused(&GOOD.replace("detector: auto", "detector: magic"));
    assert!(e.message.contains("unknown variant `magic`"), "{e}");
    assert_eq!((e.line, e.column), (12, 17), "{e}");
}

#[test]
fn cross_field_errors_point_at_the_clause() {
    let e = refused(&GOOD.replace(
        "      kind: drift\n      detector: auto\n      false_alarm_rate: 1.0e-6\n",
        "      kind: limit\n      quantile: { q: 0.95, max: 3000 }\n",
    ));
    assert!(e.message.contains("clause `c1`: a `quantile` limit needs a real metric"), "{e}");
    assert_eq!((e.line, e.column), (6, 5), "{e}");
    let e = refused(&format!("{GOOD}{}", &GOOD[GOOD.find("  - id: c1").unwrap()..]));
    assert!(e.message.contains("duplicate clause id"), "{e}");
    let e =
        refused(&GOOD.replace("    freshness: { max_age: 30m, min_events: 5 }\n", "    high_risk: true\n"));
    assert!(e.message.contains("needs `freshness`"), "{e}");
}

#[test]
fn a_drift_clause_whose_baseline_is_too_short_to_ever_alarm_is_refused_at_the_clause() {
    let short = r#"pact: t
version: 1
applies_to: { agents: ["*"] }
clauses:
  - id: latency
    metric: { kind: real, value: latency_ms }
    test: { kind: drift, detector: auto, false_alarm_rate: 1.0e-3, reference_min: 60, reference_max: 60 }
    severity: medium
    consequence: watch
"#;
    let e = refused(short);
    assert_eq!((e.line, e.column), (5, 5), "{e}");
    assert!(e.message.contains("`reference_max`") && e.message.contains("use at least 69"), "{e}");
    parse_pact(&short.replace("reference_max: 60", "reference_max: 69"), "p.yaml").unwrap();
}

#[test]
fn validate_command_exits_nonzero_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, GOOD.replace("max_age: 30m", "max_age: -30m")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_driftgate")).arg("validate").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:16:") && err.contains("negative duration"), "{err}");
    let ok = Command::new(env!("CARGO_BIN_EXE_driftgate"))
        .arg("validate")
        .arg(root().join("examples/no-pii.yaml"))
        .output()
        .unwrap();
    assert!(ok.status.success());
}

#[test]
fn the_readme_example_matches_its_file() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let marker = "`examples/finance-citations.yaml` (comments added";
    let after = &readme[readme.find(marker).expect("the README's example")..];
    let start = after.find("```yaml\n").expect("its yaml block") + "```yaml\n".len();
    let block = &after[start..start + after[start..].find("```").unwrap()];
    let shown = parse_pact(block, "README.md").unwrap_or_else(|e| panic!("{e}"));
    let mut file = load_pact(&root().join("examples/finance-citations.yaml")).unwrap().doc;
    assert!(!shown.doc.clauses.is_empty() && shown.doc.clauses.len() <= file.clauses.len());
    file.clauses.truncate(shown.doc.clauses.len());
    assert_eq!(shown.doc, file, "README.md's example and examples/finance-citations.yaml disagree");
}
