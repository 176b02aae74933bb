#!/usr/bin/env bash
# `make run`: the server on its embedded defaults (SQLite and local disk under
# /var/lib/cove), serving regions us, eu and us-east-1, with real images out of the box:
#
# 1. the server starts (in the background of this script) with an admin API key kept in
#    $KEY_FILE (made once, 0600; or COVE_API_KEY);
# 2. `cove image bootstrap --profile full --general` builds a Debian image with Python and Node
#    (mmdebstrap from this host's apt sources; minutes the first time, cached afterwards),
#    stores it in the built-in registry as cove/sandbox:full-<release> and makes the general
#    snapshots cove-small, cove-medium and cove-large from it;
# 3. cove-small is the default snapshot: `Daytona().create()` starts a sandbox that runs Python.
#
# Image names mean what they mean: `python:3.12` is Docker Hub's image (or a mirror the user
# configures with --registry-mirror); nothing is served under another image's name.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${COVE_DATA_DIR:-/var/lib/cove}
LISTEN=${COVE_LISTEN:-127.0.0.1:3000}
PROFILE=${COVE_BOOTSTRAP_PROFILE:-full}
KEY_FILE=${COVE_KEY_FILE:-/etc/cove/admin-api-key}
COVE=target/release/cove
args=(--data-dir "$DATA_DIR" --listen "$LISTEN" --region us --region eu --region us-east-1
      --default-snapshot "${COVE_DEFAULT_SNAPSHOT:-cove-small}")

# Sandboxes trust what this host trusts (its bundle holds a corporate TLS-intercepting
# proxy's CA where there is one), so pip, npm and git work behind such a proxy too.
HOST_CA=${COVE_SANDBOX_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[[ -f $HOST_CA ]] && args+=(--sandbox-ca-bundle "$HOST_CA")

# The object storage endpoint (build contexts, HTTPS on 127.0.0.1:9443) uses the server's own
# CA; the Python SDK only trusts the system store, so install the CA there (idempotent).
"$COVE" tls trust --data-dir "$DATA_DIR" ||
  echo "run: could not install $DATA_DIR/tls/ca.pem in the system trust store; the Python SDK's context uploads will fail" >&2

# The admin key: the bootstrap below needs one, and so does the person at the keyboard.
key_hint='$COVE_API_KEY'
if [[ -z ${COVE_API_KEY:-} ]]; then
  key_hint="\$(cat $KEY_FILE)"
  if [[ ! -s $KEY_FILE ]]; then
    install -d -m 0700 "$(dirname "$KEY_FILE")"
    (umask 077 && printf 'cove_%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$KEY_FILE")
  fi
  COVE_API_KEY=$(<"$KEY_FILE")
fi
export COVE_API_KEY
export COVE_API_URL="http://$LISTEN/api"

"$COVE" server "${args[@]}" "$@" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' INT TERM
for _ in $(seq 300); do
  curl -fsS "$COVE_API_URL/health" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { wait $server; exit $?; }
  sleep 0.2
done

echo "run: making the default images (cove image bootstrap --profile $PROFILE --general)"
if "$COVE" image bootstrap --profile "$PROFILE" --general; then
  ready="the general snapshots cove-small, cove-medium and cove-large are active; cove-small is the default"
else
  ready="cove image bootstrap failed (above): the server runs, but has no default snapshot yet; rerun
     COVE_API_URL=$COVE_API_URL COVE_API_KEY=… $COVE image bootstrap --profile $PROFILE --general"
fi
cat <<EOF

run: Cove is up at http://$LISTEN ($ready).
     export DAYTONA_API_URL=$COVE_API_URL DAYTONA_API_KEY=$key_hint
     python3 -c 'from daytona import Daytona; print(Daytona().create().process.code_run("print(1+1)").result)'
EOF
wait $server
