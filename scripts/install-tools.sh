#!/usr/bin/env bash
# Installs the external tools the test suite needs, into a per-user cache outside the clone
# so that fresh clones and CI on the same machine reuse them. Idempotent.
set -euo pipefail
TOOLS="${DRIFTGATE_TOOLS:-$HOME/.cache/driftgate/tools}"
mkdir -p "$TOOLS"

# Apache Kafka: the broker of the Kafka tests and benches (KRaft, one combined node started
# by the test harness). Its jars come from Maven Central through scripts/kafka/pom.xml; the
# harness runs them with this machine's Java 17.
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$(dirname "$0")/kafka/pom.xml")
KAFKA_HOME="$TOOLS/kafka-$KAFKA_VERSION"
if [ ! -f "$KAFKA_HOME/.complete" ]; then
  echo "==> installing Apache Kafka $KAFKA_VERSION (Maven Central) into $KAFKA_HOME..."
  command -v mvn >/dev/null || { echo "Maven is missing: apt-get install maven (and a Java 17 JDK)" >&2; exit 1; }
  command -v java >/dev/null || { echo "Java is missing: apt-get install openjdk-17-jre-headless" >&2; exit 1; }
  rm -rf "$KAFKA_HOME"
  mvn -q -B -f "$(dirname "$0")/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$KAFKA_HOME/libs" -DincludeScope=runtime \
    || { echo "Apache Kafka install failed: mvn -f scripts/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=$KAFKA_HOME/libs" >&2; exit 1; }
  ls "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null \
    || { echo "Apache Kafka install failed: kafka_2.13-$KAFKA_VERSION.jar is missing" >&2; exit 1; }
  touch "$KAFKA_HOME/.complete"
  echo "    $(ls "$KAFKA_HOME/libs" | wc -l) jars"
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
# NGINX: the real gateway of the router end-to-end test (auth_request to `driftgate route`).
# Taken out of Debian's nginx package without installing it (no service, no /etc changes);
# the test runs it with a config and paths of its own.
if ! command -v nginx >/dev/null && [ ! -x "$TOOLS/nginx/usr/sbin/nginx" ]; then
  echo "==> installing NGINX (from Debian's nginx package) into $TOOLS/nginx..."
  tmp=$(mktemp -d)
  ( cd "$tmp" && apt-get download nginx >/dev/null 2>&1 ) \
    || { apt-get update >/dev/null 2>&1 && ( cd "$tmp" && apt-get download nginx >/dev/null ); } \
    || { echo "NGINX install failed: apt-get download nginx (or apt-get install nginx)" >&2; exit 1; }
  rm -rf "$TOOLS/nginx" && dpkg-deb -x "$tmp"/nginx_*.deb "$TOOLS/nginx"
  rm -rf "$tmp"
  "$TOOLS/nginx/usr/sbin/nginx" -V 2>&1 | grep -q http_auth_request_module \
    || { echo "NGINX install failed: $TOOLS/nginx/usr/sbin/nginx lacks the auth_request module" >&2; exit 1; }
fi
# wrk: the HTTP load generator of the sidecar bench (benches/route_e2e.rs), with its LuaJIT,
# from Debian's packages; $TOOLS/bin/wrk runs it with its library path.
if ! command -v wrk >/dev/null && [ ! -x "$TOOLS/bin/wrk" ]; then
  echo "==> installing wrk (from Debian's wrk and libluajit packages) into $TOOLS/wrk..."
  tmp=$(mktemp -d)
  ( cd "$tmp" && apt-get download wrk libluajit-5.1-2 libluajit-5.1-common >/dev/null 2>&1 ) \
    || { apt-get update >/dev/null 2>&1 && ( cd "$tmp" && apt-get download wrk libluajit-5.1-2 libluajit-5.1-common >/dev/null ); } \
    || { echo "wrk install failed: apt-get download wrk libluajit-5.1-2 libluajit-5.1-common" >&2; exit 1; }
  rm -rf "$TOOLS/wrk" && for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$TOOLS/wrk"; done
  rm -rf "$tmp"
  mkdir -p "$TOOLS/bin"
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s/wrk/usr/lib/x86_64-linux-gnu" exec "%s/wrk/usr/bin/wrk" "$@"\n' "$TOOLS" "$TOOLS" > "$TOOLS/bin/wrk"
  chmod +x "$TOOLS/bin/wrk"
  { "$TOOLS/bin/wrk" --version 2>&1 || true; } | grep -q "^wrk" || { echo "wrk install failed: $TOOLS/bin/wrk does not run" >&2; exit 1; }
fi
# Chromium: the real browser of the report test (headless, offline). Its many shared
# libraries make extracting it into the cache impractical, so Debian's package is installed
# (as root, or through passwordless sudo).
if ! command -v chromium >/dev/null; then
  echo "==> installing Chromium (Debian's chromium package)..."
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" = 0 ]; then apt=(apt-get); elif sudo -n true 2>/dev/null; then apt=(sudo -n apt-get); else apt=(); fi
  [ ${#apt[@]} -gt 0 ] || { echo "Chromium is missing and this user cannot install packages: apt-get install chromium (as root)" >&2; exit 1; }
  { "${apt[@]}" install -y --no-install-recommends chromium >/dev/null 2>&1 \
    || { "${apt[@]}" update >/dev/null 2>&1 && "${apt[@]}" install -y --no-install-recommends chromium >/dev/null; }; } \
    || { echo "Chromium install failed: apt-get install chromium" >&2; exit 1; }
  chromium --version >/dev/null 2>&1 || { echo "Chromium install failed: chromium --version does not run" >&2; exit 1; }
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
