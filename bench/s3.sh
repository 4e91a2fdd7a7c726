#!/usr/bin/env bash
# aws-cli against three servers, back to back in one run: VaultFS's S3 API (--s3-listen),
# VaultFS's native API (vaultfs upload, and curl -T for the big file), and s3s-fs 0.14.1 (the
# s3s project's file-system S3 server, the same s3s VaultFS's S3 API is built on) as a peer.
# Workloads: `aws s3 cp` of one 1 GiB file, `aws s3 sync` of 500 small files (4 KiB). Each
# (server, rep) gets a fresh data directory and a fresh server on 127.0.0.1, stopped by its
# PID; reps are interleaved and the median is reported, with each time as a ratio to VaultFS
# S3's. Prints a Markdown table (BENCHMARKS.md, "S3 API (issue 19)").
# Usage: bench/s3.sh [path/to/vaultfs]   (REPS=3, FILES=500, SMALL_KIB=4, BIG_MIB=1024)
# Needs the aws-cli of .ci/s3-clients.sh; installs s3s-fs into ~/.cache/vaultfs-tools.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-3}; FILES=${FILES:-500}; SMALL_KIB=${SMALL_KIB:-4}; BIG_MIB=${BIG_MIB:-1024}
JOBS=10 # aws-cli's default max_concurrent_requests; vaultfs upload gets the same -j
: "${CARGO_TARGET_DIR:=$HOME/.cache/vaultfs-target}"; export CARGO_TARGET_DIR
BIN=${1:-$CARGO_TARGET_DIR/release/vaultfs}
if [ "$#" -eq 0 ]; then (cd "$ROOT" && cargo build --release --locked -q); fi
[ -x "$BIN" ] || { echo "no vaultfs binary at $BIN" >&2; exit 2; }
VENV=${VAULTFS_S3_VENV:-$HOME/.cache/vaultfs-venv}
AWS=$VENV/bin/aws
[ -x "$AWS" ] || { echo "aws-cli missing: run .ci/s3-clients.sh" >&2; exit 2; }
TOOLS=$HOME/.cache/vaultfs-tools
S3SFS=$TOOLS/bin/s3s-fs
if [ ! -x "$S3SFS" ]; then
    CARGO_TARGET_DIR=$HOME/.cache/vaultfs-tools-build \
        cargo install s3s-fs --version =0.14.1 --features binary --locked --root "$TOOLS"
fi

W=$(mktemp -d)
PID=""
stop() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    PID=""
}
trap 'stop; rm -rf "$W"' EXIT
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null \
    AWS_SHARED_CREDENTIALS_FILE=/dev/null
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom >"$W/big.bin"
mkdir -p "$W/tree"
for i in $(seq 1 "$FILES"); do head -c $((SMALL_KIB * 1024)) /dev/urandom >"$W/tree/f$i"; done

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "port $1 did not open" >&2; return 1
}
# Seconds a command takes (its output to the log; a failure stops the run).
t() {
    local s e
    s=$(date +%s.%N)
    "$@" >>"$W/cmd.log" 2>&1 || { echo "failed: $*" >&2; tail -20 "$W/cmd.log" >&2; exit 1; }
    e=$(date +%s.%N)
    echo "$e - $s" | bc -l
}
# Checks that the remote holds the tree: FILES objects under PREFIX (aws ls).
count_s3() { "$AWS" --endpoint-url "$1" s3 ls --recursive "s3://bench/tree/" | wc -l; }

declare -A TIMES
record() { TIMES[$1]="${TIMES[$1]:-} $2"; }

s3_runs() { # name endpoint: cp, then sync, through aws-cli
    local name=$1 ep=$2
    "$AWS" --endpoint-url "$ep" s3 mb s3://bench >>"$W/cmd.log" 2>&1
    record "cp:$name" "$(t "$AWS" --endpoint-url "$ep" s3 cp "$W/big.bin" s3://bench/big.bin --only-show-errors)"
    record "sync:$name" "$(t "$AWS" --endpoint-url "$ep" s3 sync "$W/tree" s3://bench/tree/ --only-show-errors)"
    local n; n=$(count_s3 "$ep")
    [ "$n" -eq "$FILES" ] || { echo "$name: $n objects after sync, not $FILES" >&2; exit 1; }
}

for rep in $(seq 1 "$REPS"); do
    # VaultFS, S3 API: a read,write key pair on a fresh data directory.
    D=$W/data; rm -rf "$D"
    KEYS=$("$BIN" token create --scope read,write --s3 --json --data-dir "$D")
    P=$(port); S=$(port)
    AWS_ACCESS_KEY_ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["s3"]["access_key_id"])' <<<"$KEYS")
    AWS_SECRET_ACCESS_KEY=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["s3"]["secret_access_key"])' <<<"$KEYS")
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    "$BIN" serve --data-dir "$D" --listen "127.0.0.1:$P" --s3-listen "127.0.0.1:$S" >"$W/vaultfs-s3.log" 2>&1 &
    PID=$!; wait_port "$S"
    s3_runs vaultfs-s3 "http://127.0.0.1:$S"
    stop

    # VaultFS, native API: an open loopback server (no token), vaultfs upload and curl -T.
    rm -rf "$D"; P=$(port); URL=http://127.0.0.1:$P
    "$BIN" serve --data-dir "$D" --listen "127.0.0.1:$P" >"$W/vaultfs-native.log" 2>&1 &
    PID=$!; wait_port "$P"
    record "cp:vaultfs-upload" "$(t "$BIN" upload "$W/big.bin" bench/big.bin -q --server "$URL")"
    record "cp:curl" "$(t curl -sSf -o /dev/null -T "$W/big.bin" "$URL/api/v1/fs/bench/curl.bin")"
    record "sync:vaultfs-upload" "$(t "$BIN" upload "$W/tree" bench/ -j "$JOBS" -q --server "$URL")"
    n=$("$BIN" ls -r bench/tree --server "$URL" | wc -l)
    [ "$n" -eq "$FILES" ] || { echo "native: $n files after upload, not $FILES" >&2; exit 1; }
    stop

    # s3s-fs 0.14.1: the peer, on a fresh directory.
    rm -rf "$D"; mkdir -p "$D"; S=$(port)
    export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret
    "$S3SFS" --host 127.0.0.1 --port "$S" --access-key benchkey --secret-key benchsecret "$D" \
        >"$W/s3s-fs.log" 2>&1 &
    PID=$!; wait_port "$S"
    s3_runs s3s-fs "http://127.0.0.1:$S"
    stop
    rm -rf "$D"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
row() { # workload label key amount unit
    local m base
    m=$(echo "${TIMES[$3]}" | median)
    base=$(echo "${TIMES[${3%%:*}:vaultfs-s3]}" | median)
    printf '| %s | %s | %.2f | %.1f %s | %.2f |\n' "$1" "$2" "$m" "$(echo "$4 / $m" | bc -l)" "$5" \
        "$(echo "$m / $base" | bc -l)"
}
echo "aws-cli: $("$AWS" --version 2>&1); s3s-fs 0.14.1; $("$BIN" --version 2>&1); $REPS reps, median"
echo
echo "| workload | server (client) | seconds | throughput | time / VaultFS S3 |"
echo "|---|---|---|---|---|"
row "cp of one ${BIG_MIB} MiB file" "VaultFS S3 API (aws s3 cp)" cp:vaultfs-s3 "$BIG_MIB" MiB/s
row "cp of one ${BIG_MIB} MiB file" "VaultFS native API (vaultfs upload)" cp:vaultfs-upload "$BIG_MIB" MiB/s
row "cp of one ${BIG_MIB} MiB file" "VaultFS native API (curl -T)" cp:curl "$BIG_MIB" MiB/s
row "cp of one ${BIG_MIB} MiB file" "s3s-fs 0.14.1 (aws s3 cp)" cp:s3s-fs "$BIG_MIB" MiB/s
row "sync of $FILES x ${SMALL_KIB} KiB files" "VaultFS S3 API (aws s3 sync)" sync:vaultfs-s3 "$FILES" files/s
row "sync of $FILES x ${SMALL_KIB} KiB files" "VaultFS native API (vaultfs upload -j $JOBS)" sync:vaultfs-upload "$FILES" files/s
row "sync of $FILES x ${SMALL_KIB} KiB files" "s3s-fs 0.14.1 (aws s3 sync)" sync:s3s-fs "$FILES" files/s
echo
echo "raw seconds per rep:"
for k in "${!TIMES[@]}"; do echo "  $k:${TIMES[$k]}"; done | sort
