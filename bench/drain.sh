#!/usr/bin/env bash
# End-to-end drain benchmark, to a real S3-compatible server (s3s-fs), to
# an HTTP receiver (outboxd-bench --receive) or to NATS JetStream (nats-server):
#   1. build a backlog of N 1 KiB events with the receiving server down
#   2. start the server and time the drain, sampling outboxd's RSS
#   3. live: ingest for 15 s with the server up, then wait for lag 0
#   bench/drain.sh [backlog-events] [s3|http|nats]      (default 1000000 s3)
# IN_FLIGHT=N sets the sink's batch.in_flight (default: the kind's own).
backlog=${1:-1000000}
kind=${2:-s3}
source "$(dirname "$0")/common.sh"
command -v s3s-fs >/dev/null || cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet
if [ "$kind" = s3 ]; then
  cat >> "$dir/outboxd.toml" <<TOML
[sinks.lake]
kind = "s3"
endpoint = "http://127.0.0.1:$extra_port"
bucket = "bench"
access_key = "bench"
secret_key = "bench-secret"
create_bucket = true
[sinks.lake.batch]
max_bytes = "8MiB"
max_age = "1s"
${IN_FLIGHT:+in_flight = $IN_FLIGHT}
[sinks.lake.retry]
initial = "100ms"
max = "1s"
TOML
elif [ "$kind" = nats ]; then
  cat >> "$dir/outboxd.toml" <<TOML
[sinks.lake]
kind = "nats"
url = "nats://127.0.0.1:$extra_port"
subject = "bench.{type}"
stream = { name = "BENCH", subjects = ["bench.>"] }
[sinks.lake.retry]
initial = "100ms"
max = "1s"
TOML
else
  cat >> "$dir/outboxd.toml" <<TOML
[sinks.lake]
kind = "http"
url = "http://127.0.0.1:$extra_port/ingest"
[sinks.lake.retry]
initial = "100ms"
max = "1s"
TOML
fi
mkdir -p "$dir/s3"
start_outboxd
lag() { curl -sf "http://127.0.0.1:$port/v1/sinks" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["lag_events"])'; }
start_s3() {
  if [ "$kind" = s3 ]; then
    s3s-fs --host 127.0.0.1 --port $extra_port --access-key bench --secret-key bench-secret "$dir/s3" >/dev/null 2>&1 &
  elif [ "$kind" = nats ]; then
    "$(command -v nats-server || echo /usr/sbin/nats-server)" -js -a 127.0.0.1 -p $extra_port -sd "$dir/nats" >/dev/null 2>&1 &
  else
    target/release/outboxd-bench --receive "127.0.0.1:$extra_port" >/dev/null 2>&1 &
  fi
  extra_pid=$!
}
wait_drained() {  # prints seconds and max RSS while waiting for lag 0
  local t0 max now
  t0=$(date +%s.%N); max=0
  while [ "$(lag)" != 0 ]; do
    now=$(rss); max=$(python3 -c "print(max($max, $now))"); sleep 0.5
  done
  echo "$(python3 -c "print(round($(date +%s.%N) - $t0, 1))") $max"
}
machine
echo "RSS idle: $(rss) MiB"

echo "== 1. backlog of $backlog events (1 KiB) with the $kind server down"
target/release/outboxd-bench --url "http://127.0.0.1:$port" --batch 500 --concurrency 8 \
  --total-events "$backlog" --duration 600s --unique-ids --watch-pid $pid | grep -E 'events/s|rss'
echo "RSS with the backlog on disk: $(rss) MiB; outbox: $(du -sh "$dir/data" | cut -f1)"

echo "== 2. $kind server up: drain"
start_s3
read -r seconds max_rss < <(wait_drained)
echo "drained $backlog events in ${seconds}s: $(python3 -c "print(round($backlog / $seconds))") events/s"
if [ "$kind" = s3 ]; then
  objects=$(find "$dir/s3/bench" -type f | wc -l)
  bytes=$(du -sb "$dir/s3/bench" | cut -f1)
  echo "objects: $objects, average $(python3 -c "print(round($bytes / max($objects, 1) / 1048576, 2))") MiB"
fi
echo "RSS while draining: max $max_rss MiB, after $(rss) MiB"

echo "== 3. live: 15 s of ingest with the $kind server up, until the last event arrived"
t0=$(date +%s.%N)
target/release/outboxd-bench --url "http://127.0.0.1:$port" --batch 500 --concurrency 8 \
  --duration 15s --unique-ids --json > "$dir/live.json"
read -r _ max_rss < <(wait_drained)
events=$(python3 -c "import json; print(json.load(open('$dir/live.json'))['events_ok'])")
total=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
echo "ingested $events events; all delivered after ${total}s: $(python3 -c "print(round($events / $total))") events/s end to end; RSS max $max_rss MiB"
