#!/usr/bin/env bash
# What the dashboard's real-browser test (make test-ui) needs: Debian's Chromium and
# playwright-core (ui-tests/, pinned by its package-lock.json). Idempotent: installs only what
# is missing. Chromium comes from Debian's packages, never from a browser download.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "install-browser: installing Debian's chromium"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # Another apt may hold the lock for a while (a parallel job): wait for it instead of failing.
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q chromium
fi
/usr/bin/chromium --version 2>/dev/null || true

if ! command -v node >/dev/null 2>&1; then
  echo "install-browser: node (>= 20) is needed to run ui-tests/" >&2
  exit 1
fi
if [ ! -d ui-tests/node_modules/playwright-core ]; then
  echo "install-browser: npm ci in ui-tests/"
  (cd ui-tests && npm ci --ignore-scripts --no-audit --no-fund)
fi
echo "install-browser: ready (node $(node --version), playwright-core $(node -p "require('./ui-tests/node_modules/playwright-core/package.json').version"))"
