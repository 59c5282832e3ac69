//! `driftgate replay`: recorded telemetry (JSONL or an Avro object container file) through
//! the engine core, with optional overrides, writing enforcement events and history.

use crate::engine::{Engine, EngineConfig, Input, Output};
use crate::history::write_jsonl;
use crate::input::open_maybe_gzip;
use crate::overrides::OverrideRequest;
use crate::pact::Pact;
use crate::telemetry::{Telemetry, TELEMETRY_AVSC};
use anyhow::{bail, Context};
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
        let reader_schema = apache_avro::Schema::parse_str(TELEMETRY_AVSC).expect("bundled schema is valid");
        let f = std::fs::File::open(path)?;
        let reader = apache_avro::Reader::builder(BufReader::new(f)).reader_schema(&reader_schema).build().context("not an Avro object container file")?;
        let mut out = Vec::new();
        for (i, v) in reader.enumerate() {
            let v = v.with_context(|| format!("{}: record {}", path.display(), i + 1))?;
            out.push(Telemetry::from_avro(v).with_context(|| format!("{}: record {}", path.display(), i + 1))?);
        }
        return Ok(out);
    }
    let r = BufReader::new(open_maybe_gzip(path)?);
    let mut out = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(Telemetry::from_json(line.as_bytes()).with_context(|| format!("{}: line {}", path.display(), i + 1))?);
    }
    Ok(out)
}

/// Writes telemetry as an Avro object container file.
pub fn write_avro(path: &Path, records: &[Telemetry]) -> anyhow::Result<()> {
    let schema = apache_avro::Schema::parse_str(TELEMETRY_AVSC).expect("bundled schema is valid");
    let f = BufWriter::new(std::fs::File::create(path)?);
    let mut w = apache_avro::Writer::with_codec(&schema, f, apache_avro::Codec::Null)?;
    for t in records {
        w.append_value(t.to_avro())?;
    }
    w.flush()?;
    Ok(())
}

/// Replays telemetry (and overrides) through a fresh engine.
pub fn replay(
    pacts: Vec<Pact>,
    input: &Path,
    overrides: Option<&Path>,
    events_out: Option<&Path>,
    history_out: Option<&Path>,
    late_out: Option<&Path>,
) -> anyhow::Result<ReplaySummary> {
    let telemetry = read_telemetry(input)?;
    let mut inputs: Vec<Input> = telemetry.into_iter().map(Input::Telemetry).collect();
    if let Some(p) = overrides {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let o: OverrideRequest = serde_json::from_str(line).with_context(|| format!("{}: line {}", p.display(), i + 1))?;
            inputs.push(Input::Override(o));
        }
        // Overrides join the telemetry in event-time order (stable for equal times).
        inputs.sort_by_key(|i| i.time());
    }
    if inputs.is_empty() {
        bail!("{}: no records", input.display());
    }
    let records = inputs.len() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(records);
        b.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} records ({per_sec}, eta {eta})").expect("valid template"));
        b
    } else {
        ProgressBar::hidden()
    };
    let mut events_w = events_out.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let mut history_w = history_out.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let mut late_w = late_out.map(|p| std::fs::File::create(p).map(BufWriter::new)).transpose()?;
    let mut engine = Engine::new(EngineConfig::default(), pacts);
    let (mut events, mut history) = (0u64, 0u64);
    let start = Instant::now();
    let mut sink = |out: Vec<Output>| -> anyhow::Result<()> {
        for o in out {
            match o {
                Output::Enforcement(e) => {
                    events += 1;
                    if let Some(w) = events_w.as_mut() {
                        serde_json::to_writer(&mut *w, &e)?;
                        w.write_all(b"\n")?;
                    }
                }
                Output::History(r) => {
                    history += 1;
                    if let Some(w) = history_w.as_mut() {
                        write_jsonl(&mut *w, std::slice::from_ref(&r))?;
                    }
                }
                Output::Late(l) => {
                    if let Some(w) = late_w.as_mut() {
                        serde_json::to_writer(&mut *w, &l)?;
                        w.write_all(b"\n")?;
                    }
                }
                Output::Panic(_) => {}
            }
        }
        Ok(())
    };
    for (i, input) in inputs.into_iter().enumerate() {
        engine.push(input);
        sink(engine.drain())?;
        if i % 65_536 == 0 {
            bar.set_position(i as u64);
        }
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
