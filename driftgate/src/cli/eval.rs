//! `driftgate eval`: backtests a detector on labelled streams and scores it.
//!
//! Scoring follows the shared benchmark rules: the delay is the first alarm at or after
//! `change_at` minus `change_at`; alarms before the change and all alarms on no-change
//! streams are false alarms; after any alarm the detector restarts with a fresh baseline.

use crate::cli::input::{open_maybe_gzip, LineChunks};
use driftgate_detectors::{AnyDetector, Detector, DetectorSpec, MetricKind, Observation};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why an evaluation stopped.
#[derive(Debug, Error)]
pub enum EvalError {
    /// The input could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The input path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a valid event.
    #[error("line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The detector configuration is invalid.
    #[error("detector: {0}")]
    Detector(#[from] driftgate_detectors::DetectorError),
}

/// The scored result, with exactly the keys `--json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// `bernoulli`, `real` or `categorical`.
    pub metric: String,
    /// Detector name.
    pub detector: String,
    /// The configured false-alarm rate, if the detector has one.
    pub false_alarm_rate: Option<f64>,
    /// Streams with a change.
    pub reps_change: u64,
    /// Streams without a change.
    pub reps_nochange: u64,
    /// Mean delay over detected change streams, in events.
    pub mean_delay: Option<f64>,
    /// Median delay.
    pub median_delay: Option<f64>,
    /// 90th-percentile delay.
    pub p90_delay: Option<f64>,
    /// Change streams with no alarm at or after the change.
    pub missed: u64,
    /// False alarms per 100,000 in-control events.
    pub false_alarms_per_100k: f64,
    /// Detector updates per second, timing only the detector.
    pub updates_per_sec: f64,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    rep: Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    value: Value<'a>,
    change_at: Option<u64>,
}

/// An event value, parsed without allocation.
enum Value<'a> {
    Num(f64),
    Bool(bool),
    Str(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Value<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Value<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, a boolean or a string")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Value::Num(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Value::Num(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Value::Num(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Value::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Value::Str(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// Per-stream scoring state.
struct Rep {
    name: String,
    change_at: Option<u64>,
    next_seq: u64,
    delay: Option<u64>,
    done: bool,
}

#[derive(Default)]
struct Totals {
    reps_change: u64,
    reps_nochange: u64,
    delays: Vec<u64>,
    missed: u64,
    false_alarms: u64,
    in_control: u64,
    updates: u64,
}

impl Totals {
    fn finish(&mut self, rep: &Rep) {
        match rep.change_at {
            Some(c) => {
                self.reps_change += 1;
                self.in_control += c.min(rep.next_seq);
                match rep.delay {
                    Some(d) => self.delays.push(d),
                    None => self.missed += 1,
                }
            }
            None => {
                self.reps_nochange += 1;
                self.in_control += rep.next_seq;
            }
        }
    }
}

/// Runs `spec` over the labelled events in `path` and scores it.
pub fn evaluate(path: &Path, kind: MetricKind, spec: &DetectorSpec) -> Result<EvalReport, EvalError> {
    let io = |source| EvalError::Io { path: path.display().to_string(), source };
    let reader = open_maybe_gzip(path).map_err(io)?;
    let mut det: AnyDetector = spec.build(kind)?;
    let mut totals = Totals::default();
    let mut rep: Option<Rep> = None;
    let mut line_no: u64 = 0;
    let mut busy = Duration::ZERO;
    let chunks = LineChunks::spawn(reader, 1 << 20);
    for chunk in chunks {
        let chunk = chunk.map_err(io)?;
        let text = chunk.as_slice();
        // Parsed events of this chunk, so that the detector loop can be timed alone.
        let mut batch: Vec<(u64, u64, Pending<'_>)> = Vec::with_capacity(32 * 1024);
        let mut start = 0;
        while start < text.len() {
            let end = text[start..].iter().position(|b| *b == b'\n').map_or(text.len(), |p| start + p);
            let raw = &text[start..end];
            start = end + 1;
            line_no += 1;
            if raw.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let line: Line = serde_json::from_slice(raw)
                .map_err(|e| EvalError::BadLine { line: line_no, reason: e.to_string() })?;
            let new_rep = rep.as_ref().is_none_or(|r| r.name != line.rep);
            if new_rep {
                // Flush the previous rep's events before switching detectors.
                let t = Instant::now();
                run_batch(&mut det, &mut batch, rep.as_mut(), &mut totals)?;
                busy += t.elapsed();
                if let Some(r) = rep.take() {
                    totals.finish(&r);
                }
                det.reset();
                rep = Some(Rep {
                    name: line.rep.to_string(),
                    change_at: line.change_at,
                    next_seq: 0,
                    delay: None,
                    done: false,
                });
            }
            let r = rep.as_mut().expect("rep set above");
            if line.seq != r.next_seq + batch.len() as u64 {
                return Err(EvalError::BadLine {
                    line: line_no,
                    reason: format!(
                        "seq {} out of order in rep {:?} (expected {})",
                        line.seq,
                        r.name,
                        r.next_seq + batch.len() as u64
                    ),
                });
            }
            if line.change_at != r.change_at {
                return Err(EvalError::BadLine {
                    line: line_no,
                    reason: format!("change_at differs within rep {:?}", r.name),
                });
            }
            let obs = match (kind, line.value) {
                (MetricKind::Bernoulli, Value::Num(v)) if v == 0.0 || v == 1.0 => {
                    Pending::Obs(Observation::Bool(v == 1.0))
                }
                (MetricKind::Bernoulli, Value::Bool(b)) => Pending::Obs(Observation::Bool(b)),
                (MetricKind::Real, Value::Num(v)) => Pending::Obs(Observation::Real(v)),
                (MetricKind::Categorical, Value::Str(Cow::Borrowed(s))) => {
                    Pending::Obs(Observation::Category(s))
                }
                (MetricKind::Categorical, Value::Str(Cow::Owned(s))) => Pending::OwnedCategory(s),
                (_, _) => {
                    return Err(EvalError::BadLine {
                        line: line_no,
                        reason: format!("value is not a valid {} observation", kind.as_str()),
                    })
                }
            };
            batch.push((line_no, line.seq, obs));
        }
        let t = Instant::now();
        run_batch(&mut det, &mut batch, rep.as_mut(), &mut totals)?;
        busy += t.elapsed();
    }
    if let Some(r) = rep.take() {
        totals.finish(&r);
    }
    let mut delays = totals.delays.clone();
    delays.sort_unstable();
    let pct = |q: f64| {
        (!delays.is_empty())
            .then(|| delays[((q * (delays.len() - 1) as f64).round() as usize).min(delays.len() - 1)] as f64)
    };
    Ok(EvalReport {
        metric: kind.as_str().to_string(),
        detector: spec.name().to_string(),
        false_alarm_rate: spec.false_alarm_rate(),
        reps_change: totals.reps_change,
        reps_nochange: totals.reps_nochange,
        mean_delay: (!delays.is_empty()).then(|| delays.iter().sum::<u64>() as f64 / delays.len() as f64),
        median_delay: pct(0.5),
        p90_delay: pct(0.9),
        missed: totals.missed,
        false_alarms_per_100k: if totals.in_control == 0 {
            0.0
        } else {
            totals.false_alarms as f64 * 1e5 / totals.in_control as f64
        },
        updates_per_sec: if busy.is_zero() { 0.0 } else { totals.updates as f64 / busy.as_secs_f64() },
    })
}

/// A parsed event waiting for the detector: most values borrow the chunk; a category with
/// JSON escapes is owned.
enum Pending<'c> {
    Obs(Observation<'c>),
    OwnedCategory(String),
}

fn run_batch(
    det: &mut AnyDetector,
    batch: &mut Vec<(u64, u64, Pending<'_>)>,
    rep: Option<&mut Rep>,
    totals: &mut Totals,
) -> Result<(), EvalError> {
    let Some(rep) = rep else {
        batch.clear();
        return Ok(());
    };
    for (line_no, seq, pending) in batch.drain(..) {
        rep.next_seq = seq + 1;
        if rep.done {
            continue;
        }
        totals.updates += 1;
        let obs = match &pending {
            Pending::Obs(o) => *o,
            Pending::OwnedCategory(s) => Observation::Category(s),
        };
        let alarm = det
            .update(obs)
            .map_err(|e| EvalError::BadLine { line: line_no, reason: format!("seq {seq}: {e}") })?;
        if alarm.is_some() {
            match rep.change_at {
                Some(c) if seq >= c => {
                    rep.delay = Some(seq - c);
                    rep.done = true;
                }
                _ => totals.false_alarms += 1,
            }
            det.reset();
        }
    }
    Ok(())
}
