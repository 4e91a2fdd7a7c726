#!/bin/bash
# Profiles a VaultFS binary under 64 concurrent unique-body 4 KiB uploads (wrk + bench/put_small.lua):
# perf record -g of the server for 6 s. Usage: bench/profile_put_small.sh BIN OUT.data [ENV=VALUE...]
# then: perf report -i OUT.data --no-children --sort symbol --stdio -g none | head -40
BIN=$1; OUT=$2; shift 2
D=$(mktemp -d /tmp/vaultfs-prof-XXXX)
env "$@" RUST_LOG=warn $BIN serve --listen 127.0.0.1:18391 --data-dir $D/data > $D/log 2>&1 &
PID=$!
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18391/healthz && break; sleep 0.2; done
wrk -t 2 -c 64 -d 10s -s "$(dirname "$0")/put_small.lua" http://127.0.0.1:18391 -- POST '/api/v1/files/upload?path=up/' 1 > $D/wrk.out &
sleep 2
perf record -F 499 -g -p $PID -o $OUT -- sleep 6 2>/dev/null >/dev/null
wait %2 2>/dev/null; sleep 4
grep JSON $D/wrk.out
kill $PID; wait $PID 2>/dev/null
rm -rf $D
