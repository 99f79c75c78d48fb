#!/usr/bin/env bash
# Runs every test of Switchboard: unit, integration (real server, real WebRTC peers on
# loopback) and browser tests (real headless Chromium and Firefox). Installs what the tests
# need first.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- what the tests need ---------------------------------------------------------------
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || missing+=(firefox-esr)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v curl >/dev/null 2>&1 || missing+=(curl)          # a client inside a test's namespace
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux) # a server under a low open-file limit
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c "import aiortc" 2>/dev/null; then
  echo "==> aiortc (independent WHIP/WHEP client)"
  python3 -m pip install --quiet --disable-pip-version-check aiortc
fi
echo "==> npm packages for the browser tests"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# --- build once, then run everything ----------------------------------------------------
echo "==> build"
cargo build --release --all-targets --locked

# Tests run in a network namespace with only loopback when we may create one, so nothing
# can reach any address but 127.0.0.1.
isolated() {
  if unshare -n true 2>/dev/null; then
    unshare -n sh -c 'ip link set lo up && "$@"' sh "$@"
  else
    "$@"
  fi
}

echo "==> unit and integration tests (server and load tool)"
isolated cargo test --release --locked --offline --workspace

# The vendored rtc carries Switchboard's patches (vendor/rtc/SWITCHBOARD.md): its own unit
# tests, with those of the patches, run too.
echo "==> unit tests of the vendored rtc"
isolated cargo test --release --locked --offline -p rtc --lib

# The benches measure, they do not judge; running each once (criterion's --test) keeps them
# working, including the in-process media plane with its own check that every leg forwards.
echo "==> benches, once each"
isolated cargo bench --locked --offline --bench media_plane --bench forwarding -- --test

echo "==> browser tests (headless Chromium and Firefox)"
SWITCHBOARD_BIN="$PWD/target/release/switchboard" isolated node --test --test-concurrency=1 tests/browser/
