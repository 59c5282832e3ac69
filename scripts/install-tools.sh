#!/usr/bin/env bash
# Installs the external tools the test suite needs, into a per-user cache outside the clone
# so that fresh clones and CI on the same machine reuse them. Idempotent.
set -euo pipefail
TOOLS="${DRIFTGATE_TOOLS:-$HOME/.cache/driftgate/tools}"
mkdir -p "$TOOLS"

# tansu: the Kafka-compatible broker used by the Kafka tests (Apache Kafka cannot be
# installed here). The first build takes 7-20 minutes on 2 cores.
if [ ! -x "$TOOLS/bin/tansu" ]; then
  echo "==> installing tansu 0.6.0 into $TOOLS (first time only, 7-20 min)..."
  cargo install tansu --version 0.6.0 --locked --features dynostore --root "$TOOLS" 2>&1 \
    | while IFS= read -r line; do
        case "$line" in *Compiling*|*Installing*|*Installed*|*error*) echo "    $line";; esac
      done
  [ -x "$TOOLS/bin/tansu" ] || { echo "tansu install failed" >&2; exit 1; }
fi
echo "==> tools ready in $TOOLS"
