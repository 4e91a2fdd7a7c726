#!/usr/bin/env bash
# The escalation load against two VaultFS replicas on PostgreSQL + S3 (moto) behind nginx,
# and against one replica on the embedded default, in the same run. Prints a Markdown table
# and writes it to bench/results/scaleout-*.md. Everything binds 127.0.0.1 and is stopped by
# PID at the end.
#
# Usage: bench/scaleout.sh [UPLOADERS=50] [DURATION=20s] [SIZES=4KiB:50,1MiB:50]
set -euo pipefail
cd "$(dirname "$0")/.."
uploaders="${1:-50}"
duration="${2:-20s}"
sizes="${3:-4KiB:50,1MiB:50}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vaultfs-target}"
cargo build --release --locked -q
bin="$CARGO_TARGET_DIR/release/vaultfs"
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }

. .ci/postgres.sh
. .ci/s3.sh
work="$(mktemp -d /tmp/vaultfs-scaleout.XXXXXX)"
chmod 777 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Only our own servers: a bare `wait` would also wait for moto, started by .ci/s3.sh.
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap 'cleanup; vaultfs_s3_stop; vaultfs_pg_stop' EXIT

wait_up() {
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not come up" >&2
  exit 1
}

run_load() { # name url report
  RUST_LOG=warn "$bin" loadtest --url "$2" --uploaders "$uploaders" --subscribers 10 \
    --duration "$duration" --sizes "$sizes" --json "$3" >/dev/null 2>"$work/$1.loadtest.log" || true
}

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# 1. One replica, embedded default (SQLite + local disk).
RUST_LOG=warn "$bin" serve --listen 127.0.0.1:18400 --data-dir "$work/embedded" >"$work/embedded.log" 2>&1 &
emb=$!; pids+=("$emb"); wait_up 18400
c0=$(cpu_of "$emb")
run_load embedded http://127.0.0.1:18400 "$work/embedded.json"
emb_cpu=$(( $(cpu_of "$emb") - c0 ))
kill "$emb"; wait "$emb" 2>/dev/null || true

# 2. Two replicas on PostgreSQL + S3, behind nginx (round robin).
db="vfs_bench_$$"
psql -q "$VAULTFS_TEST_POSTGRES_URL" -c "CREATE DATABASE $db" >/dev/null
meta_url="${VAULTFS_TEST_POSTGRES_URL%/*}/$db"
s3_url="${VAULTFS_TEST_S3_URL/\?//bench-$$?}"
for port in 18401 18402; do
  VAULTFS_METADATA_URL="$meta_url" VAULTFS_BLOB_STORE="$s3_url" RUST_LOG=warn \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/replica-$port" >"$work/replica-$port.log" 2>&1 &
  pids+=("$!"); wait_up "$port"
done
r1=${pids[-2]}; r2=${pids[-1]}
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
daemon off;
events { worker_connections 8192; }
http {
  access_log off;
  client_max_body_size 0;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  proxy_request_buffering off;
  proxy_buffering off;
  proxy_http_version 1.1;
  upstream vaultfs { server 127.0.0.1:18401; server 127.0.0.1:18402; keepalive 256; }
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  server {
    listen 127.0.0.1:18403;
    location / {
      proxy_pass http://vaultfs;
      proxy_set_header Host \$host;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 120s;
    }
  }
}
CONF
nginx -c "$work/nginx/nginx.conf" &
pids+=("$!"); wait_up 18403
procs_cpu() { # all processes with this name, in ticks
  local t=0
  for p in $(pgrep -x "$1"); do t=$(( t + $(cpu_of "$p") )); done
  echo "$t"
}
c1=$(cpu_of "$r1"); c2=$(cpu_of "$r2"); cm=$(cpu_of "$vaultfs_s3_pid"); cp=$(procs_cpu postgres); cn=$(procs_cpu nginx)
run_load replicas http://127.0.0.1:18403 "$work/replicas.json"
rep_cpu=$(( $(cpu_of "$r1") - c1 + $(cpu_of "$r2") - c2 ))
others="moto $(( $(cpu_of "$vaultfs_s3_pid") - cm )), postgres $(( $(procs_cpu postgres) - cp )), nginx $(( $(procs_cpu nginx) - cn ))"

python3 - "$work/embedded.json" "$work/replicas.json" "$emb_cpu" "$rep_cpu" "$uploaders" "$duration" "$sizes" "$others" <<'PY'
import json, os, sys, time
emb, rep = (json.load(open(p)) for p in sys.argv[1:3])
emb_cpu, rep_cpu = int(sys.argv[3]), int(sys.argv[4])
uploaders, duration, sizes, others = sys.argv[5:9]
tick = os.sysconf("SC_CLK_TCK")
def row(name, r, cpu):
    up = r["kinds"].get("upload", {})
    lat = up.get("latency", {})
    ev = r["events"]
    return (f"| {name} | {r['passed']} | {up.get('per_sec', 0):.1f} | {lat.get('p50_ms', 0):.0f} / {lat.get('p99_ms', 0):.0f} | "
            f"{ev['delivered']} ({ev['gaps']}) | {1000 * cpu / tick / max(up.get('count', 1), 1):.1f} | {r['errors_by_status'] or '-'} |")
ratio = rep["kinds"]["upload"]["per_sec"] / max(emb["kinds"]["upload"]["per_sec"], 1e-9)
lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores shared by everything; "
         f"{uploaders} uploaders, 10 subscribers, {duration}, sizes {sizes}.", "",
         "| setup | passed | uploads/s | upload p50 / p99 ms | events delivered (gaps) | VaultFS CPU ms per upload | errors |",
         "|---|---|---|---|---|---|---|",
         row("1 replica, embedded (SQLite + disk)", emb, emb_cpu),
         row("2 replicas, PostgreSQL + S3 (moto), nginx", rep, rep_cpu),
         "", f"Throughput ratio, two replicas / embedded: **{ratio:.2f}**",
         "", "CPU ticks (1/%d s) spent by the backends during the two-replica run: %s." % (tick, ", ".join(
             f"{name} {int(v)}" for name, v in (part.split() for part in others.split(", "))))]
table = "\n".join(lines)
os.makedirs("bench/results", exist_ok=True)
open(time.strftime("bench/results/scaleout-%Y%m%d-%H%M.md", time.gmtime()), "w").write(table + "\n")
print(table)
PY
