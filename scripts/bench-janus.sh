#!/usr/bin/env bash
# One command for the comparison with Janus VideoRoom (issue #7): the same load against
# Switchboard and against Janus, each run in a network namespace of its own, and the ratio of
# their server CPU time per forwarded packet.
#
#   1. installs the Debian package `janus` if it is missing;
#   2. creates two network namespaces joined by a veth pair: the servers' side (10.77.0.1/24)
#      and the load tool's side (10.77.0.2/24). Both ends live only in namespaces this script
#      creates; neither has a default route, so nothing reaches the host's network. (Janus does
#      not gather loopback candidates, hence the veth pair instead of 127.0.0.1.)
#   3. for each configuration, starts a fresh Switchboard and then a fresh Janus (minimal
#      configuration written to a temporary directory: the VideoRoom plugin, the HTTP transport,
#      no other plugin, transport, event handler or logger, log level 3, host candidates on the
#      veth interface only) and runs `switchboard-load` against each with the same arguments;
#   4. prints both tables side by side and the Janus/Switchboard ratio, and writes one JSON
#      report per run plus `janus-comparison.json` to $OUT.
#
# Both servers are measured the same way: CPU time of the whole process from /proc/<pid>/stat,
# divided by the packets the clients received during the window (`--count-received`; Janus has
# no forwarded-packet counter, so Switchboard's /metrics count is not used for the ratio).
#
# Usage: scripts/bench-janus.sh [--quick]      (run as root: it creates network namespaces)
# Env: SERVER_BIN (default target/release/switchboard; copy it elsewhere if someone may rebuild
#      it during the session), LOAD_BIN (default target/release/switchboard-load, built if
#      missing), OUT (default target/bench-results), DURATION (seconds per run, default 20),
#      CONFIGS ("ROOMSxPARTICIPANTS ...", default "1x2 1x4 1x20 5x4"),
#      LOAD_ARGS (extra switchboard-load flags for both targets, default "--no-nack", as
#      scripts/bench.sh), JANUS_DEBUG (Janus log level, default 3: errors and warnings),
#      SIMULTANEOUS=1 (both servers run at once, each under a load tool of its own, started
#      together; no raw baseline. The ratio then compares the two on the machine of the same
#      seconds, as `scripts/bench-ab.sh -s` does for two builds; both share the two cores, so
#      the absolute figures are not those of a server alone).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

SERVER_BIN=${SERVER_BIN:-target/release/switchboard}
LOAD_BIN=${LOAD_BIN:-target/release/switchboard-load}
OUT=${OUT:-target/bench-results}
DURATION=${DURATION:-20}
CONFIGS=${CONFIGS:-"1x2 1x4 1x20 5x4"}
LOAD_ARGS=${LOAD_ARGS:---no-nack}
JANUS_DEBUG=${JANUS_DEBUG:-3}
SIMULTANEOUS=${SIMULTANEOUS:-0}
if [ "$QUICK" = 1 ]; then
  DURATION=5
  CONFIGS="1x2 1x4"
fi

SRV_NS=sbjanus-srv-$$
CLI_NS=sbjanus-cli-$$
SRV_IF=veth-srv
CLI_IF=veth-cli
SRV_IP=10.77.0.1
CLI_IP=10.77.0.2
SB_HTTP_PORT=8080
SB_UDP_PORT=7882
JANUS_HTTP_PORT=8088

if [ "$(id -u)" != 0 ]; then
  echo "run as root: the script creates network namespaces" >&2
  exit 1
fi
if ! command -v janus >/dev/null; then
  echo "== installing janus" >&2
  apt-get install -y janus || { apt-get update && apt-get install -y janus; }
fi
SERVER_BIN=$(realpath "$SERVER_BIN")
if [ ! -x "$LOAD_BIN" ]; then
  cargo build --release -p switchboard-load
fi
LOAD_BIN=$(realpath "$LOAD_BIN")
mkdir -p "$OUT"
OUT=$(realpath "$OUT")

TMP=$(mktemp -d /tmp/bench-janus.XXXXXX)
SB_PID= JANUS_PID=
cleanup() {
  stop_server "$SB_PID"
  stop_server "$JANUS_PID"
  ip netns del "$SRV_NS" 2>/dev/null || true
  ip netns del "$CLI_NS" 2>/dev/null || true
  rm -rf "$TMP"
}
# Stops a server this script started (SIGTERM, then SIGKILL after 10 s).
stop_server() {
  local pid=$1
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# The namespaces and the veth pair, created directly inside them.
ip netns add "$SRV_NS"
ip netns add "$CLI_NS"
ip link add "$SRV_IF" netns "$SRV_NS" type veth peer name "$CLI_IF" netns "$CLI_NS"
ip -n "$SRV_NS" addr add "$SRV_IP/24" dev "$SRV_IF"
ip -n "$CLI_NS" addr add "$CLI_IP/24" dev "$CLI_IF"
for ns in "$SRV_NS" "$CLI_NS"; do
  ip -n "$ns" link set lo up
done
ip -n "$SRV_NS" link set "$SRV_IF" up
ip -n "$CLI_NS" link set "$CLI_IF" up

# A minimal Janus: its own folders with only the VideoRoom plugin and the HTTP transport in them.
JCFG=$TMP/janus
mkdir -p "$JCFG/plugins" "$JCFG/transports" "$JCFG/events" "$JCFG/loggers"
JLIB=$(dirname "$(dirname "$(dpkg -L janus | grep -m1 '/plugins/libjanus_videoroom.so$')")")
# (Janus loads only files named *.so.)
ln -s "$JLIB/plugins/libjanus_videoroom.so" "$JCFG/plugins/libjanus_videoroom.so"
ln -s "$JLIB/transports/libjanus_http.so" "$JCFG/transports/libjanus_http.so"
cat > "$JCFG/janus.jcfg" <<EOF
general: {
	configs_folder = "$JCFG"
	plugins_folder = "$JCFG/plugins"
	transports_folder = "$JCFG/transports"
	events_folder = "$JCFG/events"
	loggers_folder = "$JCFG/loggers"
	debug_level = $JANUS_DEBUG
	server_name = "bench-janus"
	session_timeout = 60
	interface = "$SRV_IP"
}
certificates: {
}
media: {
	ipv6 = false
}
nat: {
	nice_debug = false
	ice_enforce_list = "$SRV_IF"
	ignore_mdns = true
}
plugins: {
}
transports: {
}
loggers: {
}
events: {
	broadcast = false
}
EOF
cat > "$JCFG/janus.plugin.videoroom.jcfg" <<EOF
general: {
	events = false
}
EOF
cat > "$JCFG/janus.transport.http.jcfg" <<EOF
general: {
	json = "plain"
	base_path = "/janus"
	http = true
	port = $JANUS_HTTP_PORT
	ip = "$SRV_IP"
	https = false
}
admin: {
	admin_http = false
	admin_https = false
}
cors: {
}
EOF

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "switchboard: $SERVER_BIN ($(sha256sum "$SERVER_BIN" | cut -c1-12))"
  echo "janus: $(janus --version 2>/dev/null | head -n1) ($(dpkg-query -W -f '${Version}' janus))"
  echo "nproc: $(nproc)"
  echo "kernel: $(uname -r)"
  echo "loadavg: $(cat /proc/loadavg)"
} | tee "$OUT/janus-comparison-machine.txt" >&2

wait_http() { # namespace, url
  for _ in $(seq 200); do
    if ip netns exec "$1" curl -s -o /dev/null --max-time 1 "$2"; then
      return 0
    fi
    sleep 0.1
  done
  echo "no answer from $2" >&2
  return 1
}

# A fresh Switchboard in the servers' namespace; sets SB_PID.
start_switchboard() {
  rm -rf "$TMP/sb-data"
  RUST_LOG=${SWITCHBOARD_LOG:-warn} ip netns exec "$SRV_NS" "$SERVER_BIN" \
    --http-addr "$SRV_IP:$SB_HTTP_PORT" --udp-port "$SB_UDP_PORT" \
    --data-dir "$TMP/sb-data" --shutdown-grace 0 \
    > "$OUT/janus-cmp-switchboard-$1.log" 2>&1 &
  SB_PID=$!
  wait_http "$SRV_NS" "http://$SRV_IP:$SB_HTTP_PORT/healthz"
}

# A fresh Janus in the servers' namespace; sets JANUS_PID.
start_janus() {
  ip netns exec "$SRV_NS" janus -C "$JCFG/janus.jcfg" -F "$JCFG" -d "$JANUS_DEBUG" -o \
    > "$OUT/janus-cmp-janus-$1.log" 2>&1 &
  JANUS_PID=$!
  wait_http "$SRV_NS" "http://$SRV_IP:$JANUS_HTTP_PORT/janus/info"
}

# The load tool against one of them: load TARGET PID CONFIG [ARGS...].
load() {
  local target=$1 pid=$2 cfg=$3
  shift 3
  local to=(--server "http://$SRV_IP:$SB_HTTP_PORT")
  [ "$target" = janus ] && to=(--janus-url "http://$SRV_IP:$JANUS_HTTP_PORT/janus")
  ip netns exec "$CLI_NS" "$LOAD_BIN" --target "$target" "${to[@]}" --server-pid "$pid" "$@" \
    --json-out "$OUT/janus-cmp-$target-$cfg.json" > "$OUT/janus-cmp-$target-$cfg.txt"
}

REPORTS=()
for cfg in $CONFIGS; do
  rooms=${cfg%x*}
  participants=${cfg#*x}
  common=(--rooms "$rooms" --participants "$participants" --duration "$DURATION"
          --client-ip "$CLI_IP" --count-received $LOAD_ARGS)

  if [ "$SIMULTANEOUS" = 1 ]; then
    echo "== Switchboard and Janus at once, ${rooms} room(s) × ${participants} participants, ${DURATION} s (loadavg $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    start_switchboard "$cfg"
    start_janus "$cfg"
    load switchboard "$SB_PID" "$cfg" "${common[@]}" --baseline-secs 0 &
    sb_load=$!
    load janus "$JANUS_PID" "$cfg" "${common[@]}" --baseline-secs 0 &
    janus_load=$!
    wait "$sb_load"
    wait "$janus_load"
    cat "$OUT/janus-cmp-switchboard-$cfg.txt" "$OUT/janus-cmp-janus-$cfg.txt"
  else
    echo "== Switchboard, ${rooms} room(s) × ${participants} participants, ${DURATION} s (loadavg $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    start_switchboard "$cfg"
    load switchboard "$SB_PID" "$cfg" "${common[@]}"
    cat "$OUT/janus-cmp-switchboard-$cfg.txt"
    stop_server "$SB_PID"
    SB_PID=

    echo "== Janus, ${rooms} room(s) × ${participants} participants, ${DURATION} s (loadavg $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    start_janus "$cfg"
    load janus "$JANUS_PID" "$cfg" "${common[@]}"
    cat "$OUT/janus-cmp-janus-$cfg.txt"
  fi
  stop_server "$SB_PID"
  stop_server "$JANUS_PID"
  SB_PID= JANUS_PID=
  REPORTS+=("$OUT/janus-cmp-switchboard-${cfg}.json" "$OUT/janus-cmp-janus-${cfg}.json")
done

"$LOAD_BIN" --compare "${REPORTS[@]}" --json-out "$OUT/janus-comparison.json" \
  | tee "$OUT/janus-comparison.txt"
echo "results in $OUT" >&2
