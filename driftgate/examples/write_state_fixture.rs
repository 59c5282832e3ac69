//! Writes `tests/fixtures/agent-state-v{STATE_VERSION}.bin`: one demo agent's state in the
//! current changelog format, which `tests/state_restore.rs` must keep decoding after the
//! format changes. Run once by hand when a format version is introduced:
//! `cargo run --release --example write_state_fixture`
//!
//! Version 1's fixture was taken after the demo's first 20,000 inputs, before fin-07's
//! `auto` detectors had built their banks; later versions are taken after
//! [`FIXTURE_INPUTS`], with banks, since version 2 changed how banks are stored.

use driftgate::cli::demo::{example_pacts, Fleet};
use driftgate_core::codec::changelog::{encode_agent, STATE_VERSION};
use driftgate_core::engine::{Engine, EngineConfig};

/// Inputs of the demo before the snapshot (version 2 on).
pub const FIXTURE_INPUTS: usize = 80_000;

fn main() -> std::io::Result<()> {
    let mut e = Engine::new(EngineConfig::default(), example_pacts());
    for input in Fleet::new(7, 1, true).take(FIXTURE_INPUTS) {
        e.push(input);
    }
    let state = e.agent("fin-07").ok_or_else(|| std::io::Error::other("fin-07 has no state"))?.clone();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("agent-state-v{STATE_VERSION}.bin"));
    std::fs::write(&path, encode_agent(&state))?;
    println!("wrote {}", path.display());
    Ok(())
}
