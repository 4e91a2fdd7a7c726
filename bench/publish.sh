#!/usr/bin/env bash
# Atomic publish (issue 21), against one server on 127.0.0.1 with SQLite + local disk:
#  1. the finish of a 1,000-file commit (staged by multipart requests of 100 files; the
#     finish request alone is timed, 3 runs, each a fresh commit replacing the last);
#  2. `vaultfs publish` of a 500-file tree vs `vaultfs upload` of the same tree.
# Usage: bench/publish.sh [KIB] [JOBS]   (VAULTFS_BIN=... to use a given binary; by default a
# release build). Stops the server it started by its PID.
set -euo pipefail
KIB=${1:-16}; JOBS=${2:-16}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${CARGO_TARGET_DIR:=$HOME/.cache/vaultfs-target}"; export CARGO_TARGET_DIR
if [ -z "${VAULTFS_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked -q)
  VAULTFS_BIN=$CARGO_TARGET_DIR/release/vaultfs
fi
BIN=$VAULTFS_BIN
W=$(mktemp -d); trap 'kill $PID 2>/dev/null || true; rm -rf "$W"' EXIT
PORT=$((20000 + RANDOM % 20000)); URL=http://127.0.0.1:$PORT
"$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$W/data" >"$W/server.log" 2>&1 & PID=$!
for _ in $(seq 100); do curl -sf $URL/healthz >/dev/null && break; sleep 0.1; done
now() { date +%s.%N; }
mkdir -p "$W/parts"
for i in $(seq -w 0 999); do printf 'file %s\n' "$i" >"$W/parts/f$i"; done
for run in 1 2 3; do
  id=$(curl -sf -X POST -H 'content-type: application/json' -d '{}' $URL/api/v1/commits | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
  for batch in $(seq 0 9); do
    args=()
    for f in $(ls "$W/parts" | sed -n "$((batch * 100 + 1)),$((batch * 100 + 100))p"); do
      echo "run $run" >>"$W/parts/$f"; args+=(-F "f=@$W/parts/$f;filename=$f")
    done
    curl -sf "${args[@]}" "$URL/api/v1/files/upload?path=rel/latest&commit=$id" >/dev/null
  done
  s=$(now)
  curl -sf -X POST -H 'content-type: application/json' -d '{"replace_prefix": "rel/latest/"}' \
    "$URL/api/v1/commits/$id/finish" -o "$W/finish.json"
  e=$(now)
  n=$(python3 -c 'import sys,json; print(len(json.load(open(sys.argv[1]))["files"]))' "$W/finish.json")
  printf 'finish of a %s-file commit (run %s): %.0f ms\n' "$n" "$run" "$(echo "($e - $s) * 1000" | bc -l)"
done
mkdir -p "$W/tree/sub"
for i in $(seq 1 500); do head -c $((KIB * 1024)) /dev/urandom >"$W/tree/sub/f$i"; done
s=$(now); "$BIN" upload "$W/tree" up/ -j "$JOBS" -q --server $URL >/dev/null 2>&1; e=$(now)
up=$(echo "$e - $s" | bc -l)
s=$(now); "$BIN" publish "$W/tree" pub/ --replace -j "$JOBS" --server $URL >/dev/null; e=$(now)
pub=$(echo "$e - $s" | bc -l)
[ "$(curl -sf "$URL/api/v1/list?prefix=pub/&limit=1000" | python3 -c 'import sys,json; print(len(json.load(sys.stdin)["entries"]))')" = 500 ]
printf '500 files x %s KiB, -j %s: vaultfs upload %.2f s, vaultfs publish %.2f s, ratio (publish/upload) %.2f\n' \
  "$KIB" "$JOBS" "$up" "$pub" "$(echo "$pub / $up" | bc -l)"
