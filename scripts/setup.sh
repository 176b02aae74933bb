#!/usr/bin/env bash
# Installs what building, running and testing Cove need, only when missing:
# Debian packages (runc, nftables for the sandbox bridge's firewall, the OCI registry, static
# busybox, skopeo/umoci for the benchmark baseline, docker.io for the `snapshot push` test from
# a Docker engine, libseccomp-dev and pkg-config to link the seccomp compiler, chromium for the
# dashboard's browser tests, postgresql-15 for the store tests' throw-away clusters) and a
# virtualenv with the official Daytona SDK. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker-registry busybox-static skopeo umoci runc e2fsprogs iproute2 nftables golang-github-containers-common
              python3-minimal apache2-utils curl ca-certificates docker.io mmdebstrap
              libseccomp-dev pkg-config chromium postgresql-15)
SDK_PY="daytona==0.226.1"

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import daytona, pytest, moto' 2>/dev/null \
   || [[ $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("daytona"))' 2>/dev/null) != "${SDK_PY#*==}" ]]; then
  echo "setup: creating .venv with the official Daytona SDK ($SDK_PY), pytest and moto (STS/ECR emulator)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "$SDK_PY" "pytest>=8" "pytest-timeout>=2" "moto[server]>=5"
fi

# Node.js for the TypeScript SDK: the machine image ships one; Debian's is the fallback.
if ! command -v npm >/dev/null; then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

# The official TypeScript SDK, for the TS contract test (versions pinned by package-lock.json).
if [[ ! -d tests/e2e/ts/node_modules/@daytona/sdk ]]; then
  echo "setup: installing @daytona/sdk for the TypeScript tests"
  (cd tests/e2e/ts && npm ci --no-audit --no-fund --loglevel=error)
fi

# playwright-core drives Debian's chromium in the dashboard's browser tests (no browser download).
if [[ ! -d tests/e2e/dashboard/node_modules/playwright-core ]]; then
  echo "setup: installing playwright-core for the dashboard browser tests"
  (cd tests/e2e/dashboard && npm ci --no-audit --no-fund --loglevel=error)
fi
