//! Avro telemetry datums decoded straight into [`Telemetry`], through a plan compiled once per
//! writer schema.
//!
//! Why hand-written: the generic path (apache-avro's `Value` tree, resolved to our schema, then
//! mapped field by field) allocated a tree node per field and cost about 3 µs a record, half of
//! the pipeline's time. A [`TelemetryPlan`] reads the writer's fields in order and writes each
//! into its place in the struct, applying the Avro resolution rules our schema needs: fields
//! matched by name, unknown writer fields skipped, absent optional fields defaulted, enum
//! symbols matched by name, optional fields written bare or as a union with null in any order.
//!
//! The plan is an accelerator, never the judge. It compiles only writer schemas whose every
//! field it understands (anything else, such as a `Ref`, a decimal or a promoted type, has no
//! plan), and any datum it cannot read is handed back as [`FastReadError`], for the caller to
//! decode the generic way, which then decides between success and the exact rejection reason.
//! So the plan only has to guarantee: when it returns a `Telemetry`, the generic path returns
//! the same one. The differential tests below and the fuzz target check exactly that.

use crate::model::telemetry::{Attr, Attributes, Citations, CompactString, Model, Outcome, Risk, Telemetry};
use apache_avro::schema::{RecordField, UnionSchema};
use apache_avro::Schema;

/// Why a compiled plan gave up on a datum. Deliberately without detail: the caller decodes the
/// datum again the generic way, which names the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastReadError;

type Read<T> = Result<T, FastReadError>;

/// A zig-zag encoded value decoded: 0, 1, 2, 3, … → 0, −1, 1, −2, ….
fn unzigzag(z: u64) -> i64 {
    (z >> 1) as i64 ^ -((z & 1) as i64)
}

/// A reader over one datum with the primitive decodings of the Avro binary encoding, each as
/// strict as apache-avro's (so that nothing this accepts is rejected there).
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Read<u8> {
        let (&b, rest) = self.buf.split_first().ok_or(FastReadError)?;
        self.buf = rest;
        Ok(b)
    }

    /// A zig-zag varint of at most 10 bytes; bits beyond 64 are dropped, as apache-avro does.
    ///
    /// One byte (values −64..=63: string lengths, union branches, enum symbols, block counts)
    /// is read inline: a record holds about twenty varints, most of them one byte, and the
    /// loop cost 26 instructions each.
    #[inline]
    fn long(&mut self) -> Read<i64> {
        match self.buf.split_first() {
            Some((&b, rest)) if b & 0x80 == 0 => {
                self.buf = rest;
                Ok(unzigzag(u64::from(b)))
            }
            _ => self.long_multibyte(),
        }
    }

    /// [`Cursor::long`] past its first byte's fast path.
    #[inline(never)]
    fn long_multibyte(&mut self) -> Read<i64> {
        let mut z = 0u64;
        for j in 0..10 {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << (j * 7);
            if b & 0x80 == 0 {
                return Ok(unzigzag(z));
            }
        }
        Err(FastReadError)
    }

    fn int(&mut self) -> Read<i32> {
        i32::try_from(self.long()?).map_err(|_| FastReadError)
    }

    fn boolean(&mut self) -> Read<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FastReadError),
        }
    }

    fn fixed(&mut self, n: usize) -> Read<&'a [u8]> {
        if self.buf.len() < n {
            return Err(FastReadError);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn double(&mut self) -> Read<f64> {
        let b = self.fixed(8)?;
        Ok(f64::from_le_bytes(b.try_into().map_err(|_| FastReadError)?))
    }

    fn bytes(&mut self) -> Read<&'a [u8]> {
        let n = usize::try_from(self.long()?).map_err(|_| FastReadError)?;
        self.fixed(n)
    }

    fn str(&mut self) -> Read<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| FastReadError)
    }

    /// The item count of the next block of an array or map (0 ends it). A block with a
    /// negative count carries its size in bytes, which is read and ignored.
    fn block(&mut self) -> Read<usize> {
        let n = self.long()?;
        let n = if n < 0 {
            self.long()?;
            n.checked_neg().ok_or(FastReadError)?
        } else {
            n
        };
        let n = usize::try_from(n).map_err(|_| FastReadError)?;
        // Every item takes at least a byte unless its type is empty; a count beyond the bytes
        // left is either corrupt or such a type, which the generic path handles.
        if n > self.buf.len() {
            return Err(FastReadError);
        }
        Ok(n)
    }

    fn union_index(&mut self, branches: usize) -> Read<usize> {
        let i = usize::try_from(self.long()?).map_err(|_| FastReadError)?;
        if i < branches {
            Ok(i)
        } else {
            Err(FastReadError)
        }
    }
}

/// How to pass over a writer field the telemetry schema does not have.
#[derive(Debug, Clone)]
enum Skip {
    Null,
    Boolean,
    /// int, long and their date and time logical types.
    Varint {
        int: bool,
    },
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum(usize),
    Array(Box<Skip>),
    Map(Box<Skip>),
    Union(Vec<Skip>),
    Record(Vec<Skip>),
}

impl Skip {
    /// The skip for a writer type, or `None` for a type the plan does not handle (named
    /// references, decimals, UUIDs, durations): the schema then has no plan.
    fn compile(s: &Schema) -> Option<Skip> {
        Some(match s {
            Schema::Null => Skip::Null,
            Schema::Boolean => Skip::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Skip::Varint { int: true },
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Skip::Varint { int: false },
            Schema::Float => Skip::Float,
            Schema::Double => Skip::Double,
            Schema::Bytes => Skip::Bytes,
            Schema::String => Skip::String,
            Schema::Fixed(f) => Skip::Fixed(f.size),
            Schema::Enum(e) => Skip::Enum(e.symbols.len()),
            Schema::Array(a) => Skip::Array(Box::new(Skip::compile(&a.items)?)),
            Schema::Map(m) => Skip::Map(Box::new(Skip::compile(&m.types)?)),
            Schema::Union(u) => Skip::Union(u.variants().iter().map(Skip::compile).collect::<Option<_>>()?),
            Schema::Record(r) => {
                Skip::Record(r.fields.iter().map(|f| Skip::compile(&f.schema)).collect::<Option<_>>()?)
            }
            _ => return None,
        })
    }

    fn run(&self, c: &mut Cursor<'_>) -> Read<()> {
        match self {
            Skip::Null => {}
            Skip::Boolean => {
                c.boolean()?;
            }
            Skip::Varint { int: true } => {
                c.int()?;
            }
            Skip::Varint { int: false } => {
                c.long()?;
            }
            Skip::Float => {
                c.fixed(4)?;
            }
            Skip::Double => {
                c.fixed(8)?;
            }
            Skip::Bytes => {
                c.bytes()?;
            }
            Skip::String => {
                c.str()?;
            }
            Skip::Fixed(n) => {
                c.fixed(*n)?;
            }
            Skip::Enum(n) => {
                let i = usize::try_from(c.int()?).map_err(|_| FastReadError)?;
                if i >= *n {
                    return Err(FastReadError);
                }
            }
            Skip::Array(item) => loop {
                let n = c.block()?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    item.run(c)?;
                }
            },
            Skip::Map(value) => loop {
                let n = c.block()?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    c.str()?;
                    value.run(c)?;
                }
            },
            Skip::Union(branches) => {
                let i = c.union_index(branches.len())?;
                branches[i].run(c)?;
            }
            Skip::Record(fields) => {
                for f in fields {
                    f.run(c)?;
                }
            }
        }
        Ok(())
    }
}

/// An optional telemetry field as the writer wrote it: bare, or a union of null and the value.
#[derive(Debug, Clone, Copy)]
enum Nullable {
    Bare,
    /// The union's branch indices of null (if any) and of the value (if any).
    Union {
        null: Option<usize>,
        value: Option<usize>,
        branches: usize,
    },
}

impl Nullable {
    /// The writer's shape for an optional field whose value the writer writes as `is_value`
    /// types; `None` when a union has another branch (the generic path judges those).
    fn compile(s: &Schema, is_value: impl Fn(&Schema) -> bool) -> Option<(Nullable, &Schema)> {
        match s {
            Schema::Union(u) => {
                let (mut null, mut value, mut value_schema) = (None, None, None);
                for (i, b) in u.variants().iter().enumerate() {
                    match b {
                        Schema::Null => null = Some(i),
                        b if is_value(b) && value.is_none() => {
                            value = Some(i);
                            value_schema = Some(b);
                        }
                        _ => return None,
                    }
                }
                // A union of null alone still needs a schema to read against.
                let value_schema = value_schema.unwrap_or(&Schema::Null);
                Some((Nullable::Union { null, value, branches: u.variants().len() }, value_schema))
            }
            s if is_value(s) => Some((Nullable::Bare, s)),
            _ => None,
        }
    }

    /// Whether a value follows (`false`: the writer wrote null).
    fn present(self, c: &mut Cursor<'_>) -> Read<bool> {
        match self {
            Nullable::Bare => Ok(true),
            Nullable::Union { null, value, branches } => {
                let i = c.union_index(branches)?;
                if Some(i) == value {
                    Ok(true)
                } else if Some(i) == null {
                    Ok(false)
                } else {
                    Err(FastReadError)
                }
            }
        }
    }
}

/// Which of the telemetry's string fields a writer string goes to.
#[derive(Debug, Clone, Copy)]
enum StrField {
    EventId,
    AgentId,
    Workflow,
    Provider,
    Name,
    Version,
}

/// The value kinds of the `attributes` map, by the writer's union branch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AttrKind {
    Double,
    String,
    Boolean,
}

impl AttrKind {
    fn of(s: &Schema) -> Option<AttrKind> {
        match s {
            Schema::Double => Some(AttrKind::Double),
            Schema::String => Some(AttrKind::String),
            Schema::Boolean => Some(AttrKind::Boolean),
            _ => None,
        }
    }

    fn read(self, c: &mut Cursor<'_>) -> Read<Attr> {
        Ok(match self {
            AttrKind::Double => Attr::Num(c.double()?),
            AttrKind::String => Attr::Str(c.str()?.into()),
            AttrKind::Boolean => Attr::Bool(c.boolean()?),
        })
    }
}

/// One step of a plan: what to do with the writer's next field.
#[derive(Debug, Clone)]
enum Step {
    Skip(Skip),
    Str(StrField),
    Model(Vec<Step>),
    OccurredAt,
    Risk(Vec<Option<Risk>>),
    Outcome(Vec<Option<Outcome>>),
    Latency(Nullable),
    Citations(Nullable, Vec<Step>),
    Total,
    Verified,
    Pii(Nullable),
    ToolCalls,
    /// The writer's map values: one kind, or a union of kinds by branch.
    Attributes(Vec<AttrKind>, bool),
}

/// The fields of a telemetry record being filled; required ones start empty.
#[derive(Default)]
struct Partial {
    event_id: Option<CompactString>,
    agent_id: Option<CompactString>,
    workflow: Option<CompactString>,
    provider: Option<CompactString>,
    name: Option<CompactString>,
    version: Option<CompactString>,
    occurred_at: Option<i64>,
    risk: Option<Risk>,
    outcome: Option<Outcome>,
    latency_ms: Option<f64>,
    citations: Option<Citations>,
    total: Option<u32>,
    verified: Option<u32>,
    pii_detected: Option<bool>,
    tool_calls: Vec<CompactString>,
    /// In the writer's order, repeats included (see `Attributes::from_entries`).
    attributes: Vec<(CompactString, Attr)>,
}

impl Step {
    fn run(&self, c: &mut Cursor<'_>, p: &mut Partial) -> Read<()> {
        match self {
            Step::Skip(s) => s.run(c)?,
            Step::Str(f) => {
                let v = Some(CompactString::from(c.str()?));
                match f {
                    StrField::EventId => p.event_id = v,
                    StrField::AgentId => p.agent_id = v,
                    StrField::Workflow => p.workflow = v,
                    StrField::Provider => p.provider = v,
                    StrField::Name => p.name = v,
                    StrField::Version => p.version = v,
                }
            }
            Step::Model(steps) => {
                for s in steps {
                    s.run(c, p)?;
                }
            }
            Step::OccurredAt => p.occurred_at = Some(c.long()?),
            Step::Risk(map) => p.risk = Some(symbol(c, map)?),
            Step::Outcome(map) => p.outcome = Some(symbol(c, map)?),
            Step::Latency(n) => p.latency_ms = if n.present(c)? { Some(c.double()?) } else { None },
            Step::Citations(n, steps) => {
                p.citations = None;
                if n.present(c)? {
                    (p.total, p.verified) = (None, None);
                    for s in steps {
                        s.run(c, p)?;
                    }
                    let (Some(total), Some(verified)) = (p.total, p.verified) else {
                        return Err(FastReadError);
                    };
                    p.citations = Some(Citations { total, verified });
                }
            }
            // `Citations` holds counts as `u32` from an Avro `int`; a negative one is left to
            // the generic path, which rejects it.
            Step::Total => p.total = Some(u32::try_from(c.int()?).map_err(|_| FastReadError)?),
            Step::Verified => p.verified = Some(u32::try_from(c.int()?).map_err(|_| FastReadError)?),
            Step::Pii(n) => p.pii_detected = if n.present(c)? { Some(c.boolean()?) } else { None },
            Step::ToolCalls => {
                p.tool_calls.clear();
                loop {
                    let n = c.block()?;
                    if n == 0 {
                        break;
                    }
                    p.tool_calls.reserve(n);
                    for _ in 0..n {
                        p.tool_calls.push(CompactString::from(c.str()?));
                    }
                }
            }
            Step::Attributes(kinds, union) => {
                p.attributes.clear();
                loop {
                    let n = c.block()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        let key = CompactString::from(c.str()?);
                        let kind = if *union { kinds[c.union_index(kinds.len())?] } else { kinds[0] };
                        p.attributes.push((key, kind.read(c)?));
                    }
                }
            }
        }
        Ok(())
    }
}

fn symbol<T: Copy>(c: &mut Cursor<'_>, map: &[Option<T>]) -> Read<T> {
    let i = usize::try_from(c.int()?).map_err(|_| FastReadError)?;
    map.get(i).copied().flatten().ok_or(FastReadError)
}

/// A writer record's steps: each field by name onto `target`, the rest skipped. `None` when a
/// field of ours is absent from the writer and has no default (`required`), or a type is not
/// one the plan reads.
fn record_steps(
    fields: &[RecordField],
    required: &[&str],
    target: impl Fn(&str, &Schema) -> Option<Option<Step>>,
) -> Option<Vec<Step>> {
    if required.iter().any(|r| !fields.iter().any(|f| f.name == *r)) {
        return None;
    }
    fields
        .iter()
        .map(|f| match target(&f.name, &f.schema) {
            // A field of ours whose writer type the plan cannot read.
            Some(None) => None,
            Some(Some(step)) => Some(step),
            None => Skip::compile(&f.schema).map(Step::Skip),
        })
        .collect()
}

/// A telemetry reader compiled for one writer schema.
#[derive(Debug, Clone)]
pub struct TelemetryPlan {
    steps: Vec<Step>,
}

impl TelemetryPlan {
    /// The plan for datums written with `writer`, or `None` when the writer schema has a shape
    /// the plan does not read (then every datum takes the generic path).
    pub fn compile(writer: &Schema) -> Option<TelemetryPlan> {
        let Schema::Record(r) = writer else { return None };
        let required = ["event_id", "agent_id", "workflow", "model", "occurred_at", "risk", "outcome"];
        let steps = record_steps(&r.fields, &required, |name, s| {
            Some(match name {
                "event_id" => string_step(s, StrField::EventId),
                "agent_id" => string_step(s, StrField::AgentId),
                "workflow" => string_step(s, StrField::Workflow),
                "model" => model_steps(s),
                "occurred_at" => {
                    matches!(s, Schema::Long | Schema::TimestampMicros).then_some(Step::OccurredAt)
                }
                "risk" => enum_symbols(s, &Risk::NAMED).map(Step::Risk),
                "outcome" => enum_symbols(s, &Outcome::NAMED).map(Step::Outcome),
                "latency_ms" => {
                    Nullable::compile(s, |b| matches!(b, Schema::Double)).map(|(n, _)| Step::Latency(n))
                }
                "citations" => {
                    Nullable::compile(s, |b| matches!(b, Schema::Record(_))).and_then(|(n, rec)| {
                        let steps = match rec {
                            Schema::Record(c) => citation_steps(&c.fields)?,
                            // A union of null alone: no record ever follows.
                            _ => Vec::new(),
                        };
                        Some(Step::Citations(n, steps))
                    })
                }
                "pii_detected" => {
                    Nullable::compile(s, |b| matches!(b, Schema::Boolean)).map(|(n, _)| Step::Pii(n))
                }
                "tool_calls" => match s {
                    Schema::Array(a) if matches!(*a.items, Schema::String) => Some(Step::ToolCalls),
                    _ => None,
                },
                "attributes" => match s {
                    Schema::Map(m) => attribute_kinds(&m.types),
                    _ => None,
                },
                _ => return None,
            })
        })?;
        Some(TelemetryPlan { steps })
    }

    /// Reads one datum (without the Confluent header) and checks its values. Any error hands
    /// the datum back to the generic path.
    pub fn read(&self, datum: &[u8]) -> Result<Telemetry, FastReadError> {
        let mut c = Cursor { buf: datum };
        let mut p = Partial::default();
        for s in &self.steps {
            s.run(&mut c, &mut p)?;
        }
        if !c.buf.is_empty() {
            return Err(FastReadError);
        }
        let t = Telemetry {
            event_id: p.event_id.ok_or(FastReadError)?,
            agent_id: p.agent_id.ok_or(FastReadError)?,
            workflow: p.workflow.ok_or(FastReadError)?,
            model: Model {
                provider: p.provider.ok_or(FastReadError)?,
                name: p.name.ok_or(FastReadError)?,
                version: p.version.ok_or(FastReadError)?,
            },
            occurred_at: p.occurred_at.ok_or(FastReadError)?,
            risk: p.risk.ok_or(FastReadError)?,
            outcome: p.outcome.ok_or(FastReadError)?,
            latency_ms: p.latency_ms,
            citations: p.citations,
            pii_detected: p.pii_detected,
            tool_calls: p.tool_calls,
            // A repeated key keeps its last value, as the generic map does.
            attributes: Attributes::from_entries(p.attributes),
        };
        t.validate().map_err(|_| FastReadError)?;
        Ok(t)
    }
}

/// The reference the plan is checked against: apache-avro's generic decoding, as the
/// pipeline falls back to it (the writer's datum resolved to our schema unless the two are
/// the same, then mapped and checked). Slow; for tests and fuzzing.
#[doc(hidden)]
pub fn decode_generic(writer: &Schema, datum: &[u8]) -> Result<Telemetry, String> {
    let ours = crate::codec::schemas::telemetry();
    let reader = if writer.canonical_form() == ours.canonical_form() { None } else { Some(ours) };
    let mut rest = datum;
    let v = crate::codec::avro_json::datum_reader(writer, reader)
        .and_then(|r| Ok(r.read_value(&mut rest)?))
        .map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes".into());
    }
    Telemetry::from_avro(v).map_err(|e| e.to_string())
}

fn string_step(s: &Schema, f: StrField) -> Option<Step> {
    matches!(s, Schema::String).then_some(Step::Str(f))
}

fn enum_symbols<T: Copy>(s: &Schema, ours: &[(&str, T)]) -> Option<Vec<Option<T>>> {
    let Schema::Enum(e) = s else { return None };
    Some(e.symbols.iter().map(|sym| ours.iter().find(|(n, _)| n == sym).map(|(_, v)| *v)).collect())
}

fn model_steps(s: &Schema) -> Option<Step> {
    let Schema::Record(r) = s else { return None };
    let steps = record_steps(&r.fields, &["provider", "name", "version"], |name, s| {
        Some(match name {
            "provider" => string_step(s, StrField::Provider),
            "name" => string_step(s, StrField::Name),
            "version" => string_step(s, StrField::Version),
            _ => return None,
        })
    })?;
    Some(Step::Model(steps))
}

fn citation_steps(fields: &[RecordField]) -> Option<Vec<Step>> {
    record_steps(fields, &["total", "verified"], |name, s| {
        let int = matches!(s, Schema::Int);
        Some(match name {
            "total" => int.then_some(Step::Total),
            "verified" => int.then_some(Step::Verified),
            _ => return None,
        })
    })
}

fn attribute_kinds(values: &Schema) -> Option<Step> {
    match values {
        Schema::Union(u) => union_kinds(u).map(|k| Step::Attributes(k, true)),
        s => AttrKind::of(s).map(|k| Step::Attributes(vec![k], false)),
    }
}

fn union_kinds(u: &UnionSchema) -> Option<Vec<AttrKind>> {
    u.variants().iter().map(AttrKind::of).collect()
}

#[cfg(test)]
mod tests;
