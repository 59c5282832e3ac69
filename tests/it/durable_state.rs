//! Durable state on Apache Kafka: a 200k-record scenario with several drift
//! incidents, run once without interruption and once with the engine SIGKILLed at five
//! points (fixed seed) and restarted each time in the same consumer group. After router-style dedup by `seq`, the
//! effects and every agent's final lanes must be identical.

use crate::support::kafka;
use crate::support::proxy;
use crate::support::scenario;
use crate::support::scrape;

use kafka::{produce, rand_suffix, wait_for, Broker, Engine, Topics};
use scenario::{assert_same_effects, final_lanes, records, Mix, PACTS};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// These tests run one at a time: each drives a broker and up to two engines, and on two
/// cores running them together starves heartbeats into spurious rebalances.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(super) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
pub(super) const PARTITIONS: i32 = 2;

/// A router's view of an enforcement topic, and the duplicates it dropped.
pub(super) type Effects = (std::collections::BTreeMap<(String, u64), String>, usize);

pub(super) fn config(dir: &Path, b: &Broker, input: &str, r: &Topics, group: &str) -> PathBuf {
    config_listening(dir, b, input, r, group, "")
}

/// The same, with the HTTP API (and `/metrics`) on `listen`.
pub(super) fn config_listening(
    dir: &Path,
    b: &Broker,
    input: &str,
    r: &Topics,
    group: &str,
    listen: &str,
) -> PathBuf {
    std::fs::write(dir.join("pacts.yaml"), PACTS).unwrap();
    // Small fetches slow the engine to ~10k records/s, so that the kills land mid-stream.
    let text = format!(
        r#"
pacts = ["pacts.yaml"]
[kafka]
brokers = "{}"
group_id = "{group}"
input_topics = ["{input}"]
format = "json"
commit_interval = "200ms"
startup_timeout = "10s"
{}[kafka.properties]
"session.timeout.ms" = "6000"
"max.partition.fetch.bytes" = "65536"
"fetch.wait.max.ms" = "20"
[http]
listen = "{listen}"
"#,
        b.bootstrap(),
        r.toml()
    );
    let p = dir.join(format!("{group}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs one engine on `cfg` until `group` has committed `total` records of `t`'s input, stops
/// it cleanly, and returns what a router applies from its enforcement topic.
pub(super) fn run_to_end(
    b: &Broker,
    cfg: &Path,
    t: &Topics,
    group: &str,
    partitions: i32,
    total: i64,
) -> Effects {
    let engine = Engine::start(cfg);
    wait_for(120, "the uninterrupted run to finish", || {
        (committed_n(b, group, &t.input, partitions) >= total).then_some(())
    });
    assert!(engine.stop().success());
    dedup(b, &t.enforcement)
}

/// What a router applies from `topic` (see [`scenario::dedup`]).
pub(super) fn dedup(b: &Broker, topic: &str) -> Effects {
    scenario::dedup(b.read_all(topic).into_iter().map(|r| String::from_utf8(r.value.unwrap()).unwrap()))
}

pub(super) fn committed(b: &Broker, group: &str, input: &str) -> i64 {
    committed_n(b, group, input, PARTITIONS)
}

pub(super) fn committed_n(b: &Broker, group: &str, input: &str, partitions: i32) -> i64 {
    b.committed(group, input, partitions).iter().map(|c| c.unwrap_or(0)).sum()
}

/// Input records an engine counted as skipped (`driftgate_input_offset_gaps_total`; the
/// input topic has neither compaction nor transactions, so any gap is a record the broker
/// skipped), read from its `/metrics` on `port`.
fn offset_gaps(port: u16) -> f64 {
    let samples = scrape_port(port);
    assert!(
        samples.keys().any(|k| k.starts_with("driftgate_input_offset_gaps_total")),
        "the gap counter is exposed"
    );
    scrape::sum(&samples, "driftgate_input_offset_gaps_total", &[])
}

pub(super) fn scrape_port(port: u16) -> std::collections::BTreeMap<String, f64> {
    let http = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let text = http
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .expect("/metrics answers")
        .body_mut()
        .read_to_string()
        .unwrap();
    scrape::samples(&text)
}

/// An engine's rebalance log lines: each assignment and revocation, with the partitions it
/// holds after it (`total=`).
pub(super) fn rebalances(e: &Engine) -> Vec<String> {
    e.log_text()
        .lines()
        .filter(|l| {
            (l.contains("partitions assigned") || l.contains("partitions revoked")) && l.contains("total=")
        })
        .map(String::from)
        .collect()
}

/// How many partitions an engine's last rebalance left it with.
pub(super) fn held(e: &Engine) -> Option<u32> {
    let last = rebalances(e).pop()?;
    last.split("total=").nth(1)?.split_whitespace().next()?.parse().ok()
}

#[test]
fn five_sigkills_give_the_same_effects_as_an_uninterrupted_run() {
    let _serial = serial();
    let b = Broker::shared();
    let clean = Topics::create(b, "clean", PARTITIONS);
    let input = clean.input.clone();
    let records = records(PARTITIONS);
    let total = records.len() as i64;
    assert_eq!(total, 200_000);
    produce(&b.producer(), &input, &records);
    let dir = tempfile::tempdir().unwrap();

    // Uninterrupted.
    let group = format!("clean-{}", rand_suffix());
    let cfg = config(dir.path(), b, &input, &clean, &group);
    let (want, clean_dups) = run_to_end(b, &cfg, &clean, &group, PARTITIONS, total);
    assert_eq!(clean_dups, 0, "an uninterrupted run emits no duplicates");
    assert_same_effects(&want, &scenario::offline_effects(PARTITIONS), 0);
    let incidents = want
        .values()
        .filter(|t| t.contains("\"drift_verified\"") || t.contains("\"zero_tolerance_breach\""))
        .count();
    assert!(incidents >= 6 * 2, "the scenario's incidents were detected (two scopes each): {incidents}");

    // The same records on a second input topic, fed in stages: at five fixed-seed points
    // the engine has committed everything so far, the next records arrive, and it is
    // SIGKILLed a fixed-seed moment later, in the middle of them. Each restart joins the
    // same group, as a restarted pod would: its partitions come back once the killed
    // member's session (6 s here) has expired. Start position and state come from the
    // changelog.
    let crash = Topics::create(b, "crash", PARTITIONS);
    let input2 = crash.input.clone();
    let mut rng = Mix(7);
    let mut points: Vec<usize> =
        (0..5).map(|_| (total as f64 * (0.05 + 0.85 * rng.unit())) as usize).collect();
    points.sort();
    let producer = b.producer();
    let mut produced = 0;
    let mut restored = 0;
    let mut gaps = 0.0;
    let group = format!("crash-{}", rand_suffix());
    let mut ready = Vec::new();
    for point in points.iter() {
        let upto = (*point).max(produced);
        produce(&producer, &input2, &records[produced..upto]);
        produced = upto;
        let port = kafka::free_port();
        let started = Instant::now();
        let mut engine = Engine::start(&config_listening(
            dir.path(),
            b,
            &input2,
            &crash,
            &group,
            &format!("127.0.0.1:{port}"),
        ));
        wait_for(60, "partitions assigned", || {
            engine.log_text().contains("partitions assigned").then_some(())
        });
        ready.push(started.elapsed().as_secs_f64());
        wait_for(120, &format!("everything up to {produced} committed"), || {
            (committed(b, &group, &input2) >= produced as i64).then_some(())
        });
        if engine.log_text().contains("state restored") {
            restored += 1;
        }
        gaps += offset_gaps(port);
        let burst = (produced + 10_000).min(records.len());
        produce(&producer, &input2, &records[produced..burst]);
        produced = burst;
        // Not a synchronisation: the kill lands at a fixed-seed moment in the burst.
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 400));
        engine.child.kill().unwrap();
        engine.child.wait().unwrap();
        drop(engine);
    }
    produce(&producer, &input2, &records[produced..]);
    let port = kafka::free_port();
    let engine = Engine::start(&config_listening(
        dir.path(),
        b,
        &input2,
        &crash,
        &group,
        &format!("127.0.0.1:{port}"),
    ));
    wait_for(120, "the last restart to finish", || (committed(b, &group, &input2) >= total).then_some(()));
    let log = engine.log_text();
    assert!(log.contains("state restored"), "{log}");
    gaps += offset_gaps(port);
    assert!(engine.stop().success());
    assert_eq!(restored, 4, "every restart restored its state");
    assert_eq!(gaps, 0.0, "no engine saw an offset gap: the broker delivered every record after each resume");

    let (got, dups) = dedup(b, &crash.enforcement);
    assert_same_effects(&got, &want, dups);
    assert_eq!(final_lanes(&got), final_lanes(&want));
    eprintln!(
        "crash equivalence: {} effects, {dups} duplicates dropped by seq over 5 SIGKILLs at {points:?}; \
         time to partitions assigned after each start in the same group (s): {ready:.1?}",
        got.len()
    );
}

/// Instances joining and leaving one group on a 4-partition input, with the production
/// assignor (`cooperative-sticky`): a second instance joins, is SIGKILLed mid-run, and once
/// its session expires the survivor takes its partitions over with their state restored from
/// the changelog; a third joins, then leaves cleanly (SIGTERM), handing its partitions back.
/// The effects equal a single instance's.
#[test]
fn instances_join_die_and_leave_and_the_effects_equal_a_single_instances() {
    let _serial = serial();
    let parts = 4;
    let b = Broker::shared();
    let single = Topics::create(b, "single", parts);
    let input = single.input.clone();
    let records = records(parts);
    let total = records.len() as i64;
    let dir = tempfile::tempdir().unwrap();

    // Reference: one instance.
    produce(&b.producer(), &input, &records);
    let group = format!("single-{}", rand_suffix());
    let cfg = config(dir.path(), b, &input, &single, &group);
    let (want, _) = run_to_end(b, &cfg, &single, &group, parts, total);
    assert!(!want.is_empty());
    assert_same_effects(&want, &scenario::offline_effects(parts), 0);

    // The instances, on a second copy of the input fed in thirds.
    let pair = Topics::create(b, "pair", parts);
    let input2 = pair.input.clone();
    let group = format!("pair-{}", rand_suffix());
    let cfg = config(dir.path(), b, &input2, &pair, &group);
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::copy(&cfg, &to).unwrap();
        to
    };
    let (cfg_b, cfg_c) = (copy("second.toml"), copy("third.toml"));
    let third = records.len() / 3;
    let committed_at_least = |n: usize, what: &str| {
        wait_for(120, what, || (committed_n(b, &group, &input2, parts) >= n as i64).then_some(()))
    };
    produce(&b.producer(), &input2, &records[..third]);
    let first = Engine::start(&cfg);
    wait_for(60, "the first instance to hold every partition", || (held(&first) == Some(4)).then_some(()));
    // A join: the partitions are shared.
    let second = Engine::start(&cfg_b);
    wait_for(60, "two instances to share the partitions", || {
        (held(&first) == Some(2) && held(&second) == Some(2)).then_some(())
    });
    committed_at_least(third, "the first third to be committed");
    // A SIGKILL: the survivor takes over once the dead member's session expires.
    let mut second = second;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    produce(&b.producer(), &input2, &records[third..2 * third]);
    wait_for(60, "the survivor to hold every partition", || (held(&first) == Some(4)).then_some(()));
    committed_at_least(2 * third, "the second third to be committed");
    // Another join, then a clean leave.
    let joined = Engine::start(&cfg_c);
    wait_for(60, "two instances to share the partitions again", || {
        (held(&first) == Some(2) && held(&joined) == Some(2)).then_some(())
    });
    produce(&b.producer(), &input2, &records[2 * third..]);
    assert!(joined.stop().success());
    wait_for(60, "the partitions handed back", || (held(&first) == Some(4)).then_some(()));
    committed_at_least(records.len(), "the survivor to finish");
    let log = first.log_text();
    assert!(log.contains("state restored"), "the survivor restored the partitions it took over:\n{log}");
    assert!(first.stop().success());

    let (got, dups) = dedup(b, &pair.enforcement);
    assert_eq!(
        got, want,
        "joins, a SIGKILL and a leave give the single instance's effects ({dups} duplicates dropped)"
    );
    assert_eq!(final_lanes(&got), final_lanes(&want));
}

/// Static membership (`group.instance.id`): a member SIGKILLed and restarted within its
/// session gets its own partitions back without a rebalance; the other member's partitions
/// never move. The effects equal the offline ground truth.
#[test]
fn a_static_member_restarted_within_its_session_takes_its_partitions_back_and_nothing_moves() {
    let _serial = serial();
    let parts = 4;
    let b = Broker::shared();
    let t = Topics::create(b, "static", parts);
    let records = records(parts);
    let half = records.len() / 2;
    let dir = tempfile::tempdir().unwrap();
    let group = format!("static-{}", rand_suffix());
    let base = std::fs::read_to_string(config(dir.path(), b, &t.input, &t, &group)).unwrap();
    let member = |id: &str| {
        let p = dir.path().join(format!("{id}.toml"));
        let props = format!("[kafka.consumer_properties]\n\"group.instance.id\" = \"{id}\"\n[http]");
        std::fs::write(&p, base.replace("[http]", &props)).unwrap();
        p
    };
    let (cfg_a, cfg_b) = (member("a"), member("b"));
    produce(&b.producer(), &t.input, &records[..half]);
    let first = Engine::start(&cfg_a);
    let second = Engine::start(&cfg_b);
    wait_for(60, "two static members to share the partitions", || {
        (held(&first) == Some(2) && held(&second) == Some(2)).then_some(())
    });
    wait_for(120, "the first half to be committed", || {
        (committed_n(b, &group, &t.input, parts) >= half as i64).then_some(())
    });
    let moves = rebalances(&first);
    let mut second = second;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let started = Instant::now();
    let second = Engine::start(&cfg_b);
    wait_for(30, "the restarted member to hold its partitions", || (held(&second) == Some(2)).then_some(()));
    let ready = started.elapsed();
    produce(&b.producer(), &t.input, &records[half..]);
    wait_for(120, "everything to be committed", || {
        (committed_n(b, &group, &t.input, parts) >= records.len() as i64).then_some(())
    });
    assert_eq!(rebalances(&first), moves, "the other member's partitions never moved");
    assert!(second.log_text().contains("state restored"), "the restarted member restored its state");
    assert!(first.stop().success() && second.stop().success());
    let (got, dups) = dedup(b, &t.enforcement);
    assert_same_effects(&got, &scenario::offline_effects(parts), dups);
    eprintln!(
        "static membership: a SIGKILLed member held its partitions again {ready:.1?} after its restart"
    );
}

/// A network cut between the engine and the broker mid-run (a TCP proxy in front of the
/// broker). `/readyz` reports the
/// outage; after the cut heals the engine resumes by itself, and the effects equal an
/// uninterrupted run's.
#[test]
fn a_network_cut_is_reported_and_survived() {
    let _serial = serial();
    let (broker_port, proxy_port) = (kafka::free_port(), kafka::free_port());
    let b = Broker::start_advertising(broker_port, proxy_port);
    let proxy = proxy::Proxy::start(proxy_port, broker_port);
    b.ready();
    let clean = Topics::create(&b, "clean", PARTITIONS);
    let input = clean.input.clone();
    let records = records(PARTITIONS);
    let total = records.len() as i64;
    let dir = tempfile::tempdir().unwrap();

    produce(&b.producer(), &input, &records);
    let group = format!("clean-{}", rand_suffix());
    let cfg = config(dir.path(), &b, &input, &clean, &group);
    let (want, _) = run_to_end(&b, &cfg, &clean, &group, PARTITIONS, total);
    assert!(!want.is_empty());
    assert_same_effects(&want, &scenario::offline_effects(PARTITIONS), 0);

    let cut = Topics::create(&b, "cut", PARTITIONS);
    let input2 = cut.input.clone();
    let group = format!("cut-{}", rand_suffix());
    let port = kafka::free_port();
    let cfg = config(dir.path(), &b, &input2, &cut, &group);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    let text = text.replace(
        "\"fetch.wait.max.ms\" = \"20\"",
        "\"fetch.wait.max.ms\" = \"20\"\n\"statistics.interval.ms\" = \"500\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let half = records.len() / 2;
    produce(&b.producer(), &input2, &records[..half]);
    let engine = Engine::start(&cfg);
    let http = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    let ready = || {
        http.get(&format!("http://127.0.0.1:{port}/readyz")).call().map(|r| r.status().as_u16()).unwrap_or(0)
    };
    wait_for(120, "ready", || (ready() == 200).then_some(()));
    wait_for(120, "the first half committed", || {
        (committed(&b, &group, &input2) >= half as i64).then_some(())
    });

    proxy.cut();
    wait_for(60, "/readyz to report the outage", || (ready() == 503).then_some(()));
    // The cut must outlast the group session (6 s), so the group forgets the member: the
    // window is part of the scenario, and readiness is checked all through it.
    let cut_at = std::time::Instant::now();
    while cut_at.elapsed() < Duration::from_secs(8) {
        assert_eq!(ready(), 503, "unready all through the cut ({:?} in)", cut_at.elapsed());
        std::thread::sleep(Duration::from_millis(250));
    }
    proxy.heal();
    wait_for(120, "ready again after the cut heals", || (ready() == 200).then_some(()));
    produce(&b.producer(), &input2, &records[half..]);
    wait_for(120, "the rest committed", || (committed(&b, &group, &input2) >= total).then_some(()));
    // The outage is counted, not only logged: librdkafka's transport errors.
    let s = scrape_port(port);
    let client_errors = scrape::sum(&s, "driftgate_errors_total", &[r#"stage="client""#]);
    assert!(client_errors >= 1.0, "errors counted during the cut: {client_errors}");
    let log = engine.log_text();
    assert!(engine.stop().success(), "{log}");

    let (got, dups) = dedup(&b, &cut.enforcement);
    assert_eq!(got, want, "after the cut, the same effects ({dups} duplicates dropped)");
    assert_eq!(final_lanes(&got), final_lanes(&want));
}

/// The broker itself restarted mid-run (stopped cleanly and started again on its log
/// directory, as an upgrade would). The engine rides it out and resumes by itself, with no
/// input record skipped and the offline ground truth's effects.
#[test]
fn a_broker_restart_mid_run_is_survived() {
    let _serial = serial();
    let mut b = Broker::start();
    let t = Topics::create(&b, "restart", PARTITIONS);
    let records = records(PARTITIONS);
    let half = records.len() / 2;
    let dir = tempfile::tempdir().unwrap();
    let group = format!("restart-{}", rand_suffix());
    let port = kafka::free_port();
    let cfg = config_listening(dir.path(), &b, &t.input, &t, &group, &format!("127.0.0.1:{port}"));
    produce(&b.producer(), &t.input, &records[..half]);
    let engine = Engine::start(&cfg);
    wait_for(120, "the first half committed", || {
        (committed(&b, &group, &t.input) >= half as i64).then_some(())
    });
    // The second half arrives, and the broker restarts while the engine works through it
    // (small fetches hold it to about 10k records/s).
    produce(&b.producer(), &t.input, &records[half..]);
    b.restart();
    wait_for(180, "the rest committed after the restart", || {
        (committed(&b, &group, &t.input) >= records.len() as i64).then_some(())
    });
    assert_eq!(offset_gaps(port), 0.0, "no input record was skipped");
    let client_errors = scrape::sum(&scrape_port(port), "driftgate_errors_total", &[r#"stage="client""#]);
    assert!(client_errors >= 1.0, "the engine saw the broker go away: {client_errors}");
    let log = engine.log_text();
    assert!(engine.stop().success(), "{log}");
    let (got, dups) = dedup(&b, &t.enforcement);
    assert_same_effects(&got, &scenario::offline_effects(PARTITIONS), dups);
}

/// An event-time buffer far larger than a Kafka record survives a restart: with 1 h of
/// out-of-orderness each partition holds about 7,200 records (some 2 MB inline, above the
/// broker's 1 MB record limit). The changelog keeps buffered inputs by their offsets, and the
/// restored partition reads them again. The effects equal an uninterrupted run's.
#[test]
fn an_event_time_buffer_larger_than_a_record_survives_a_restart() {
    let _serial = serial();
    let b = Broker::shared();
    let records = records(PARTITIONS);
    let (half, total) = (records.len() / 2, records.len() as i64);
    let dir = tempfile::tempdir().unwrap();
    let held = |t: &Topics, group: &str| {
        let cfg = config(dir.path(), b, &t.input, t, group);
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, text.replace("[kafka]", "[engine]\nmax_out_of_orderness = \"1h\"\n[kafka]"))
            .unwrap();
        cfg
    };
    // Reference: uninterrupted.
    let whole = Topics::create(b, "held-whole", PARTITIONS);
    produce(&b.producer(), &whole.input, &records);
    let group = format!("held-whole-{}", rand_suffix());
    let (want, _) = run_to_end(b, &held(&whole, &group), &whole, &group, PARTITIONS, total);
    assert!(!want.is_empty());

    // Stopped after the first half (its last snapshot holds the whole buffer), then
    // restarted in the same group.
    let t = Topics::create(b, "held", PARTITIONS);
    let group = format!("held-{}", rand_suffix());
    let cfg = held(&t, &group);
    produce(&b.producer(), &t.input, &records[..half]);
    let engine = Engine::start(&cfg);
    wait_for(120, "the first half", || (committed(b, &group, &t.input) >= half as i64).then_some(()));
    let log = engine.log_text();
    assert!(engine.stop().success(), "{log}");
    let engine = Engine::start(&cfg);
    let restored: Vec<u64> = wait_for(60, "both partitions restored", || {
        let log = engine.log_text();
        let counts: Vec<u64> = log
            .lines()
            .filter(|l| l.contains("state restored"))
            .filter_map(|l| l.split("buffered=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect();
        (counts.len() == PARTITIONS as usize).then_some(counts)
    });
    assert!(
        restored.iter().all(|n| *n > 7_000),
        "each partition's buffer held over 7,000 inputs: {restored:?}"
    );
    produce(&b.producer(), &t.input, &records[half..]);
    wait_for(120, "the rest", || (committed(b, &group, &t.input) >= total).then_some(()));
    let log = engine.log_text();
    assert!(!log.contains("never processed"), "every buffered input was read again:\n{log}");
    assert!(engine.stop().success(), "{log}");
    let (got, dups) = dedup(b, &t.enforcement);
    assert_eq!(
        got, want,
        "a restart with a large buffer gives the uninterrupted run's effects ({dups} duplicates dropped)"
    );
}
