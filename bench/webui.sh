#!/usr/bin/env bash
# Web UI figures (BENCHMARKS.md): the page's transfer size on a cold load and the time from
# navigation to the first listing of a folder holding N files (default 10,000), in headless
# Debian chromium through playwright-core (bash .ci/webui.sh installs both). Binds 127.0.0.1
# only; stops the server it starts by its PID.
#   bench/webui.sh [FILES] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
FILES="${1:-10000}"
RUNS="${2:-5}"
bash .ci/webui.sh >/dev/null
BIN="${VAULTFS_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release --locked -q --bin vaultfs
  BIN="${CARGO_TARGET_DIR:-target}/release/vaultfs"
fi
work="$(mktemp -d /tmp/vaultfs-webui-bench.XXXXXX)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/server.log" 2>&1 &
pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do curl -sf -o /dev/null "$base/healthz" && break; sleep 0.1; done
# N small files under big/, 1,000 per multipart request.
python3 - "$base" "$FILES" <<'PY'
import sys, urllib.request, uuid
base, n = sys.argv[1], int(sys.argv[2])
for start in range(0, n, 1000):
    b = uuid.uuid4().hex
    parts = []
    for i in range(start, min(n, start + 1000)):
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="f{i:06d}.log"\r\nContent-Type: text/plain\r\n\r\nline {i}\n\r\n')
    body = (''.join(parts) + f'--{b}--\r\n').encode()
    req = urllib.request.Request(f'{base}/api/v1/files/upload?path=big', data=body, method='POST',
                                 headers={'Content-Type': f'multipart/form-data; boundary={b}'})
    urllib.request.urlopen(req).read()
print(f'uploaded {n} files under big/', file=sys.stderr)
PY
VAULTFS_URL="$base" VAULTFS_RUNS="$RUNS" VAULTFS_PLAYWRIGHT="$HOME/.cache/vaultfs-node-web" \
  node bench/webui_listing.mjs
