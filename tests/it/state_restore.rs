//! State durability without a broker: an engine restored from its changelog records at any
//! point continues byte-identically to one that never stopped, including across a torn
//! snapshot (a crash between the agent records and the meta record that closes them).

use driftgate::cli::demo::{example_pacts, Fleet};
use driftgate_core::codec::changelog::{decode_agent, encode_agent, encode_meta, Key, MetaRecord, Restorer};
use driftgate_core::engine::{Engine, EngineConfig, Input, Output};
use driftgate_core::model::lane::Lane;

const TOPIC: &str = "telemetry";

fn inputs() -> Vec<Input> {
    Fleet::new(7, 1, true).collect()
}

fn render(out: &[Output]) -> Vec<String> {
    out.iter().map(|o| serde_json::to_string(o).unwrap()).collect()
}

/// Appends a snapshot of the engine (dirty agents, then meta) to a changelog.
fn snapshot(e: &mut Engine, position: i64, log: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>) {
    let dirty: Vec<(String, Option<Vec<u8>>)> =
        e.take_dirty().into_iter().map(|(id, s)| (id, s.map(encode_agent))).collect();
    for (id, v) in dirty {
        log.push((Key::Agent(TOPIC.into(), id).encode(), v));
    }
    log.push((Key::Meta(TOPIC.into()).encode(), Some(encode_meta(&MetaRecord { position, meta: e.meta() }))));
}

fn restore(log: &[(Vec<u8>, Option<Vec<u8>>)]) -> (Engine, i64) {
    let mut r = Restorer::default();
    for (k, v) in log {
        r.apply(TOPIC, k, v.as_deref()).unwrap();
    }
    let snap = r.finish().expect("the snapshot decodes").expect("a complete snapshot");
    let position = snap.meta.position;
    // As the pipeline does: agents of a torn snapshot are rewritten by the next one.
    let mut e = Engine::restore(EngineConfig::default(), example_pacts(), snap.meta.meta, snap.agents);
    e.mark_dirty(snap.torn);
    (e, position)
}

fn states(e: &Engine) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = e.agents().map(|(id, s)| (id.to_string(), encode_agent(s))).collect();
    v.sort();
    v
}

/// A crash mid-snapshot leaves agent records after the last meta record. The restored
/// engine's next snapshot must supersede them: otherwise its meta record would close them
/// too, and an agent it did not touch would come back from a second restore in the dead
/// instance's newer state, ahead of the restored position.
#[test]
fn a_torn_snapshot_is_superseded_by_the_next_one() {
    let inputs = inputs();
    let mut a = Engine::new(EngineConfig::default(), example_pacts());
    let mut log = Vec::new();
    for (i, input) in inputs[..10_000].iter().enumerate() {
        a.push_tagged(input.clone(), i as u64);
    }
    snapshot(&mut a, 10_000, &mut log);
    for (i, input) in inputs[10_000..12_000].iter().enumerate() {
        a.push_tagged(input.clone(), (10_000 + i) as u64);
    }
    // The crash: every changed agent written, the meta record never.
    let torn: Vec<(String, Vec<u8>)> =
        a.take_dirty().into_iter().filter_map(|(id, s)| s.map(|s| (id, encode_agent(s)))).collect();
    for (id, v) in &torn {
        log.push((Key::Agent(TOPIC.into(), id.clone()).encode(), Some(v.clone())));
    }

    let (mut b, position) = restore(&log);
    assert_eq!(position, 10_000);
    let restored = states(&b);
    let ahead = torn.iter().filter(|(id, v)| restored.iter().any(|(r, rv)| r == id && rv != v)).count();
    assert!(ahead > 0, "the torn records hold states ahead of the restored ones");
    // The restored instance snapshots with no further input, then dies too.
    snapshot(&mut b, position, &mut log);
    let (c, _) = restore(&log);
    assert_eq!(
        states(&c),
        restored,
        "the second restore returns the first restore's states, not the torn ones"
    );
}

#[test]
fn restored_engine_continues_byte_identically() {
    let inputs = inputs();
    // The uninterrupted run, with the output count after each input.
    let mut a = Engine::new(EngineConfig::default(), example_pacts());
    let mut want = Vec::new();
    let mut after = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        a.push_tagged(input.clone(), i as u64);
        want.extend(a.drain());
        after.push(want.len());
    }
    let want = render(&want);
    assert!(
        want.iter().any(|o| o.contains("\"output\":\"enforcement\"")),
        "the scenario has enforcement events"
    );

    // The same input, snapshotted every 20,000 inputs and "crashed" three times: each crash
    // loses the engine, plus a torn snapshot (agent records without their meta).
    let mut log = Vec::new();
    let mut b = Engine::new(EngineConfig::default(), example_pacts());
    let mut got: Vec<Output> = Vec::new();
    let mut i = 0usize;
    let crashes = [50_001usize, 120_000, 171_111];
    let mut crashed = 0;
    while i < inputs.len() {
        b.push_tagged(inputs[i].clone(), i as u64);
        got.extend(b.drain());
        i += 1;
        if i.is_multiple_of(20_000) {
            snapshot(&mut b, i as i64, &mut log);
        }
        if crashed < crashes.len() && i == crashes[crashed] {
            crashed += 1;
            // A torn snapshot: some agent records, then the crash.
            for (id, s) in b.take_dirty().into_iter().take(3) {
                log.push((Key::Agent(TOPIC.into(), id).encode(), s.map(encode_agent)));
            }
            let (restored, position) = restore(&log);
            assert!(position as usize <= i);
            // Outputs derived after the snapshot are re-derived (routers drop them by seq).
            got.truncate(if position == 0 { 0 } else { after[position as usize - 1] });
            b = restored;
            i = position as usize;
        }
    }
    assert_eq!(crashed, crashes.len());
    assert_eq!(render(&got), want, "restored runs diverged from the uninterrupted run");
}

#[test]
fn state_records_are_versioned() {
    let mut e = Engine::new(EngineConfig::default(), example_pacts());
    for input in inputs().into_iter().take(2_000) {
        e.push(input);
    }
    let (id, state) = e.take_dirty().into_iter().find_map(|(id, s)| s.map(|s| (id, s.clone()))).unwrap();
    let bytes = encode_agent(&state);
    assert_eq!(bytes[0], driftgate_core::codec::changelog::STATE_VERSION);
    assert_eq!(
        driftgate_core::codec::changelog::decode_agent(&bytes).unwrap(),
        state,
        "agent {id} round-trips"
    );
    let mut newer = bytes.clone();
    newer[0] = 99;
    let err = driftgate_core::codec::changelog::decode_agent(&newer).unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
}

/// fin-07's citation drift in the demo: restored from a snapshot taken when its detector
/// stood at 90 % of its threshold, the engine alarms at the very record the uninterrupted
/// one does.
#[test]
fn a_detector_restored_at_90_percent_alarms_at_the_same_record() {
    use driftgate_core::model::router_view::AgentSnapshot;
    let inputs = inputs();
    let progress = |e: &Engine| -> f64 {
        AgentSnapshot::of(e, "fin-07")
            .and_then(|s| s.clauses.into_iter().find(|c| c.clause_id == "verified-citations"))
            .map_or(0.0, |c| if c.threshold > 0.0 { c.statistic / c.threshold } else { 0.0 })
    };
    let first_drift = |outs: &[Output]| {
        outs.iter().find_map(|o| match o {
            Output::Enforcement(e) if e.agent_id == "fin-07" && e.reason.code == "drift_verified" => {
                Some(e.clone())
            }
            _ => None,
        })
    };
    let mut a = Engine::new(EngineConfig::default(), example_pacts());
    let mut want = Vec::new();
    let mut cut = None;
    for (i, input) in inputs.iter().enumerate() {
        a.push_tagged(input.clone(), i as u64);
        want.extend(a.drain());
        if cut.is_none() && first_drift(&want).is_none() && progress(&a) >= 0.9 {
            cut = Some(i + 1);
        }
    }
    let cut = cut.expect("fin-07's detector passed 90 % of its threshold before alarming");
    let want = first_drift(&want).expect("the uninterrupted run alarms");

    let mut b = Engine::new(EngineConfig::default(), example_pacts());
    for (i, input) in inputs[..cut].iter().enumerate() {
        b.push_tagged(input.clone(), i as u64);
        b.drain();
    }
    let p = progress(&b);
    assert!((0.9..1.0).contains(&p), "snapshot taken at {p:.3} of the threshold");
    let mut log = Vec::new();
    snapshot(&mut b, cut as i64, &mut log);
    drop(b);
    let (mut c, position) = restore(&log);
    assert_eq!(position as usize, cut);
    assert!((progress(&c) - p).abs() < 1e-12, "the statistic survives the changelog");
    let mut got = Vec::new();
    for (i, input) in inputs.iter().enumerate().skip(cut) {
        c.push_tagged(input.clone(), i as u64);
        got.extend(c.drain());
        if first_drift(&got).is_some() {
            break;
        }
    }
    let got = first_drift(&got).expect("the restored engine alarms");
    assert_eq!(got.causation.id, want.causation.id, "alarm at the same record");
    assert_eq!(serde_json::to_string(&got).unwrap(), serde_json::to_string(&want).unwrap());
}

/// A state record written by format version 1 still decodes, into the same detector state:
/// newer engines read older snapshots. `tests/fixtures/agent-state-v1.bin` is fin-07 after
/// the demo's first 20,000 inputs, written by `driftgate/examples/write_state_fixture.rs` built
/// on commit e86b3fa (the format's first release; the example, added later, reproduces the
/// committed bytes exactly on that commit). The expected values below were printed by the
/// same build from its own engine: they are v1's view, not this code's.
#[test]
fn version_1_state_records_still_decode() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/agent-state-v1.bin");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes[0], 1);
    let state = driftgate_core::codec::changelog::decode_agent(&bytes).unwrap();
    assert_eq!(&*state.workflow, "finance");
    assert!(!state.clauses.is_empty());
    // Restorable into an engine with today's pacts.
    let mut r = Restorer::default();
    r.apply(TOPIC, &Key::Agent(TOPIC.into(), "fin-07".into()).encode(), Some(&bytes)).unwrap();
    let e = Engine::new(EngineConfig::default(), example_pacts());
    r.apply(
        TOPIC,
        &Key::Meta(TOPIC.into()).encode(),
        Some(&encode_meta(&MetaRecord { position: 1, meta: e.meta() })),
    )
    .unwrap();
    let snap = r.finish().expect("the snapshot decodes").expect("complete");
    assert!(snap.torn.is_empty());
    let restored = Engine::restore(EngineConfig::default(), example_pacts(), snap.meta.meta, snap.agents);
    type View = (String, String, f64, f64, u64, u64, i64, Lane);
    let got: Vec<View> = driftgate_core::model::router_view::AgentSnapshot::of(&restored, "fin-07")
        .expect("fin-07 restored")
        .clauses
        .into_iter()
        .map(|c| {
            (
                c.clause_id,
                c.detector,
                c.statistic,
                c.threshold,
                c.n,
                c.clean_events,
                c.last_evidence_at,
                c.demand,
            )
        })
        .collect();
    // (clause, detector, statistic, threshold, n, clean events, last evidence, demand)
    let v1 = [
        (
            "verified-citations",
            "auto-bernoulli",
            0.0,
            13.815510557964274,
            402,
            402,
            1772417602832403,
            Lane::Normal,
        ),
        ("refusal-rate", "rate-bound", 0.0, 6.907755278982137, 402, 402, 1772417602832403, Lane::Normal),
        ("judge-score", "auto-real", 0.0, 13.815510557964274, 402, 402, 1772417602832403, Lane::Normal),
        ("no-pii", "zero-tolerance", 0.0, 1.0, 402, 402, 1772417602832403, Lane::Normal),
        ("p95-latency", "quantile-bound", 0.0, 6.907755278982137, 402, 402, 1772417602832403, Lane::Normal),
    ];
    let want: Vec<View> = v1
        .iter()
        .map(|(c, d, s, t, n, k, at, l)| (c.to_string(), d.to_string(), *s, *t, *n, *k, *at, *l))
        .collect();
    assert_eq!(got, want, "the v1 record restores to the detector state v1 had");
    assert_eq!(state.clauses.len(), 5);
}

/// Asserts that `now`, today's encoding of a state, is `stored` (the fixture) field for
/// field, with every float within the rounding that `events` events can have accumulated
/// since the fixture was written: a format change fails, a change of the last bits of a
/// statistic does not.
///
/// Why a tolerance: the statistics are products over the events, and a change in how a
/// likelihood ratio is rounded (the real detector's `exp`, within 2 ULP of the platform's)
/// moves each factor by at most 2 ULP and each product's rounding by one: at most `4ε`
/// relative per event, `4nε` after `n` (to first order).
fn same_but_rounding(now: &[u8], stored: &[u8], events: usize) {
    use rmpv::Value;
    fn walk(a: &Value, b: &Value, tol: f64, path: &mut String) {
        let children: Vec<(String, &Value, &Value)> = match (a, b) {
            (Value::F64(x), Value::F64(y)) => {
                let bound = tol * x.abs().max(y.abs());
                assert!((x - y).abs() <= bound, "{path}: {x} against the stored {y} (bound {bound:e})");
                return;
            }
            (Value::Map(x), Value::Map(y)) => {
                assert_eq!(x.len(), y.len(), "{path}: fields (a format change: give it a new version)");
                x.iter()
                    .zip(y)
                    .map(|((kx, vx), (ky, vy))| {
                        assert_eq!(kx, ky, "{path}: field name (a format change: give it a new version)");
                        (format!(".{kx}"), vx, vy)
                    })
                    .collect()
            }
            (Value::Array(x), Value::Array(y)) => {
                assert_eq!(x.len(), y.len(), "{path}: length");
                x.iter().zip(y).enumerate().map(|(i, (vx, vy))| (format!("[{i}]"), vx, vy)).collect()
            }
            _ => return assert_eq!(a, b, "{path}"),
        };
        for (step, va, vb) in children {
            let at = path.len();
            path.push_str(&step);
            walk(va, vb, tol, path);
            path.truncate(at);
        }
    }
    let read = |b: &[u8]| rmpv::decode::read_value(&mut &b[1..]).expect("a msgpack record after the version");
    assert_eq!(now[0], stored[0], "version");
    walk(&read(now), &read(stored), 4.0 * events as f64 * f64::EPSILON, &mut String::new());
}

/// fin-07's state as each format version wrote it (`tests/fixtures/agent-state-v*.bin`, see
/// `driftgate/examples/write_state_fixture.rs`), restored in place of the running engine's
/// at the fixture's cut: the engine verifies fin-07's citation drift at the very record an
/// uninterrupted one does, with the same event. The current version's fixture must also
/// equal today's encoding, so a format change cannot slip in without a new version.
#[test]
fn stored_fixtures_of_every_version_restore_and_alarm_at_the_same_record() {
    use driftgate_core::codec::changelog::STATE_VERSION;
    let inputs = inputs();
    let first_drift = |outs: &[Output]| {
        outs.iter().find_map(|o| match o {
            Output::Enforcement(e) if e.agent_id == "fin-07" && e.reason.code == "drift_verified" => {
                Some(serde_json::to_string(e).unwrap())
            }
            _ => None,
        })
    };
    let mut a = Engine::new(EngineConfig::default(), example_pacts());
    let mut want = None;
    for (i, input) in inputs.iter().enumerate() {
        a.push_tagged(input.clone(), i as u64);
        if let Some(e) = first_drift(&a.drain()) {
            want = Some((i, e));
            break;
        }
    }
    let (alarm_at, want) = want.expect("the uninterrupted run verifies fin-07's drift");
    for (version, cut) in [(1u8, 20_000usize), (2, 80_000), (3, 80_000)] {
        assert!(cut < alarm_at, "v{version}: the fixture precedes the alarm (at input {alarm_at})");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../tests/fixtures/agent-state-v{version}.bin"));
        let fixture = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(fixture[0], version);
        let mut b = Engine::new(EngineConfig::default(), example_pacts());
        for (i, input) in inputs[..cut].iter().enumerate() {
            b.push_tagged(input.clone(), i as u64);
            b.drain();
        }
        if version == STATE_VERSION {
            let decoded = decode_agent(&fixture).expect("the current fixture decodes");
            assert_eq!(
                encode_agent(&decoded),
                fixture,
                "the current format reads and writes its fixture unchanged (else: a new version and fixture)"
            );
            same_but_rounding(&encode_agent(b.agent("fin-07").expect("fin-07")), &fixture, cut);
        }
        let mut log = Vec::new();
        snapshot(&mut b, cut as i64, &mut log);
        let fin07 = Key::Agent(TOPIC.into(), "fin-07".into()).encode();
        let record = log.iter_mut().find(|(k, _)| *k == fin07).expect("fin-07 in the snapshot");
        record.1 = Some(fixture);
        let (mut c, position) = restore(&log);
        assert_eq!(position as usize, cut);
        if version >= 2 {
            let snap = driftgate_core::model::router_view::AgentSnapshot::of(&c, "fin-07").expect("fin-07");
            let auto: Vec<u64> =
                snap.clauses.iter().filter(|c| c.detector.starts_with("auto-")).map(|c| c.n).collect();
            assert!(auto.len() == 2 && auto.iter().all(|n| *n >= 1_000), "v{version}: banks built: {auto:?}");
        }
        let mut got = None;
        for (i, input) in inputs.iter().enumerate().skip(cut) {
            c.push_tagged(input.clone(), i as u64);
            if let Some(e) = first_drift(&c.drain()) {
                got = Some((i, e));
                break;
            }
        }
        let (at, got) = got.unwrap_or_else(|| panic!("v{version}: the restored engine verifies the drift"));
        assert_eq!(at, alarm_at, "v{version}: at the same record");
        assert_eq!(got, want, "v{version}: the same event");
    }
}
