#!/usr/bin/env bash
# Starts an S3-compatible endpoint (moto's server, from PyPI) on 127.0.0.1 for the tests that
# need one, creates a bucket, and exports VAULTFS_TEST_S3_URL and test credentials. Source it:
# `. .ci/s3.sh`; the server stops on exit (chained with any earlier EXIT trap).

vaultfs_s3_port="${VAULTFS_S3_PORT:-55433}"
if ! python3 -c 'import moto.server' 2>/dev/null; then
  echo "== installing moto[server] (PyPI)"
  python3 -m pip install -q 'moto[server]' 2>&1 | grep -v 'as the .root. user' || true
fi
vaultfs_s3_log="$(mktemp /tmp/vaultfs-s3.XXXXXX.log)"
python3 -m moto.server -H 127.0.0.1 -p "$vaultfs_s3_port" >"$vaultfs_s3_log" 2>&1 &
vaultfs_s3_pid=$!
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$vaultfs_s3_port/" && break
  sleep 0.1
done
curl -s -f -X PUT "http://127.0.0.1:$vaultfs_s3_port/vaultfs-test" >/dev/null
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export VAULTFS_TEST_S3_URL="s3://vaultfs-test?endpoint=http://127.0.0.1:$vaultfs_s3_port&region=us-east-1"
echo "== S3 (moto) on 127.0.0.1:$vaultfs_s3_port, pid $vaultfs_s3_pid"

vaultfs_s3_stop() {
  kill "$vaultfs_s3_pid" 2>/dev/null || true
  rm -f "$vaultfs_s3_log"
}
vaultfs_s3_prev_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
trap "vaultfs_s3_stop; $vaultfs_s3_prev_trap" EXIT
