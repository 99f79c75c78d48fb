#!/usr/bin/env bash
# A/B of server builds under the same small-room load: each binary is started on loopback,
# `switchboard-load` joins one room of P participants to it, and over a fixed window of media
# the script reads
#   - the media thread's CPU time and time slices from /proc/<pid>/task/<tid>/schedstat
#     (nanoseconds, not clock ticks: a room of two costs the server ~25 ms a second, and the
#     10 ms ticks of /proc/<pid>/stat are too coarse to compare two builds),
#   - the whole process's CPU time from /proc/<pid>/stat, as the load tool reports it,
#   - switchboard_rtp_forwarded_total from /metrics,
# and prints CPU per forwarded packet, time slices a second (wake-ups plus returns from
# preemption) and CPU per slice.
#
# Two ways to compare (docs/performance.md, "Small rooms"):
#   - alternating (default): the builds take turns, one run at a time. The machine's speed
#     drifts by ±10-15 % between runs, so compare over many rounds.
#   - simultaneous (-s, exactly two builds): both servers run at once, each under a load tool
#     of its own, so both see the same machine in the same seconds; each round prints the
#     ratio B/A of their CPU per forwarded packet, and the builds swap ports every round. Two
#     copies of one build (A/A) differ by 1-2 % per round here. Both loads share the two
#     cores, so absolute figures are not those of a server alone.
#
# Usage: scripts/bench-ab.sh [-s] [-p PARTICIPANTS] [-r ROUNDS] [-w WINDOW_SECS] BIN [BIN ...]
# Needs target/release/switchboard-load (cargo build --release -p switchboard-load).
set -euo pipefail
cd "$(dirname "$0")/.."

P=2 ROUNDS=3 WIN=15 SIMULTANEOUS=0
while getopts "sp:r:w:" opt; do
  case "$opt" in
    s) SIMULTANEOUS=1 ;;
    p) P=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    w) WIN=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
usage="usage: $0 [-s] [-p P] [-r ROUNDS] [-w SECS] BIN [BIN ...]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
[ "$SIMULTANEOUS" = 0 ] || [ $# -eq 2 ] || { echo "-s compares exactly two builds" >&2; exit 2; }
LOAD=target/release/switchboard-load
[ -x "$LOAD" ] || { echo "build the load tool first: cargo build --release -p switchboard-load" >&2; exit 1; }

# Slot i (0 or 1): HTTP on 127.0.0.1:1848$((i*10)), media on UDP 18482 / 18492.
http_port() { echo $((18480 + 10 * $1)); }
forwarded() {
  curl -s "http://127.0.0.1:$(http_port "$1")/metrics" |
    awk '/^switchboard_rtp_forwarded_total /{print $2}'
}

# Starts BIN in SLOT with a load tool; sets SPID[slot], LPID[slot], DATA[slot].
declare -a SPID LPID DATA TID RUN0 SLICES0 PROC0 FWD0
start() {
  local bin=$1 slot=$2 http
  http=$(http_port "$slot")
  DATA[$slot]=$(mktemp -d)
  RUST_LOG=warn "$bin" --http-addr "127.0.0.1:$http" --udp-port $((http + 2)) \
    --data-dir "${DATA[$slot]}" >/dev/null 2>&1 &
  SPID[$slot]=$!
  sleep 1
  "$LOAD" --server "http://127.0.0.1:$http" --server-pid "${SPID[$slot]}" --rooms 1 \
    --participants "$P" --duration $((WIN + 10)) --no-nack --baseline-secs 0 >/dev/null 2>&1 &
  LPID[$slot]=$!
}

# Media flows once every pair is connected; then let the join keyframes pass.
await_media() {
  local slot
  for slot in "$@"; do
    for _ in $(seq 1 120); do
      [ "$(forwarded "$slot" || echo 0)" -gt 1000 ] 2>/dev/null && break
      sleep 0.5
    done
  done
  sleep 2
}

mark() {
  local slot=$1 spid=${SPID[$1]}
  TID[$slot]=$(grep -l '^media-0$' /proc/"$spid"/task/*/comm | cut -d/ -f5)
  read -r RUN0[$slot] _ SLICES0[$slot] <"/proc/$spid/task/${TID[$slot]}/schedstat"
  PROC0[$slot]=$(awk '{print $14 + $15}' "/proc/$spid/stat")
  FWD0[$slot]=$(forwarded "$slot")
}

# Prints "BIN media-ns-per-fwd ..." for SLOT since its mark.
report() {
  local bin=$1 slot=$2 spid=${SPID[$2]} run1 slices1 proc1 fwd1
  read -r run1 _ slices1 <"/proc/$spid/task/${TID[$slot]}/schedstat"
  proc1=$(awk '{print $14 + $15}' "/proc/$spid/stat")
  fwd1=$(forwarded "$slot")
  awk -v r=$((run1 - RUN0[slot])) -v s=$((slices1 - SLICES0[slot])) \
      -v f=$((fwd1 - FWD0[slot])) -v p=$((proc1 - PROC0[slot])) -v t="$(getconf CLK_TCK)" \
      -v w="$WIN" -v b="$bin" 'BEGIN {
    printf "%-40s media thread %6.1f us/fwd  process %6.1f us/fwd  %5.0f slices/s  %5.1f us/slice  %6.0f fwd/s\n",
      b, r / f / 1000, p * 1e6 / t / f, s / w, r / s / 1000, f / w }'
}

stop() {
  local slot
  for slot in "$@"; do
    wait "${LPID[$slot]}" || true
    kill "${SPID[$slot]}"; wait "${SPID[$slot]}" 2>/dev/null || true
    rm -rf "${DATA[$slot]}"
  done
}

echo "$(date -u +%FT%TZ) 1 x $P, window ${WIN}s, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$SIMULTANEOUS" = 0 ]; then
  for round in $(seq 1 "$ROUNDS"); do
    for bin in "$@"; do
      start "$bin" 0
      await_media 0
      mark 0
      sleep "$WIN"
      report "$bin" 0
      stop 0
    done
  done
  exit 0
fi

A=$1 B=$2
ratios=()
for round in $(seq 1 "$ROUNDS"); do
  # A in slot 0 on odd rounds, in slot 1 on even ones.
  a=$(((round + 1) % 2)) b=$((round % 2))
  start "$A" "$a"
  start "$B" "$b"
  await_media 0 1
  mark 0; mark 1
  sleep "$WIN"
  la=$(report "$A" "$a"); lb=$(report "$B" "$b")
  stop 0 1
  echo "$la"; echo "$lb"
  ratio=$(awk -v x="$(awk '{print $4}' <<<"$la")" -v y="$(awk '{print $4}' <<<"$lb")" \
    'BEGIN { printf "%.3f", y / x }')
  ratios+=("$ratio")
  echo "round $round: B/A $ratio"
done
printf '%s\n' "${ratios[@]}" | awk '{ s += $1; q += $1 * $1; n++ } END {
  m = s / n; sd = n > 1 ? sqrt((q - n * m * m) / (n - 1)) : 0
  printf "B/A over %d rounds: mean %.3f, standard deviation %.3f, standard error %.3f\n",
    n, m, sd, sd / sqrt(n) }'
