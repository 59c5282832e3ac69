//! The router library's per-request cost: `Router::decide` against a table of 100k agents,
//! with heartbeats fresh, looking agents up in a shuffled order (so the lookups miss the
//! cache as a gateway's would). One thread: the figure is decisions per second per core.
//!
//! `cargo bench -p driftgate-router --bench router`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use driftgate_core::model::heartbeat::{EngineState, Heartbeat};
use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::model::telemetry::Risk;
use driftgate_router::{Change, Parsed, Policy, Reason, Router, TopicKind, Update, Version};
use std::hint::black_box;

const AGENTS: usize = 100_000;
const BATCH: usize = 10_000;

fn router() -> (Router, Vec<String>) {
    let r = Router::new(Policy::default());
    let mut ids = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
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
    (r, ids)
}

fn decide(c: &mut Criterion) {
    let (r, ids) = router();
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut at = 0usize;
    g.bench_function("decide", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                at = (at + 1) % ids.len();
                let risk = if at.is_multiple_of(4) { Risk::High } else { Risk::Low };
                black_box(r.decide(black_box(&ids[at]), risk).allow);
            }
        })
    });
    g.bench_function("decide_at", |b| {
        let now = driftgate_router::wall_micros();
        b.iter(|| {
            for _ in 0..BATCH {
                at = (at + 1) % ids.len();
                black_box(r.decide_at(black_box(&ids[at]), Risk::Low, now).allow);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
