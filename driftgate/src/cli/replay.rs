//! `driftgate replay`: recorded telemetry (JSONL or an Avro object container file) through
//! the engine core, with optional overrides, writing enforcement events and history.

use crate::cli::input::open_maybe_gzip;
use crate::report::{diff_events, render, Diff, Label, Limits, Report, ReportBuilder};
use anyhow::{bail, Context};
use driftgate_core::codec::jsonl;
use driftgate_core::engine::{Collected, Engine, EngineConfig, Input, Output, TraceLimits};
use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::history::{Record, RecordKind};
use driftgate_core::model::telemetry::Telemetry;
use driftgate_core::pact::Pact;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplaySummary {
    /// Telemetry records read.
    pub records: u64,
    /// Enforcement events produced.
    pub events: u64,
    /// History records produced.
    pub history: u64,
    /// Records set aside as late.
    pub late: u64,
    /// Malformed records set aside (see [`ReplayOptions::dead_letter`]).
    pub dead_lettered: u64,
    /// Seconds spent.
    pub seconds: f64,
}

fn is_avro(path: &Path) -> anyhow::Result<bool> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 4];
    use std::io::Read;
    let n = f.read(&mut magic)?;
    Ok(n == 4 && magic == *b"Obj\x01")
}

/// A record of the input that is not valid telemetry. A replay stops at the first one, or,
/// with a dead-letter file, writes it there with its reason and goes on.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[error("{at}: {reason}")]
pub struct Malformed {
    /// Where: `file: line N` or `file: record N`.
    pub at: String,
    /// Why it was refused, with the causes.
    pub reason: String,
    /// The line as read (JSONL input only).
    pub record: Option<String>,
}

impl Malformed {
    fn error(at: String, e: &dyn std::error::Error, record: Option<String>) -> anyhow::Error {
        let reason = std::iter::successors(Some(e), |e| e.source())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        anyhow::Error::new(Malformed { at, reason, record })
    }
}

/// The telemetry records of a file (JSONL, optionally gzip, or Avro OCF), one at a time, so
/// that a replay holds no more of its input than the engine buffers. A record that is not
/// valid telemetry is a [`Malformed`] error; an unreadable file is any other error.
pub fn telemetry_records(path: &Path) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Telemetry>>>> {
    let name = path.display().to_string();
    if is_avro(path)? {
        let reader_schema = driftgate_core::codec::schemas::telemetry();
        let f = std::fs::File::open(path)?;
        let reader = apache_avro::Reader::builder(BufReader::new(f))
            .reader_schema(reader_schema)
            .build()
            .context("not an Avro object container file")?;
        return Ok(Box::new(reader.enumerate().map(move |(i, v)| {
            // A block that does not decode leaves the reader nowhere to resume: fatal.
            let v = v.with_context(|| format!("{name}: record {}", i + 1))?;
            Telemetry::from_avro(v)
                .map_err(|e| Malformed::error(format!("{name}: record {}", i + 1), &e, None))
        })));
    }
    let r = BufReader::new(open_maybe_gzip(path)?);
    Ok(Box::new(r.lines().enumerate().filter_map(move |(i, line)| {
        match line {
            Err(e) => Some(Err(anyhow::Error::from(e).context(format!("{name}: line {}", i + 1)))),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(
                Telemetry::from_json(l.as_bytes())
                    .map_err(|e| Malformed::error(format!("{name}: line {}", i + 1), &e, Some(l))),
            ),
        }
    })))
}

/// Reads every telemetry record of a file (JSONL, optionally gzip, or Avro OCF).
pub fn read_telemetry(path: &Path) -> anyhow::Result<Vec<Telemetry>> {
    telemetry_records(path)?.collect()
}

/// Calls `f` with every non-blank line of a JSONL file (optionally gzip) and its place
/// (`file: line N`), stopping at the first error.
fn for_each_line(path: &Path, mut f: impl FnMut(&str, &str) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let r = BufReader::new(open_maybe_gzip(path)?);
    for (i, line) in r.lines().enumerate() {
        let line = line?;
        if !line.trim().is_empty() {
            f(&line, &format!("{}: line {}", path.display(), i + 1))?;
        }
    }
    Ok(())
}

/// Writes telemetry as an Avro object container file.
pub fn write_avro(path: &Path, records: &[Telemetry]) -> anyhow::Result<()> {
    let schema = driftgate_core::codec::schemas::telemetry();
    let f = BufWriter::new(std::fs::File::create(path)?);
    let mut w = apache_avro::Writer::with_codec(schema, f, apache_avro::Codec::Null)?;
    for t in records {
        w.append_value(t.to_avro())?;
    }
    w.flush()?;
    Ok(())
}

/// A recorded tick: applied before the input at position `after_inputs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordedTick {
    /// Inputs offered before it.
    pub after_inputs: u64,
    /// The source's event-time clock it carried.
    pub at: i64,
    /// The wall time it was fed at.
    pub wall_time: i64,
}

/// Reads the `tick` records of a contract history (JSONL, optionally gzip), in order.
pub fn read_ticks(path: &Path) -> anyhow::Result<Vec<RecordedTick>> {
    let mut out = Vec::new();
    for_each_line(path, |line, at| {
        let rec: Record =
            serde_json::from_str(line).with_context(|| format!("{at}: not a history record"))?;
        if rec.kind == RecordKind::Tick {
            let field = |k: &str| {
                rec.detail
                    .get(k)
                    .and_then(serde_json::Value::as_i64)
                    .with_context(|| format!("{at}: tick without `{k}`"))
            };
            out.push(RecordedTick {
                after_inputs: u64::try_from(field("after_inputs")?).context("negative `after_inputs`")?,
                at: field("at")?,
                wall_time: field("wall_time")?,
            });
        }
        Ok(())
    })?;
    Ok(out)
}

/// A report to build alongside a replay (`--report`).
#[derive(Debug, Clone)]
pub struct ReportRequest<'a> {
    /// Where to write the HTML.
    pub out: &'a Path,
    /// Labelled incidents to score the alarms against (`--labels`).
    pub labels: Vec<Label>,
    /// New pact versions to compare with (`--compare`): each replaces the loaded pact with
    /// its id, or joins them when none has it.
    pub compare: Vec<Pact>,
    /// What the report keeps.
    pub limits: Limits,
}

/// What to replay and where to write.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions<'a> {
    /// Engine settings (default: [`EngineConfig::default`]).
    pub engine: Option<EngineConfig>,
    /// Overrides (JSONL), merged in event-time order.
    pub overrides: Option<&'a Path>,
    /// Pact changes (JSONL), merged in event-time order.
    pub pact_changes: Option<&'a Path>,
    /// Ticks recorded by a live run, applied at their input positions.
    pub ticks: Vec<RecordedTick>,
    /// Enforcement events (JSONL).
    pub events_out: Option<&'a Path>,
    /// Contract history (JSONL).
    pub history_out: Option<&'a Path>,
    /// Late records (JSONL).
    pub late_out: Option<&'a Path>,
    /// Malformed records, with their reason (JSONL); without it, a replay stops at the first.
    pub dead_letter: Option<&'a Path>,
    /// A backtest report to write.
    pub report: Option<ReportRequest<'a>>,
}

/// Replays telemetry (and overrides) through a fresh engine, with the default settings and
/// no ticks.
pub fn replay(
    pacts: Vec<Pact>,
    input: &Path,
    overrides: Option<&Path>,
    events_out: Option<&Path>,
    history_out: Option<&Path>,
    late_out: Option<&Path>,
) -> anyhow::Result<ReplaySummary> {
    replay_with(
        pacts,
        input,
        &ReplayOptions { overrides, events_out, history_out, late_out, ..ReplayOptions::default() },
    )
}

/// Replays telemetry (and overrides, and recorded ticks) through a fresh engine, and writes
/// the report if one is asked for.
pub fn replay_with(
    pacts: Vec<Pact>,
    input: &Path,
    opts: &ReplayOptions<'_>,
) -> anyhow::Result<ReplaySummary> {
    let name =
        input.file_name().map_or_else(|| input.display().to_string(), |n| n.to_string_lossy().into_owned());
    replay_records(pacts, &name, &|| telemetry_records(input), opts)
}

/// Opens a telemetry input from its start; a report reads it twice (once to replay, once to
/// find the records that caused events).
pub type Source<'s> = &'s dyn Fn() -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Telemetry>>>>;

/// [`replay_with`] over any telemetry source; `name` names it in errors and the report.
pub fn replay_records(
    pacts: Vec<Pact>,
    name: &str,
    source: Source<'_>,
    opts: &ReplayOptions<'_>,
) -> anyhow::Result<ReplaySummary> {
    let Some(req) = &opts.report else {
        return drive(pacts, name, source, opts, Watch::default()).map(|(s, _)| s);
    };
    let compare = !req.compare.is_empty();
    let mut builder = ReportBuilder::new(req.limits);
    let mut old_events = Vec::new();
    let watch = Watch {
        report: Some(&mut builder),
        events: compare.then_some(&mut old_events),
        trace: true,
        skip_malformed: false,
    };
    let (summary, mut engine) = drive(pacts.clone(), name, source, opts, watch)?;
    let traces = engine.take_trace();
    let mut data = builder.finish(&engine, summary.records, "driftgate backtest report", name);
    drop(engine);
    if compare {
        let (new_pacts, changed) = replace_pacts(&pacts, &req.compare);
        let mut nb = ReportBuilder::new(Limits { max_events: 0, ..req.limits });
        let mut new_events = Vec::new();
        let quiet = ReplayOptions {
            events_out: None,
            history_out: None,
            late_out: None,
            dead_letter: None,
            report: None,
            ..opts.clone()
        };
        let watch = Watch {
            report: Some(&mut nb),
            events: Some(&mut new_events),
            trace: false,
            skip_malformed: opts.dead_letter.is_some(),
        };
        let (s2, e2) = drive(new_pacts, name, source, &quiet, watch)?;
        let new_figures = nb.finish(&e2, s2.records, "", "").figures;
        let (rows, unchanged) = diff_events(&old_events, &new_events);
        data.compare = Some(Diff {
            pacts: changed,
            events: (old_events.len() as u64, new_events.len() as u64),
            unchanged,
            rows,
            new_figures,
        });
    }
    data.fill_causing_records(source()?.filter_map(Result::ok));
    if !req.labels.is_empty() {
        data.score(&req.labels);
    }
    let page = render(&Report::new(data, traces, req.limits));
    std::fs::write(req.out, page).with_context(|| format!("cannot write {}", req.out.display()))?;
    Ok(summary)
}

/// Appends every line of a JSONL file of `T` (overrides, pact changes) as an input.
fn read_jsonl<T: serde::de::DeserializeOwned>(
    p: &Path,
    wrap: fn(T) -> Input,
    into: &mut Vec<Input>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        into.push(wrap(
            serde_json::from_str(line).with_context(|| format!("{}: line {}", p.display(), i + 1))?,
        ));
    }
    Ok(())
}

/// `current` with each of `new` in place of the pact with its id (or added); and the
/// replacements made, as `(id, current version or 0, new version)`.
fn replace_pacts(current: &[Pact], new: &[Pact]) -> (Vec<Pact>, Vec<(String, u32, u32)>) {
    let mut out = current.to_vec();
    let mut changed = Vec::new();
    for n in new {
        match out.iter_mut().find(|p| p.id() == n.id()) {
            Some(p) => {
                changed.push((n.id().to_string(), p.version(), n.version()));
                *p = n.clone();
            }
            None => {
                changed.push((n.id().to_string(), 0, n.version()));
                out.push(n.clone());
            }
        }
    }
    (out, changed)
}

/// What a replay reports to besides its output files.
#[derive(Default)]
struct Watch<'r> {
    report: Option<&'r mut ReportBuilder>,
    events: Option<&'r mut Vec<EnforcementEvent>>,
    trace: bool,
    /// Skip malformed records even without a dead-letter file (a second pass over the input).
    skip_malformed: bool,
}

/// The replay itself: inputs through a fresh engine, outputs to the files and the watchers.
/// Telemetry streams from the file; with overrides or pact changes, every input is read
/// first and merged in event-time order.
fn drive(
    pacts: Vec<Pact>,
    name: &str,
    source: Source<'_>,
    opts: &ReplayOptions<'_>,
    mut watch: Watch<'_>,
) -> anyhow::Result<(ReplaySummary, Engine)> {
    let ReplayOptions { overrides, pact_changes, events_out, history_out, late_out, dead_letter, .. } = *opts;
    let mut dead_w = dead_letter.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let skip = dead_letter.is_some() || watch.skip_malformed;
    let mut dead = 0u64;
    // A malformed record is set aside when there is a dead-letter file; anything else stops.
    let mut refuse = |e: anyhow::Error, watch: &mut Watch<'_>| -> anyhow::Result<()> {
        match e.downcast::<Malformed>() {
            Ok(m) if skip => {
                if let Some(w) = dead_w.as_mut() {
                    serde_json::to_writer(&mut *w, &m)?;
                    w.write_all(b"\n")?;
                }
                dead += 1;
                if let Some(r) = watch.report.as_deref_mut() {
                    r.dead_letter();
                }
                Ok(())
            }
            Ok(m) => Err(m.into()),
            Err(e) => Err(e),
        }
    };
    let merged = overrides.is_some() || pact_changes.is_some();
    let (inputs, known): (Box<dyn Iterator<Item = anyhow::Result<Input>>>, Option<u64>) = if merged {
        let mut inputs = Vec::new();
        for r in source()? {
            match r {
                Ok(t) => inputs.push(t.into()),
                Err(e) => refuse(e, &mut watch)?,
            }
        }
        if let Some(p) = overrides {
            read_jsonl(p, Input::Override, &mut inputs)?;
        }
        if let Some(p) = pact_changes {
            read_jsonl(p, Input::Pact, &mut inputs)?;
        }
        // They join the telemetry in event-time order (stable for equal times).
        inputs.sort_by_key(|i| i.time());
        let n = inputs.len() as u64;
        (Box::new(inputs.into_iter().map(Ok)), Some(n))
    } else {
        (Box::new(source()?.map(|r| r.map(Input::from))), None)
    };
    let bar = if std::io::stderr().is_terminal() {
        let (b, template) = match known {
            Some(n) => (ProgressBar::new(n), "{bar:40} {pos}/{len} records ({per_sec}, eta {eta})"),
            None => (ProgressBar::new_spinner(), "{spinner} {pos} records ({per_sec})"),
        };
        b.set_style(ProgressStyle::with_template(template).expect("valid template"));
        b
    } else {
        ProgressBar::hidden()
    };
    let mut events_w = events_out.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let mut history_w = history_out.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let mut late_w = late_out.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let mut engine = Engine::new(opts.engine.clone().unwrap_or_default(), pacts);
    if watch.trace {
        engine.enable_trace(TraceLimits::default());
    }
    let mut ticks = opts.ticks.iter().peekable();
    let (mut events, mut history, mut records) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut sink = |out: Vec<Output>, watch: &mut Watch<'_>| -> anyhow::Result<()> {
        let mut c = Collected::default();
        c.take(out);
        (events, history) = (events + c.events.len() as u64, history + c.history.len() as u64);
        if let Some(w) = events_w.as_mut() {
            jsonl::write_all(&mut *w, &c.events)?;
        }
        if let Some(w) = history_w.as_mut() {
            jsonl::write_all(&mut *w, &c.history)?;
        }
        if let Some(w) = late_w.as_mut() {
            jsonl::write_all(&mut *w, &c.late)?;
        }
        if let Some(r) = watch.report.as_deref_mut() {
            r.take(&c.events, &c.history);
        }
        if let Some(e) = watch.events.as_deref_mut() {
            e.extend(c.events);
        }
        Ok(())
    };
    let apply = |engine: &mut Engine, t: &RecordedTick| -> anyhow::Result<()> {
        if !engine.tick(t.at, t.wall_time) {
            bail!(
                "the tick recorded after {} inputs (at {}) changes nothing here: the input or the engine settings differ from the recorded run",
                t.after_inputs,
                driftgate_core::timefmt::rfc3339(t.at)
            );
        }
        Ok(())
    };
    for input in inputs {
        let input = match input {
            Ok(i) => i,
            Err(e) => {
                refuse(e, &mut watch)?;
                continue;
            }
        };
        // Ticks count the inputs the engine was offered, as in the live run that recorded them.
        while let Some(t) = ticks.next_if(|t| t.after_inputs <= records) {
            apply(&mut engine, t)?;
            sink(engine.drain(), &mut watch)?;
        }
        if let (Some(r), Input::Telemetry(t)) = (watch.report.as_deref_mut(), &input) {
            r.saw(t);
        }
        engine.push(input);
        sink(engine.drain(), &mut watch)?;
        records += 1;
        if records % 65_536 == 0 {
            bar.set_position(records);
        }
    }
    if records == 0 {
        bail!("{name}: no records");
    }
    for t in ticks {
        apply(&mut engine, t)?;
        sink(engine.drain(), &mut watch)?;
    }
    engine.flush();
    sink(engine.drain(), &mut watch)?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    if let Some(w) = events_w.as_mut() {
        w.flush()?;
    }
    if let Some(w) = history_w.as_mut() {
        w.flush()?;
    }
    if let Some(w) = late_w.as_mut() {
        w.flush()?;
    }
    if let Some(w) = dead_w.as_mut() {
        w.flush()?;
    }
    let late = engine.stats().late;
    Ok((ReplaySummary { records, events, history, late, dead_lettered: dead, seconds }, engine))
}
