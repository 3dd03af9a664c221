#!/usr/bin/env bash
# The whole test suite: installs what the tests need if it is missing, then
# runs every unit and integration test against the real binary.
#   ./tests/run.sh            everything, then a 20 s fuzz smoke
#   ./tests/run.sh ingest     only tests whose name contains "ingest"
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# promtool (Debian package `prometheus`) checks the /metrics output.
if ! command -v promtool >/dev/null 2>&1; then
  echo "tests/run.sh: installing promtool (Debian package prometheus)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# systemd-analyze (Debian package systemd) verifies the shipped unit.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "tests/run.sh: installing systemd-analyze (Debian package systemd)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

# nats-server (Debian package nats-server) for the NATS JetStream sink tests.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "tests/run.sh: installing nats-server (Debian package nats-server)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server >/dev/null
fi

# s3s-fs: an S3-compatible server that checks signatures, for the S3 sink tests.
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "tests/run.sh: installing s3s-fs (cargo install, a few minutes once)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet
fi

if command -v rustfmt >/dev/null 2>&1; then
  cargo fmt --all -- --check
fi
cargo test --locked --all-targets "$@"

# Fuzz smoke (whole runs only): the ingest-body target for 20 s from the kept
# corpus, on a copy so the repository is not touched. Stable toolchain, no
# sanitizer; longer runs: see README "Fuzzing".
if [ $# -eq 0 ]; then
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "tests/run.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked --quiet
  fi
  corpus=$(mktemp -d)
  trap 'rm -rf "$corpus"' EXIT
  cp -r fuzz/corpus/ingest_body/. "$corpus"
  (cd fuzz && cargo fuzz run -s none --dev ingest_body "$corpus" -- -max_total_time=20 -rss_limit_mb=1024 2>&1 | tail -20)
fi
