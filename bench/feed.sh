#!/usr/bin/env bash
# The change feed and fidelity-aware storage, on one machine in one run:
#   1. ingest with no subscriber, then with 100 SSE subscribers attached
#      (each following one of the 40 sessions, as a UI does), store = "full";
#   2. store = "full" against store = "compacted" on a stream where two thirds
#      of the events are observed token deltas (~150 B) between ~1 KiB events.
# Load: wrk, 16 connections posting 500 events per request (the peers'
# gen_body.py: varied text), sync = "full".
#   bench/feed.sh [SECONDS]      (default 10)
set -euo pipefail
secs=${1:-10}
cd "$(dirname "$0")/.."
peers=$(cd ../shared/peers 2>/dev/null && pwd) || { echo "needs ../shared/peers (gen_body.py, post.lua)" >&2; exit 2; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
cargo build --release --quiet --bin outboxd
work=$(mktemp -d); pid=; subs=()
trap 'kill $pid "${subs[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
python3 "$peers/gen_body.py" 500 1024 ndjson "$work/committed.ndjson"
python3 - "$work/committed.ndjson" "$work/mixed.ndjson" <<'PY'
import json, random, sys
rng = random.Random(11)
out = []
for i, line in enumerate(open(sys.argv[1])):
    event = json.loads(line)
    if i % 3:
        # A streamed token delta of the same session.
        words = event["data"]["content"].split()
        event = {"type": "message.delta", "fidelity": "observed", "agent_id": event["agent_id"],
                 "session_id": event["session_id"], "data": {"delta": " ".join(words[:rng.randint(3, 25)])}}
    out.append(json.dumps(event))
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY

start() {  # $1 = store mode
  rm -rf "$work/data"
  printf 'data_dir = "%s/data"\n[ingest]\nhttp_listen = "127.0.0.1:%s"\nunix_socket = ""\nstore = "%s"\n[metrics]\nlisten = ""\n[outbox]\nmax_bytes = "30GiB"\nsync = "full"\n[feed]\nmax_subscribers = 200\n[log]\nlevel = "warn"\n' \
    "$work" "$port" "$1" > "$work/outboxd.toml"
  target/release/outboxd run --config "$work/outboxd.toml" 2>"$work/log" &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "outboxd did not start"; cat "$work/log"; exit 1
}
stop() { kill -TERM $pid; wait $pid 2>/dev/null || true; }

load() {  # $1 = label, $2 = body, $3 = events per request
  BODY=$2 CTYPE=application/x-ndjson wrk -t2 -c16 -d3s -s "$peers/post.lua" "http://127.0.0.1:$port/v1/events" >/dev/null 2>&1
  local out; out=$(BODY=$2 CTYPE=application/x-ndjson wrk -t2 -c16 -d"${secs}s" --latency -s "$peers/post.lua" "http://127.0.0.1:$port/v1/events" 2>&1 | grep RESULT)
  python3 - "$1" "$3" "$out" "$(du -sb "$work/data" | cut -f1)" <<'PY'
import re, sys
label, per, line, disk = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
f = dict(re.findall(r'(\w+)=([\d.]+)', line))
req, dur = float(f['req']), float(f['dur_s'])
print(f"{label:<34} {req*per/dur:>9,.0f} events/s  p50 {float(f['p50_ms']):>6.1f} ms  p99 {float(f['p99_ms']):>6.1f} ms  non-2xx {int(f['errors_status'])}  data dir {disk/1048576:,.0f} MiB")
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); ${secs}s per run"
start full
load "full, no subscriber" "$work/committed.ndjson" 500
stop
start full
for i in $(seq 0 99); do
  curl -sN "http://127.0.0.1:$port/v1/stream?session_id=s-$((i % 40))" > "$work/sub$i" 2>/dev/null &
  subs+=($!)
done
sleep 1
load "full, 100 SSE subscribers" "$work/committed.ndjson" 500
alive=0; for s in "${subs[@]}"; do kill -0 "$s" 2>/dev/null && alive=$((alive + 1)); done
lagged=$(grep -l '^event: lagged' "$work"/sub* 2>/dev/null | wc -l || true)
echo "  subscribers still attached: $alive of 100 (cut off with lagged: $lagged); events received: $(cat "$work"/sub* | grep -c '^id:' || true)"
kill "${subs[@]}" 2>/dev/null || true; subs=()
stop
start full
load "full, 2/3 observed deltas" "$work/mixed.ndjson" 500
stop
start compacted
load "compacted, 2/3 observed deltas" "$work/mixed.ndjson" 500
stop
