//! `driftgate replay`: recorded telemetry (JSONL or an Avro object container file) through
//! the engine core, with optional overrides, writing enforcement events and history.

use crate::cli::input::open_maybe_gzip;
use anyhow::{bail, Context};
use driftgate_core::codec::jsonl;
use driftgate_core::engine::{Collected, Engine, EngineConfig, Input, Output};
use driftgate_core::model::history::{Record, RecordKind};
use driftgate_core::model::overrides::OverrideRequest;
use driftgate_core::model::pact_change::PactChange;
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

/// Reads every telemetry record of a file (JSONL, optionally gzip, or Avro OCF).
pub fn read_telemetry(path: &Path) -> anyhow::Result<Vec<Telemetry>> {
    if is_avro(path)? {
        let reader_schema = driftgate_core::codec::schemas::telemetry();
        let f = std::fs::File::open(path)?;
        let reader = apache_avro::Reader::builder(BufReader::new(f))
            .reader_schema(reader_schema)
            .build()
            .context("not an Avro object container file")?;
        let mut out = Vec::new();
        for (i, v) in reader.enumerate() {
            let v = v.with_context(|| format!("{}: record {}", path.display(), i + 1))?;
            out.push(
                Telemetry::from_avro(v).with_context(|| format!("{}: record {}", path.display(), i + 1))?,
            );
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for_each_line(path, |line, at| {
        out.push(Telemetry::from_json(line.as_bytes()).with_context(|| at.to_string())?);
        Ok(())
    })?;
    Ok(out)
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

/// Replays telemetry (and overrides, and recorded ticks) through a fresh engine.
pub fn replay_with(
    pacts: Vec<Pact>,
    input: &Path,
    opts: &ReplayOptions<'_>,
) -> anyhow::Result<ReplaySummary> {
    let ReplayOptions { overrides, pact_changes, events_out, history_out, late_out, .. } = *opts;
    let telemetry = read_telemetry(input)?;
    let mut inputs: Vec<Input> = telemetry.into_iter().map(Input::Telemetry).collect();
    if let Some(p) = overrides {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let o: OverrideRequest =
                serde_json::from_str(line).with_context(|| format!("{}: line {}", p.display(), i + 1))?;
            inputs.push(Input::Override(o));
        }
    }
    if let Some(p) = pact_changes {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let c: PactChange =
                serde_json::from_str(line).with_context(|| format!("{}: line {}", p.display(), i + 1))?;
            inputs.push(Input::Pact(c));
        }
    }
    if overrides.is_some() || pact_changes.is_some() {
        // They join the telemetry in event-time order (stable for equal times).
        inputs.sort_by_key(|i| i.time());
    }
    if inputs.is_empty() {
        bail!("{}: no records", input.display());
    }
    let records = inputs.len() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(records);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} records ({per_sec}, eta {eta})")
                .expect("valid template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut events_w = events_out.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let mut history_w = history_out.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let mut late_w = late_out.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let mut engine = Engine::new(opts.engine.clone().unwrap_or_default(), pacts);
    let mut ticks = opts.ticks.iter().peekable();
    let (mut events, mut history) = (0u64, 0u64);
    let start = Instant::now();
    let mut sink = |out: Vec<Output>| -> anyhow::Result<()> {
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
    for (i, input) in inputs.into_iter().enumerate() {
        while let Some(t) = ticks.next_if(|t| t.after_inputs <= i as u64) {
            apply(&mut engine, t)?;
            sink(engine.drain())?;
        }
        engine.push(input);
        sink(engine.drain())?;
        if i % 65_536 == 0 {
            bar.set_position(i as u64);
        }
    }
    for t in ticks {
        apply(&mut engine, t)?;
        sink(engine.drain())?;
    }
    engine.flush();
    sink(engine.drain())?;
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
    Ok(ReplaySummary { records, events, history, late: engine.stats().late, seconds })
}
