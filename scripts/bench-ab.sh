#!/usr/bin/env bash
# Alternating A/B of server builds under the same small-room load: for each round, each binary
# in turn is started on loopback, `switchboard-load` joins one room of P participants, and over
# a fixed window of media the script reads
#   - the media thread's CPU time and time slices from /proc/<pid>/task/<tid>/schedstat
#     (nanoseconds, not clock ticks: a room of two costs the server ~25 ms a second, and the
#     10 ms ticks of /proc/<pid>/stat are too coarse to compare two builds),
#   - the whole process's CPU time from /proc/<pid>/stat, as the load tool reports it,
#   - switchboard_rtp_forwarded_total from /metrics,
# and prints CPU per forwarded packet for both, time slices a second (wake-ups plus returns
# from preemption) and CPU per slice. Run-to-run noise on the 2-core VM is ±10 %, so compare
# builds over several rounds (docs/performance.md, "Small rooms").
#
# Usage: scripts/bench-ab.sh [-p PARTICIPANTS] [-r ROUNDS] [-w WINDOW_SECS] BIN [BIN ...]
# Needs target/release/switchboard-load (cargo build --release -p switchboard-load).
set -euo pipefail
cd "$(dirname "$0")/.."

P=2 ROUNDS=3 WIN=15
while getopts "p:r:w:" opt; do
  case "$opt" in
    p) P=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    w) WIN=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-p P] [-r ROUNDS] [-w SECS] BIN [BIN ...]" >&2; exit 2; }
LOAD=target/release/switchboard-load
[ -x "$LOAD" ] || { echo "build the load tool first: cargo build --release -p switchboard-load" >&2; exit 1; }

HTTP=127.0.0.1:18480
UDP=18482
forwarded() {
  curl -s "http://$HTTP/metrics" | awk '/^switchboard_rtp_forwarded_total /{print $2}'
}

one_run() {
  local bin=$1 data spid lpid tid
  data=$(mktemp -d)
  RUST_LOG=warn "$bin" --http-addr "$HTTP" --udp-port "$UDP" --data-dir "$data" >/dev/null 2>&1 &
  spid=$!
  sleep 1
  "$LOAD" --server "http://$HTTP" --server-pid "$spid" --rooms 1 --participants "$P" \
    --duration $((WIN + 8)) --no-nack --baseline-secs 0 >/dev/null 2>&1 &
  lpid=$!
  # Media flows once every pair is connected; then let the join keyframes pass.
  for _ in $(seq 1 120); do
    [ "$(forwarded || echo 0)" -gt 1000 ] 2>/dev/null && break
    sleep 0.5
  done
  sleep 2
  tid=$(grep -l '^media-0$' /proc/"$spid"/task/*/comm | cut -d/ -f5)
  read -r run0 _ slices0 <"/proc/$spid/task/$tid/schedstat"
  proc0=$(awk '{print $14 + $15}' "/proc/$spid/stat")
  fwd0=$(forwarded)
  sleep "$WIN"
  read -r run1 _ slices1 <"/proc/$spid/task/$tid/schedstat"
  proc1=$(awk '{print $14 + $15}' "/proc/$spid/stat")
  fwd1=$(forwarded)
  wait "$lpid" || true
  kill "$spid"; wait "$spid" 2>/dev/null || true
  rm -rf "$data"
  local ticks
  ticks=$(getconf CLK_TCK)
  awk -v r=$((run1 - run0)) -v s=$((slices1 - slices0)) -v f=$((fwd1 - fwd0)) \
      -v p=$((proc1 - proc0)) -v t="$ticks" -v w="$WIN" -v b="$bin" 'BEGIN {
    printf "%-40s media thread %6.1f us/fwd  process %6.1f us/fwd  %5.0f slices/s  %5.1f us/slice  %6.0f fwd/s\n",
      b, r / f / 1000, p * 1e6 / t / f, s / w, r / s / 1000, f / w }'
}

echo "$(date -u +%FT%TZ) 1 x $P, window ${WIN}s, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    one_run "$bin"
  done
done
