#!/usr/bin/env bash
# Mutation check of the lane machine (issue "tests that can fail"): cargo-mutants on the
# engine's rule files, against the fast, broker-free tests.
#   scripts/mutants.sh [K/N]    # one round-robin shard, e.g. 0/16 (default: every mutant)
# It mutates the sources in place, so run it in a scratch worktree:
#   git worktree add ../mutants HEAD && ../mutants/scripts/mutants.sh 0/16
# Needs `cargo install cargo-mutants`. Unoptimised builds: PROPTEST_CASES (default 150)
# trims the property tests to keep each mutant near a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || { echo "cargo-mutants is missing: cargo install cargo-mutants --locked" >&2; exit 1; }
shard=()
if [ $# -gt 0 ]; then shard=(--shard "$1" --sharding round-robin); fi
export PROPTEST_CASES="${PROPTEST_CASES:-150}"
cargo mutants --in-place --no-shuffle "${shard[@]}" --timeout 600 \
  --file core/src/engine/mod.rs --file core/src/model/lane.rs --file core/src/model/overrides.rs \
  -- -p driftgate-core -p driftgate --lib --test it -- --skip kafka_pipeline:: --skip durable_state:: --skip rebalance_mock:: \
     --skip time_to_control:: --skip http_api:: --skip registry_client:: --skip eval_cli:: --skip history_cli:: --skip schemas::
