//! The decision sidecar under load, and block → 403 through a real NGINX, on Apache Kafka.
//!
//! - `load`: `driftgate route` with 10,000 agents in its table (from snapshots) and a running
//!   engine's heartbeats, under `wrk` on loopback: the auth endpoint directly, and the same
//!   through NGINX (`deploy/nginx/nginx.conf`, `auth_request`) in front of a tiny upstream.
//!   Agents rotate per request; a quarter of the requests are high-risk.
//! - `block`: the time from a critical-breach record produced to the first 403 NGINX serves
//!   for that agent, polling every millisecond, over `--incidents` agents.
//!
//! ```text
//! cargo bench -p driftgate --bench route_e2e -- [load] [block] [--incidents N] [--seconds S]
//!     [--connections 8,32]
//! ```
//! It starts Apache Kafka, NGINX and `wrk` from the tool cache: run
//! `./scripts/install-tools.sh` first.

// The test harness's peers; the bench uses only part of them.
#[allow(dead_code)]
#[path = "../tests/it/support/contract.rs"]
mod contract;
#[allow(dead_code)]
#[path = "../tests/it/support/kafka.rs"]
mod kafka;
#[allow(dead_code)]
#[path = "../tests/it/support/nginx.rs"]
mod nginx;
#[allow(dead_code)]
#[path = "../tests/it/support/scrape.rs"]
mod scrape;
/// The paths the harness's modules use among themselves.
mod support {
    pub(crate) use super::{contract, kafka, scrape};
}

use driftgate_core::model::lane::Lane;
use driftgate_core::model::router_view::AgentSnapshot;
use driftgate_core::model::telemetry::{Model, Outcome, Risk, Telemetry};
use hdrhistogram::Histogram;
use kafka::{free_port, produce, produce_now, wait_for, Broker, Engine, Topics};
use nginx::{route_config, Nginx, Upstream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const AGENTS: usize = 10_000;
const PACT: &str = "pact: route\nversion: 1\napplies_to: { agents: [\"*\"] }\nclauses:\n  - id: no-pii\n    metric: { kind: bernoulli, value: pii_detected }\n    test: { kind: limit, zero_tolerance: true }\n    severity: critical\n    consequence: block\n";

struct Args {
    load: bool,
    block: bool,
    incidents: usize,
    seconds: u64,
    connections: Vec<u32>,
}

fn args() -> Args {
    let mut a = Args { load: false, block: false, incidents: 50, seconds: 10, connections: vec![8, 32] };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "load" => a.load = true,
            "block" => a.block = true,
            "--incidents" => a.incidents = it.next().and_then(|v| v.parse().ok()).expect("--incidents N"),
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S"),
            "--connections" => {
                a.connections = it
                    .next()
                    .map(|v| v.split(',').filter_map(|c| c.parse().ok()).collect())
                    .expect("--connections 8,32")
            }
            _ => {} // cargo bench passes --bench
        }
    }
    if !a.load && !a.block {
        a.load = true;
        a.block = true;
    }
    a
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros() as i64
}

fn tel(agent: &str, i: u64, pii: bool) -> Vec<u8> {
    serde_json::to_vec(&Telemetry {
        event_id: format!("{agent}-{i}").into(),
        agent_id: agent.into(),
        workflow: format!("wf-{agent}").into(),
        model: Model { provider: "acme".into(), name: "m".into(), version: "v1".into() },
        occurred_at: now_us(),
        risk: Risk::Low,
        outcome: Outcome::Ok,
        latency_ms: Some(10.0),
        citations: None,
        pii_detected: Some(pii),
        tool_calls: vec![],
        attributes: Default::default(),
    })
    .expect("telemetry")
}

fn engine_config(dir: &Path, b: &Broker, t: &Topics) -> PathBuf {
    std::fs::write(dir.join("pact.yaml"), PACT).expect("pact");
    let cfg = format!(
        "pacts = [\"pact.yaml\"]\n[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\ninput_topics = [\"{}\"]\nformat = \"json\"\ncommit_interval = \"200ms\"\n{}[kafka.consumer_properties]\n\"fetch.wait.max.ms\" = \"10\"\n[kafka.producer_properties]\n\"linger.ms\" = \"0\"\n[engine]\nheartbeat_interval = \"500ms\"\n[http]\nlisten = \"\"\n",
        b.bootstrap(),
        t.group,
        t.input,
        t.toml()
    );
    let p = dir.join("engine.toml");
    std::fs::write(&p, cfg).expect("config");
    p
}

/// `driftgate route` on `port`, once it is ready.
fn sidecar(dir: &Path, b: &Broker, t: &Topics, port: u16) -> Engine {
    let cfg = route_config(dir, b, t, &format!("127.0.0.1:{port}"), "");
    let s = Engine::spawn("route", &cfg, "warn");
    wait_for(60, "the sidecar to be ready", || {
        let r = ureq::get(&format!("http://127.0.0.1:{port}/readyz")).call().ok()?;
        (r.status() == 200).then_some(())
    });
    s
}

fn wrk() -> PathBuf {
    [contract::tools_dir().join("bin/wrk"), PathBuf::from("wrk")]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
        })
        .expect("wrk is not installed: run ./scripts/install-tools.sh")
}

/// Runs wrk against `url` with rotating agents; returns (requests/s, p50 ms, p99 ms).
fn load(dir: &Path, url: &str, seconds: u64, connections: u32) -> (f64, f64, f64) {
    let script = dir.join("rotate.lua");
    std::fs::write(
        &script,
        format!(
            "local n = 0\nrequest = function()\n  n = n + 1\n  local risk = \"low\"\n  if n % 4 == 0 then risk = \"high\" end\n  return wrk.format(\"GET\", nil, {{[\"x-driftgate-agent\"] = string.format(\"agent-%05d\", n % {AGENTS}), [\"x-driftgate-risk\"] = risk}})\nend\n"
        ),
    )
    .expect("script");
    let out = Command::new(wrk())
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ms = |label: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"));
        let v = line.split_whitespace().nth(1).expect("value");
        let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let x: f64 = num.parse().expect("number");
        match unit {
            "us" => x / 1000.0,
            "ms" => x,
            "s" => x * 1000.0,
            _ => panic!("unit {unit} in {line}"),
        }
    };
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in:\n{text}"));
    (rps, ms("50%"), ms("99%"))
}

fn main() {
    let a = args();
    let b = Broker::start();
    let t = Topics::create(&b, "route-bench", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    // The table: a snapshot per agent, lanes cycling, as the engine would have written them.
    let p = b.producer();
    let lanes = Lane::ALL;
    let snaps: Vec<(String, Vec<u8>, i64, i32)> = (0..AGENTS)
        .map(|i| {
            let agent = format!("agent-{i:05}");
            let s = AgentSnapshot {
                agent_id: agent.clone(),
                seq: 1,
                incarnation: 1,
                lane: lanes[i % 5],
                high_risk_lane: lanes[(i + 1) % 5],
                workflow: "w".into(),
                model_version: "v1".into(),
                model_change: None,
                scope_changes: vec![],
                last_seen: 0,
                clauses: vec![],
                overrides: vec![],
            };
            (agent, serde_json::to_vec(&s).expect("snapshot"), now_us() / 1000, 0)
        })
        .collect();
    produce(&p, &t.snapshot, &snaps);
    let engine = Engine::start_logging(&engine_config(dir.path(), &b, &t), "warn");
    let port = free_port();
    let _side = sidecar(dir.path(), &b, &t, port);
    let upstream = Upstream::start();
    let nginx = Nginx::start(dir.path(), port, upstream.port());
    // Heartbeats flowing: the decisions below are fresh ones.
    wait_for(60, "a heartbeat at the sidecar", || {
        let mut r =
            ureq::get(&format!("http://127.0.0.1:{port}/v1/decision?agent=agent-00001")).call().ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
        (v["stale"] == false).then_some(())
    });
    println!("decision sidecar on this machine (2 cores shared by wrk, the sidecar, NGINX, an idle engine and the broker)");
    if a.load {
        println!(
            "  {:<52} {:>12} {:>8} {:>8}",
            "wrk -t1, rotating 10k agents, 1/4 high-risk", "requests/s", "p50 ms", "p99 ms"
        );
        for c in &a.connections {
            let direct = load(dir.path(), &format!("http://127.0.0.1:{port}/v1/auth"), a.seconds, *c);
            let behind = load(dir.path(), &format!("http://127.0.0.1:{}/", nginx.port()), a.seconds, *c);
            for (name, (rps, p50, p99)) in
                [("sidecar /v1/auth directly", direct), ("through NGINX auth_request + upstream", behind)]
            {
                let name = format!("{name}, {c} connections");
                println!("  {name:<52} {rps:>12.0} {p50:>8.2} {p99:>8.2}");
            }
        }
    }
    if a.block {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        let mut side_h = Histogram::<u64>::new(3).expect("histogram");
        let http = ureq::Agent::new_with_defaults();
        for i in 0..a.incidents {
            let agent = format!("pii-{i:03}");
            let produced = Instant::now();
            produce_now(&p, &t.input, &agent, &tel(&agent, 0, true), now_us() / 1000);
            let deadline = produced + Duration::from_secs(30);
            // The sidecar's own view first (its JSON endpoint), then NGINX's answer.
            loop {
                let url = format!("http://127.0.0.1:{port}/v1/decision?agent={agent}");
                let body = http.get(&url).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok());
                if body.is_some_and(|b| b.contains("\"block\"")) {
                    let _ = side_h.record(produced.elapsed().as_micros() as u64);
                    break;
                }
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            loop {
                if nginx.get(&agent, "low").0 == 403 {
                    let _ = h.record(produced.elapsed().as_micros() as u64);
                    break;
                }
                if Instant::now() > deadline {
                    println!("  no 403 for {agent} within 30 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let q = |x: f64| side_h.value_at_quantile(x) as f64 / 1000.0;
        println!(
            "  critical breach produced → the sidecar decides block: p50 {:.1} ms, p99 {:.1} ms ({} incidents)",
            q(0.5),
            q(0.99),
            side_h.len()
        );
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        println!(
            "  critical breach produced → first 403 from NGINX (polled once the sidecar has it): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} incidents)",
            q(0.5),
            q(0.99),
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
    drop(engine);
}
