//! Exactly-once delivery (`kafka.delivery = "exactly_once"`) on Apache Kafka: each commit
//! interval is one transaction holding its outputs, the changelog records and the input
//! offsets. A `read_committed` reader (as routers read) must see every effect exactly once,
//! with no dedup by `seq`, through SIGKILLs, a fenced zombie and a member that lost its
//! partitions while it was frozen. Heartbeats every 100 ms put records in every
//! transaction, so an aborted one always leaves records that only `read_uncommitted` sees.

use crate::durable_state::{
    committed, config_listening, dedup, held, run_to_end, scrape_port, serial, PARTITIONS,
};
use crate::support::kafka::{self, produce, rand_suffix, wait_for, Broker, Engine, Topics};
use crate::support::scenario::{self, assert_same_effects, final_lanes, records, Mix};
use crate::support::scrape;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How an instance gets its transactional id.
enum Id<'a> {
    /// `kafka.transactional_id`.
    Transactional(&'a str),
    /// Static membership (`group.instance.id`), from which the transactional id derives.
    Static(&'a str),
}

/// An exactly-once config for `group` on `t`'s topics, written to `<name>.toml`, with
/// heartbeats every 100 ms and the API on `listen`.
fn eos_config(
    dir: &Path,
    b: &Broker,
    t: &Topics,
    group: &str,
    name: &str,
    id: Id<'_>,
    listen: &str,
) -> PathBuf {
    let base = std::fs::read_to_string(config_listening(dir, b, &t.input, t, group, listen)).unwrap();
    let kafka_keys = match id {
        Id::Transactional(tid) => format!("transactional_id = \"{tid}\"\n"),
        Id::Static(_) => String::new(),
    };
    let mut text = base.replacen(
        "[kafka]\n",
        &format!(
            "[engine]\nheartbeat_interval = \"100ms\"\n[kafka]\ndelivery = \"exactly_once\"\n{kafka_keys}"
        ),
        1,
    );
    if let Id::Static(instance) = id {
        text = text.replacen(
            "[http]",
            &format!("[kafka.consumer_properties]\n\"group.instance.id\" = \"{instance}\"\n[http]"),
            1,
        );
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Makes the config at `p` commit every 2 s, so that a transaction with records on the
/// broker is open most of the time (for [`freeze_in_transaction`] to find).
fn slow_commits(p: &Path) {
    let text = std::fs::read_to_string(p).unwrap();
    assert!(text.contains("commit_interval = \"200ms\""));
    std::fs::write(p, text.replace("commit_interval = \"200ms\"", "commit_interval = \"2s\"")).unwrap();
}

/// Sends `signal` (e.g. `STOP`, `CONT`) to an engine.
fn signal(e: &Engine, signal: &str) {
    let ok = Command::new("kill").args([&format!("-{signal}"), &e.child.id().to_string()]).status().unwrap();
    assert!(ok.success(), "kill -{signal}");
}

/// Freezes an engine (SIGSTOP) inside an open transaction whose records are already on
/// the broker (a `read_uncommitted` reader sees heartbeats of this instance that a
/// `read_committed` one does not) and whose commit has not begun (its log's last word on
/// transactions is "begun": one frozen mid-commit may still commit when thawed, and the
/// new owner's restore waits for it). Otherwise it is thawed and frozen again a moment
/// later.
///
/// `written = false` drops the first condition (the records may still be in the
/// producer's queue).
fn freeze_in_transaction(b: &Broker, t: &Topics, e: &Engine, written: bool) {
    for _ in 0..50 {
        signal(e, "STOP");
        let log = e.log_text();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("transaction begun") || l.contains("committing transaction"));
        if last.is_some_and(|l| l.contains("begun"))
            && (!written || !hidden_heartbeats(b, t, e.child.id()).is_empty())
        {
            return;
        }
        signal(e, "CONT");
        std::thread::sleep(Duration::from_millis(37));
    }
    panic!("the engine was never frozen inside a written transaction in 50 tries:\n{}", e.log_text());
}

/// The heartbeats of the engine with process id `pid` on `t`'s snapshot topic that only a `read_uncommitted`
/// reader sees (those of its open or aborted transactions), as `(partition, offset)`.
fn hidden_heartbeats(b: &Broker, t: &Topics, pid: u32) -> BTreeSet<(i32, i64)> {
    let mine = format!("\"instance\":\"{pid}-");
    let of = |isolation: &str| -> BTreeSet<(i32, i64)> {
        b.read_now_isolated(&t.snapshot, isolation)
            .into_iter()
            .filter(|r| r.value.as_deref().is_some_and(|v| String::from_utf8_lossy(v).contains(&mine)))
            .map(|r| (r.partition, r.offset))
            .collect()
    };
    let committed = of("read_committed");
    of("read_uncommitted").difference(&committed).copied().collect()
}

/// Records of `topic` that only a `read_uncommitted` reader sees: those of aborted (or
/// still open) transactions.
fn hidden(b: &Broker, topic: &str) -> usize {
    let all = b.read_all_isolated(topic, "read_uncommitted").len();
    all.saturating_sub(b.read_all(topic).len())
}

/// The reference: an uninterrupted exactly-once run, which must give the offline ground
/// truth without a single duplicate.
fn uninterrupted(
    b: &Broker,
    dir: &Path,
    records: &[(String, Vec<u8>, i64, i32)],
) -> BTreeMap<(String, u64), String> {
    let t = Topics::create(b, "eos-clean", PARTITIONS);
    produce(&b.producer(), &t.input, records);
    let group = format!("eos-clean-{}", rand_suffix());
    let cfg = eos_config(dir, b, &t, &group, "clean", Id::Transactional("clean"), "");
    let (want, dups) = run_to_end(b, &cfg, &t, &group, PARTITIONS, records.len() as i64);
    assert_eq!(dups, 0, "an uninterrupted exactly-once run emits no duplicates");
    assert_same_effects(&want, &scenario::offline_effects(PARTITIONS), 0);
    want
}

#[test]
fn ten_sigkills_leave_a_read_committed_reader_every_effect_exactly_once() {
    let _serial = serial();
    let b = Broker::shared();
    let records = records(PARTITIONS);
    let total = records.len() as i64;
    let dir = tempfile::tempdir().unwrap();
    let want = uninterrupted(b, dir.path(), &records);

    // As in the at-least-once crash test: at ten fixed-seed points the engine has committed
    // everything so far, the next records arrive, and it is SIGKILLed a fixed-seed moment
    // later, mid-transaction. It restarts as the same static member, so its transactional
    // id is the same: the restart fences the killed producer and aborts its transaction.
    let t = Topics::create(b, "eos-crash", PARTITIONS);
    let group = format!("eos-crash-{}", rand_suffix());
    let mut rng = Mix(11);
    let mut points: Vec<usize> =
        (0..10).map(|_| (total as f64 * (0.05 + 0.85 * rng.unit())) as usize).collect();
    points.sort();
    let producer = b.producer();
    let mut produced = 0;
    let mut ready = Vec::new();
    let start = |n: usize| {
        let cfg = eos_config(dir.path(), b, &t, &group, &format!("crash-{n}"), Id::Static("eos-0"), "");
        Engine::start(&cfg)
    };
    for (n, point) in points.iter().enumerate() {
        let upto = (*point).max(produced);
        produce(&producer, &t.input, &records[produced..upto]);
        produced = upto;
        let started = Instant::now();
        let mut engine = start(n);
        wait_for(60, "partitions assigned", || {
            engine.log_text().contains("partitions assigned").then_some(())
        });
        ready.push(started.elapsed().as_secs_f64());
        wait_for(120, &format!("everything up to {produced} committed"), || {
            (committed(b, &group, &t.input) >= produced as i64).then_some(())
        });
        let burst = (produced + 10_000).min(records.len());
        produce(&producer, &t.input, &records[produced..burst]);
        produced = burst;
        // Not a synchronisation: the kill lands at a fixed-seed moment in the burst.
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 400));
        engine.child.kill().unwrap();
        engine.child.wait().unwrap();
    }
    produce(&producer, &t.input, &records[produced..]);
    let engine = start(points.len());
    wait_for(120, "the last restart to finish", || (committed(b, &group, &t.input) >= total).then_some(()));
    let log = engine.log_text();
    assert!(log.contains("state restored"), "{log}");
    assert!(engine.stop().success(), "{log}");

    let (got, dups) = dedup(b, &t.enforcement);
    assert_eq!(dups, 0, "a read_committed reader sees no duplicate at all");
    assert_same_effects(&got, &want, 0);
    assert_eq!(final_lanes(&got), final_lanes(&want));
    // The kills did cut transactions short: their records are on the broker, unseen.
    let aborted = hidden(b, &t.snapshot);
    assert!(aborted > 0, "the killed instances' open transactions left records only read_uncommitted sees");
    eprintln!(
        "exactly-once crash test: {} effects, 0 duplicates over {} SIGKILLs at {points:?}; {aborted} records of \
         aborted transactions hidden; time to partitions assigned after each restart (s): {ready:.1?}",
        got.len(),
        points.len()
    );
}

/// The frozen-instance scenarios' first steps: the first half of the records, committed by
/// `first` (and whoever else runs in `group`), then the second half produced and `first`
/// frozen inside a written transaction. Returns that transaction's records.
fn first_half_then_freeze(
    b: &Broker,
    t: &Topics,
    group: &str,
    records: &[(String, Vec<u8>, i64, i32)],
    first: &Engine,
) -> BTreeSet<(i32, i64)> {
    let half = records.len() / 2;
    wait_for(120, "the first half committed", || {
        (committed(b, group, &t.input) >= half as i64).then_some(())
    });
    produce(&b.producer(), &t.input, &records[half..]);
    std::thread::sleep(Duration::from_millis(300));
    freeze_in_transaction(b, t, first, true);
    hidden_heartbeats(b, t, first.child.id())
}

/// The frozen-instance scenarios' verdict, once every engine has stopped: a `read_committed`
/// reader sees no duplicate and the ground truth's effects, and the records `open` of the
/// frozen transaction (of the engine with process id `pid`) were never committed.
fn no_trace_of_the_frozen_transaction(b: &Broker, t: &Topics, pid: u32, open: &BTreeSet<(i32, i64)>) {
    let (got, dups) = dedup(b, &t.enforcement);
    assert_eq!(dups, 0, "nothing of the frozen instance's transaction is visible");
    assert_same_effects(&got, &scenario::offline_effects(PARTITIONS), 0);
    let after = hidden_heartbeats(b, t, pid);
    assert!(
        open.is_subset(&after),
        "the frozen transaction's records were never committed: {open:?}, {after:?}"
    );
}

/// A zombie: instance A is frozen (SIGSTOP) mid-transaction, and its replacement starts with
/// the same transactional id, which fences A and aborts its transaction. When A thaws, its
/// writes are refused and it stops with an error naming the fencing; the replacement's
/// effects are exactly the offline ground truth's.
#[test]
fn a_zombie_fenced_by_its_successor_cannot_write_and_stops() {
    let _serial = serial();
    let b = Broker::shared();
    let records = records(PARTITIONS);
    let total = records.len() as i64;
    let dir = tempfile::tempdir().unwrap();
    let t = Topics::create(b, "zombie", PARTITIONS);
    let group = format!("zombie-{}", rand_suffix());
    let id = format!("zombie-{}", rand_suffix());
    let zombie_cfg = eos_config(dir.path(), b, &t, &group, "zombie", Id::Transactional(&id), "");
    let successor_cfg = eos_config(dir.path(), b, &t, &group, "successor", Id::Transactional(&id), "");
    slow_commits(&zombie_cfg);
    produce(&b.producer(), &t.input, &records[..records.len() / 2]);
    let mut zombie = Engine::start(&zombie_cfg);
    let open = first_half_then_freeze(b, &t, &group, &records, &zombie);
    let successor = Engine::start(&successor_cfg);
    wait_for(60, "the successor to fence the zombie", || {
        successor.log_text().contains("transactions initialised").then_some(())
    });
    signal(&zombie, "CONT");
    let status = wait_for(60, "the zombie to stop", || zombie.child.try_wait().unwrap());
    let zlog = zombie.log_text();
    assert!(!status.success(), "a fenced instance exits with an error:\n{zlog}");
    assert!(zlog.contains("fenced"), "and says it was fenced:\n{zlog}");
    wait_for(180, "the successor to finish", || (committed(b, &group, &t.input) >= total).then_some(()));
    let log = successor.log_text();
    assert!(successor.stop().success(), "{log}");
    no_trace_of_the_frozen_transaction(b, &t, zombie.child.id(), &open);
}

/// A member frozen past its session loses its partitions to the other member. When it
/// thaws, the transaction it had open cannot commit (the group has moved on): it is
/// aborted, nothing of it is visible to `read_committed` readers, and the member carries
/// on from the committed state. The effects are exactly the offline ground truth's.
#[test]
fn a_member_that_lost_its_partitions_aborts_its_transaction_and_carries_on() {
    let _serial = serial();
    let b = Broker::shared();
    let records = records(PARTITIONS);
    let total = records.len() as i64;
    let dir = tempfile::tempdir().unwrap();
    let t = Topics::create(b, "lost", PARTITIONS);
    let group = format!("lost-{}", rand_suffix());
    let port = kafka::free_port();
    let listen = format!("127.0.0.1:{port}");
    let a_cfg = eos_config(dir.path(), b, &t, &group, "a", Id::Transactional("lost-a"), &listen);
    let b_cfg = eos_config(dir.path(), b, &t, &group, "b", Id::Transactional("lost-b"), "");
    slow_commits(&a_cfg);
    produce(&b.producer(), &t.input, &records[..records.len() / 2]);
    let a = Engine::start(&a_cfg);
    let a_pid = a.child.id();
    let other = Engine::start(&b_cfg);
    wait_for(60, "the two members to share the partitions", || {
        (held(&a) == Some(1) && held(&other) == Some(1)).then_some(())
    });
    // Frozen past its 6 s session: the group gives its partition to the other member.
    let open = first_half_then_freeze(b, &t, &group, &records, &a);
    std::thread::sleep(Duration::from_secs(9));
    signal(&a, "CONT");
    wait_for(180, "everything committed", || (committed(b, &group, &t.input) >= total).then_some(()));
    let aborted = scrape::sum(&scrape_port(port), "driftgate_transactions_total", &[r#"outcome="aborted""#]);
    let alog = a.log_text();
    assert!(aborted >= 1.0, "the thawed member aborted its transaction:\n{alog}");
    assert!(a.stop().success(), "and carried on:\n{alog}");
    assert!(other.stop().success());
    no_trace_of_the_frozen_transaction(b, &t, a_pid, &open);
}
