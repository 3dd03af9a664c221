#!/usr/bin/env bash
# Durable-ingest benchmark: starts a release outboxd on a fresh data dir
# (sync = "full"), then drives it with outboxd-bench:
#   1. 1 KiB events in batches of 500, 8 connections
#   2. single-event requests, 64 connections
# and reports the daemon's RSS idle and under load.
#   bench/ingest.sh [seconds-per-run]     (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
cargo build --release --quiet --bin outboxd --bin outboxd-bench
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000)); mport=$((port + 1))
cat > "$dir/outboxd.toml" <<TOML
data_dir = "$dir/data"
[ingest]
http_listen = "127.0.0.1:$port"
[metrics]
listen = "127.0.0.1:$mport"
[outbox]
max_bytes = "16GiB"
sync = "full"
[log]
level = "warn"
TOML
target/release/outboxd run --config "$dir/outboxd.toml" 2>"$dir/log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
sleep 2
idle=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$pid/status)
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "outboxd RSS idle: $idle MiB"
bench() { target/release/outboxd-bench --url "http://127.0.0.1:$port" --duration "${seconds}s" --unique-ids --watch-pid $pid "$@"; }
echo; echo "== batched: 1 KiB events, 500 per request, 8 connections"
bench --batch 500 --concurrency 8 --event-size 1024
echo; echo "== single-event requests: 1 KiB, 64 connections"
bench --batch 1 --concurrency 64 --event-size 1024
