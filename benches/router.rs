//! The router library's per-request cost: `Router::decide` against tables of 1k and 100k
//! agents, with heartbeats fresh, looking agents up in a shuffled order. At 100k the table
//! (about 15 MB) outgrows the caches and each lookup pays main-memory misses; at 1k it is
//! cache-resident. One thread: the figures are decisions per second per core.
//!
//! `cargo bench -p driftgate-router --bench router`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use driftgate_core::model::heartbeat::{EngineState, Heartbeat};
use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::model::telemetry::Risk;
use driftgate_router::{Change, Parsed, Policy, Reason, Router, TopicKind, Update, Version};
use std::hint::black_box;

const BATCH: usize = 10_000;

fn router(agents: usize) -> (Router, Vec<String>) {
    let r = Router::new(Policy::default());
    let mut ids: Vec<String> = Vec::with_capacity(agents);
    for i in 0..agents {
        let agent = format!("agent-{i:06}");
        let u = Update {
            agent: agent.clone(),
            version: Version { incarnation: 1, seq: 1 },
            source: None,
            change: Change::Event {
                scope: Scope::All,
                lane: Lane::ALL[i % 5],
                reason: Reason::Snapshot,
                since: 0,
            },
        };
        r.apply(TopicKind::Enforcement, Parsed::Update(u, Some(("in".into(), (i % 8) as i32))));
        ids.push(agent);
    }
    let now = driftgate_router::wall_micros();
    for p in 0..8 {
        let h = Heartbeat {
            kind: "heartbeat".into(),
            source_topic: "in".into(),
            source_partition: p,
            instance: "bench".into(),
            state: EngineState::Running,
            wall_time: now + 3_600_000_000,
            interval_ms: 5000,
            watermark: None,
            max_event_time: None,
            last_offset: None,
            position: None,
            committed: None,
            buffered: 0,
            idle: false,
        };
        r.apply(TopicKind::Snapshot, Parsed::Heartbeat(h));
    }
    // A fixed shuffle (xorshift), so each run looks agents up in the same order.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..ids.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids.swap(i, (x % (i as u64 + 1)) as usize);
    }
    // Allocated again in the order they are read: a gateway's agent id sits in the request it
    // has just read, not at a random place on the heap.
    let ids = ids.iter().map(|s| s.as_str().to_owned()).collect();
    (r, ids)
}

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(BATCH as u64));
    for agents in [1_000, 100_000] {
        let (r, ids) = router(agents);
        let mut at = 0usize;
        // With the wall clock read per decision, as `decide` does.
        g.bench_function(format!("decide/{agents}"), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    at = (at + 1) % ids.len();
                    let risk = if at.is_multiple_of(4) { Risk::High } else { Risk::Low };
                    black_box(r.decide(black_box(&ids[at]), risk).allow);
                }
            })
        });
        // With the clock read once per batch (a gateway can pass its request's arrival time).
        let now = driftgate_router::wall_micros();
        g.bench_function(format!("decide_at/{agents}"), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    at = (at + 1) % ids.len();
                    let risk = if at.is_multiple_of(4) { Risk::High } else { Risk::Low };
                    black_box(r.decide_at(black_box(&ids[at]), risk, now).allow);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
