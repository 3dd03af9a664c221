#!/usr/bin/env bash
# Durable-ingest benchmark: starts a release outboxd on a fresh data dir
# (sync = "full"), then drives it with outboxd-bench:
#   1. 1 KiB events in batches of 500, 8 connections
#   2. single-event requests, 64 connections
# and reports the daemon's RSS idle and under load.
#   bench/ingest.sh [seconds-per-run]     (default 15)
seconds=${1:-15}
source "$(dirname "$0")/common.sh"
start_outboxd
sleep 2
machine
echo "outboxd RSS idle: $(rss) MiB"
bench() { target/release/outboxd-bench --url "http://127.0.0.1:$port" --duration "${seconds}s" --unique-ids --watch-pid $pid "$@"; }
echo; echo "== batched: 1 KiB events, 500 per request, 8 connections"
bench --batch 500 --concurrency 8 --event-size 1024
echo; echo "== single-event requests: 1 KiB, 64 connections"
bench --batch 1 --concurrency 64 --event-size 1024
