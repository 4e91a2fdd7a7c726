#!/usr/bin/env bash
# Peak server RSS during a 1 GiB upload and download through the real release server.
# Usage: bench/rss_1gib.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${1:-1024}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vaultfs-target}"
cargo build --release --locked -q
BIN="$CARGO_TARGET_DIR/release/vaultfs"
WORK="$(mktemp -d /tmp/vaultfs-rss.XXXXXX)"
PORT="${PORT:-18080}"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/payload"

"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" > "$WORK/server.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/VmHWM/ {print $2}' "/proc/$PID/status"; }
echo "idle peak RSS: $(rss) KiB"

t0=$(date +%s.%N)
curl -sS -X POST -T "$WORK/payload" -H 'Content-Type: application/octet-stream' -o "$WORK/meta.json" \
  "http://127.0.0.1:$PORT/api/v1/files/upload?path=big/payload.bin"
ID=$(python3 -c 'import sys,json; print(json.load(open(sys.argv[1]))["id"])' "$WORK/meta.json") || { cat "$WORK/meta.json"; tail "$WORK/server.log"; exit 1; }
t1=$(date +%s.%N)
echo "upload ${SIZE_MIB} MiB: $(python3 -c "print(f'{$SIZE_MIB/($t1-$t0):.0f}')") MiB/s, peak RSS so far: $(rss) KiB"

curl -fsS -o "$WORK/back" "http://127.0.0.1:$PORT/api/v1/files/$ID"
t2=$(date +%s.%N)
echo "download ${SIZE_MIB} MiB: $(python3 -c "print(f'{$SIZE_MIB/($t2-$t1):.0f}')") MiB/s, peak RSS so far: $(rss) KiB"
cmp "$WORK/payload" "$WORK/back" && echo "round trip byte-exact"
echo "PEAK_RSS_KIB=$(rss)"
