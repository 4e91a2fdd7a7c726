#!/usr/bin/env bash
# vaultfs upload/download of a tree vs curl driven by xargs -P (the same parallelism), against
# one release server on 127.0.0.1. Prints wall times and the ratio. Usage: bench/cli.sh [FILES] [SIZE_KIB] [JOBS]
set -euo pipefail
FILES=${1:-400}; KIB=${2:-256}; JOBS=${3:-16}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${CARGO_TARGET_DIR:=$HOME/.cache/vaultfs-target}"; export CARGO_TARGET_DIR
(cd "$ROOT" && cargo build --release --locked -q)
BIN=$CARGO_TARGET_DIR/release/vaultfs
W=$(mktemp -d); trap 'kill $PID 2>/dev/null || true; rm -rf "$W"' EXIT
PORT=18090; URL=http://127.0.0.1:$PORT
"$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$W/data" >"$W/server.log" 2>&1 & PID=$!
for _ in $(seq 50); do curl -sf $URL/healthz >/dev/null && break; sleep 0.1; done
mkdir -p "$W/tree"
for i in $(seq 1 "$FILES"); do head -c $((KIB * 1024)) /dev/urandom >"$W/tree/f$i"; done
cd "$W"
t() { local s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
up_v=$(t "$BIN" upload tree a/ -j "$JOBS" -q --server $URL)
up_c=$(t bash -c "ls tree | xargs -P $JOBS -I{} sh -c 'curl -sf -X POST -T tree/{} -H \"X-Checksum-Sha256: \$(sha256sum tree/{} | cut -c1-64)\" \"$URL/api/v1/files/upload?path=b/{}\" >/dev/null'")
down_v=$(t "$BIN" download a/tree out_v -j "$JOBS" -q --server $URL)
mkdir -p out_c
down_c=$(t bash -c "ls tree | xargs -P $JOBS -I{} sh -c 'curl -sf -o out_c/{} \"$URL/api/v1/fs/b/{}\" && sha256sum out_c/{} >/dev/null'")
diff -r tree out_v >/dev/null && diff -r tree out_c >/dev/null
printf '%s files x %s KiB, -j %s\n' "$FILES" "$KIB" "$JOBS"
printf 'upload:   vaultfs %.2f s, curl+sha256sum %.2f s, ratio (curl/vaultfs) %.2f\n' "$up_v" "$up_c" "$(echo "$up_c / $up_v" | bc -l)"
printf 'download: vaultfs %.2f s, curl+sha256sum %.2f s, ratio (curl/vaultfs) %.2f\n' "$down_v" "$down_c" "$(echo "$down_c / $down_v" | bc -l)"
