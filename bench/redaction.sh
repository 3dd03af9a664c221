#!/usr/bin/env bash
# Ingest with the default redaction rules on against off, same load, one run:
# wrk, 16 connections posting 500 varied ~1 KiB events per request (the
# shared peers' gen_body.py), acked after fsync.
#   off      [redaction] builtins = false
#   on       the defaults, on bodies with no secrets (the pre-scan only)
#   secrets  the defaults, one event in ten carrying an env dump with five secrets
#   bench/redaction.sh [seconds-per-run] [rounds]     (defaults 10, 2)
seconds=${1:-10}; rounds=${2:-2}
source "$(dirname "$0")/common.sh"
peers=$(cd ../shared/peers 2>/dev/null && pwd) || { echo "needs ../shared/peers (gen_body.py, post.lua)"; exit 2; }
command -v wrk >/dev/null || { echo "needs wrk"; exit 2; }
python3 "$peers/gen_body.py" 500 1024 ndjson "$dir/plain.ndjson"
python3 - "$dir/plain.ndjson" "$dir/secrets.ndjson" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
env = ("\nAWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
       "\nGITHUB_TOKEN=ghp_16C7e42F292c6912E7710c838347Ae178B4a\nDB_PASSWORD=hunter2hunter2"
       "\nDATABASE_URL=postgres://app:Sup3r-s3cret@db:5432/x\n")
out = []
for i, line in enumerate(lines):
    event = json.loads(line)
    if i % 10 == 0:
        event["data"]["content"] += env
    out.append(json.dumps(event))
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY
base=$(cat "$dir/outboxd.toml")
run() { # LABEL BODY EXTRA_TOML
  rm -rf "$dir/data"; printf '%s\n%s\n' "$base" "$3" > "$dir/outboxd.toml"
  start_outboxd
  BODY=$2 CTYPE=application/x-ndjson wrk -t2 -c16 -d3s -s "$peers/post.lua" "http://127.0.0.1:$port/v1/events" >/dev/null 2>&1
  local line; line=$(BODY=$2 CTYPE=application/x-ndjson wrk -t2 -c16 -d"${seconds}s" --latency -s "$peers/post.lua" "http://127.0.0.1:$port/v1/events" 2>&1 | grep RESULT)
  local masked; masked=$(curl -s "http://127.0.0.1:$mport/metrics" | awk '/^outboxd_ingest_redactions_total/ {n += $2} END {print n + 0}')
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$1" "$line" "$masked" <<'PY'
import re, sys
label, line, masked = sys.argv[1], sys.argv[2], sys.argv[3]
f = dict(re.findall(r'(\w+)=([\d.]+)', line))
rate = float(f['req']) * 500 / float(f['dur_s'])
print(f"{label:<8} {rate:>10,.0f} events/s  p99 {float(f['p99_ms']):>6.1f} ms  non-2xx {int(f['errors_status'])}  masked {masked}")
PY
}
machine
for r in $(seq 1 "$rounds"); do
  run off "$dir/plain.ndjson" $'[redaction]\nbuiltins = false'
  run on "$dir/plain.ndjson" ""
  run secrets "$dir/secrets.ndjson" ""
done
