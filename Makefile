# The two commands a newcomer needs: `make run` and `make test`. Both install what they
# need first (scripts/setup.sh), so they work on a fresh Debian machine.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup build run test test-rust test-e2e bench fmt lint clean

setup:
	@scripts/setup.sh

## Release build of every binary into target/release/.
build:
	$(CARGO) build --release --workspace --bins

## Build, then run the server on the embedded defaults (SQLite + local disk under
## /var/lib/cove), with a local registry mirror seeded with fixture images.
run: setup build
	scripts/run.sh

## Every test: Rust unit and in-process tests, then end-to-end and SDK contract tests
## against the real binary, a real registry and the official Daytona SDK.
test: setup
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	.venv/bin/python -m pytest tests/e2e

test-rust:
	$(CARGO) test --workspace

test-e2e: setup
	$(CARGO) build --workspace --bins
	.venv/bin/python -m pytest tests/e2e

## Figures side by side with a baseline measured in the same run.
bench: setup build
	.venv/bin/python bench/snapshot_pull.py

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
