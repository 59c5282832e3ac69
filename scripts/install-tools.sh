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
# promtool: checks the Prometheus alert rules in deploy/. Taken out of Debian's
# `prometheus` package without installing it (no server, no service).
if ! command -v promtool >/dev/null && [ ! -x "$TOOLS/bin/promtool" ]; then
  echo "==> installing promtool (from Debian's prometheus package) into $TOOLS..."
  tmp=$(mktemp -d)
  ( cd "$tmp" && apt-get download prometheus >/dev/null 2>&1 ) \
    || { apt-get update >/dev/null 2>&1 && ( cd "$tmp" && apt-get download prometheus >/dev/null ); }
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$TOOLS/bin" && cp "$tmp/x/usr/bin/promtool" "$TOOLS/bin/promtool"
  rm -rf "$tmp"
  [ -x "$TOOLS/bin/promtool" ] || { echo "promtool install failed" >&2; exit 1; }
fi
# schemathesis: the property-based client of the HTTP API contract test, in a venv of its own.
if [ ! -x "$TOOLS/schemathesis/bin/schemathesis" ]; then
  echo "==> installing schemathesis (PyPI) into $TOOLS/schemathesis..."
  python3 -m venv "$TOOLS/schemathesis"
  "$TOOLS/schemathesis/bin/pip" install --quiet "schemathesis>=4.3,<5" \
    || { echo "schemathesis install failed: python3 -m venv $TOOLS/schemathesis && $TOOLS/schemathesis/bin/pip install schemathesis" >&2; exit 1; }
fi
# rustfmt and clippy: the style gates of ./scripts/test.sh.
for c in rustfmt clippy; do
  if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "==> installing the $c component (rustup component add $c)..."
    rustup component add "$c" || { echo "$c is missing: rustup component add $c" >&2; exit 1; }
  fi
done
echo "==> tools ready in $TOOLS"
