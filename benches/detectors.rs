//! Updates per second for each detector (criterion). Run: `cargo bench -p driftgate-detectors`.
//!
//! Each benchmark feeds a pre-generated in-control stream (fixed seed) to a detector that has
//! already learned its baseline, so the figure is the steady-state monitoring cost.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use driftgate_detectors::{AnyDetector, Detector, DetectorSpec, MetricKind, Observation};
use std::hint::black_box;

const N: usize = 100_000;

/// A deterministic pseudo-random stream (xorshift), so the bench needs no RNG crate.
fn uniforms(seed: u64) -> impl Iterator<Item = f64> {
    let mut s = seed;
    std::iter::repeat_with(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    })
}

fn warmed(kind: MetricKind, name: &str, data: &[Observation<'static>]) -> AnyDetector {
    let mut det = DetectorSpec::from_name(name, 1e-5).unwrap().build(kind).unwrap();
    for o in data.iter().cycle().take(20_000) {
        if det.update(*o).unwrap().is_some() {
            det.restart();
        }
    }
    det
}

fn bench(c: &mut Criterion) {
    const CATS: [&str; 5] = ["search", "code_exec", "browse", "calculator", "none"];
    let bern: Vec<Observation> = uniforms(1).take(N).map(|u| Observation::Bool(u < 0.9)).collect();
    let real: Vec<Observation> =
        uniforms(2).take(N).map(|u| Observation::Real(-(1.0 - u).ln() * 100.0)).collect();
    let cat: Vec<Observation> =
        uniforms(3).take(N).map(|u| Observation::Category(CATS[(u * 5.0) as usize % 5])).collect();
    // Above 8 categories the auto bank tilts one category against the rest.
    const MANY: [&str; 20] = [
        "c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12", "c13", "c14", "c15",
        "c16", "c17", "c18", "c19",
    ];
    let many: Vec<Observation> =
        uniforms(5).take(N).map(|u| Observation::Category(MANY[(u * 20.0) as usize % 20])).collect();
    let mut g = c.benchmark_group("update");
    g.throughput(Throughput::Elements(N as u64));
    for (label, kind, data, names) in [
        ("bernoulli", MetricKind::Bernoulli, &bern, &["auto", "page-hinkley", "adwin", "chi2", "psi"][..]),
        ("real", MetricKind::Real, &real, &["auto", "page-hinkley", "adwin", "ks", "psi"][..]),
        ("categorical", MetricKind::Categorical, &cat, &["auto", "chi2", "psi"][..]),
        ("categorical-20", MetricKind::Categorical, &many, &["auto"][..]),
    ] {
        for name in names {
            let proto = warmed(kind, name, data);
            g.bench_with_input(BenchmarkId::new(label, name), data, |b, data| {
                b.iter_batched(
                    || proto.clone(),
                    |mut det| {
                        for o in data.iter() {
                            if det.update(*o).unwrap().is_some() {
                                det.restart();
                            }
                        }
                        black_box(det.view())
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    // The typed fast path, without the enum dispatch.
    let bools: Vec<bool> = uniforms(4).take(N).map(|u| u < 0.9).collect();
    g.bench_function("bernoulli/auto-typed", |b| {
        let mut det = driftgate_detectors::AutoBernoulli::new(Default::default()).unwrap();
        for x in bools.iter().cycle().take(20_000) {
            det.update_bool(*x);
        }
        b.iter(|| {
            for x in &bools {
                if det.update_bool(*x).is_some() {
                    det.restart();
                }
            }
            black_box(det.view())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
