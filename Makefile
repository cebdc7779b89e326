# The two commands a fresh clone needs:
#   make demo   start the local stack, build sluice and run the pipeline demo
#   make test   start the local stack and run every test (CI runs exactly this)
#
# Build output and downloads live outside the clone so later runs reuse them.
SLUICE_CACHE ?= $(HOME)/.cache/sluice
CARGO_TARGET_DIR ?= $(SLUICE_CACHE)/target
export SLUICE_CACHE CARGO_TARGET_DIR

SLUICE := $(CARGO_TARGET_DIR)/debug/sluice

.PHONY: demo test setup stack stack-down build lint unit

demo: stack build
	$(SLUICE) doctor
	$(SLUICE) demo roundtrip

test: stack lint
	dev/test

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
