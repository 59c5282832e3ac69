//! Offline pipeline throughput: telemetry through the engine core with five clauses per
//! event (a drift clause of each kind and three limit tests), on the simulated fleet.
//! Decoding is measured separately (`decode/*`, with the generic Avro path as the peer of the
//! compiled one), so the two figures add up to a replay. `changelog/*` encodes and decodes the
//! fleet's agent records after the run, as snapshots and restores do.

/// The binary's allocator (see `driftgate/src/main.rs`), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use driftgate::cli::demo::Fleet;
use driftgate::config::InputFormat;
use driftgate::kafka::decode::{confluent_frame, Decoder, LastReaders};
use driftgate::kafka::registry::StaticSchemas;
use driftgate_core::codec::changelog::{decode_agent, encode_agent};
use driftgate_core::engine::{Engine, EngineConfig, Input, TraceLimits};
use driftgate_core::model::telemetry::Telemetry;
use driftgate_core::pact::parse_pact;
use std::sync::Arc;

/// Five clauses that apply to every agent and every event.
const FIVE: &str = include_str!("pacts/bench-five.yaml");

/// The same with the two drift clauses segmented (by one field and by two).
const FIVE_SEGMENTED: &str = include_str!("pacts/bench-five-segmented.yaml");

const N: usize = 200_000;

/// Boxed, as a decoder hands records to the engine.
#[allow(clippy::vec_box)]
fn telemetry() -> Vec<Box<Telemetry>> {
    Fleet::new(7, 2, false)
        .filter_map(|i| match i {
            Input::Telemetry(mut t) => {
                // Every event feeds every clause.
                t.citations
                    .get_or_insert(driftgate_core::model::telemetry::Citations { total: 1, verified: 1 });
                Some(t)
            }
            _ => None,
        })
        .take(N)
        .collect()
}

fn engine(c: &mut Criterion) {
    let events = telemetry();
    let pact = parse_pact(FIVE, "bench-five.yaml").expect("valid bench pact");
    let segmented = parse_pact(FIVE_SEGMENTED, "bench-five-segmented.yaml").expect("valid bench pact");
    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events.len() as u64));
    // `five_clauses_traced` collects the detector traces of `replay --report`; the ratio of
    // the two is the report's cost, and `five_clauses` that of the hooks when tracing is off.
    // `five_clauses_retired` hands each event back once processed (`Engine::retire_into`),
    // to be freed outside the measurement, as the Kafka pipeline frees them on its release
    // thread: the difference from `five_clauses` is what freeing 200k inputs, allocated
    // long before and so out of cache, costs the engine's thread.
    // `five_clauses_segmented` keys two of the clauses by segment: against `five_clauses`,
    // what finding a segmented state costs (and learning a baseline per segment).
    for (name, trace, retire, pact) in [
        ("five_clauses", false, false, &pact),
        ("five_clauses_retired", false, true, &pact),
        ("five_clauses_traced", true, false, &pact),
        ("five_clauses_segmented", false, true, &segmented),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || events.clone(),
                |events| {
                    let mut e = Engine::new(EngineConfig::default(), vec![pact.clone()]);
                    if trace {
                        e.enable_trace(TraceLimits::default());
                    }
                    if retire {
                        e.retire_into(Some(Vec::with_capacity(events.len())));
                    }
                    for t in events {
                        e.push(Input::Telemetry(t));
                        std::hint::black_box(e.drain());
                    }
                    e.flush();
                    // Dropped by criterion after the measurement.
                    (e.stats().telemetry, e.retire_into(None))
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();

    let json: Vec<Vec<u8>> =
        events.iter().take(50_000).map(|t| serde_json::to_vec(t).expect("serialisable")).collect();
    let schema = driftgate_core::codec::schemas::telemetry();
    let avro: Vec<Vec<u8>> = events
        .iter()
        .take(50_000)
        .map(|t| driftgate_core::codec::avro_json::write_datum(schema, t.to_avro()).expect("encodes"))
        .collect();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(json.len() as u64));
    g.sample_size(10);
    g.bench_function("json", |b| {
        b.iter(|| json.iter().map(|j| Telemetry::from_json(j).is_ok() as u64).sum::<u64>())
    });
    // The serde_json peer it replaced (and still falls back to).
    g.bench_function("json_reference", |b| {
        b.iter(|| json.iter().map(|j| Telemetry::from_json_reference(j).is_ok() as u64).sum::<u64>())
    });
    // The pipeline's path: a plan compiled for the writer schema (here ours).
    let plan =
        driftgate_core::codec::telemetry_avro::TelemetryPlan::compile(schema).expect("our schema compiles");
    g.bench_function("avro", |b| b.iter(|| avro.iter().map(|a| plan.read(a).is_ok() as u64).sum::<u64>()));
    // The pipeline's decoder as a record reaches it: Confluent framing, the writer schema by
    // id, the plan, the value checks and the box.
    let framed: Vec<Vec<u8>> = avro.iter().map(|a| confluent_frame(7, a)).collect();
    let decoder = Decoder::new(
        InputFormat::Avro,
        Some(Arc::new(StaticSchemas::new([(7, schema.clone())]))),
        3_600_000_000,
    );
    g.bench_function("avro_framed", |b| {
        b.iter(|| {
            let mut last = LastReaders::default();
            framed
                .iter()
                .map(|a| decoder.decode_with(&mut last, Some(a), None).map(Box::new).is_ok() as u64)
                .sum::<u64>()
        })
    });
    // The generic peer it replaced (and still falls back to): apache-avro's `Value` tree.
    g.bench_function("avro_generic", |b| {
        b.iter(|| {
            avro.iter()
                .map(|a| {
                    let v = driftgate_core::codec::avro_json::read_datum(schema, None, a).expect("decodes");
                    Telemetry::from_avro(v).is_ok() as u64
                })
                .sum::<u64>()
        })
    });
    g.finish();

    // The changelog's agent records, as a snapshot writes them and a restore reads them: the
    // fleet's agents after the five clauses' run (every one with a quantile bound's histogram).
    let mut e = Engine::new(EngineConfig::default(), vec![pact.clone()]);
    for t in events.iter().cloned() {
        e.push(Input::Telemetry(t));
        drop(e.drain());
    }
    e.flush();
    let states: Vec<Vec<u8>> = e.agents().map(|(_, a)| encode_agent(a)).collect();
    let mut g = c.benchmark_group("changelog");
    g.throughput(Throughput::Elements(states.len() as u64));
    g.sample_size(10);
    g.bench_function("encode", |b| b.iter(|| e.agents().map(|(_, a)| encode_agent(a).len()).sum::<usize>()));
    g.bench_function("decode", |b| {
        b.iter(|| states.iter().map(|s| decode_agent(s).map_or(0, |a| a.seq)).sum::<u64>())
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
