//! Bytes of keyed state per agent × clause, by detector kind, after 5,000 events per agent
//! (`-- --events N` for another number: 20,000 completes every baseline, as in a fleet that has
//! run a while), each minus that of agents whose pact has no clause for them:
//! - the changelog encoding (MessagePack behind a version byte);
//! - the heap a running engine holds per agent, as the marginal cost of an agent: the heap
//!   live with 400 agents minus that with 200, over 200 (`-- --agents N` for N and 2N). So it
//!   is what the keys hold, with
//!   the slack of their vectors' capacities, and leaves out what does not grow with the fleet
//!   (a real clause's banks, shared by its keys; the overshoot cache, bounded per thread).
//!   Counted by this binary's allocator: requested sizes, without the allocator's own
//!   overhead, so a slight underestimate;
//! - the heap the same agents hold once restored, before their next event (their `auto`
//!   banks are derived again only then).
//!
//! Each agent has its own event stream, so keys learn different baselines and build banks
//! of their own, as a fleet's do. Keys with equal baselines share a bernoulli bank, and a
//! larger fleet holds fewer distinct baselines per agent: `--agents 2000` shows that share
//! as a large fleet pays it. `--only TEXT` measures the kinds whose name contains it.
//!
//! `cargo bench -p driftgate --bench state_size [-- --events N] [--agents N] [--only TEXT]`

use driftgate_core::codec::changelog::{decode_agent, encode_agent};
use driftgate_core::engine::{Engine, EngineConfig};
use driftgate_core::model::telemetry::{Citations, Model, Outcome, Risk, Telemetry};
use driftgate_core::pact::parse_pact;
use std::alloc::{GlobalAlloc, Layout, System};
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

/// The smaller fleet by default: the figures are the difference per agent between it and
/// one twice its size.
const AGENTS: u64 = 200;

/// Heap bytes live now.
fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Bytes for a whole fleet, or per agent: changelog, heap live, heap restored before the
/// next event.
#[derive(Clone, Copy)]
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
        "auto (categorical, 12)",
        "{ kind: categorical, value: 'tool_calls[1]' }",
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

fn event(agent: u64, i: u64) -> Telemetry {
    let h = (agent << 32 | i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let r = ((h ^ h >> 29).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 11) as f64 / (1u64 << 53) as f64;
    Telemetry {
        event_id: format!("e-{agent}-{i}").into(),
        agent_id: format!("agent-{agent}").into(),
        workflow: "w".into(),
        model: Model { provider: "p".into(), name: "m".into(), version: "v1".into() },
        occurred_at: 1_772_409_600_000_000 + i as i64 * 10_000_000 + agent as i64,
        risk: Risk::Low,
        outcome: if r < 0.01 { Outcome::Refused } else { Outcome::Ok },
        latency_ms: Some(500.0 + 1000.0 * r),
        citations: Some(Citations { total: 1, verified: (r < 0.95) as u32 }),
        pii_detected: Some(false),
        // The second call is one of 12 (above 8 categories the auto bank tilts one against
        // the rest).
        tool_calls: vec![
            ["search", "fetch", "calc", "answer"][(i % 4) as usize].into(),
            format!("t{}", (h >> 40) % 12).into(),
        ],
        attributes: Default::default(),
    }
}

/// Per agent, between fleets of `agents` and twice as many.
fn agent_sizes(pact: &str, events: u64, agents: u64) -> Sizes {
    let pact = parse_pact(pact, "bench.yaml").unwrap_or_else(|e| panic!("{e}"));
    // Allocates what is per thread (the overshoot cache) before either fleet is measured.
    fleet_sizes(&pact, 1, events);
    let [small, large] = [agents, 2 * agents].map(|agents| fleet_sizes(&pact, agents, events));
    let per = |f: fn(&Sizes) -> usize| (f(&large).saturating_sub(f(&small))) / agents as usize;
    Sizes { changelog: per(|s| s.changelog), live: per(|s| s.live), restored: per(|s| s.restored) }
}

/// The whole fleet's.
fn fleet_sizes(pact: &driftgate_core::pact::Pact, agents: u64, events: u64) -> Sizes {
    let before = live();
    let mut e = Engine::new(EngineConfig::default(), vec![pact.clone()]);
    for i in 0..events {
        for a in 0..agents {
            e.push(event(a, i).into());
            drop(e.drain());
        }
    }
    e.flush();
    drop(e.drain());
    let running = live() - before;
    let stored: Vec<Vec<u8>> =
        (0..agents).map(|a| encode_agent(e.agent(&format!("agent-{a}")).expect("agent"))).collect();
    drop(e);
    let before = live();
    let restored: Vec<_> = stored.iter().map(|b| decode_agent(b).expect("decodes")).collect();
    let restored_bytes = live() - before;
    drop(restored);
    Sizes {
        changelog: stored.iter().map(Vec::len).sum(),
        live: running.max(0) as usize,
        restored: restored_bytes.max(0) as usize,
    }
}

/// The value after `flag` on the command line (cargo bench also passes `--bench`).
fn arg(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == flag)?;
    Some(args.get(i + 1).cloned().unwrap_or_else(|| panic!("{flag} takes a value")))
}

/// A positive number after `flag`, or `default`.
fn positive(flag: &str, default: u64) -> u64 {
    match arg(flag) {
        None => default,
        Some(v) => match v.parse() {
            Ok(n) if n > 0 => n,
            _ => panic!("{flag} takes a positive number, not {v:?}"),
        },
    }
}

fn main() {
    let events = positive("--events", 5_000);
    let agents = positive("--agents", AGENTS);
    let only = arg("--only").unwrap_or_default();
    let base = agent_sizes("pact: none\nversion: 1\napplies_to: { agents: [\"nobody\"] }\nclauses:\n  - id: c\n    metric: { kind: bernoulli, value: pii_detected }\n    test: { kind: limit, zero_tolerance: true }\n    severity: low\n    consequence: watch\n", events, agents);
    println!(
        "bytes per agent x clause after {events} events each, between fleets of {} and {} agents (agent overhead excluded: changelog {} B, memory {} B)",
        agents, 2 * agents,
        base.changelog, base.live
    );
    println!("  {:<24} {:>9} {:>9} {:>9}", "", "changelog", "memory", "restored");
    for (name, metric, test) in KINDS.iter().filter(|(name, _, _)| name.contains(only.as_str())) {
        let pact = format!("pact: p\nversion: 1\napplies_to: {{ agents: [\"*\"] }}\nclauses:\n  - id: c\n    metric: {metric}\n    test: {test}\n    severity: low\n    consequence: watch\n");
        let s = agent_sizes(&pact, events, agents);
        println!(
            "  {name:<24} {:>7} B {:>7} B {:>7} B",
            s.changelog.saturating_sub(base.changelog),
            s.live.saturating_sub(base.live),
            s.restored.saturating_sub(base.restored)
        );
    }
}
