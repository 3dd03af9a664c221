#!/usr/bin/env bash
# Memory and start-up with a large backlog (the sink's receiver down):
#   1. grow a backlog of N events of 512 B in four steps, RSS after each
#   2. restart on it (SIGTERM, and kill -9), timing start-up to /healthz
#   3. bring the receiver up and drain, RSS at 3/4, 1/4 and 0 left
#   bench/backlog.sh [backlog-events]          (default 2000000)
backlog=${1:-2000000}
source "$(dirname "$0")/common.sh"
cat >> "$dir/outboxd.toml" <<TOML
[sinks.remote]
kind = "http"
url = "http://127.0.0.1:$extra_port/ingest"
[sinks.remote.batch]
max_events = 2000
[sinks.remote.retry]
initial = "100ms"
max = "1s"
TOML
lag() { curl -sf "http://127.0.0.1:$port/v1/sinks" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["lag_events"])'; }
startup() {  # starts outboxd; sets $pid and $startup_ms (until /healthz answers)
  local t0; t0=$(date +%s%N)
  target/release/outboxd run --config "$dir/outboxd.toml" >/dev/null 2>>"$dir/log" &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.005; done
  startup_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
}
machine
start_outboxd
echo "RSS idle: $(rss) MiB"
echo "== 1. backlog of $backlog events (512 B), receiver down"
for step in 1 2 3 4; do
  target/release/outboxd-bench --url "http://127.0.0.1:$port" --batch 500 --concurrency 8 \
    --event-size 512 --total-events $((backlog / 4)) --duration 600s --unique-ids --json > "$dir/step.json"
  echo "  after $step/4: lag $(lag) events, RSS $(rss) MiB, outbox $(du -sh "$dir/data" | cut -f1)," \
    "$(python3 -c "import json; print(round(json.load(open('$dir/step.json'))['events_per_sec']))") events/s"
done
echo "== 2. start-up with the backlog on disk"
for how in TERM TERM TERM KILL KILL; do
  kill -$how $pid; wait $pid 2>/dev/null || true
  startup
  echo "  after SIG$how: up in $startup_ms ms, RSS $(rss) MiB"
done
echo "== 3. receiver up: drain"
target/release/outboxd-bench --receive "127.0.0.1:$extra_port" >/dev/null 2>&1 &
extra_pid=$!
t0=$(date +%s.%N)
for left in $((backlog * 3 / 4)) $((backlog / 4)) 0; do
  while [ "$(lag)" -gt $left ]; do sleep 0.2; done
  echo "  $left left: RSS $(rss) MiB"
done
echo "drained in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))")s"
