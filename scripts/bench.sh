#!/usr/bin/env bash
# One command for a whole benchmark session on this machine:
#   1. builds the server and the load tool (release);
#   2. runs the criterion benches: the media plane in process (one publisher to 1, 4 and 19
#      legs, no sockets) and the micro-benches (munger, demux, per-leg rewrite+encrypt, raw
#      baseline);
#   3. runs switchboard-load against a server it starts on free loopback ports, for each
#      configuration below, writing one JSON report per run to $OUT.
# Usage: scripts/bench.sh [--quick] [--no-criterion]
# Env: OUT (default target/bench-results), DURATION (seconds per run, default 20),
#      CONFIGS ("ROOMSxPARTICIPANTS ...", default "1x2 1x4 1x20 5x4 10x2"),
#      LOAD_ARGS (extra switchboard-load flags, default "--no-nack": on a 2-core machine the
#      load tool's receivers fall behind at 20 participants and their NACKs would make the
#      server retransmit; add "--sched-idle" for clients that never delay the server, see
#      docs/performance.md, "The clients' scheduling class").
# Only loopback addresses are used. Numbers depend on what else runs: `uptime` is recorded.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
CRITERION=1
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --no-criterion) CRITERION=0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-target/bench-results}
DURATION=${DURATION:-20}
CONFIGS=${CONFIGS:-"1x2 1x4 1x20 5x4 10x2"}
LOAD_ARGS=${LOAD_ARGS:---no-nack}
if [ "$QUICK" = 1 ]; then
  DURATION=5
  CONFIGS="1x2 1x4"
fi
mkdir -p "$OUT"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  echo "kernel: $(uname -r)"
  lscpu | head -n 15
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

cargo build --release --bin switchboard -p switchboard
cargo build --release -p switchboard-load

if [ "$CRITERION" = 1 ]; then
  echo "== criterion micro-benches (uptime: $(uptime))" >&2
  cargo bench --bench media_plane --bench forwarding -- --warm-up-time 1 --measurement-time 3 2>&1 \
    | tee "$OUT/criterion.txt" >&2
fi

for cfg in $CONFIGS; do
  rooms=${cfg%x*}
  participants=${cfg#*x}
  echo "== ${rooms} room(s) × ${participants} participants, ${DURATION} s, $LOAD_ARGS (uptime: $(uptime))" >&2
  target/release/switchboard-load \
    --spawn target/release/switchboard \
    --rooms "$rooms" --participants "$participants" --duration "$DURATION" $LOAD_ARGS \
    --json-out "$OUT/load-${rooms}x${participants}.json" | tee "$OUT/load-${rooms}x${participants}.txt"
done
echo "results in $OUT" >&2
