//! Writes `tests/fixtures/agent-state-v{STATE_VERSION}.bin`: one demo agent's state in the
//! current changelog format, which `tests/state_restore.rs` must keep decoding after the
//! format changes. Run once by hand when a format version is introduced:
//! `cargo run --release --example write_state_fixture`

use driftgate::cli::demo::{example_pacts, Fleet};
use driftgate_core::codec::changelog::{encode_agent, STATE_VERSION};
use driftgate_core::engine::{Engine, EngineConfig};

fn main() -> std::io::Result<()> {
    let mut e = Engine::new(EngineConfig::default(), example_pacts());
    for input in Fleet::new(7, 1, true).take(20_000) {
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
