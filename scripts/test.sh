#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, then runs every test.
# Tests build in the `test-release` profile: release optimisation without LTO (see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-tools.sh
export PATH="${DRIFTGATE_TOOLS:-$HOME/.cache/driftgate/tools}/bin:$PATH"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Style gates first: they fail early and name the place.
cargo fmt --all --check
cargo clippy --workspace --all-targets --profile test-release -- -D warnings
status=0
cargo test --workspace --profile test-release --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
