#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package) unless it is already there.
# promtool checks and unit-tests the alerting rules (e2e/tests/alerts.rs); $PROMTOOL names
# another binary. Safe to run again: it does nothing when promtool is found.
set -euo pipefail

if [ -n "${PROMTOOL:-}" ] && [ -x "${PROMTOOL}" ]; then
  echo "promtool: ${PROMTOOL} ($("${PROMTOOL}" --version 2>&1 | head -n 1))"
  exit 0
fi
if command -v promtool >/dev/null 2>&1; then
  echo "promtool: $(command -v promtool) ($(promtool --version 2>&1 | head -n 1))"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "promtool is missing and this system has no apt-get: install Prometheus' promtool" \
    "(2.42 or newer) and put it on PATH, or set PROMTOOL to its path" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "promtool is missing: run this script as root (it installs Debian's prometheus" \
      "package with apt-get), or set PROMTOOL to a promtool binary" >&2
    exit 1
  fi
fi

echo "promtool: installing Debian's prometheus package"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# Where an init system runs, the package also starts a Prometheus server; promtool is all the
# tests need, and the server is left as the package set it up.
echo "promtool: $(command -v promtool) ($(promtool --version 2>&1 | head -n 1))"
