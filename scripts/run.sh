#!/usr/bin/env bash
# `make run`: the server on its embedded defaults (SQLite and local disk under
# /var/lib/cove), serving regions us, eu and us-east-1.
#
# This machine may have no route to Docker Hub, so unless COVE_DEV_MIRROR=0 a local
# registry (Debian's docker-registry on 127.0.0.1:5000) is started as the docker.io mirror
# and seeded with small busybox-based fixtures under the seed's image names
# (python:3.12, python:3.11-slim, ubuntu:22.04, alpine:3.21). Pulls try the mirror first
# and fall back to Docker Hub itself, so real images still work where it is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${COVE_DATA_DIR:-/var/lib/cove}
MIRROR_PORT=${COVE_DEV_MIRROR_PORT:-5000}
args=(--data-dir "$DATA_DIR" --region us --region eu --region us-east-1
      --default-snapshot "${COVE_DEFAULT_SNAPSHOT:-default}")

if [[ ${COVE_DEV_MIRROR:-1} == 1 ]]; then
  MIRROR_DIR=${COVE_DEV_MIRROR_DIR:-/var/lib/cove-dev-mirror}
  mkdir -p "$MIRROR_DIR/data"
  if ! curl -fsS "http://127.0.0.1:$MIRROR_PORT/v2/" >/dev/null 2>&1; then
    cat > "$MIRROR_DIR/config.yml" <<YML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $MIRROR_DIR/data}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$MIRROR_PORT
YML
    setsid docker-registry serve "$MIRROR_DIR/config.yml" >"$MIRROR_DIR/registry.log" 2>&1 < /dev/null &
    for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$MIRROR_PORT/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  for ref in library/python:3.12 library/python:3.11-slim library/python:3.12-slim library/ubuntu:22.04 library/alpine:3.21; do
    repo=${ref%%:*}; tag=${ref##*:}
    if ! curl -fs -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
         "http://127.0.0.1:$MIRROR_PORT/v2/$repo/manifests/$tag"; then
      python3 tests/fixtures/mkimage.py --registry "http://127.0.0.1:$MIRROR_PORT" --repo "$repo" --tag "$tag" >/dev/null
    fi
  done
  echo "run: docker.io mirror with fixture images at http://127.0.0.1:$MIRROR_PORT"
  args+=(--registry-mirror "docker.io=http://127.0.0.1:$MIRROR_PORT")
fi

# Sandboxes trust what this host trusts (its bundle holds a corporate TLS-intercepting
# proxy's CA where there is one), so pip, npm and git work behind such a proxy too.
HOST_CA=${COVE_SANDBOX_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[[ -f $HOST_CA ]] && args+=(--sandbox-ca-bundle "$HOST_CA")

# The object storage endpoint (build contexts, HTTPS on 127.0.0.1:9443) uses the server's own
# CA; the Python SDK only trusts the system store, so install the CA there (idempotent).
target/release/cove tls trust --data-dir "$DATA_DIR" ||
  echo "run: could not install $DATA_DIR/tls/ca.pem in the system trust store; the Python SDK's context uploads will fail" >&2

exec target/release/cove server "${args[@]}" "$@"
