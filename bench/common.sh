# Shared by the bench scripts (sourced): a release build, a fresh data dir,
# ports, a base config ($dir/outboxd.toml; scripts append sinks), starting
# outboxd and cleaning up after it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
cargo build --release --quiet --bin outboxd --bin outboxd-bench
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000)); mport=$((port + 1)); extra_port=$((port + 2))
pid=
extra_pid=
trap 'kill $pid $extra_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
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

# Starts outboxd on $dir/outboxd.toml and waits until it answers.
start_outboxd() {
  target/release/outboxd run --config "$dir/outboxd.toml" 2>"$dir/log" &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "outboxd did not start:"; cat "$dir/log"; exit 1
}

rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$pid/status; }

machine() {
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
}
