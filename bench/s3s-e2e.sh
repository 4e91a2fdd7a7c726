#!/usr/bin/env bash
# Runs the s3s-e2e conformance suite (crates.io, the version matching the s3s VaultFS uses)
# against a fresh VaultFS S3 listener and prints its summary. The result is recorded in
# docs/S3.md. Usage: bench/s3s-e2e.sh [path/to/vaultfs]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.14.1
ROOT="${S3S_E2E_ROOT:-$HOME/.cache/vaultfs-s3s-e2e}"
if [ ! -x "$ROOT/bin/s3s-e2e" ]; then
    # Its own target directory under ~/.cache: the AWS SDK it compiles is large (about 20
    # minutes on the 2-core machine), and a rebuild of VaultFS should not evict it.
    CARGO_TARGET_DIR="${S3S_E2E_TARGET:-$HOME/.cache/vaultfs-s3s-build}" \
        cargo install s3s-e2e --version "=$VERSION" --locked --root "$ROOT"
fi
BIN="${1:-${CARGO_TARGET_DIR:-target}/release/vaultfs}"
shift $(( $# > 0 ? 1 : 0 ))
[ -x "$BIN" ] || { echo "build vaultfs first (cargo build --release) or pass its path" >&2; exit 2; }
DIR="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
PORT=$((20000 + RANDOM % 20000))
KEYS="$("$BIN" token create --scope read,write --s3 --json --data-dir "$DIR/data")"
export AWS_ACCESS_KEY_ID="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["s3"]["access_key_id"])' <<<"$KEYS")"
export AWS_SECRET_ACCESS_KEY="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["s3"]["secret_access_key"])' <<<"$KEYS")"
export AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
"$BIN" serve --data-dir "$DIR/data" --listen 127.0.0.1:0 --s3-listen "127.0.0.1:$PORT" \
    >"$DIR/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
# One line per case (PASSED/FAILED with its error), then per fixture and suite.
NO_COLOR=1 "$ROOT/bin/s3s-e2e" "$@" 2>&1 | tee "$DIR/e2e.log" | grep -v '^\s*$' || true
