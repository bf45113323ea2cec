# Coherence — the two commands a new user runs are `make demo` and `make test`.

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN := $(TARGET_DIR)/release/coherence
DEMO_DIR := $(TARGET_DIR)/demo

.PHONY: all build demo test lint fmt bench bench-core bench-compare clean

all: build

build:
	$(CARGO) build --release --locked -p coherence

## demo: simulate a cascade (seed 42, 6 hours, 3 hosts) and analyze it, printing the incidents.
demo: build
	@mkdir -p $(DEMO_DIR)
	$(BIN) simulate --seed 42 --hours 6 --out $(DEMO_DIR)/telemetry.jsonl
	$(BIN) validate $(DEMO_DIR)/telemetry.jsonl
	$(BIN) analyze $(DEMO_DIR)/telemetry.jsonl --window 1h --format text

## test: every unit, property and CLI test of the workspace, and the doc tests.
test:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi
	$(CARGO) test --workspace --locked --doc

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

clean:
	$(CARGO) clean
	rm -rf $(DEMO_DIR) bench/out
