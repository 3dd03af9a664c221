#!/usr/bin/env bash
# Whole-session training records (format = "openai_sessions") through a file
# sink, on a realistic transcript stream with varied payloads:
#   many: 10,000 sessions open at once (their events interleaved, 20 each:
#         user, reasoning, parallel tool calls, results, assistant), then all end
#   long: one session of 200,000 events, then its end
# Reports ingest time, the time until every session is written (the outbox is
# empty again: written sessions leave it), events/s end to end, peak RSS.
#   bench/sessions.sh [many|long|both]      (default both)
which=${1:-both}
source "$(dirname "$0")/common.sh"
cat >> "$dir/outboxd.toml" <<TOML
[sinks.sessions]
kind = "file"
dir = "sessions"
format = "openai_sessions"
session_idle_timeout = "1h"
TOML

generate() {  # $1 = many | long; NDJSON on stdout
  python3 - "$1" <<'PY'
import json, random, sys
rng = random.Random(7)
words = "the of and to in is it that for on with as was at by an be this from or have not are but what all were when we there can".split()
def text(lo, hi):
    return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))
def turn(session, agent, n):
    a, b = f"{session}-{n}-a", f"{session}-{n}-b"
    base = {"agent_id": agent, "session_id": session}
    yield {**base, "type": "message", "data": {"role": "user", "content": text(5, 60)}}
    yield {**base, "type": "reasoning", "data": {"content": text(10, 80)}}
    yield {**base, "type": "tool.call", "data": {"call_id": a, "name": "search", "arguments": {"q": text(2, 8)}}}
    yield {**base, "type": "tool.call", "data": {"call_id": b, "name": "fetch", "arguments": {"url": "https://example.com/" + text(1, 3).replace(" ", "/")}}}
    yield {**base, "type": "tool.result", "data": {"call_id": b, "content": text(20, 300)}}
    yield {**base, "type": "tool.result", "data": {"call_id": a, "content": text(20, 200), "is_error": rng.random() < 0.05}}
    yield {**base, "type": "message", "data": {"role": "assistant", "content": text(10, 150)}}
out = sys.stdout
if sys.argv[1] == "many":
    sessions = [(f"s{i}", f"agent-{i % 50}") for i in range(10_000)]
    streams = {s: [e for n in range(3) for e in turn(s, agent, n)][:19] for s, agent in sessions}
    for k in range(19):                      # every session open before any ends
        for s, _ in sessions:
            out.write(json.dumps(streams[s][k]) + "\n")
    for s, agent in sessions:
        out.write(json.dumps({"type": "session.ended", "agent_id": agent, "session_id": s}) + "\n")
else:
    n = 0
    while n < 200_000 - 7:
        for e in turn("long", "writer", n):
            out.write(json.dumps(e) + "\n"); n += 1
    out.write(json.dumps({"type": "session.ended", "agent_id": "writer", "session_id": "long"}) + "\n")
PY
}

outbox_events() { curl -sf "http://127.0.0.1:$mport/metrics" | awk '$1 == "outboxd_outbox_events" {print $2}'; }

run() {  # $1 = many | long
  generate "$1" > "$dir/$1.ndjson"
  local events; events=$(wc -l < "$dir/$1.ndjson")
  local t0 t1 max now; max=0
  t0=$(date +%s.%N)
  target/release/outboxd send --url "http://127.0.0.1:$port" --batch 500 "$dir/$1.ndjson" >/dev/null &
  local send=$!
  while kill -0 $send 2>/dev/null; do now=$(rss); max=$(python3 -c "print(max($max, $now))"); sleep 0.2; done
  wait $send
  t1=$(date +%s.%N)
  while [ "$(outbox_events)" != 0 ]; do now=$(rss); max=$(python3 -c "print(max($max, $now))"); sleep 0.2; done
  local t2; t2=$(date +%s.%N)
  local lines; lines=$(cat "$dir"/data/sessions/*.jsonl 2>/dev/null | wc -l || true)
  echo "$1: $events events ($(du -h "$dir/$1.ndjson" | cut -f1)), ingest $(python3 -c "print(round($t1 - $t0, 1))")s, all sessions written after $(python3 -c "print(round($t2 - $t0, 1))")s: $(python3 -c "print(round($events / ($t2 - $t0)))") events/s end to end; lines so far $lines; RSS max $max MiB"
}

start_outboxd
machine
echo "RSS idle: $(rss) MiB"
case $which in
  many) run many ;;
  long) run long ;;
  *) run many; run long ;;
esac
echo "peak RSS of the run (VmHWM): $(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$pid/status) MiB"
