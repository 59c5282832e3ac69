//! The HTTP API contract check: schemathesis (installed by `scripts/install-tools.sh` into a
//! venv in the per-user tool cache) against a running server, for the demo's control plane
//! and the pipeline's alike.

use crate::support::scrape;
use std::process::Command;

/// The per-user tool cache of `scripts/install-tools.sh`.
pub fn tools_dir() -> std::path::PathBuf {
    std::env::var_os("DRIFTGATE_TOOLS").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/driftgate/tools")
    })
}

/// Runs schemathesis on every operation of `schemas/openapi.yaml` against `base`, with
/// `token` for the bearer scheme, and fails with its report unless every check passed in
/// every phase. Returns its output.
pub fn check(base: &str, token: &str) -> String {
    let bin = tools_dir().join("schemathesis/bin/schemathesis");
    assert!(
        bin.exists(),
        "schemathesis is not installed at {}: run ./scripts/install-tools.sh (pip install into a venv there)",
        bin.display()
    );
    let report = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .arg("--config-file")
        .arg(scrape::root().join("tests/fixtures/schemathesis.toml"))
        .arg("run")
        .arg(scrape::root().join("schemas/openapi.yaml"))
        .args(["--url", base, "--checks", "all", "--max-response-time", "2", "--request-timeout", "5"])
        .args(["--seed", "20261128", "--max-examples", "60", "--workers", "1", "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(report.path())
        .env("DRIFTGATE_CONTRACT_TOKEN", token)
        // Its crash cache stays in the temporary directory, not in the source tree, so that
        // every run starts from the seed alone.
        .current_dir(report.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the API at {base} breaks its contract:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It did test every documented operation, in every phase.
    assert!(text.contains("Selected: 10/10") && text.contains("Tested: 10"), "{text}");
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(text.contains(&format!("✅ {phase}")), "phase {phase} did not pass:\n{text}");
    }
    let junit = std::fs::read_dir(report.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("junit"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap_or_else(|| panic!("no JUnit report in the report directory:\n{text}"));
    for op in [
        "POST /v1/overrides",
        "GET /v1/agents/{id}/history",
        "POST /v1/pacts",
        "POST /v1/pacts/{id}/rollback",
    ] {
        assert!(junit.contains(op), "{op} not tested: {junit}");
    }
    text
}

/// promtool from the tool cache, or on the PATH.
pub fn promtool() -> std::path::PathBuf {
    [tools_dir().join("bin/promtool"), std::path::PathBuf::from("promtool")]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .unwrap_or_else(|| {
            panic!("promtool is not installed: run ./scripts/install-tools.sh (it extracts it from Debian's prometheus package)")
        })
}

/// Fails unless `promtool check metrics` accepts the exposition (names, units, HELP/TYPE).
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
