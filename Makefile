# The two commands a newcomer needs: `make run` and `make test`. Both install what they
# need first (scripts/setup.sh), so they work on a fresh Debian machine.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# The in-sandbox agent is a static glibc binary so it runs in any image (busybox, distroless).
# The explicit --target keeps the static flag away from build scripts and proc macros.
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT_BUILD = RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build -p cove-agent --target $(AGENT_TARGET)

.PHONY: setup build agent agent-debug run test test-rust test-e2e bench bench-density bench-setup fmt lint clean

setup:
	@scripts/setup.sh

## Release build of every binary into target/release/ (cove, and the static cove-agent).
build: agent
	$(CARGO) build --release -p cove

agent:
	$(AGENT_BUILD) --release
	install -m 0755 target/$(AGENT_TARGET)/release/cove-agent target/release/cove-agent

agent-debug:
	$(AGENT_BUILD)

## Build, then run the server on the embedded defaults (SQLite + local disk under
## /var/lib/cove) with real images: scripts/run.sh bootstraps a Debian image once
## (cove image bootstrap, cached afterwards) and makes cove-small the default snapshot.
run: setup build
	scripts/run.sh

## Every test: Rust unit and in-process tests, then end-to-end and SDK contract tests
## against the real binary, a real registry and the official Daytona SDK.
test: setup agent-debug
	$(CARGO) build -p cove
	$(CARGO) test --workspace
	.venv/bin/python -m pytest tests/e2e tests/security

test-rust:
	$(CARGO) test --workspace

test-e2e: setup agent-debug
	$(CARGO) build -p cove
	.venv/bin/python -m pytest tests/e2e tests/security

## Figures side by side with a baseline measured in the same run.
bench: setup bench-setup build
	.venv/bin/python bench/snapshot_pull.py
	.venv/bin/python bench/sandbox_start.py
	.venv/bin/python bench/build.py
	.venv/bin/python bench/push.py
	.venv/bin/python bench/preview.py
	.venv/bin/python bench/archive.py
	.venv/bin/python bench/burst.py
	.venv/bin/python bench/dind.py
	.venv/bin/python bench/forward.py

## 1,000 idle sandboxes on one server and the host memory each costs (issue 15); minutes.
bench-density: setup build
	.venv/bin/python bench/density.py

## Baselines only the benchmarks need (not `make test`): buildah for bench/build.py.
bench-setup:
	@command -v buildah >/dev/null || { echo "bench-setup: installing buildah"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends buildah >/dev/null \
	  || echo "bench-setup: buildah could not be installed; bench/build.py skips its baseline"; }

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
