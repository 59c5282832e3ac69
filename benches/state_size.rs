//! Bytes of keyed state per agent × clause, by detector kind, after 5,000 events, each minus
//! that of an agent whose pact has no clause for it:
//! - the changelog encoding (MessagePack behind a version byte);
//! - the heap the agent holds in a running engine (a deep copy, counted by this binary's
//!   allocator; copies allocate exact capacities, and the allocator's own overhead is not
//!   counted, so this is a slight underestimate);
//! - the heap it holds once restored, before its next event (its `auto` banks are derived
//!   again only then).
//!
//! `cargo bench -p driftgate --bench state_size`

use driftgate_core::codec::changelog::{decode_agent, encode_agent};
use driftgate_core::engine::{Engine, EngineConfig, Input};
use driftgate_core::model::telemetry::{Citations, Model, Outcome, Risk, Telemetry};
use driftgate_core::pact::parse_pact;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the bytes live (requested sizes, without the allocator's
/// own overhead).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes a value holds once made (temporaries of its making excluded).
fn heap_of<T>(make: impl FnOnce() -> T) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    let v = std::hint::black_box(make());
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    drop(v);
    bytes.max(0) as usize
}

/// One agent's state after 5,000 events: (changelog bytes, heap bytes live, heap bytes
/// restored before its next event).
struct Sizes {
    changelog: usize,
    live: usize,
    restored: usize,
}

const KINDS: &[(&str, &str, &str)] = &[
    (
        "auto (bernoulli)",
        "{ kind: bernoulli, value: citations.verified > 0 }",
        "{ kind: drift, detector: auto, false_alarm_rate: 1.0e-6 }",
    ),
    (
        "auto (real)",
        "{ kind: real, value: latency_ms }",
        "{ kind: drift, detector: auto, false_alarm_rate: 1.0e-6 }",
    ),
    (
        "auto (categorical)",
        "{ kind: categorical, value: 'tool_calls[0]' }",
        "{ kind: drift, detector: auto, false_alarm_rate: 1.0e-6 }",
    ),
    (
        "cusum (bernoulli)",
        "{ kind: bernoulli, value: citations.verified > 0 }",
        "{ kind: drift, detector: cusum, p0: 0.95, p1: 0.8, false_alarm_rate: 1.0e-6 }",
    ),
    ("page-hinkley (real)", "{ kind: real, value: latency_ms }", "{ kind: drift, detector: page-hinkley }"),
    ("adwin (real)", "{ kind: real, value: latency_ms }", "{ kind: drift, detector: adwin }"),
    ("ks (real)", "{ kind: real, value: latency_ms }", "{ kind: drift, detector: ks }"),
    (
        "chi2 (categorical)",
        "{ kind: categorical, value: 'tool_calls[0]' }",
        "{ kind: drift, detector: chi2 }",
    ),
    ("psi (real)", "{ kind: real, value: latency_ms }", "{ kind: drift, detector: psi }"),
    (
        "limit: rate",
        "{ kind: bernoulli, value: outcome == \"refused\" }",
        "{ kind: limit, alpha: 1.0e-3, rate: { max: 0.02 } }",
    ),
    (
        "limit: quantile",
        "{ kind: real, value: latency_ms }",
        "{ kind: limit, alpha: 1.0e-3, quantile: { q: 0.95, max: 3000 } }",
    ),
    (
        "limit: zero tolerance",
        "{ kind: bernoulli, value: pii_detected }",
        "{ kind: limit, zero_tolerance: true }",
    ),
];

fn event(i: u64) -> Telemetry {
    let r = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    Telemetry {
        event_id: format!("e-{i}").into(),
        agent_id: "agent-1".into(),
        workflow: "w".into(),
        model: Model { provider: "p".into(), name: "m".into(), version: "v1".into() },
        occurred_at: 1_772_409_600_000_000 + i as i64 * 10_000_000,
        risk: Risk::Low,
        outcome: if r < 0.01 { Outcome::Refused } else { Outcome::Ok },
        latency_ms: Some(500.0 + 1000.0 * r),
        citations: Some(Citations { total: 1, verified: (r < 0.95) as u32 }),
        pii_detected: Some(false),
        tool_calls: vec![["search", "fetch", "calc", "answer"][(i % 4) as usize].into()],
        attributes: BTreeMap::new(),
    }
}

fn agent_sizes(pact: &str) -> Sizes {
    let pact = parse_pact(pact, "bench.yaml").unwrap_or_else(|e| panic!("{e}"));
    let mut e = Engine::new(EngineConfig::default(), vec![pact]);
    for i in 0..5_000 {
        e.push(Input::Telemetry(event(i)));
        e.drain();
    }
    e.flush();
    let agent = e.agent("agent-1").expect("agent");
    let bytes = encode_agent(agent);
    let inline = std::mem::size_of_val(agent);
    Sizes {
        changelog: bytes.len(),
        live: inline + heap_of(|| agent.clone()),
        restored: inline + heap_of(|| decode_agent(&bytes).expect("decodes")),
    }
}

fn main() {
    let base = agent_sizes("pact: none\nversion: 1\napplies_to: { agents: [\"nobody\"] }\nclauses:\n  - id: c\n    metric: { kind: bernoulli, value: pii_detected }\n    test: { kind: limit, zero_tolerance: true }\n    severity: low\n    consequence: watch\n");
    println!(
        "bytes per agent x clause after 5,000 events (agent overhead excluded: changelog {} B, memory {} B)",
        base.changelog, base.live
    );
    println!("  {:<24} {:>9} {:>9} {:>9}", "", "changelog", "memory", "restored");
    for (name, metric, test) in KINDS {
        let pact = format!("pact: p\nversion: 1\napplies_to: {{ agents: [\"*\"] }}\nclauses:\n  - id: c\n    metric: {metric}\n    test: {test}\n    severity: low\n    consequence: watch\n");
        let s = agent_sizes(&pact);
        println!(
            "  {name:<24} {:>7} B {:>7} B {:>7} B",
            s.changelog.saturating_sub(base.changelog),
            s.live.saturating_sub(base.live),
            s.restored.saturating_sub(base.restored)
        );
    }
}
