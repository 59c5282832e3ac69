//! Labelled incidents: which lane changes of a backtest were real problems.
//!
//! A label says that an agent really misbehaved from a time on (and optionally until a
//! time). An alarm (a lane moving up for a reason other than an operator or a pact
//! activation) on a labelled agent inside its window is a true alarm; any other alarm is a
//! false alarm; a label with no alarm in its window is a missed incident.

use anyhow::Context;
use driftgate_core::model::enforcement::EnforcementEvent;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An event time in a labels file: RFC 3339, or microseconds since the epoch.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Time {
    Micros(i64),
    Text(String),
}

impl Time {
    fn micros(&self) -> anyhow::Result<i64> {
        match self {
            Time::Micros(m) => Ok(*m),
            Time::Text(s) => {
                let t = humantime::parse_rfc3339_weak(s)
                    .with_context(|| format!("`{s}` is not an RFC 3339 time"))?;
                let d = t.duration_since(std::time::UNIX_EPOCH).context("a time before 1970")?;
                i64::try_from(d.as_micros()).context("a time too far in the future")
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelLine {
    agent_id: String,
    from: Time,
    #[serde(default)]
    until: Option<Time>,
    #[serde(default)]
    note: Option<String>,
}

/// One labelled incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// The agent that misbehaved.
    pub agent_id: String,
    /// From when (µs).
    pub from: i64,
    /// Until when (µs), if it ended.
    pub until: Option<i64>,
    /// What happened.
    pub note: String,
}

/// Reads a labels file: JSONL, one `{"agent_id", "from", "until"?, "note"?}` per line, with
/// times in RFC 3339 or in microseconds.
pub fn read_labels(path: &Path) -> anyhow::Result<Vec<Label>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}: line {}", path.display(), i + 1);
        let l: LabelLine = serde_json::from_str(line).with_context(at)?;
        let from = l.from.micros().with_context(at)?;
        let until = l.until.map(|u| u.micros()).transpose().with_context(at)?;
        if until.is_some_and(|u| u < from) {
            anyhow::bail!("{}: `until` is before `from`", at());
        }
        out.push(Label { agent_id: l.agent_id, from, until, note: l.note.unwrap_or_default() });
    }
    Ok(out)
}

/// Whether an event is an alarm: a lane moved up because of what the agent did.
pub(super) fn is_alarm(e: &EnforcementEvent) -> bool {
    e.lane_to > e.lane_from
        && e.action != "settle"
        && !matches!(e.reason.code.as_str(), "override_applied" | "pact_activated" | "blast_radius_recheck")
}

/// How the alarms compare with the labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelScore {
    /// The labels.
    pub incidents: Vec<Label>,
    /// For each label, the first alarm in its window (event time, µs).
    pub detected_at: Vec<Option<i64>>,
    /// Alarms inside a labelled window.
    pub true_alarms: u64,
    /// Alarms outside every labelled window.
    pub false_alarms: u64,
    /// Labels with no alarm in their window.
    pub missed: u64,
}

impl LabelScore {
    pub(super) fn new(labels: &[Label]) -> LabelScore {
        LabelScore {
            incidents: labels.to_vec(),
            detected_at: vec![None; labels.len()],
            true_alarms: 0,
            false_alarms: 0,
            missed: 0,
        }
    }

    /// Counts one alarm; true when it falls in a labelled window.
    pub(super) fn judge(&mut self, e: &EnforcementEvent) -> bool {
        let mut hit = false;
        for (i, l) in self.incidents.iter().enumerate() {
            let inside = l.agent_id == e.agent_id
                && e.effective_at >= l.from
                && l.until.is_none_or(|u| e.effective_at <= u);
            if inside {
                hit = true;
                let d = &mut self.detected_at[i];
                *d = Some(d.map_or(e.effective_at, |t| t.min(e.effective_at)));
            }
        }
        if hit {
            self.true_alarms += 1;
        } else {
            self.false_alarms += 1;
        }
        hit
    }

    pub(super) fn finish(mut self) -> LabelScore {
        self.missed = self.detected_at.iter().filter(|d| d.is_none()).count() as u64;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_event as alarm;
    use driftgate_core::model::lane::Lane;

    #[test]
    fn alarms_in_a_window_are_true_others_false_and_empty_windows_missed() {
        let labels = vec![
            Label { agent_id: "a".into(), from: 100, until: Some(200), note: String::new() },
            Label { agent_id: "b".into(), from: 100, until: None, note: String::new() },
        ];
        let mut s = LabelScore::new(&labels);
        assert!(s.judge(&alarm("a", 150, "drift_verified", Lane::Normal, Lane::Degrade)));
        assert!(!s.judge(&alarm("a", 250, "drift_verified", Lane::Normal, Lane::Degrade)));
        assert!(!s.judge(&alarm("c", 150, "drift_verified", Lane::Normal, Lane::Degrade)));
        let s = s.finish();
        assert_eq!((s.true_alarms, s.false_alarms, s.missed), (1, 2, 1));
        assert_eq!(s.detected_at, [Some(150), None]);
    }

    #[test]
    fn operator_and_step_down_changes_are_not_alarms() {
        assert!(is_alarm(&alarm("a", 1, "drift_verified", Lane::Normal, Lane::Watch)));
        assert!(!is_alarm(&alarm("a", 1, "override_applied", Lane::Normal, Lane::Watch)));
        assert!(!is_alarm(&alarm("a", 1, "reverified", Lane::Degrade, Lane::Watch)));
    }

    #[test]
    fn labels_files_take_both_time_forms_and_name_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.jsonl");
        std::fs::write(&p, "{\"agent_id\":\"a\",\"from\":\"2026-03-02T10:00:00Z\"}\n{\"agent_id\":\"b\",\"from\":5,\"until\":9,\"note\":\"n\"}\n").unwrap();
        let l = read_labels(&p).unwrap();
        assert_eq!(l[0].from, 1_772_445_600_000_000);
        assert_eq!((l[1].from, l[1].until, l[1].note.as_str()), (5, Some(9), "n"));
        std::fs::write(&p, "{\"agent_id\":\"a\",\"from\":\"yesterday\"}\n").unwrap();
        let e = format!("{:#}", read_labels(&p).unwrap_err());
        assert!(e.contains("line 1") && e.contains("RFC 3339"), "{e}");
    }
}
