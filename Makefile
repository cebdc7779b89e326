# The two commands a fresh clone needs:
#   make demo   start the local stack, build sluice, apply the demo topology, register the
#               schemas, start the payment provider stand-in (dev/payments.py), then run
#               every role with demo traffic and print a summary (Ctrl-C stops it)
#   make test   start the local stack and run every test, the fault suite included
#               (CI runs exactly this)
#
# Build output and downloads live outside the clone so later runs reuse them.
SLUICE_CACHE ?= $(HOME)/.cache/sluice
CARGO_TARGET_DIR ?= $(SLUICE_CACHE)/target
export SLUICE_CACHE CARGO_TARGET_DIR

SLUICE := $(CARGO_TARGET_DIR)/debug/sluice

.PHONY: demo test faults fuzz bench setup stack stack-down build lint deploy

# The demo's payment step calls dev/payments.py at PAYMENTS_URL (dev/demo.env), and the
# `orders-api` source polls dev/api.py, a list API without webhooks; both stop with the demo.
DEMO_API_PORT ?= 8766

demo: stack build deploy
	set -a && . dev/demo.env && set +a; \
	  python3 dev/payments.py --demo --port $${PAYMENTS_URL##*:} >/dev/null & payments=$$!; \
	  python3 dev/api.py --port $(DEMO_API_PORT) --items 200 >/dev/null & api=$$!; \
	  trap 'kill $$payments $$api 2>/dev/null' EXIT INT TERM; \
	  $(SLUICE) --config dev/demo.yaml run --demo

deploy:
	$(SLUICE) --config dev/demo.yaml doctor
	$(SLUICE) --config dev/demo.yaml topology apply
	$(SLUICE) --config dev/demo.yaml schemas register

test: stack lint
	dev/test

# The fault suite alone, long version (kills and restarts the broker and every role, stops
# the registry; real processes; prints an accounting table per scenario; docs/faults.md).
# `make test` runs the same scenarios at scale 1.
SLUICE_FAULTS_SCALE ?= 5
faults: stack
	SLUICE_FAULTS_SCALE=$(SLUICE_FAULTS_SCALE) cargo test --locked --test e2e -- --ignored --test-threads=1 --nocapture

# Fuzzes every provider mapping with mutated real fixtures for FUZZ_SECONDS, release build,
# stable Rust; needs no stack. Crashing inputs are saved under $(CARGO_TARGET_DIR)/fuzz-crashes
# (replay one with FUZZ_REPLAY=<that dir>/crash-<seed>-<n>); FUZZ_SEED repeats a run;
# docs/faults.md, "Fuzzing". `make test` runs the same strategies briefly as property tests.
FUZZ_SECONDS ?= 600
FUZZ_THREADS ?= 1
fuzz: setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_THREADS=$(FUZZ_THREADS) FUZZ_CRASH_DIR=$(CARGO_TARGET_DIR)/fuzz-crashes \
	  cargo test --release --locked -p sluice-normalizer --lib -- --ignored --exact \
	  mappings::proptests::fuzz_normalizers_for_a_set_time --nocapture

# Benchmarks against the live stack, release build.
bench: stack
	cargo build --release --locked --bin sluice
	$(CARGO_TARGET_DIR)/release/sluice topology apply
	cargo bench -p sluice-schemas --bench codec
	$(CARGO_TARGET_DIR)/release/sluice bench gateway
	$(CARGO_TARGET_DIR)/release/sluice bench normalizer
	$(CARGO_TARGET_DIR)/release/sluice saga bench
	$(CARGO_TARGET_DIR)/release/sluice bench saga-http
	$(CARGO_TARGET_DIR)/release/sluice bench e2e
	$(CARGO_TARGET_DIR)/release/sluice bench outbox
	$(CARGO_TARGET_DIR)/release/sluice bench deliver
	cargo bench -p sluice-ops --bench lag

setup:
	dev/setup

stack: setup
	dev/stack up

stack-down:
	dev/stack down

build: setup
	cargo build --locked --bin sluice

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
