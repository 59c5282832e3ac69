//! Measures the realised false-alarm rate of the calibrated `auto` detectors on simulated
//! in-control streams, and the factors that refine the residual table of `src/calibration.rs`.
//!
//! `cargo run --release -p driftgate-detectors --example calibrate [-- --quick]`
//!
//! Each scenario runs in-control data, resetting the detector (fresh baseline) after every
//! alarm as `driftgate eval` does, and counts alarms per monitored event. For each kind and α,
//! multiply the table's entry by the geometric mean over the scenarios of realised /
//! (target × α); the summary prints it per kind over all α. Fixed seeds: the output is
//! reproducible.

use driftgate_detectors::{
    AnyDetector, AutoConfig, Detector, DetectorSpec, MetricKind, Observation, CALIBRATION_TARGET,
};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal, Poisson, StudentT};
use rand_pcg::Pcg64;

#[derive(Clone)]
enum Source {
    Bern(f64),
    Normal,
    LogNormal,
    StudentT,
    Poisson,
    Cat(Vec<f64>),
}

const NAMES: [&str; 16] =
    ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12", "c13", "c14", "c15"];

fn kind(s: &Source) -> MetricKind {
    match s {
        Source::Bern(_) => MetricKind::Bernoulli,
        Source::Cat(_) => MetricKind::Categorical,
        _ => MetricKind::Real,
    }
}

/// (alarms, monitored events) until `target_alarms` alarms or `max_events` events.
fn run(src: &Source, alpha: f64, target_alarms: u64, max_events: u64, seed: u64) -> (u64, u64) {
    let cfg = AutoConfig { false_alarm_rate: alpha, ..AutoConfig::default() };
    let mut det: AnyDetector = DetectorSpec::Auto(cfg).build(kind(src)).expect("valid config");
    let mut rng = Pcg64::seed_from_u64(seed);
    let (norm, logn, t, po) = (
        Normal::new(0.0, 1.0).unwrap(),
        LogNormal::new(6.0, 1.2).unwrap(),
        StudentT::new(1.5).unwrap(),
        Poisson::new(3.0).unwrap(),
    );
    let cdf: Vec<f64> = match src {
        Source::Cat(p) => p
            .iter()
            .scan(0.0, |a, p| {
                *a += p;
                Some(*a)
            })
            .collect(),
        _ => Vec::new(),
    };
    let (mut alarms, mut monitored) = (0u64, 0u64);
    for _ in 0..max_events {
        let ready = det.view().ready;
        let obs = match src {
            Source::Bern(p) => Observation::Bool(rng.random::<f64>() < *p),
            Source::Normal => Observation::Real(norm.sample(&mut rng)),
            Source::LogNormal => Observation::Real(logn.sample(&mut rng)),
            Source::StudentT => Observation::Real(t.sample(&mut rng)),
            Source::Poisson => Observation::Real(po.sample(&mut rng)),
            Source::Cat(_) => {
                let u: f64 = rng.random();
                Observation::Category(NAMES[cdf.iter().position(|c| u < *c).unwrap_or(cdf.len() - 1)])
            }
        };
        if let Some(alarm) = det.update(obs).expect("valid observation") {
            if std::env::var_os("CALIBRATE_DEBUG").is_some() {
                eprintln!(
                    "alarm at {} ref {} members {:?} winner_kappa {:?}",
                    alarm.index,
                    alarm.n_reference,
                    alarm.params.get("members"),
                    alarm.params.get("winner_kappa")
                );
            }
            alarms += 1;
            det.reset();
            if alarms >= target_alarms {
                break;
            }
        }
        monitored += ready as u64;
    }
    (alarms, monitored)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let alphas: Vec<f64> = if quick { vec![1e-4] } else { vec![1e-3, 1e-4, 1e-5] };
    let scenarios: Vec<(&str, Source)> = vec![
        ("bernoulli p=0.5", Source::Bern(0.5)),
        ("bernoulli p=0.9", Source::Bern(0.9)),
        ("bernoulli p=0.03", Source::Bern(0.03)),
        ("bernoulli p=0.997", Source::Bern(0.997)),
        ("real normal", Source::Normal),
        ("real lognormal", Source::LogNormal),
        ("real student-t(1.5)", Source::StudentT),
        ("real poisson(3)", Source::Poisson),
        ("categorical bench-5", Source::Cat(vec![0.40, 0.25, 0.15, 0.12, 0.08])),
        ("categorical 3", Source::Cat(vec![0.5, 0.3, 0.2])),
        (
            "categorical 12 rare",
            Source::Cat({
                let mut p = vec![0.2, 0.15, 0.12, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03];
                p.push(1.0 - p.iter().sum::<f64>());
                p
            }),
        ),
    ];
    let target_alarms = if quick { 150 } else { 400 };
    let mut jobs = Vec::new();
    for (name, src) in &scenarios {
        if let Some(o) = &only {
            if !name.contains(o.as_str()) {
                continue;
            }
        }
        for &alpha in &alphas {
            jobs.push((name.to_string(), src.clone(), alpha));
        }
    }
    let results = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..std::thread::available_parallelism().map_or(2, |n| n.get()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, src, alpha)) = jobs.get(i) else { break };
                let max_events = (target_alarms as f64 / alpha * 3.0) as u64;
                let (a, m) = run(src, *alpha, target_alarms, max_events, 1000 + i as u64);
                let ratio = a as f64 / (m as f64 * alpha);
                println!(
                    "{name:24} α={alpha:.0e}  {a:5} alarms / {m:>11} monitored = {ratio:.3} α  (± {:.3})",
                    ratio / (a.max(1) as f64).sqrt()
                );
                results.lock().unwrap().push((kind(src), ratio));
            });
        }
    });
    let results = results.into_inner().unwrap();
    println!("\nrealised / (target α) by kind, geometric mean; multiply the table's entries by it:");
    for k in [MetricKind::Bernoulli, MetricKind::Real, MetricKind::Categorical] {
        let r: Vec<f64> =
            results.iter().filter(|(kk, _)| *kk == k).map(|(_, r)| r / CALIBRATION_TARGET).collect();
        if r.is_empty() {
            continue;
        }
        let g = (r.iter().map(|x| x.ln()).sum::<f64>() / r.len() as f64).exp();
        println!("  {:12} {g:.3}", k.as_str());
    }
}
