#!/usr/bin/env bash
# Capacity: how many forwarded packets a second one core of Switchboard carries before it falls
# behind. On a 2-core machine the load tool cannot generate enough load to saturate a whole core
# (it spends about three times the server's CPU receiving what the server sends), so the server
# runs in a cgroup with a CPU quota, a fraction of one core, and the load tool offers it a load
# near that fraction. A run "kept up" when the server forwarded what the clients sent, without
# loss; its CPU per forwarded packet at the quota is what a saturated core spends, and 1 s divided
# by it is the core's capacity (see docs/performance.md, "Capacity").
#
# The quota's throttling (the server runs for QUOTA of every PERIOD, then waits) delays packets
# by up to a period, so the delay figures of these runs are not what an unthrottled core at the
# same load would show: use scripts/bench.sh for delay.
#
# Usage: scripts/bench-capacity.sh      (as root: it creates a cgroup)
# Env: RUNS ("QUOTA_PERCENT:ROOMSxPARTICIPANTS ...", default "30:1x20 40:1x20 5:5x4 10:5x4
#      5:10x2"), PERIOD_US (quota period, default 20000), DURATION (seconds per run, default 15),
#      LOAD_ARGS (extra switchboard-load flags, default "--no-nack"), OUT (default
#      target/bench-results/capacity), SERVER_BIN, LOAD_BIN, HTTP_PORT (default 18090),
#      UDP_PORT (default 17892). Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_BIN=${SERVER_BIN:-target/release/switchboard}
LOAD_BIN=${LOAD_BIN:-target/release/switchboard-load}
RUNS=${RUNS:-"30:1x20 40:1x20 5:5x4 10:5x4 5:10x2"}
PERIOD_US=${PERIOD_US:-20000}
DURATION=${DURATION:-15}
LOAD_ARGS=${LOAD_ARGS:---no-nack}
OUT=${OUT:-target/bench-results/capacity}
HTTP_PORT=${HTTP_PORT:-18090}
UDP_PORT=${UDP_PORT:-17892}
mkdir -p "$OUT"

[ -x "$SERVER_BIN" ] || cargo build --release --bin switchboard -p switchboard
[ -x "$LOAD_BIN" ] || cargo build --release -p switchboard-load

# cgroup v2 where its cpu controller is enabled, else v1's cpu hierarchy.
if grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  CG=/sys/fs/cgroup/switchboard-capacity
  mkdir -p "$CG"
  set_quota() { echo "$(($1 * PERIOD_US / 100)) $PERIOD_US" > "$CG/cpu.max"; }
elif [ -d /sys/fs/cgroup/cpu ]; then
  CG=/sys/fs/cgroup/cpu/switchboard-capacity
  mkdir -p "$CG"
  set_quota() {
    echo "$PERIOD_US" > "$CG/cpu.cfs_period_us"
    echo "$(($1 * PERIOD_US / 100))" > "$CG/cpu.cfs_quota_us"
  }
else
  echo "no cgroup cpu controller here: cannot hold the server to a CPU quota" >&2
  exit 1
fi

SERVER_PID=
DATA_DIR=
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
  [ -z "$DATA_DIR" ] || rm -rf "$DATA_DIR"
}
trap 'stop_server; rmdir "$CG" 2>/dev/null || true' EXIT

# One row of the summary from a run's table: did the server keep up, was it at its quota, and
# what a whole core would carry at the CPU per forwarded packet it spent.
summarize() {
  awk -v quota="$1" -v rooms="$2" -v p="$3" '
    /^client packets sent \/s/ { sent = $NF }
    /^server RTP forwarded \/s/ { fwd = $NF }
    /^server CPU \(s, share of one core\)/ { gsub(/[()]/, "", $NF); share = $NF }
    /^server CPU per forwarded packet \(ns\)/ { ns = $7 }
    /^loss \(%\)/ { loss = $NF }
    END {
      expected = sent * (p - 1)
      kept = (fwd >= 0.99 * expected && loss < 0.1) ? "yes" : "no"
      at_quota = (share >= 0.95 * quota / 100) ? "yes" : "no"
      per_core = ns > 0 ? 1e9 / ns : 0
      verdict = kept == "no" ? "saturated: a core carries about" : (at_quota == "yes" ? "at its limit: a core carries at least" : "not saturated: a core carries more than")
      printf "| %d %% | %d × %d | %.0f | %.0f | %.3f | %.2f µs | %s | %.1f %% | %s %.0f packets/s |\n", quota, rooms, p, expected, fwd, share, ns / 1000, kept, loss, verdict, per_core
    }' "$4"
}

{
  echo "| quota (of one core) | rooms × participants | packets/s to forward | forwarded /s | server CPU (cores) | CPU per forwarded packet | kept up | loss | capacity of one core |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} > "$OUT/summary.md"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  echo "cgroup: $CG, period ${PERIOD_US} µs"
} > "$OUT/machine.txt"

for run in $RUNS; do
  quota=${run%%:*}
  cfg=${run#*:}
  rooms=${cfg%x*}
  participants=${cfg#*x}
  set_quota "$quota"
  DATA_DIR=$(mktemp -d)
  # The shell joins the cgroup first, so the server and all its threads are born in it.
  sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$CG" \
    env RUST_LOG=warn "$SERVER_BIN" --http-addr "127.0.0.1:$HTTP_PORT" --udp-port "$UDP_PORT" \
    --data-dir "$DATA_DIR" > "$OUT/server-$quota-$cfg.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null && break
    sleep 0.1
  done
  echo "== server held to ${quota} % of one core, ${rooms} room(s) × ${participants}, $LOAD_ARGS" >&2
  # shellcheck disable=SC2086
  "$LOAD_BIN" --server "http://127.0.0.1:$HTTP_PORT" --server-pid "$SERVER_PID" \
    --rooms "$rooms" --participants "$participants" --duration "$DURATION" --baseline-secs 0 \
    $LOAD_ARGS --json-out "$OUT/capacity-$quota-$cfg.json" | tee "$OUT/capacity-$quota-$cfg.txt"
  stop_server
  summarize "$quota" "$rooms" "$participants" "$OUT/capacity-$quota-$cfg.txt" >> "$OUT/summary.md"
done
echo >&2
cat "$OUT/summary.md"
echo "results in $OUT" >&2
