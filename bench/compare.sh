#!/usr/bin/env bash
# Side-by-side of `coherence analyze` and the same statistics in pandas/numpy, on 1,000,230
# simulated telemetry lines: end-to-end wall clock (best of 3), the rolling-statistics kernels
# against the matching pandas phases, and whether both computed the same results.
# See bench/README.md.
#
#   bench/compare.sh                 # everything (about 3 minutes on 2 cores, first run longer)
#   RUNS=5 bench/compare.sh          # best of 5 instead of 3
#   SKIP_KERNEL=1 bench/compare.sh   # reuse the last criterion kernel measurements
#
# Exit status: 0 when the results agree, 1 when they do not, 2 when a step fails.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${BIN:-$ROOT/target/release/coherence}
VENV=$ROOT/bench/.venv
OUT=$ROOT/bench/out
DATA=$OUT/telemetry-1m.jsonl
RUNS=${RUNS:-3}
HOURS=1111 # 2 healthy hosts for 1111 h + 1 stressed host until its crash = 1,000,230 lines
MIN_LINES=1000000
CRITERION_DIR=${CRITERION_HOME:-${CARGO_TARGET_DIR:-$ROOT/target}/criterion}
# The Rust kernels compared with pandas (see KERNELS in compare.py).
KERNELS="rolling_1h_8_signals_1m rolling_1h_8_signals_1m_par risk_1h_8_signals_1m risk_1h_8_signals_1m_par"

fail() {
	echo "compare.sh: $*" >&2
	exit 2
}

mkdir -p "$OUT"

# 1. Python environment: reuse bench/.venv when it already has the pinned packages.
if [ ! -x "$VENV/bin/python" ]; then
	echo "creating $VENV"
	python3 -m venv "$VENV" || fail "python3 -m venv failed"
fi
if ! "$VENV/bin/python" - "$ROOT/bench/requirements.txt" <<'EOF'; then
import sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
	echo "installing bench/requirements.txt into $VENV"
	"$VENV/bin/pip" install --quiet -r "$ROOT/bench/requirements.txt" || fail "pip install failed"
fi

# 2. The release build (make bench-compare builds it first).
if [ ! -x "$BIN" ]; then
	cargo build --release --locked -p coherence || fail "release build failed"
fi

# 3. The data, generated once.
if [ ! -s "$DATA" ]; then
	echo "generating $DATA"
	"$BIN" simulate --seed 42 --hours "$HOURS" --healthy 2 --stressed 1 --out "$DATA"
fi
LINES=$(wc -l <"$DATA")
[ "$LINES" -ge "$MIN_LINES" ] || fail "$DATA has $LINES lines, expected at least $MIN_LINES"
echo "data: $DATA, $LINES lines, $(du -h "$DATA" | cut -f1)"

# 4. The Rust kernels: criterion benches over the same shape of data, generated in memory.
missing=0
for k in $KERNELS; do
	[ -s "$CRITERION_DIR/kernel/$k/new/estimates.json" ] || missing=1
done
if [ "${SKIP_KERNEL:-0}" != 1 ] || [ "$missing" = 1 ]; then
	echo "measuring the Rust kernels (criterion kernel/{${KERNELS// /,}})"
	cargo bench --locked -p coherence-core --bench core -- \
		"^kernel/(${KERNELS// /|})\$" >"$OUT/kernel-bench.log" 2>&1 || {
		cat "$OUT/kernel-bench.log" >&2
		fail "kernel bench failed"
	}
	grep -A1 '^kernel/' "$OUT/kernel-bench.log" || true
fi
for k in $KERNELS; do
	[ -s "$CRITERION_DIR/kernel/$k/new/estimates.json" ] || fail "no criterion estimates for kernel/$k in $CRITERION_DIR"
done
echo

# 5. End to end, kernel ratio, and the results compared.
status=0
"$VENV/bin/python" "$ROOT/bench/compare.py" \
	--bin "$BIN" \
	--python "$VENV/bin/python" \
	--data "$DATA" \
	--out "$OUT" \
	--runs "$RUNS" \
	--criterion-dir "$CRITERION_DIR" || status=$?
echo
echo "outputs: $OUT/analyze.json $OUT/pandas.json $OUT/summary.json"
exit "$status"
