#!/usr/bin/env bash
# Mutation check of the lane machine (issue "tests that can fail"): cargo-mutants on the
# engine's rule files, against the core's own tests (unit tests beside the code, and the
# model-based and property tests in tests/lanes/). No broker; only the core is rebuilt.
#   scripts/mutants.sh [K/N]    # one round-robin shard, e.g. 0/16 (default: every mutant)
# It mutates the sources in place, so run it in a scratch worktree:
#   git worktree add ../mutants HEAD && ../mutants/scripts/mutants.sh 0/16
# Needs `cargo install cargo-mutants`. PROPTEST_CASES (default 150) trims the property
# and model-based tests to keep each mutant short. Unoptimised builds: a mutant rebuilds
# incrementally in seconds, and the core's tests then take about 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || { echo "cargo-mutants is missing: cargo install cargo-mutants --locked" >&2; exit 1; }
shard=()
if [ $# -gt 0 ]; then shard=(--shard "$1" --sharding round-robin); fi
export PROPTEST_CASES="${PROPTEST_CASES:-150}"
files=()
for f in core/src/engine/*.rs core/src/model/lane.rs core/src/model/overrides.rs; do
  case "$f" in */tests.rs) ;; *) files+=(--file "$f") ;; esac
done
cargo mutants --in-place --no-shuffle "${shard[@]}" --timeout 60 "${files[@]}" \
  -- -p driftgate-core
