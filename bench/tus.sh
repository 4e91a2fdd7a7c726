#!/usr/bin/env bash
# One file through three upload paths against release servers on 127.0.0.1, back to back in
# one run (issue 17's row): `vaultfs upload` over the tus threshold (4 parallel partial uploads
# + a final concatenation), `vaultfs upload --no-resume` (one request), and curl's WebDAV PUT
# to nginx (configured as in bench/peers.py). Each vaultfs path gets a fresh server and data
# directory; every result is compared byte for byte. Prints wall times and the ratios.
# Usage: bench/tus.sh [SIZE_MIB] [RUNS]   (default 1024 MiB, 3 runs; the median is reported)
set -euo pipefail
MIB=${1:-1024}; RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${CARGO_TARGET_DIR:=$HOME/.cache/vaultfs-target}"; export CARGO_TARGET_DIR
# VAULTFS_BIN names a built binary and skips the build.
if [ -z "${VAULTFS_BIN:-}" ]; then (cd "$ROOT" && cargo build --release --locked -q); fi
BIN=${VAULTFS_BIN:-$CARGO_TARGET_DIR/release/vaultfs}
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light; }
W=$(mktemp -d); PID=""
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap 'stop; rm -rf "$W"' EXIT
PORT=$((20000 + RANDOM % 20000)); URL=http://127.0.0.1:$PORT
head -c $((MIB * 1024 * 1024)) /dev/urandom >"$W/file"
SUM=$(sha256sum "$W/file" | cut -c1-64)
t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }; echo "$(date +%s.%N) - $s" | bc; }
vault() {
  rm -rf "$W/data"
  RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$W/data" >"$W/server.log" 2>&1 & PID=$!
  for _ in $(seq 100); do curl -sf $URL/healthz >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
check() { [ "$(curl -sf "$1" | sha256sum | cut -c1-64)" = "$SUM" ] || { echo "content differs: $1" >&2; exit 1; }; }
nginx_up() {
  rm -rf "$W/ngx"; mkdir -p "$W/ngx/root"
  local user=""; [ "$(id -u)" = 0 ] && user="user root;"
  cat >"$W/ngx/nginx.conf" <<CONF
$user
worker_processes 2;
pid $W/ngx/nginx.pid;
error_log $W/ngx/error.log;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/ngx/body;
  client_max_body_size 0;
  sendfile on;
  server {
    listen 127.0.0.1:$PORT;
    root $W/ngx/root;
    location / { dav_methods PUT DELETE; create_full_put_path on; }
  }
}
CONF
  nginx -c "$W/ngx/nginx.conf" >"$W/ngx/out.log" 2>&1 & PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null $URL/ && return; sleep 0.1; done
  echo "nginx did not start" >&2; exit 1
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: >"$W/tus"; : >"$W/single"; : >"$W/nginx"
for r in $(seq "$RUNS"); do
  vault
  XDG_STATE_HOME="$W/state$r" t "$BIN" upload "$W/file" "big.bin" -q --parallel-parts 4 --server $URL >>"$W/tus"
  check "$URL/api/v1/fs/big.bin"; stop
  vault
  t "$BIN" upload "$W/file" "big.bin" -q --no-resume --server $URL >>"$W/single"
  check "$URL/api/v1/fs/big.bin"; stop
  nginx_up
  t curl -sf -T "$W/file" "$URL/big.bin" >>"$W/nginx"
  check "$URL/big.bin"; stop
done
tus=$(median <"$W/tus"); single=$(median <"$W/single"); ngx=$(median <"$W/nginx")
printf '%s MiB, %s runs (median; all: tus %s | single %s | nginx %s)\n' "$MIB" "$RUNS" \
  "$(tr '\n' ' ' <"$W/tus")" "$(tr '\n' ' ' <"$W/single")" "$(tr '\n' ' ' <"$W/nginx")"
printf 'tus, 4 parallel parts: %.2f s (%.0f MiB/s)\n' "$tus" "$(echo "$MIB / $tus" | bc -l)"
printf 'single request (--no-resume): %.2f s (%.0f MiB/s)\n' "$single" "$(echo "$MIB / $single" | bc -l)"
printf 'nginx WebDAV PUT (curl -T): %.2f s (%.0f MiB/s)\n' "$ngx" "$(echo "$MIB / $ngx" | bc -l)"
printf 'ratio tus / single: %.2f   tus / nginx: %.2f   single / nginx: %.2f\n' \
  "$(echo "$tus / $single" | bc -l)" "$(echo "$tus / $ngx" | bc -l)" "$(echo "$single / $ngx" | bc -l)"
