//! Reading a Prometheus scrape, and the metrics that the deploy kit references.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `name{labels}` (labels sorted as exposed) → value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The value of label `name` in a sample key such as `metric{a="x",b="y"}`.
pub fn label<'a>(key: &'a str, name: &str) -> Option<&'a str> {
    let rest = key.split_once('{')?.1;
    let start =
        rest.match_indices(&format!("{name}=\"")).find(|(i, _)| *i == 0 || rest.as_bytes()[i - 1] == b',')?.0
            + name.len()
            + 2;
    let end = rest[start..].find('"')? + start;
    Some(&rest[start..end])
}

/// Metric family names declared in a scrape (`# TYPE` lines).
pub fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` pairs).
pub fn sum(s: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k.as_str(), ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Every `driftgate_*` family named in the Grafana dashboard and the alert rules.
pub fn referenced_by_deploy_kit(root: &Path) -> BTreeSet<String> {
    let mut text =
        std::fs::read_to_string(root.join("deploy/grafana/driftgate-dashboard.json")).expect("dashboard");
    text += &std::fs::read_to_string(root.join("deploy/prometheus/alerts.yaml")).expect("alert rules");
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("driftgate_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        out.insert(family.to_string());
        i = end;
    }
    out
}

/// The repository root.
pub fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
