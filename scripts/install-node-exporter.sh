#!/usr/bin/env bash
# Installs Debian's prometheus-node-exporter unless it is already there. The sidecar's process
# tests (sidecar/tests/process.rs) scrape it on a free loopback port when
# /usr/bin/prometheus-node-exporter exists, and fall back to the verifier's own /metrics
# otherwise. Safe to run again: it does nothing when the binary is found.
set -euo pipefail

BIN=/usr/bin/prometheus-node-exporter
if [ -x "$BIN" ]; then
  echo "node exporter: $BIN ($("$BIN" --version 2>&1 | head -n 1))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "node exporter: not installed and this system has no apt-get; the sidecar tests scrape" \
    "the verifier's /metrics instead" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "node exporter: not installed and not root; the sidecar tests scrape the verifier's" \
      "/metrics instead" >&2
    exit 0
  fi
fi

echo "node exporter: installing Debian's prometheus-node-exporter package"
export DEBIAN_FRONTEND=noninteractive
# Another apt may hold the lock for a while (a parallel job): wait for it instead of failing.
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
  prometheus-node-exporter >/dev/null
# Where an init system runs, the package also starts the exporter on :9100; the tests start
# their own on a free port and leave that one as the package set it up.
echo "node exporter: $BIN ($("$BIN" --version 2>&1 | head -n 1))"
