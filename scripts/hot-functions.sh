#!/usr/bin/env bash
# Writes link/hot-functions.txt, the order in which build.rs has the linker lay out the server's
# hottest functions: a profile of the media thread in a room of two (where every packet runs
# with cold caches), every function of the binary found in its call stacks, most samples
# first. The names are mangled with hashes that change with the toolchain, Cargo.lock and
# the build's settings (and with what is built at once); names a build does not have are
# skipped, so rerun this after any of them changes (docs/design.md, "The hot path is laid out first").
#
# Usage: scripts/hot-functions.sh   (needs perf: apt-get install linux-perf; run as root)
set -euo pipefail
cd "$(dirname "$0")/.."

# The server built alone, as `cargo run --release` and the Dockerfile build it: built together
# with the load tool, shared dependencies get other features, and every hash changes.
cargo build --release -p switchboard-load
cargo build --release --bin switchboard
bin=$(mktemp -d)/switchboard
cp target/release/switchboard "$bin"
data=$(mktemp -d)
RUST_LOG=warn "$bin" --http-addr 127.0.0.1:18580 --udp-port 18582 --data-dir "$data" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1
target/release/switchboard-load --server http://127.0.0.1:18580 --server-pid "$server" \
  --rooms 1 --participants 2 --duration 30 --no-nack --baseline-secs 0 >/dev/null 2>&1 &
load=$!
sleep 10
media=$(grep -l '^media-0$' /proc/"$server"/task/*/comm | cut -d/ -f5)
perf record -q -F 2999 --call-graph dwarf,16384 -t "$media" -o "$data/perf.data" -- sleep 15
wait "$load"
perf script -i "$data/perf.data" -F ip,sym,dso --no-inline --no-demangle 2>/dev/null |
  awk -v bin="($bin)" '$NF == bin { print $2 }' | sort | uniq -c | sort -rn |
  awk '{ print $2 }' >link/hot-functions.txt
echo "link/hot-functions.txt: $(wc -l <link/hot-functions.txt) functions" >&2
