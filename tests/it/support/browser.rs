//! A real browser: Debian's Chromium, headless, offline, with a fresh profile. It loads a page
//! from a file and reports the DOM after load, the console messages, and every network
//! request the page started (from Chromium's NetLog, where requests the browser makes for
//! itself, such as update checks, are told apart by their network isolation key).

use std::path::{Path, PathBuf};
use std::process::Command;

/// What loading a page showed.
pub struct PageLoad {
    /// The serialized DOM after load (`--dump-dom`).
    pub dom: String,
    /// Console messages of any level.
    pub console: Vec<String>,
    /// URLs the page tried to fetch over the network.
    pub page_requests: Vec<String>,
}

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
        .unwrap_or_else(|| {
            panic!("Chromium is not installed: run ./scripts/install-tools.sh (it installs Debian's chromium package)")
        })
}

fn base_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

fn url(page: &Path) -> String {
    format!("file://{}", page.canonicalize().expect("page exists").display())
}

/// Loads `page` and returns its DOM, console and network activity.
pub fn load(page: &Path) -> PageLoad {
    let dir = tempfile::tempdir().unwrap();
    let netlog = dir.path().join("netlog.json");
    let out = Command::new(chromium())
        .args(base_args(&dir.path().join("profile")))
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--log-net-log={}", netlog.display()))
        .arg("--dump-dom")
        .arg(url(page))
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console = stderr.lines().filter(|l| l.contains(":CONSOLE")).map(String::from).collect();
    let log = std::fs::read_to_string(&netlog).expect("chromium wrote its NetLog");
    PageLoad {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
        page_requests: page_requests(&log),
    }
}

/// Network requests started by a page loaded from a file: `URL_REQUEST_START_JOB` events
/// whose network isolation key is the file origin, for a URL that is not itself a file.
fn page_requests(netlog: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(netlog).expect("NetLog is JSON");
    let start = v["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_i64().expect("NetLog constants");
    let events = v["events"].as_array().expect("NetLog events");
    events
        .iter()
        .filter(|e| e["type"].as_i64() == Some(start))
        .filter(|e| e["params"]["network_isolation_key"].as_str().is_some_and(|k| k.contains("file://")))
        .filter_map(|e| e["params"]["url"].as_str())
        .filter(|u| !u.starts_with("file:") && !u.starts_with("data:"))
        .map(String::from)
        .collect()
}

/// Saves a screenshot of `page` (PNG) of the given window size.
pub fn screenshot(page: &Path, png: &Path, width: u32, height: u32) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args(base_args(&dir.path().join("profile")))
        .arg(format!("--window-size={width},{height}"))
        .arg("--hide-scrollbars")
        .arg(format!("--screenshot={}", png.display()))
        .arg(url(page))
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
}
