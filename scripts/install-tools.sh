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
