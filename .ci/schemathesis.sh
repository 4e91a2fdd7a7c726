#!/usr/bin/env bash
# Fuzzes a real VaultFS server against its served OpenAPI document with schemathesis (PyPI,
# pinned), in two runs:
#   1. an admin token: phases examples, coverage, fuzzing (100 examples per operation) and
#      stateful (the spec's links chain uploads into reads, moves, copies, deletes), all checks;
#   2. a read-only token: every operation needing write or admin must answer 403 (the hook
#      check `write_operations_forbidden`, with ignored_auth and the other checks).
# Fixed seed (.ci/schemathesis.toml). Exits non-zero on any failure.
#
#   bash .ci/schemathesis.sh                 # install if missing, build, run both
#   bash .ci/schemathesis.sh --install-only  # only make sure the virtualenv exists
#   VAULTFS_ST_ARGS='--include-path-regex tus' bash .ci/schemathesis.sh  # a subset, by hand
# VAULTFS_BIN=path/to/vaultfs uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
VENV="${VAULTFS_ST_VENV:-$HOME/.cache/vaultfs-venv-st}"
if ! "$VENV/bin/st" --version 2>/dev/null | grep -qx "st, version $ST_VERSION"; then
  echo "== installing schemathesis $ST_VERSION into $VENV (PyPI)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi

BIN="${VAULTFS_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --locked -q --bin vaultfs
  BIN="${CARGO_TARGET_DIR:-target}/debug/vaultfs"
fi

work="$(mktemp -d /tmp/vaultfs-st.XXXXXX)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

data="$work/data"
mkdir -p "$data"
admin="$(RUST_LOG=off "$BIN" token create --scope admin --label schemathesis --data-dir "$data")"
reader="$(RUST_LOG=off "$BIN" token create --scope read --label schemathesis-read --data-dir "$data")"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
RUST_LOG="${RUST_LOG:-warn}" "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" \
  --max-upload-size 16MiB >"$work/server.log" 2>&1 &
server_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -sf -o /dev/null "$base/healthz" && break
  sleep 0.1
done
curl -sf -o /dev/null "$base/healthz" || { cat "$work/server.log"; exit 1; }

st_run() {
  "$VENV/bin/st" --config-file .ci/schemathesis.toml run "$base/api/v1/openapi.json" \
    --checks all --workers 1 --no-color ${VAULTFS_ST_ARGS:-} "$@"
}

status=0
start=$(date +%s)
echo "== schemathesis: admin token (examples, coverage, fuzzing, stateful)"
VAULTFS_ST_SCOPE=admin st_run --phases examples,coverage,fuzzing,stateful \
  -H "Authorization: Bearer $admin" || status=1
echo "== schemathesis: read-only token (write and admin operations must answer 403)"
VAULTFS_ST_SCOPE=read VAULTFS_ST_TOKEN="$reader" st_run --phases examples,coverage,fuzzing --max-examples 30 \
  -H "Authorization: Bearer $reader" || status=1
echo "== schemathesis took $(( $(date +%s) - start )) s"
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "the server died during the run:"; tail -50 "$work/server.log"; status=1
fi
if grep -q "panicked" "$work/server.log"; then
  echo "the server panicked:"; grep -A5 "panicked" "$work/server.log" | head -40; status=1
fi
exit "$status"
