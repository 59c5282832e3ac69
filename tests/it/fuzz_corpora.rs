//! The fuzz corpora (`fuzz/corpus/<target>/`, seeds and whatever the fuzzers kept, crash
//! reproducers included) replayed through the same checks the fuzz targets run, so every
//! finding stays fixed. The fuzzers themselves run with cargo-fuzz (see `fuzz/Cargo.toml`).

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("corpus file"))).collect()
}

#[test]
fn every_fuzz_corpus_replays_without_a_finding() {
    for (target, check) in checks::TARGETS {
        let files = corpus(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
        for (path, bytes) in files {
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(outcome.is_ok(), "{target}: {} reproduces a finding", path.display());
        }
    }
}

#[test]
fn the_avro_seeds_decode_through_the_compiled_plan() {
    // One seed per writer schema, each a valid record: the differential check compares
    // values, not only refusals.
    let schemas = checks::writer_schemas();
    let seeds: Vec<_> = corpus("telemetry_avro")
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("schema-"))
        .collect();
    assert_eq!(seeds.len(), schemas.len());
    for (path, bytes) in seeds {
        let (&which, datum) = bytes.split_first().expect("non-empty seed");
        let plan = driftgate_core::codec::telemetry_avro::TelemetryPlan::compile(&schemas[which as usize])
            .expect("a plan");
        assert!(plan.read(datum).is_ok(), "{} does not decode", path.display());
    }
}
